#!/usr/bin/env python
"""Speculative KAD inside transformers' ``generate`` vs transformers' own assisted generation.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_hf.py                 # the run of RESULTS.md
    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_hf.py --prompts 1 --new-tokens 16 --repeats 1 --out /tmp/smoke

One process, the default model pair (Qwen2.5-Coder-1.5B-Instruct base p,
Qwen2.5-Coder-0.5B-Instruct aligned q*), each model loaded once, batch 1, the
same GSM8K prompts (the aligned model's chat template with kad's system
message) for every engine:

==================  ==========================================================
``assisted``        ``base.generate(assistant_model=aligned, do_sample=True,
                    top_k=0)`` with the assistant's ``num_assistant_tokens=γ``,
                    schedule ``"constant"`` and ``assistant_confidence_threshold=0``
                    (exactly γ drafts per round, as kad-spec): samples p alone,
                    aligns nothing -- the speed yardstick
``assisted-default``  the same with the assistant's generation config as users
                    get it (transformers 5.x: 20 drafts, schedule ``"constant"``,
                    drafting stops after a draft of probability < 0.4)
``kad-hf``          ``base.generate(custom_generate=kad.hf.generate,
                    aligned_model=aligned, rule=Dual(λ), gamma=γ)``: kad-spec
``kad-decoder``     ``kad.Decoder(...).generate(..., "kad-spec", Dual(λ), gamma=γ)``
                    (what ``kad generate`` runs)
``plain``           ``base.generate(do_sample=True, top_k=0)``: no speculation,
                    the floor
==================  ==========================================================

Every run generates exactly ``--new-tokens`` tokens (stop tokens do not end
generation: ``eos_token_id=[]`` in the generation config -- ``None`` would be
refilled from the model's config -- and ``Decoder.stop_ids = frozenset()``;
checked on every run).  transformers samples over all 151936 lm_head rows,
kad over the tokenizer's 151665 (the padded rows have ~0 probability; fine
for a speed yardstick).  Timing: one short warm-up generation per engine,
then ``--repeats`` runs per prompt with one seed per prompt
(``torch.manual_seed`` before each call; the Decoder also gets ``seed=``),
the engines interleaved per (prompt, repeat) in a rotating order so that the
machine's noise hits all alike.  Wall time is measured around each call
(prefill included, the same clock for every engine); ``tok/cpu-s`` counts
tokens per CPU-second of this process (``time.process_time``, all threads;
run with ``OMP_WAIT_POLICY=PASSIVE``).  Reported per engine: Σ tokens / Σ wall
time over all runs, and over the fastest repeat of each prompt ("best").

Acceptance of transformers' assisted generation (it reports none) is counted
with forward hooks on both models: in ``_assisted_decoding`` every round calls
the target once (the first call is prefill + verification), and the
assistant's ``generate`` makes one forward per draft token (its first forward
of a round consumes the tokens it has not seen and yields draft 1); the draft
count is capped at ``max_length - len - 1`` so no accepted token is cut.  So
rounds = target forwards, drafts proposed = assistant forwards, accepted =
new tokens - rounds (a round emits its accepted drafts + one token).
``--check-counting`` verifies this against transformers' own
``_speculative_sampling`` results.  kad's rows use ``GenerationStats``
(same definitions; acceptance = accepted / proposed, tokens/round = (accepted
+ rounds) / rounds).
"""

from __future__ import annotations

import argparse
import copy
import csv
import cProfile
import datetime
import hashlib
import io
import pstats
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

import kad
import kad.hf
import kad_kernels as kk
from kad import default_pair
from kad.tasks import TASKS

sys.path.insert(0, str(Path(__file__).resolve().parent))
from options import (  # noqa: E402  (benchmarks/ is not a package)
    checked_rule, count, default_pair_missing, subset, temperature, writable_folder,
)
from provenance import cpu_name, kad_commit  # noqa: E402

ENGINES = ("assisted", "assisted-default", "kad-hf", "kad-decoder", "plain")
LABELS = {
    "assisted": "transformers assisted, γ={g} constant",
    "assisted-default": "transformers assisted, default schedule",
    "kad-hf": "kad-spec via custom_generate, γ={g}",
    "kad-decoder": "kad-spec via kad.Decoder, γ={g}",
    "plain": "transformers sampling, no speculation",
}
REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "benchmarks" / "out" / "hf-generate-cpu"  # git-ignored; RESULTS.md's runs name their folder


