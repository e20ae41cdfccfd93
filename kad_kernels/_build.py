"""How the C++/CUDA extension of ``csrc/`` is compiled: one list of sources and flags
shared by ``setup.py`` (install-time build) and :mod:`kad_kernels._native` (JIT build
on first use).  Imported by file path from ``setup.py``, so it needs torch only.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from torch.utils import cpp_extension

NAME = "kad_kernels._C"
# The sources: a wheel's copy inside the package (setup.py's BuildPy), else the checkout's.
_PACKAGE = Path(__file__).resolve().parent
CSRC = _PACKAGE / "csrc" if (_PACKAGE / "csrc").is_dir() else _PACKAGE.parent / "csrc"

# -march=native: the CPU kernels rely on the auto-vectorizer, and the extension is
# built on the machine that runs it (from source, at install or on first use).
# -ffp-contract=off: no fused multiply-adds the reference's separate roundings lack.
# -fno-trapping-math: lets GCC vectorize the float->int step of the exp polynomial
# (nothing here reads the floating-point exception flags).
# -fopenmp: at::parallel_for is an inline OpenMP region in torch's headers.
# The C++ standard is torch's own (-std=c++20 since torch 2.10, added by cpp_extension).
CXX_FLAGS = ["-O3", "-march=native", "-ffp-contract=off", "-fno-trapping-math", "-fopenmp"]
LD_FLAGS = ["-fopenmp"]
# sm_80 (A100) and sm_90 (H100/H200), PTX of sm_90 for newer GPUs — unless
# TORCH_CUDA_ARCH_LIST names the targets, which torch's cpp_extension then turns into
# flags (e.g. "9.0" to build for the H100 at hand only).  --threads 0: nvcc compiles
# the targets of a file in parallel (a file's targets otherwise run one after another,
# and verify.cu dominates the build).
ARCH_FLAGS = [
    "-gencode=arch=compute_80,code=sm_80",
    "-gencode=arch=compute_90,code=sm_90",
    "-gencode=arch=compute_90,code=compute_90",
]
NVCC_FLAGS = ["-O3", "--threads", "0", "-DKAD_WITH_CUDA"] + ([] if os.environ.get("TORCH_CUDA_ARCH_LIST") else ARCH_FLAGS)


def with_cuda() -> bool:
    """Build the CUDA kernels: torch is a CUDA build and nvcc is found."""
    return torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None and bool(cuda_sources())


def cuda_sources() -> list[Path]:
    return sorted((CSRC / "cuda").glob("*.cu"))


def sources(cuda: bool) -> list[Path]:
    cpu = [CSRC / "ops.cpp", *sorted((CSRC / "cpu").glob("*.cpp"))]
    return cpu + (cuda_sources() if cuda else [])


def has_compiler() -> bool:
    return shutil.which("c++") is not None or shutil.which("g++") is not None


def extension_kwargs(cuda: bool) -> dict:
    """Keyword arguments of ``CppExtension``/``CUDAExtension`` (``cuda``: with the CUDA
    kernels) and of ``cpp_extension.load``."""
    return dict(
        sources=[str(s) for s in sources(cuda)],
        include_dirs=[str(CSRC)],
        extra_compile_args={"cxx": CXX_FLAGS + (["-DKAD_WITH_CUDA"] if cuda else []), "nvcc": NVCC_FLAGS},
        extra_link_args=LD_FLAGS,
    )
