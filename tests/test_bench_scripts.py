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
from kad import default_pair

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


def run_script(script: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], cwd=ROOT,
                          env=dict(os.environ, COLUMNS="200", **env), capture_output=True, text=True,
                          timeout=300)  # fmt: skip


def bench_python(code: str) -> str:
    """What ``code`` prints, run with the benchmarks' modules importable (in a process of its
    own: their names, ``options`` and the like, stay out of this one)."""
    done = subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, sys.argv[1])\n{code}",
                           str(ROOT / "benchmarks")], cwd=ROOT, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


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
    ("kernel_resources.py", ["--vocab", "0"], "argument --vocab: '0' is not a whole number >= 1"),
    ("kernel_resources.py", ["--vocab", "-5"], "argument --vocab: '-5' is not a whole number >= 1"),
    ("kernel_resources.py", ["--gamma", "0"], "argument --gamma: '0' is not a whole number >= 1"),
    ("bench_hf.py", ["--profile", "foo"],
     "argument --profile: unknown 'foo'; choose from assisted, assisted-default, kad-hf, kad-decoder, plain"),
    ("bench_hf.py", ["--prompts", "0"], "argument --prompts: '0' is not a whole number >= 1"),
    ("bench_hf.py", ["--gamma", "0"], "argument --gamma: '0' is not a whole number >= 1"),
    ("bench_hf.py", ["--new-tokens", "0"], "argument --new-tokens: '0' is not a whole number >= 1"),
    ("bench_hf.py", ["--lam", "2"], "--lam 2: lam must lie in [0.0, 1.0], got 2.0"),
    ("bench_hf.py", ["--repeats", "-1"], "--repeats -1: timed runs per prompt must be >= 1 (0 only with --profile or --check-counting)"),
    ("bench_hf.py", ["--repeats", "0"], "--repeats 0: timed runs per prompt must be >= 1 (0 only with --profile or --check-counting)"),
    ("bench_hf.py", ["--temperature", "-1"],
     f"argument --temperature: '-1': a temperature must be {kk.TEMPERATURE_RANGE}"),
    ("bench_llamacpp.py", ["--lam", "2"], "--lam 2: lam must lie in [0.0, 1.0], got 2.0"),
    ("bench_kernels.py", ["--batch", "x"], "argument --batch: 'x' is not a whole number >= 1"),
    ("bench_kernels.py", ["--batch", "1,0"], "argument --batch: '0' is not a whole number >= 1"),
    ("bench_kernels.py", ["--batch", "-1"], "argument --batch: '-1' is not a whole number >= 1"),
    ("bench_kernels.py", ["--vocab", "0"], "argument --vocab: '0' is not a whole number >= 1"),
    ("bench_kernels.py", ["--max-seconds", "-1"], "--max-seconds -1: must be >= 0 (0 = no limit)"),
    ("bench_decoding.py", ["--lam", "2"], "--lam 2: lam must lie in [0.0, 1.0], got 2.0"),
    ("bench_decoding.py", ["--rule", "primal", "--lam", "-1"], "--lam -1: budget must lie in [0.0, inf], got -1.0"),
    ("bench_decoding.py", ["--temperature", "-1"],
     f"argument --temperature: '-1': a temperature must be {kk.TEMPERATURE_RANGE}"),
    ("bench_decoding.py", ["--base", "/nonexistent", "--aligned", "/nonexistent"],
     "--base/--aligned: model '/nonexistent': no such directory"),
    ("bench_decoding.py", ["--base", "/nonexistent", "--aligned", "/nonexistent", "--scale", "0.5"],
     "--scale: only for the random models, not with --base/--aligned"),
    ("bench_decoding.py", ["--base", "/nonexistent", "--aligned", "/nonexistent", "--sharpen", "1", "--scale", "1"],
     "--scale and --sharpen: only for the random models, not with --base/--aligned"),
])  # fmt: skip
def test_a_bad_option_is_refused_in_one_line_before_the_run(script, args, says, tmp_path):
    if script == "kernel_resources.py" and importlib.util.find_spec("triton") is None:
        pytest.skip("kernel_resources.py compiles with triton")
    # An empty model cache and output folder: a check that came too late would fail there, not run for hours.
    out = {"bench_hf.py": ["--out", str(tmp_path / "out")], "bench_llamacpp.py": ["--out", str(tmp_path / "out")],
           "bench_kernels.py": ["--out-dir", str(tmp_path / "out")]}.get(script, [])  # fmt: skip
    done = run_script(script, *args, *out, KAD_CACHE=str(tmp_path / "cache"))
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1] == f"{script}: error: {says}"


@pytest.mark.parametrize("script, flag", [("bench_hf.py", "--out"), ("bench_llamacpp.py", "--out"),
                                          ("bench_kernels.py", "--out-dir")])  # fmt: skip
@pytest.mark.parametrize("where, says", [("a-file", "not a folder"), ("a-file/below", "Not a directory")])
def test_an_output_folder_that_cannot_be_written_is_refused_before_the_run(script, flag, where, says, tmp_path):
    """Results are written after the run: a folder that cannot take them would lose the timings."""
    (tmp_path / "a-file").write_text("")
    done = run_script(script, flag, str(tmp_path / where), KAD_CACHE=str(tmp_path / "cache"))
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1] == f"{script}: error: {flag} {tmp_path / where}: {says}"


