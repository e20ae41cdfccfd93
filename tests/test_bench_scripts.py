"""The GPU benchmark script runs end to end on the CPU.

``benchmarks/gpu_check.sh`` spends scarce GPU minutes on ``bench_kernels.py``; a script
broken by an API change would waste them.  Here it runs on a tiny grid on the CPU
(its CPU timer is there for this), with the torch.compile column, and its CSV must
hold every row, no error and no token that differs from the eager reference.
"""

from __future__ import annotations

import csv
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import kad_kernels as kk

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = ["torch", "torch-compile", *(["cpu"] if "cpu" in kk.available_backends() else [])]


def test_bench_kernels_writes_every_row_with_the_reference_tokens(tmp_path):
    args = [sys.executable, str(ROOT / "benchmarks" / "bench_kernels.py"), "--device", "cpu",
            "--backends", ",".join(BACKENDS), "--ops", "sample,verify", "--rules", "dual,primal", "--batch", "3",
            "--vocab", "1001", "--dtypes", "bf16", "--min-run-time", "0.01", "--out-dir", str(tmp_path)]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    with open(tmp_path / "bench_kernels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted((r["op"], r["rule"], r["backend"]) for r in rows) == sorted(
        (op, rule, backend) for op in ("sample", "verify") for rule in ("dual", "primal") for backend in BACKENDS
    )
    for row in rows:
        assert row["error"] == "", row
        assert float(row["median_us"]) > 0 and float(row["gbps"]) > 0, row
        assert row["mismatch_rows"] in ("", "0"), row  # empty for eager torch itself
    assert (tmp_path / "bench_kernels.md").is_file()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is there to benchmark")
@pytest.mark.parametrize("script", ["bench_kernels.py", "bench_decoding.py"])
@pytest.mark.parametrize("device, says", [("cuda", "sees no CUDA GPU on this machine"), ("gpu", "Expected one of")])
def test_a_device_this_machine_lacks_is_named_in_one_line(script, device, says):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--device", device], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1].startswith(f"--device {device if device == 'cuda' else repr(device)}: ")
    assert says in done.stderr


@pytest.mark.parametrize("python, says", [("/nonexistent/python", "cannot run it"), (sys.executable, "cannot import vllm")])
def test_bench_remote_checks_its_vllm_python_before_the_models_load(python, says):
    if says == "cannot import vllm" and importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is importable here")
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_remote.py"), "--python", python], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == f"bench_remote.py: error: --python {python}: " + (
        "cannot run it (No such file or directory)" if says == "cannot run it" else
        "cannot import vllm (ModuleNotFoundError: No module named 'vllm')"
    )  # fmt: skip
