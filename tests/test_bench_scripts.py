"""The GPU benchmark script runs end to end on the CPU; the other scripts check their options.

``benchmarks/gpu_check.sh`` spends scarce GPU minutes on ``bench_kernels.py``; a script
broken by an API change would waste them.  Here it runs on a tiny grid on the CPU
(its CPU timer is there for this), with the torch.compile column, and its CSV must
hold every row, no error and no token that differs from the eager reference.

The model benchmarks run for minutes to hours: a bad option must stop them before
they start, in one line, and their default output must not overwrite the results
committed under ``benchmarks/results/``.
"""

from __future__ import annotations

import csv
import importlib.util
import os
import shutil
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
    device, blank = (tmp_path / "bench_kernels.md").read_text().splitlines()[:2]
    assert device.startswith("device: cpu (") and f"| torch {torch.__version__} | triton " in device, device
    assert blank == ""


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


def run_script(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], cwd=ROOT,
                          env=dict(os.environ, COLUMNS="200"), capture_output=True, text=True, timeout=300)  # fmt: skip


def test_bench_llamacpp_refuses_an_unknown_engine_before_touching_its_results(tmp_path):
    (tmp_path / "bench_llamacpp.csv").write_text("the last run's rows\n")
    done = run_script("bench_llamacpp.py", "--engines", "llama.cpp,llamacpp", "--out", str(tmp_path))
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1] == (
        "bench_llamacpp.py: error: argument --engines: unknown 'llamacpp'; choose from llama.cpp, torch"
    )
    assert (tmp_path / "bench_llamacpp.csv").read_text() == "the last run's rows\n"


@pytest.mark.parametrize("script, args, says", [
    ("bench_remote.py", ["--batch-sizes", "1,x"], "argument --batch-sizes: 'x' is not a whole number >= 1"),
    ("bench_decoding.py", ["--repeats", "0"], "argument --repeats: '0' is not a whole number >= 1"),
    ("bench_decoding.py", ["--csv", "/nonexistent_dir/x.csv"],
     "--csv /nonexistent_dir/x.csv: no folder /nonexistent_dir"),
    ("kernel_resources.py", ["--ops", "sampel"], "argument --ops: unknown 'sampel'; choose from mixture, sample, verify"),
    ("kernel_resources.py", ["--rules", "dual,foo"],
     "argument --rules: unknown 'foo'; choose from dual, primal, nudging"),
])  # fmt: skip
def test_a_bad_option_is_refused_in_one_line_before_the_run(script, args, says):
    if script == "kernel_resources.py" and importlib.util.find_spec("triton") is None:
        pytest.skip("kernel_resources.py compiles with triton")
    done = run_script(script, *args)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1] == f"{script}: error: {says}"


@pytest.mark.parametrize("script, folder", [("bench_llamacpp.py", "llamacpp-cpu"), ("bench_remote.py", "remote-cpu"),
                                            ("bench_hf.py", "hf-generate-cpu")])  # fmt: skip
def test_the_model_benchmarks_write_under_the_ignored_out_folder_by_default(script, folder):
    done = run_script(script, "--help")
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"default: benchmarks/out/{folder})" in " ".join(done.stdout.split()), done.stdout
    assert "benchmarks/out/" in (ROOT / ".gitignore").read_text().splitlines()


@pytest.mark.skipif(not (ROOT / ".git").exists() or shutil.which("git") is None, reason="not a git checkout")
def test_the_commit_in_a_benchmark_header_is_the_checkouts_from_any_directory(tmp_path):
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from provenance import git; "
            "print(git('rev-parse', '--show-toplevel'))")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code, str(ROOT / "benchmarks")], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert Path(done.stdout.strip()).resolve() == ROOT.resolve()


def test_eval_default_pair_writes_into_the_checkout_from_any_directory(tmp_path):
    """The script's own location names the default folder; a folder given stays as given.
    A stand-in ``kad`` on PATH records its calls (and makes the folders ``kad eval`` would)."""
    checkout = tmp_path / "checkout"
    (checkout / "benchmarks").mkdir(parents=True)
    script = shutil.copy(ROOT / "benchmarks" / "eval_default_pair.sh", checkout / "benchmarks")
    bin_dir, elsewhere = tmp_path / "bin", tmp_path / "elsewhere"
    bin_dir.mkdir()
    elsewhere.mkdir()
    (bin_dir / "kad").write_text(
        '#!/usr/bin/env bash\necho "$@" >> "$KAD_CALLS"\n'
        'while [ $# -gt 0 ]; do [ "$1" = --out-dir ] && mkdir -p "$2"; shift; done; exit 0\n'
    )
    (bin_dir / "kad").chmod(0o755)
    for args, out in (([], checkout / "benchmarks" / "results" / "eval-default-pair"), (["mine"], Path("mine"))):
        calls = tmp_path / f"calls-{len(args)}.txt"
        env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", KAD_CALLS=str(calls))
        done = subprocess.run(["bash", str(script), *args], cwd=elsewhere, env=env, capture_output=True, text=True,
                              timeout=60)  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        lines = [line for line in calls.read_text().splitlines() if "--out-dir" in line]
        folders = {line.split("--out-dir ")[1].split()[0] for line in lines}
        assert folders == {str(out), str(out / "batch1")}
