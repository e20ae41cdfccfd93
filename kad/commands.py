"""The commands of ``kad`` that run models: ``generate``, ``eval`` and ``demo``, each
``run_<name>(args)`` on the arguments :mod:`kad.cli` parsed.

:mod:`kad.cli` imports this module when one of them runs, as it loads torch and
transformers (seconds); every option is checked before a model loads (minutes).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from tqdm.auto import tqdm
from transformers import TextStreamer

import kad_kernels as kk

from .choices import GAMMA, LAM, PARAMETERLESS_RULES, is_speculative, mode_family, rule_name
from .decoding import Decoder, build_rule, checked_seed
from .demo import RUNS, demo
from .engines import EngineError, RemoteEngine
from .engines.llamacpp import check_n_ctx
from .engines.remote import check_servable
from .errors import partial_of
from .evaluate import MODEL_FIELDS, check_resumable, check_seed, evaluate, model_name, with_models
from .loop import KEEPS_PARTIAL
from .outputs import output_dir, remove_empty
from .report import Summary, summary_table
from .results import ResultWriteError, RunConfig, saved_result
from .settings import Settings
from .tasks import TASKS, TEMPERATURE


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
            stop_strings=args.stop,
        )
    except KEEPS_PARTIAL as error:  # show what was generated before it (one prompt: already streamed)
        partial = partial_of(error)
        if not single and partial is not None:
            for i, text in enumerate(partial.texts):
                print(f"[{i}] {text}")
        raise
    if not single:
        for i, text in enumerate(out.texts):
            print(f"[{i}] {text}")
    print(f"\n-- {args.mode}" + (f", {rule!r}" if rule else "") + f", {decoder.device}")
    print(out.stats.summary())
    return 0


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
    made = output_dir(Path(os.path.realpath(path)).parent, "--output" if args.output else "--out-dir")
    try:
        return _run_eval(args, config, path)
    finally:
        if not path.exists():  # nothing saved: no empty directory left behind either
            remove_empty(made)


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


def run_demo(args: argparse.Namespace) -> int:
    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    items = len(TASKS["gsm8k"].load())
    if not 0 <= args.item < items:
        raise ValueError(f"--item must be a GSM8K test item in [0, {items}), got {args.item}")
    checked_seed(args.seed)
    for _, mode, rule in RUNS:
        _check_served(args, Settings(mode, rule, GAMMA, TEMPERATURE))  # gamma unused where mode does not speculate
    demo(_decoder(args), item_index=args.item, seed=args.seed, max_new_tokens=args.max_new_tokens)
    return 0
