"""``kad`` starts without torch and transformers where a command needs neither.

``kad --help``, a misspelt option, ``kad summary`` and ``kad plot`` start in a fraction of a second; the
commands that run models import :mod:`kad.commands` (torch, transformers: seconds) when
they run.  The names written out for that (:mod:`kad.choices`, ``kad.__all__``) are held
to their sources here.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

import kad
import kad_kernels as kk
from kad import choices, cli

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "eval-default-pair"
RESULT = RESULTS / "gsm8k-base-s0.json"
HEAVY = ("torch", "transformers", "numpy", "kad_kernels")


def _run_kad(*argv: str) -> dict:
    """``kad argv`` in a fresh interpreter: its exit code, its output, and which heavy packages it imported."""
    program = (
        "import json, sys\n"
        "from kad import cli\n"
        "try:\n"
        "    code = cli.main(sys.argv[1:])\n"
        "except SystemExit as exit:\n"
        "    code = exit.code\n"
        f"loaded = [name for name in {HEAVY!r} if name in sys.modules]\n"
        "print(json.dumps({'code': code, 'loaded': loaded}), file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", program, *argv], capture_output=True, text=True, timeout=120, cwd=ROOT)
    report = json.loads(done.stderr.strip().splitlines()[-1])
    return {**report, "out": done.stdout, "err": done.stderr}


@pytest.mark.parametrize(
    "argv, code",
    [
        (["--help"], 0),
        (["eval", "--help"], 0),
        (["summary", str(RESULT)], 0),
        (["generate", "--mode", "kad-fast", "--prompt", "x"], 2),  # a misspelt choice: argparse's error
        (["eval", "--task", "gsm8k", "--rule", "duel"], 2),
    ],
    ids=["help", "eval-help", "summary", "bad-mode", "bad-rule"],
)
def test_commands_that_run_no_model_import_no_torch(argv, code):
    run = _run_kad(*argv)
    assert run["code"] == code, run["err"]
    assert run["loaded"] == [], f"kad {' '.join(argv)} imported {run['loaded']}"


def test_plot_imports_no_torch(tmp_path):
    run = _run_kad("plot", *map(str, sorted(RESULTS.glob("*.json"))), "--out", str(tmp_path))
    assert run["code"] == 0, run["err"]
    assert run["loaded"] == ["numpy"]  # matplotlib's
    assert {p.name for p in tmp_path.iterdir()} >= {"acceptance_vs_gamma.png", "accuracy_vs_lambda.png"}


def test_summary_without_torch_is_the_summary_with_it(capsys):
    assert cli.main(["summary", str(RESULT)]) == 0
    assert _run_kad("summary", str(RESULT))["out"] == capsys.readouterr().out


def test_a_command_that_runs_models_imports_them_when_it_runs():
    run = _run_kad("generate", "--mode", "base", "--lam", "0.4", "--prompt", "x")  # refused before any model loads
    assert run["code"] == 2 and "--lam is read only by a rule with a parameter" in run["err"]
    assert "torch" in run["loaded"]


def test_ctrl_c_while_the_commands_import_is_an_interruption(monkeypatch, capsys):
    class Interrupted:  # a finder that is asked for kad.commands as torch is loading: Ctrl-C
        @staticmethod
        def find_spec(name, path=None, target=None):
            if name == "kad.commands":
                raise KeyboardInterrupt
            return None

    monkeypatch.delattr(kad, "commands", raising=False)  # (reading it imports it: then removed from both)
    monkeypatch.delitem(sys.modules, "kad.commands", raising=False)
    monkeypatch.setattr(sys, "meta_path", [Interrupted, *sys.meta_path])
    assert cli.main(["generate", "--prompt", "x"]) == 130
    assert capsys.readouterr().err.strip() == "kad: interrupted"


def test_the_author_rule_names_are_the_kernels():
    assert choices.AUTHOR_RULE_NAMES == tuple(kk.rules.AUTHOR_RULES)


def test_the_primal_rules_are_those_that_build_a_primal_rule():
    from kad.decoding import build_rule

    assert {name for name in choices.RULES if isinstance(build_rule("kad", name, 0.5), kk.Primal)} == set(choices.PRIMAL_RULES)


def test_each_public_name_is_read_from_its_home():
    assert sorted(kad.__all__) == sorted(kad._HOMES)
    for name, home in kad._HOMES.items():
        assert getattr(kad, name) is getattr(importlib.import_module(home), name), name
    assert set(kad.__all__) <= set(dir(kad))


def test_a_submodule_is_an_attribute_of_kad_before_it_is_imported():
    program = "import kad, sys\nassert 'kad.engines' not in sys.modules\nprint(kad.engines.RemoteEngine.__name__)"
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.stdout.strip() == "RemoteEngine", done.stderr
    assert {"cli", "decoding", "engines", "hf", "models", "report"} <= kad._SUBMODULES
    for name in kad._SUBMODULES:
        assert getattr(kad, name) is importlib.import_module(f"kad.{name}"), name
    with pytest.raises(AttributeError, match="no attribute 'Decodr'"):
        kad.Decodr  # noqa: B018


def test_the_light_modules_import_no_torch():
    modules = ["kad.choices", "kad.errors", "kad.report", "kad.results", "kad.stats", "kad.tasks", "kad.outputs",
               "kad.plots", "kad.cli"]  # fmt: skip
    program = f"import sys\nfor m in {modules!r}: __import__(m)\nprint([n for n in {HEAVY!r} if n in sys.modules])"
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120, cwd=ROOT, check=True)
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "module, names",
    [
        ("kad.settings", ["GAMMA", "LAM", "MODES", "Mode", "ONE_MODEL_FAMILIES", "mode_family", "is_speculative"]),
        ("kad.decoding", ["RULES", "PARAMETERLESS_RULES", "SYSTEM_PROMPT", "rule_name", "GAMMA"]),
        ("kad.models", ["DTYPES", "ENGINES", "EngineKind"]),
        ("kad.engines.base", ["EngineError", "ContextLengthWarning"]),
        ("kad.engines", ["EngineError"]),
        ("kad.default_pair", ["DefaultPairError"]),
    ],
)
def test_names_that_moved_stay_importable_where_they_were(module, names):
    """Each is the very object of its new home (an EngineError pickled before it moved loads)."""
    homes = (choices, importlib.import_module("kad.errors"))
    for name in names:
        value = getattr(importlib.import_module(module), name)
        assert any(getattr(home, name, None) is value for home in homes), f"{module}.{name}"


def test_a_failure_inside_a_lazy_import_is_not_a_missing_name():
    """An AttributeError raised while a home module imports (a package of another version)
    must not read as "kad has no attribute Decoder", which hides its traceback."""
    program = (
        "import sys\n"
        "class Broken:\n"
        "    @staticmethod\n"
        "    def find_spec(name, path=None, target=None):\n"
        "        if name == 'kad.decoding':\n"
        "            raise AttributeError(\"module 'torch' has no attribute 'float8'\")\n"
        "sys.meta_path.insert(0, Broken)\n"
        "import kad\n"
        "try:\n"
        "    kad.Decoder\n"
        "except ImportError as error:\n"
        "    print(type(error).__name__, error, '|', type(error.__cause__).__name__)\n"
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.stdout.strip() == (
        "ImportError importing kad.decoding failed: module 'torch' has no attribute 'float8' | AttributeError"
    ), done.stderr


def test_main_keeps_the_warning_filters_that_its_imports_add():
    """Calling main from Python (a notebook, a test) leaves warnings as importing the commands would."""
    imported = "import warnings, kad.commands\nprint(len(warnings.filters))"
    ran = (
        "import warnings\nfrom kad import cli\n"
        "try:\n    cli.main(['generate', '--mode', 'base', '--lam', '0.4', '--prompt', 'x'])\n"
        "except SystemExit:\n    pass\n"
        "import kad.commands\nprint(len(warnings.filters))"
    )
    counts = [
        subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120, cwd=ROOT).stdout
        for program in (imported, ran)
    ]
    assert counts[0].strip() and counts[0] == counts[1]


def test_the_type_checkers_names_are_the_lazy_ones():
    import ast

    tree = ast.parse((ROOT / "kad" / "__init__.py").read_text())
    block = next(node for node in tree.body if isinstance(node, ast.If) and ast.unparse(node.test) == "_TYPE_CHECKING")
    named = {alias.name for node in block.body if isinstance(node, ast.ImportFrom) for alias in node.names}
    assert named == set(kad._HOMES)


def test_model_choice_has_the_arguments_of_from_pretrained():
    import dataclasses
    import inspect

    from kad.models import ModelChoice

    parameters = list(inspect.signature(kad.Decoder.from_pretrained).parameters.values())
    fields = dataclasses.fields(ModelChoice)
    assert [(p.name, p.default) for p in parameters] == [(f.name, f.default) for f in fields]


def test_the_parameterless_rules_are_those_their_parameter_does_not_change():
    from kad.decoding import build_rule

    same = {name for name in choices.RULES if repr(build_rule("kad", name, 0.1)) == repr(build_rule("kad", name, 0.9))}
    assert same == set(choices.PARAMETERLESS_RULES)
