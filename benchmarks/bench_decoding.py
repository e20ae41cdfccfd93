#!/usr/bin/env python
"""Tokens/s of the decoding loop: ``base``, ``kad`` and ``kad-spec`` (γ = 2, 4, 6).

    python benchmarks/bench_decoding.py                  # GPU: batch 1 and 16, bf16
    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_decoding.py --dtype bfloat16 --batch-sizes 1,4 --new-tokens 32
                                                         # CPU (the run of RESULTS.md)

Models: random weights, shaped like Qwen2.5-1.5B (base) and Qwen2.5-0.5B
(aligned), vocabulary 151936; ``--scale`` keeps that fraction of each model's
layers (widths and vocabulary unchanged) for machines where the full models are
too slow.  ``--base``/``--aligned`` take real models (hub id or path) instead.

Random-weight models have nearly uniform next-token distributions: every token
has ``p_v < λ``, so the dual rule defers everything, π = q, and every draft is
accepted.  That is the best case of speculation.  ``--sharpen S`` multiplies
the logits of the random models by S (through their final norm): their
distributions become peaked and, the two models being unrelated, disagree; the
acceptance rate falls towards what two unrelated models give, a bad case.  Real
base/instruct pairs lie in between; the acceptance rate is printed with every
row.

Each configuration generates ``--new-tokens`` tokens per row (stop tokens
ignored) from random prompts of ``--prompt-len`` tokens, after one short
warm-up generation, ``--repeats`` times with the same seed; the fastest run
counts (the others measure the machine's noise).  Tokens/s counts the new
tokens of all rows over the wall time of ``generate`` (prefill included), with
``track_alpha=False`` (the α statistics cost one extra mixture per step and
are not part of decoding).  On a CPU shared with other jobs, wall time
measures the neighbours as much as the loop: tokens per CPU-second of this
process (``tok/cpu-s``, all its threads; run with ``OMP_WAIT_POLICY=PASSIVE``
so that idle OpenMP threads do not spin) is the steadier figure there.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, models
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

import kad
import kad_kernels as kk

from bench_kernels import checked_device  # benchmarks/ is not a package: its scripts import each other
from options import checked_rule, count, counts, temperature, writable_file
from provenance import cpu_name, kad_commit

# Public config.json values of Qwen2.5-1.5B and Qwen2.5-0.5B(-Instruct).
QWEN25_1_5B = dict(
    hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2
)
QWEN25_0_5B = dict(
    hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2
)
VOCAB = 151936
RULES = {"dual": kk.Dual, "primal": kk.Primal, "nudging": kk.Nudging}
RANDOM_ONLY = {"scale": 1.0, "sharpen": 1.0}  # the options of the random models, and their defaults


def layers(shape: dict, scale: float) -> int:
    """The layers a random model keeps at ``--scale``: at least one."""
    return max(1, round(shape["num_hidden_layers"] * scale))


def models_line(args: argparse.Namespace) -> str:
    """What the header says of the models: the layers the random ones actually have."""
    if args.base:
        return f"{args.base} / {args.aligned}"
    base, aligned = layers(QWEN25_1_5B, args.scale), layers(QWEN25_0_5B, args.scale)
    return (f"random Qwen2.5-1.5B / 0.5B shapes, {base} / {aligned} layers (--scale {args.scale:g}), "
            f"sharpen {args.sharpen:g}")  # fmt: skip


def random_model(shape: dict, scale: float, sharpen: float, dtype: torch.dtype, device: torch.device, seed: int):
    torch.manual_seed(seed)
    config = Qwen2Config(
        **{**shape, "num_hidden_layers": layers(shape, scale)},
        vocab_size=VOCAB,
        tie_word_embeddings=True,
        rope_theta=1_000_000.0,
        rms_norm_eps=1e-6,
        eos_token_id=None,
        bos_token_id=None,
    )
    with torch.device(device):
        model = Qwen2ForCausalLM(config).to(dtype)
    with torch.no_grad():
        model.model.norm.weight.mul_(sharpen)  # logits scale with the final norm's weight
    return model.eval()


def placeholder_tokenizer(vocab: int) -> PreTrainedTokenizerFast:
    """A tokenizer of ``vocab`` tokens ``<0>``, ``<1>``, ...: the random models need one for
    the Decoder's vocabulary size; prompts are given as token ids."""
    words = models.WordLevel({f"<{i}>": i for i in range(vocab)}, unk_token="<0>")
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(words))


