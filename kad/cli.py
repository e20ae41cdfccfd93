"""The ``kad`` command line.

    kad generate --base MODEL --aligned MODEL [--reference MODEL] --mode kad-spec \\
        --rule dual --lam 0.4 --gamma 4 --prompt "..."

Each subcommand is a function ``add_<name>(subparsers)`` that registers its
parser and sets ``run`` to the function that executes it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import torch
from transformers import TextStreamer

import kad_kernels as kk

from .decoding import MODES, SYSTEM_PROMPT, Decoder

# --rule names: the paper's rules, then the rule names of the authors' code (kad_kernels.rule_from_name).
_AUTHOR_RULES = (
    "token_wise", "max", "max_q_minus", "max_q_plus", "max_p_plus", "minus_max_p_plus",
    "token_v2", "token_max", "budget_lr",
)  # fmt: skip
RULES = ("dual", "primal", "nudging", "implicit-reward", *_AUTHOR_RULES)


def build_rule(mode: str, name: str | None, lam: float) -> kk.Rule | None:
    """The rule of ``mode``: none for one model, fixed by the baseline modes, else ``name``
    (default ``dual``) with parameter ``lam`` (λ, μ or the primal budget)."""
    family = mode.removesuffix("-spec")
    if family in ("base", "aligned", "nudging", "implicit-reward") and name is not None:
        raise ValueError(f"mode {mode!r} fixes its rule: drop --rule {name}")
    if family in ("base", "aligned"):
        return None
    name = family if family in ("nudging", "implicit-reward") else name or "dual"
    if name == "implicit-reward":
        return kk.ImplicitReward()
    constructors = {"dual": kk.Dual, "primal": kk.Primal, "nudging": kk.Nudging}
    return constructors[name](lam) if name in constructors else kk.rule_from_name(name, lam)


def add_generate(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "generate",
        help="generate from prompts, streaming the text, then print the statistics",
        description="Generate with KAD decoding (or a baseline); models by hub id or local path.",
    )
    parser.add_argument("--base", required=True, help="the large base model")
    parser.add_argument("--aligned", required=True, help="the small aligned model (its chat template is used)")
    parser.add_argument("--reference", help="the small unaligned model (implicit-reward modes)")
    parser.add_argument("--mode", choices=MODES, default="kad-spec")
    parser.add_argument("--rule", choices=RULES, help="the deferral rule of the kad modes (default: dual)")
    parser.add_argument("--lam", type=float, default=0.4, help="the rule's parameter: λ, μ or the primal budget")
    parser.add_argument("--gamma", type=int, default=4, help="drafts per speculative round (default 4)")
    parser.add_argument("--temperature", type=float, default=1.0, help="0 = greedy (default 1)")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--seed", type=int, help="fixes every random draw")
    parser.add_argument("--no-chat", dest="chat", action="store_false", help="raw prompts, without the chat template")
    parser.add_argument("--system", default=SYSTEM_PROMPT, help="system message of the chat template ('' for none)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"))
    parser.add_argument("--prompt", action="append", required=True, help="repeat for a batch (one prompt is streamed)")
    parser.set_defaults(run=run_generate)


def run_generate(args: argparse.Namespace) -> int:
    rule = build_rule(args.mode, args.rule, args.lam)
    dtype = args.dtype if args.dtype == "auto" else getattr(torch, args.dtype)
    decoder = Decoder.from_pretrained(args.base, args.aligned, args.reference, device=args.device, dtype=dtype)
    single = len(args.prompt) == 1
    streamer = TextStreamer(decoder.tokenizer, skip_prompt=True, skip_special_tokens=True) if single else None
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
    if not single:
        for i, text in enumerate(out.texts):
            print(f"[{i}] {text}")
    print(f"\n-- {args.mode}" + (f", {rule!r}" if rule else "") + f", {decoder.device}")
    print(out.stats.summary())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kad", description="KAD decoding on Hugging Face causal LMs.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_generate(subparsers)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except ValueError as error:  # bad arguments found past argparse: rule parameters, gamma, tokenizers
        parser.error(str(error))


if __name__ == "__main__":
    sys.exit(main())