@dataclass
class Run:
    engine: str
    prompt: int
    repeat: int
    seed: int
    prompt_tokens: int
    new_tokens: int
    wall_s: float
    cpu_s: float
    base_forwards: int
    aligned_forwards: int
    rounds: int | None  # verification rounds (None: not speculative)
    proposed: int | None
    accepted: int | None
    digest: str  # of the new tokens: repeats with one seed should agree


class ForwardCounter:
    """Counts the forward calls of each model (hooks on the top-level modules)."""

    def __init__(self, **models: torch.nn.Module):
        self.counts = dict.fromkeys(models, 0)
        for name, model in models.items():
            model.register_forward_hook(self._hook(name))

    def _hook(self, name: str):
        def hook(module, args, output):
            self.counts[name] += 1

        return hook

    def reset(self) -> None:
        self.counts = dict.fromkeys(self.counts, 0)


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        dtype = getattr(torch, args.dtype)
        base_path = str(default_pair.local_path(default_pair.BASE))
        aligned_path = str(default_pair.local_path(default_pair.ALIGNED))
        self.model_names = (Path(base_path).name, Path(aligned_path).name)
        load = dict(dtype=dtype, attn_implementation="sdpa")
        self.base = AutoModelForCausalLM.from_pretrained(base_path, **load).eval()
        self.aligned = AutoModelForCausalLM.from_pretrained(aligned_path, **load).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(aligned_path)
        base_tokenizer = AutoTokenizer.from_pretrained(base_path)
        self.vocab_size = len(self.tokenizer)
        self.rule = kk.Dual(args.lam)
        self.decoder = kad.Decoder(self.base, self.aligned, self.tokenizer, base_tokenizer=base_tokenizer)
        self.decoder.stop_ids = frozenset()  # every run generates exactly --new-tokens tokens
        self.counter = ForwardCounter(base=self.base, aligned=self.aligned)

        # The assistant's generation configs: as loaded (users' default) and γ constant drafts.
        self.assistant_default = copy.deepcopy(self.aligned.generation_config)
        self.assistant_fixed = copy.deepcopy(self.aligned.generation_config)
        self.assistant_fixed.num_assistant_tokens = args.gamma
        self.assistant_fixed.num_assistant_tokens_schedule = "constant"
        self.assistant_fixed.assistant_confidence_threshold = 0.0  # no early stop: exactly γ drafts

        task = TASKS["gsm8k"]
        self.prompts = [self.decoder.encode(task.user_message(item), chat=True) for item in task.load(args.prompts)]

    def generation_config(self, new_tokens: int, return_dict: bool = False) -> GenerationConfig:
        """Sampling at T from the full distribution (no top-k/top-p), no stop token."""
        sample = self.args.temperature > 0
        return GenerationConfig(
            do_sample=sample,
            temperature=self.args.temperature if sample else None,
            top_k=0 if sample else None,
            top_p=1.0 if sample else None,
            max_new_tokens=new_tokens,
            eos_token_id=[],  # None would be refilled from the model's generation config
            pad_token_id=self.tokenizer.pad_token_id,
            return_dict_in_generate=return_dict,
        )

    def run(self, engine: str, prompt: int, repeat: int, seed: int, new_tokens: int) -> Run:
        ids = self.prompts[prompt]
        input_ids = torch.tensor([ids])
        inputs = dict(input_ids=input_ids, attention_mask=torch.ones_like(input_ids))
        gamma, stats = self.args.gamma, None
        if engine.startswith("assisted"):
            self.aligned.generation_config = self.assistant_fixed if engine == "assisted" else self.assistant_default
        self.counter.reset()
        torch.manual_seed(seed)
        cpu0, t0 = time.process_time(), time.perf_counter()
        with torch.inference_mode():
            if engine in ("assisted", "assisted-default"):
                out = self.base.generate(**inputs, generation_config=self.generation_config(new_tokens),
                                         assistant_model=self.aligned)  # fmt: skip
            elif engine == "plain":
                out = self.base.generate(**inputs, generation_config=self.generation_config(new_tokens))
            elif engine == "kad-hf":
                result = self.base.generate(
                    **inputs, generation_config=self.generation_config(new_tokens, return_dict=True),
                    custom_generate=kad.hf.generate, aligned_model=self.aligned, rule=self.rule, gamma=gamma,
                    vocab_size=self.vocab_size, track_alpha=False,
                )  # fmt: skip
                out, stats = result.sequences, result.kad_stats
            elif engine == "kad-decoder":
                gen = self.decoder.generate(
                    [ids], "kad-spec", self.rule, gamma=gamma, temperature=self.args.temperature,
                    max_new_tokens=new_tokens, seed=seed, track_alpha=False,
                )  # fmt: skip
                out, stats = torch.tensor([ids + gen.token_ids[0]]), gen.stats
            else:
                raise ValueError(engine)
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        if engine.startswith("assisted"):
            self.aligned.generation_config = self.assistant_default
        new = out[0, len(ids) :].tolist()
        if len(new) != new_tokens:
            print(f"!! {engine} prompt {prompt}: {len(new)} new tokens, expected {new_tokens}", flush=True)
        fwd = dict(self.counter.counts)
        if stats is not None:  # kad: its own statistics (batch 1: verified rows = rounds)
            rounds, proposed, accepted = stats.verified_rows, stats.drafts_proposed, stats.drafts_accepted
        elif engine.startswith("assisted"):  # see the module doc
            rounds, proposed = fwd["base"], fwd["aligned"]
            accepted = len(new) - rounds
        else:
            rounds = proposed = accepted = None
        digest = hashlib.sha1(str(new).encode()).hexdigest()[:10]
        return Run(engine, prompt, repeat, seed, len(ids), len(new), wall, cpu, fwd["base"], fwd["aligned"],
                   rounds, proposed, accepted, digest)  # fmt: skip