def build_decoder(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> kad.Decoder:
    if args.base:
        decoder = kad.Decoder.from_pretrained(args.base, args.aligned, device=device, dtype=dtype)
    else:
        base = random_model(QWEN25_1_5B, args.scale, args.sharpen, dtype, device, seed=0)
        aligned = random_model(QWEN25_0_5B, args.scale, args.sharpen, dtype, device, seed=1)
        decoder = kad.Decoder(base, aligned, placeholder_tokenizer(VOCAB))
    decoder.stop_ids = frozenset()  # every row generates exactly --new-tokens tokens
    return decoder


def measure(
    decoder: kad.Decoder, prompts: list[list[int]], mode: str, rule, gamma: int, args
) -> tuple[kad.GenerationStats, float]:
    """The statistics of the fastest of ``--repeats`` generations (same seed), after a
    short warm-up, and the best new tokens per CPU-second of this process."""
    kwargs = dict(gamma=gamma, temperature=args.temperature, track_alpha=False)
    decoder.generate(prompts, mode, rule, max_new_tokens=min(8, args.new_tokens), seed=0, **kwargs)
    fastest, per_cpu_s = None, 0.0
    for _ in range(args.repeats):
        cpu_start = time.process_time()
        stats = decoder.generate(prompts, mode, rule, max_new_tokens=args.new_tokens, seed=1, **kwargs).stats
        per_cpu_s = max(per_cpu_s, stats.new_tokens / (time.process_time() - cpu_start))
        if fastest is None or stats.tokens_per_s > fastest.tokens_per_s:
            fastest = stats
    return fastest, per_cpu_s


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), help="default: bf16 (CUDA), fp32 (CPU)")
    parser.add_argument("--batch-sizes", type=counts, default=None,
                        help="comma-separated (default: 1,16 on CUDA, 1 on CPU)")  # fmt: skip
    parser.add_argument("--gammas", type=counts, default="2,4,6")
    parser.add_argument("--new-tokens", type=count, default=128)
    parser.add_argument("--prompt-len", type=count, default=32)
    parser.add_argument("--repeats", type=count, default=2, help="timed runs per configuration; the fastest counts")
    parser.add_argument("--rule", default="dual", choices=("dual", "primal", "nudging"))
    parser.add_argument("--lam", type=float, default=0.4, help="λ (dual, nudging) or budget (primal)")
    parser.add_argument("--temperature", type=temperature, default=1.0, help="0 = greedy")
    # default None: given or not is told apart, as real models take neither
    parser.add_argument("--scale", type=float, help="fraction of the layers kept (random models; default 1)")
    parser.add_argument("--sharpen", type=float, help="logit multiplier of the random models (default 1)")
    parser.add_argument("--base", help="a real base model instead of the random one (needs --aligned)")
    parser.add_argument("--aligned", help="a real aligned model")
    parser.add_argument("--csv", type=Path, help="also write the rows to this CSV file")
    args = parser.parse_args(argv)
    if bool(args.base) != bool(args.aligned):
        parser.error("--base and --aligned go together")
    given = [f"--{name}" for name in RANDOM_ONLY if getattr(args, name) is not None]
    if args.base and given:
        parser.error(f"{' and '.join(given)}: only for the random models, not with --base/--aligned")
    for name, default in RANDOM_ONLY.items():
        setattr(args, name, default if getattr(args, name) is None else getattr(args, name))
    if not args.scale > 0:
        parser.error(f"--scale {args.scale:g}: must be > 0 (a fraction of the layers)")
    rule = checked_rule(parser, RULES[args.rule], args.lam)  # λ, or primal's budget: before the models
    if args.csv:
        writable_file(parser, "--csv", args.csv)

    device = checked_device(torch, args.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    batch_sizes = args.batch_sizes or ([1, 16] if device.type == "cuda" else [1])

    threads = f"{torch.get_num_threads()} threads"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU {cpu_name()}, {threads}"
    print(f"# device: {name}; torch {torch.__version__}; kad {kad_commit()}; "
          f"kernel backends: {', '.join(kk.available_backends())} (auto)")
    print(f"# models: {models_line(args)}; {dtype}")
    print(f"# rule {rule!r}; T = {args.temperature}")
    print(f"# prompts of {args.prompt_len} tokens, {args.new_tokens} new tokens per row")
    try:
        decoder = build_decoder(args, device, dtype)
    except ValueError as error:  # ModelLoadError (no such model), tokenizers that differ: the options' fault
        if not args.base:
            raise
        parser.error(f"--base/--aligned: {error}")

    generator = torch.Generator().manual_seed(0)
    rows = []
    print(f"{'B':>3} {'mode':<8} {'γ':>2} {'tok/s':>7} {'tok/cpu-s':>9} {'accept':>6} {'tok/round':>9} "
          f"{'×kad':>5} {'×kad cpu':>8} {'×base':>5}")  # fmt: skip
    for batch in batch_sizes:
        prompts = torch.randint(decoder.vocab_size, (batch, args.prompt_len), generator=generator).tolist()
        runs = [("base", None, 1), ("kad", rule, 1)] + [("kad-spec", rule, g) for g in args.gammas]
        speed, cpu_speed = {}, {}
        for mode, mode_rule, gamma in runs:
            start = time.perf_counter()
            stats, per_cpu_s = measure(decoder, prompts, mode, mode_rule, gamma, args)
            if mode != "kad-spec":
                speed[mode], cpu_speed[mode] = stats.tokens_per_s, per_cpu_s
            nan = float("nan")
            row = dict(
                device=name, batch=batch, mode=mode, gamma=gamma if mode == "kad-spec" else "",
                tokens_per_s=stats.tokens_per_s, tokens_per_cpu_s=per_cpu_s, acceptance_rate=stats.acceptance_rate,
                mean_accepted_length=stats.mean_accepted_length,
                vs_kad=stats.tokens_per_s / speed["kad"] if "kad" in speed else nan,
                vs_kad_cpu=per_cpu_s / cpu_speed["kad"] if "kad" in cpu_speed else nan,
                vs_base=stats.tokens_per_s / speed["base"],
            )  # fmt: skip
            rows.append(row)
            print(
                f"{batch:>3} {mode:<8} {row['gamma']!s:>2} {stats.tokens_per_s:>7.2f} {per_cpu_s:>9.2f} "
                f"{stats.acceptance_rate:>6.3f} {stats.mean_accepted_length:>9.2f} {row['vs_kad']:>5.2f} "
                f"{row['vs_kad_cpu']:>8.2f} {row['vs_base']:>5.2f}   ({time.perf_counter() - start:.0f} s)",
                flush=True,
            )
    if args.csv:
        with args.csv.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
