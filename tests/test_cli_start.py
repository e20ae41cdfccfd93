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