def summarize(runs: list[Run], engines: list[str]) -> list[dict]:
    rows = []
    for engine in engines:
        mine = [r for r in runs if r.engine == engine]
        tokens, wall, cpu = (sum(getattr(r, k) for r in mine) for k in ("new_tokens", "wall_s", "cpu_s"))
        best = {}
        for r in mine:  # the fastest repeat of each prompt
            if r.prompt not in best or r.wall_s < best[r.prompt].wall_s:
                best[r.prompt] = r
        best_tokens, best_wall = sum(r.new_tokens for r in best.values()), sum(r.wall_s for r in best.values())
        spec = [r for r in mine if r.rounds is not None]
        nan = float("nan")
        rounds, proposed, accepted = (sum(getattr(r, k) for r in spec) for k in ("rounds", "proposed", "accepted"))
        digests = {}
        for r in mine:
            digests.setdefault(r.prompt, set()).add(r.digest)
        rows.append(
            dict(
                engine=engine,
                runs=len(mine),
                new_tokens=tokens,
                wall_s=wall,
                tokens_per_s=tokens / wall,
                tokens_per_s_best=best_tokens / best_wall,
                tokens_per_cpu_s=tokens / cpu,
                acceptance=accepted / proposed if proposed else nan,
                tokens_per_round=(accepted + rounds) / rounds if rounds else nan,
                drafts_per_round=proposed / rounds if rounds else nan,
                base_forwards_per_100_tokens=100 * sum(r.base_forwards for r in mine) / tokens,
                aligned_forwards_per_100_tokens=100 * sum(r.aligned_forwards for r in mine) / tokens,
                repeats_identical=all(len(d) == 1 for d in digests.values()),
            )
        )
    by_name = {row["engine"]: row for row in rows}
    for row in rows:
        for ref in ("assisted", "assisted-default", "plain"):
            other = by_name.get(ref)
            for key, suffix in (("tokens_per_s", ""), ("tokens_per_s_best", "_best"), ("tokens_per_cpu_s", "_cpu")):
                row[f"vs_{ref}{suffix}"] = row[key] / other[key] if other else nan
    return rows


def fmt(x: float, digits: int = 2) -> str:
    return "–" if x != x else f"{x:.{digits}f}"  # NaN -> dash


def markdown_table(rows: list[dict], gamma: int) -> str:
    head = ("| engine | tok/s | tok/s (best) | tok/cpu-s | acceptance | tokens/round | drafts/round "
            "| base / aligned fwd per 100 tok | × assisted γ={g} | × assisted γ={g} (best / cpu) "
            "| × assisted default | × plain |").format(g=gamma)  # fmt: skip
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for r in rows:
        lines.append(
            f"| {LABELS[r['engine']].format(g=gamma)} | {fmt(r['tokens_per_s'])} | {fmt(r['tokens_per_s_best'])} "
            f"| {fmt(r['tokens_per_cpu_s'])} | {fmt(r['acceptance'], 3)} | {fmt(r['tokens_per_round'])} "
            f"| {fmt(r['drafts_per_round'])} | {fmt(r['base_forwards_per_100_tokens'], 1)} / "
            f"{fmt(r['aligned_forwards_per_100_tokens'], 1)} | {fmt(r['vs_assisted'])} "
            f"| {fmt(r['vs_assisted_best'])} / {fmt(r['vs_assisted_cpu'])} | {fmt(r['vs_assisted-default'])} "
            f"| {fmt(r['vs_plain'])} |"
        )
    return "\n".join(lines)