@pytest.mark.parametrize("script, args", [("bench_hf.py", []), ("bench_llamacpp.py", ["--engines", "torch"])])
def test_the_default_pair_missing_is_said_in_one_line_as_kad_says_it(script, args, tmp_path):
    if importlib.util.find_spec(default_pair.BASE.distributions[0].replace("-", "_")) is not None:
        pytest.skip("the default pair's packages are installed: the benchmark would run")
    done = run_script(script, *args, "--out", str(tmp_path / "out"), KAD_CACHE=str(tmp_path / "cache"))
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"{script}: the default model {default_pair.BASE.name} is shipped as "), last
    assert f"are not installed. Install them with:  {default_pair.INSTALL_COMMAND}" in last, last
    assert "--base/--aligned" not in done.stderr  # kad's hint: these scripts have no such options


def test_bench_cpu_kernels_names_the_install_of_pytest_benchmark():
    if importlib.util.find_spec("pytest_benchmark") is not None:
        pytest.skip("pytest-benchmark is installed")
    done = run_script("bench_cpu_kernels.py", "-k", "B1-")
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1] == (
        "bench_cpu_kernels.py: error: needs pytest-benchmark: pip install -e '.[bench]'"
    )
    extra = [line for line in (ROOT / "pyproject.toml").read_text().splitlines() if line.startswith("bench = [")]
    assert len(extra) == 1 and '"pytest-benchmark' in extra[0], extra  # the extra the message names has it


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="kernel_resources.py compiles with triton")
def test_kernel_resources_refuses_the_triton_interpreter():
    """Under TRITON_INTERPRET no launch compiles: the table would be empty, and the exit 0."""
    done = run_script("kernel_resources.py", "--batch", "1", "--ops", "sample", "--rules", "dual",
                      TRITON_INTERPRET="1")  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1].startswith("kernel_resources.py: error: TRITON_INTERPRET is set: ")
    assert "| sample |" not in done.stdout


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="the triton backend needs triton")
def test_bench_kernels_says_when_its_triton_rows_time_the_interpreter(tmp_path):
    done = run_script("bench_kernels.py", "--device", "cpu", "--backends", "triton", "--ops", "sample", "--rules",
                      "dual", "--batch", "1", "--vocab", "64", "--dtypes", "fp32", "--min-run-time", "0.01",
                      "--out-dir", str(tmp_path), TRITON_INTERPRET="1")  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    header = (tmp_path / "bench_kernels.md").read_text().splitlines()[0]
    assert header.endswith(" | TRITON_INTERPRET: triton rows are interpreter times"), header
    with open(tmp_path / "bench_kernels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [row["backend"] for row in rows] == ["triton"]  # the CSV's schema and labels as without it


@pytest.mark.parametrize("name, peak", [("NVIDIA H200", 4800.0), ("NVIDIA H100 80GB HBM3", 3350.0),
                                        ("NVIDIA H100 SXM5 80GB", 3350.0), ("NVIDIA GH200 480GB", None),
                                        ("NVIDIA H100 PCIe", None)])  # fmt: skip
def test_bench_kernels_takes_a_gpus_peak_from_its_name(name, peak):
    """A GH200 is no H200: its %-of-peak is left out rather than taken against another memory."""
    code = ("from types import SimpleNamespace as N; from bench_kernels import default_peak_gbs\n"
            f"cuda = N(get_device_name=lambda device: {name!r})\n"
            "print(default_peak_gbs(N(cuda=cuda), N(type='cuda')))")  # fmt: skip
    assert bench_python(code).strip() == str(peak)


def test_bench_llamacpp_names_the_threads_each_engine_ran_with():
    code = ("import torch; from types import SimpleNamespace as N; from bench_llamacpp import threads\n"
            "torch.set_num_threads(2)\n"
            "print(threads(N(engines={'base': N(n_threads=3)})))\n"
            "print(threads(N(engines={'base': N()})))")  # fmt: skip
    assert bench_python(code).splitlines() == ["3 llama.cpp threads, 2 torch threads", "2 torch threads"]


def test_bench_decoding_says_how_many_layers_its_random_models_have():
    code = ("from argparse import Namespace as N; from bench_decoding import models_line\n"
            "print(models_line(N(base=None, aligned=None, scale=0.1, sharpen=1.0)))\n"
            "print(models_line(N(base=None, aligned=None, scale=0.001, sharpen=2.0)))\n"
            "print(models_line(N(base='b', aligned='a', scale=1.0, sharpen=1.0)))")  # fmt: skip
    assert bench_python(code).splitlines() == [
        "random Qwen2.5-1.5B / 0.5B shapes, 3 / 2 layers (--scale 0.1), sharpen 1",
        "random Qwen2.5-1.5B / 0.5B shapes, 1 / 1 layers (--scale 0.001), sharpen 2",
        "b / a",
    ]


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