def check_counting(bench: Bench, new_tokens: int) -> None:
    """Compare the hook counts of assisted generation with what transformers' own
    ``_speculative_sampling`` decided, and check that ``eos_token_id=[]`` runs past EOS."""
    from transformers.generation import utils as gen_utils

    original = gen_utils._speculative_sampling
    calls = []

    def recording(candidate_input_ids, candidate_logits, candidate_length, new_logits, **kwargs):
        valid, n_matches = original(candidate_input_ids, candidate_logits, candidate_length, new_logits, **kwargs)
        calls.append((int(candidate_length), int(n_matches)))
        return valid, n_matches

    gen_utils._speculative_sampling = recording
    try:
        for engine in ("assisted", "assisted-default"):
            for seed in (0, 1):
                calls.clear()
                r = bench.run(engine, 0, 0, seed, new_tokens)
                drafted, matched = sum(c for c, _ in calls), sum(m for _, m in calls)
                ok = drafted == r.proposed and matched == r.accepted and len(calls) <= r.rounds
                print(f"# check {engine} seed {seed}: hooks: rounds {r.rounds}, proposed {r.proposed}, accepted "
                      f"{r.accepted}; _speculative_sampling: {len(calls)} verifications (+{r.rounds - len(calls)} "
                      f"rounds without drafts), {drafted} drafts, {matched} accepted -> "
                      f"{'OK' if ok else 'MISMATCH'}")  # fmt: skip
    finally:
        gen_utils._speculative_sampling = original
    # EOS: a prompt that ends quickly; with the model's EOS generation stops, with eos_token_id=[] it does not.
    ids = bench.decoder.encode("Reply with the single word OK and nothing else.", chat=True)
    input_ids = torch.tensor([ids])
    for eos in ("model default", "[]"):
        config = bench.generation_config(new_tokens)
        config.do_sample = False
        config.temperature = config.top_k = config.top_p = None
        if eos == "model default":
            config.eos_token_id = None
        mask = torch.ones_like(input_ids)
        out = bench.base.generate(input_ids=input_ids, attention_mask=mask, generation_config=config)
        new = out[0, len(ids) :].tolist()
        text = bench.tokenizer.decode(new)
        print(f"# check eos_token_id={eos}: {len(new)} new tokens (budget {new_tokens}): {text!r}")


def profile(bench: Bench, engines: list[str], new_tokens: int, out_dir: Path | None) -> None:
    """cProfile one run of each engine; print where the time goes."""
    for engine in engines:
        bench.run(engine, 0, -1, bench.args.seed, min(16, new_tokens))  # warm-up
        profiler = cProfile.Profile()
        profiler.enable()
        r = bench.run(engine, 0, 0, bench.args.seed, new_tokens)
        profiler.disable()
        text = io.StringIO()
        stats = pstats.Stats(profiler, stream=text)
        stats.sort_stats("cumulative").print_stats(45)
        stats.sort_stats("tottime").print_stats(25)
        header = f"## profile {engine}: {r.new_tokens} tokens in {r.wall_s:.2f} s (under cProfile)\n"
        print(header + text.getvalue())
        if out_dir:
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / f"profile-{engine}.txt").write_text(header + text.getvalue())
            stats.dump_stats(str(out_dir / f"profile-{engine}.prof"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=count, default=4, help="GSM8K test questions (first n)")
    parser.add_argument("--new-tokens", type=count, default=128)
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per prompt and engine (0: --profile only)")
    parser.add_argument("--gamma", type=count, default=4)
    parser.add_argument("--lam", type=float, default=0.4, help="λ of the Dual rule")
    parser.add_argument("--temperature", type=temperature, default=1.0)
    parser.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16",
                        help="bf16 is faster on CPUs with AVX-512 BF16 / AMX (see RESULTS.md)")  # fmt: skip
    parser.add_argument("--engines", type=subset(*ENGINES), default=",".join(ENGINES),
                        help=f"comma-separated subset of {', '.join(ENGINES)}")
    parser.add_argument("--seed", type=int, default=0, help="prompt i runs with seed + i")
    parser.add_argument("--out", default=str(OUT),
                        help="folder for runs.csv, summary.csv, summary.md ('' : write nothing; "
                        f"default: {OUT.relative_to(REPO)})")  # fmt: skip
    parser.add_argument("--check-counting", action="store_true",
                        help="verify the assisted acceptance counting and the EOS handling, then exit")  # fmt: skip
    parser.add_argument("--profile", type=lambda text: subset(*ENGINES)(text) if text.strip() else [], default=[],
                        help="comma-separated engines to cProfile once (after a warm-up) after the timed runs; "
                        "--repeats 0: only that")
    args = parser.parse_args(argv)
    engines = args.engines
    out_dir = Path(args.out) if args.out else None
    # Every option checked here, before the models load and the runs start (they take minutes).
    if args.repeats < 0 or (args.repeats == 0 and not (args.profile or args.check_counting)):
        parser.error(f"--repeats {args.repeats}: timed runs per prompt must be >= 1 (0 only with --profile or "
                     "--check-counting)")
    checked_rule(parser, kk.Dual, args.lam)
    if out_dir and not args.check_counting:  # written after the runs: a folder that cannot take them would lose them
        writable_folder(parser, "--out", out_dir)

    start = time.perf_counter()
    try:
        bench = Bench(args)
    except default_pair.DefaultPairError as error:  # packages missing, damaged, or a cache that takes no files
        return default_pair_missing(parser.prog, error)  # one line, no traceback
    commit = kad_commit()
    header = [
        f"device: CPU {cpu_name()}, {torch.get_num_threads()} threads; torch {torch.__version__}, "
        f"transformers {transformers.__version__}; kernel backends: {', '.join(kk.available_backends())} (auto)",
        f"kad commit {commit}; models {bench.model_names[0]} (base) / {bench.model_names[1]} (aligned), "
        f"{args.dtype}, sdpa; rule {bench.rule!r}; γ = {args.gamma}; T = {args.temperature}",
        f"batch 1; {len(bench.prompts)} GSM8K prompts ({', '.join(str(len(p)) for p in bench.prompts)} tokens), "
        f"{args.new_tokens} new tokens each, no stop token; {args.repeats} repeats; warm-up 1 run per engine; "
        f"loaded in {time.perf_counter() - start:.0f} s",
    ]
    for line in header:
        print("# " + line, flush=True)

    if args.check_counting:
        check_counting(bench, args.new_tokens)
        return 0

    for engine in engines if args.repeats else []:  # warm-up
        r = bench.run(engine, 0, -1, args.seed, min(16, args.new_tokens))
        print(f"warm-up {engine:<17} {r.new_tokens} tok {r.wall_s:6.2f} s", flush=True)

    runs: list[Run] = []
    slot = 0
    for prompt in range(len(bench.prompts)):
        for repeat in range(args.repeats):
            order = engines[slot % len(engines) :] + engines[: slot % len(engines)]
            slot += 1
            for engine in order:
                r = bench.run(engine, prompt, repeat, args.seed + prompt, args.new_tokens)
                runs.append(r)
                accept = f"acc {r.accepted}/{r.proposed} in {r.rounds} rounds" if r.rounds is not None else ""
                print(f"p{prompt} r{repeat} {engine:<17} {r.new_tokens} tok {r.wall_s:6.2f} s "
                      f"{r.new_tokens / r.wall_s:6.2f} tok/s  cpu {r.cpu_s:6.2f} s  fwd {r.base_forwards}/"
                      f"{r.aligned_forwards}  {accept}  [{r.digest}]", flush=True)  # fmt: skip

    if not runs:  # --repeats 0: e.g. only --profile
        if args.profile:
            profile(bench, args.profile, args.new_tokens, out_dir)
        return 0
    rows = summarize(runs, engines)
    table = markdown_table(rows, args.gamma)
    print()
    print(table)
    print(f"\n(total {time.perf_counter() - start:.0f} s)")
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
        with (out_dir / "runs.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(asdict(runs[0])))
            writer.writeheader()
            writer.writerows(asdict(r) for r in runs)
        with (out_dir / "summary.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        command = "OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_hf.py " + " ".join(argv or sys.argv[1:])
        date = datetime.date.today().isoformat()
        text = "\n".join([f"# bench_hf.py, {date}", "", f"`{command.strip()}`", ""]
                         + [f"- {line}" for line in header] + ["", table, ""])  # fmt: skip
        (out_dir / "summary.md").write_text(text)
        print(f"wrote {out_dir}/runs.csv, summary.csv, summary.md")
    if args.profile:
        profile(bench, args.profile, args.new_tokens, out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
