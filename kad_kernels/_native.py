"""The ``cpu`` and ``cuda`` backends: the C++/CUDA kernels of ``csrc/`` (docs/design.md §3.4).

The extension ``kad_kernels._C`` is compiled by ``setup.py`` when torch is
importable at install time (``pip install --no-build-isolation``), otherwise
here, with ninja, on first use (about a minute; cached by torch in
``~/.cache/torch_extensions``, one directory per checkout).  Its ops ``torch.ops.kad.native_*`` dispatch on
the tensors' device; the fake implementations below let ``torch.compile``
trace them.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import os
import sys
import types
import warnings
from collections.abc import Iterator

import torch
from torch import Tensor

from . import _fake
from ._backend import Backend, FunctionBackend, value_args
from .rules import Kind, Param


# Why the extension has no CUDA kernels, when it could have had them (cuda_backend's error).
_cuda_left_out = ""


@contextlib.contextmanager
def _own_ninja_first() -> Iterator[None]:
    """PATH with the ninja of this environment (a dependency) first, while building: each
    ninja version keeps its own build log, so a run with another ninja on PATH (the
    system's, from a venv not activated) rebuilt the whole extension."""
    try:
        import ninja

        own = ninja.BIN_DIR
    except (ImportError, AttributeError):
        own = ""
    if not own or not os.path.isfile(os.path.join(own, "ninja")):  # "" would put the cwd first
        yield
        return
    path = os.environ.get("PATH")
    os.environ["PATH"] = os.pathsep.join([own, path]) if path else own
    try:
        yield
    finally:
        if path is None:
            del os.environ["PATH"]
        else:
            os.environ["PATH"] = path


def _build_name(cuda: bool) -> str:
    """The extension's name for ``cpp_extension.load``, which names its build directory: one
    per checkout (two checkouts sharing one would rebuild over each other) and per variant
    (the cpu-only fallback must not replace a full build)."""
    from . import _build

    checkout = hashlib.sha1(str(_build.CSRC).encode()).hexdigest()[:8]
    return f"{_build.NAME.replace('.', '_')}_{checkout}{'' if cuda else '_cpu'}"


def _build_directory(name: str) -> str | None:
    """torch's build directory of the extension ``name`` (made if missing); ``None`` should
    torch's private helper for it change or fail."""
    from torch.utils import cpp_extension

    try:
        return cpp_extension._get_build_directory(name, verbose=False)
    except Exception:
        return None


def _built_before(cuda: bool) -> bool:
    """A library of this variant is in torch's build directory: loading takes seconds (ninja
    rebuilds only what changed), not the first build's minute (unknown: the first-build note is shown)."""
    name = _build_name(cuda)
    directory = _build_directory(name)
    return directory is not None and os.path.isfile(os.path.join(directory, f"{name}.so"))


@contextlib.contextmanager
def _exclusive_build(name: str) -> Iterator[None]:
    """Holds an ``flock`` of the build directory of ``name`` while torch builds there, and
    removes torch's own lock file if one is left: torch waits for that file to go, forever,
    and a build that was killed (Ctrl-C, a CI timeout, OOM) leaves it, so every later
    import hung without a word.  The flock dies with its process; while this process holds
    it no other kad build runs there, so a lock file found then is stale."""
    fcntl: types.ModuleType | None
    try:
        import fcntl
    except ImportError:  # no flock (Windows): torch's own locking alone
        fcntl = None
    directory = _build_directory(name)
    if fcntl is None or directory is None:
        yield
        return
    with open(os.path.join(directory, "kad-build.flock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # another process's build: wait for it (it ends or dies)
        stale = os.path.join(directory, "lock")  # torch's FileBaton
        if os.path.exists(stale):
            print(f"kad_kernels: removing {stale}, left by a build that was interrupted", file=sys.stderr, flush=True)
            with contextlib.suppress(FileNotFoundError):
                os.remove(stale)
        yield


def _load(cuda: bool) -> types.ModuleType:
    """``cpp_extension.load`` of the sources, with (``cuda``) or without the CUDA kernels."""
    from torch.utils import cpp_extension

    from . import _build

    kwargs = _build.extension_kwargs(cuda)
    if not _built_before(cuda):
        print("kad_kernels: compiling the C++ extension with ninja (first use: about a minute) ...", file=sys.stderr,
              flush=True)  # fmt: skip
    with _own_ninja_first(), _exclusive_build(_build_name(cuda)):
        return cpp_extension.load(
            name=_build_name(cuda),
            sources=kwargs["sources"],
            extra_include_paths=kwargs["include_dirs"],
            extra_cflags=kwargs["extra_compile_args"]["cxx"],
            extra_cuda_cflags=kwargs["extra_compile_args"]["nvcc"],
            extra_ldflags=kwargs["extra_link_args"],
            with_cuda=cuda,
        )


def _jit_build() -> types.ModuleType:
    """Build on first use.  A failed CUDA build falls back to the cpu kernels alone, so
    that a CUDA toolkit at odds with torch's (another major version, or a torch whose
    build cannot target the GPUs) costs the ``cuda`` backend only.  Torch's build
    machinery fails in several exception types (RuntimeError, OSError, SystemExit,
    and IndexError from torch 2.8's arch detection), so all are caught."""
    from . import _build  # torch's cpp_extension: imported only when there is something to build

    global _cuda_left_out
    if not _build.has_compiler():
        raise ImportError("no C++ compiler found: install g++ (or clang) to build the cpu/cuda backends")
    cuda = _build.with_cuda()
    if cuda and not torch.cuda.is_available():
        # Kernels no GPU here can run: nvcc would take minutes for nothing.
        cuda, _cuda_left_out = False, "torch sees no GPU, so the on-first-use build left the CUDA kernels out"
    if cuda:
        try:
            return _load(cuda=True)
        except (Exception, SystemExit) as exc:
            _cuda_left_out = f"building the CUDA kernels failed: {exc}"
            warnings.warn(f"kad_kernels: {_cuda_left_out}; building the cpu kernels alone", stacklevel=2)
    try:
        return _load(cuda=False)
    except (Exception, SystemExit) as exc:
        raise ImportError(f"building the kad_kernels C++ extension failed: {exc}") from exc


def _extension() -> types.ModuleType:
    try:
        return importlib.import_module("kad_kernels._C")
    except ImportError:
        return _jit_build()


_C = _extension()


torch.library.register_fake("kad::native_mixture")(_fake.mixture)
torch.library.register_fake("kad::native_sample")(_fake.sample)
torch.library.register_fake("kad::native_verify")(_fake.verify)


# Signatures as _backend's MixtureFn, SampleFn and VerifyFn, parameter names and defaults included (the protocols
# FunctionBackend's fields are typed with).
def _mixture(
    kind: Kind, param: Param, p: Tensor, q: Tensor, ref: Tensor | None, temperature: Param
) -> tuple[Tensor, Tensor, Tensor]:
    return torch.ops.kad.native_mixture(int(kind), *value_args(param), p, q, ref, *value_args(temperature))


def _sample(
    kind: Kind, param: Param, p: Tensor, q: Tensor, ref: Tensor | None, temperature: Param, uniforms: Tensor | None,
    seed: Tensor | None = None, offset: Tensor | None = None, maybe_greedy: bool = True,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    return torch.ops.kad.native_sample(
        int(kind), *value_args(param), p, q, ref, *value_args(temperature), uniforms, seed, offset
    )


def _verify(
    kind: Kind, param: Param, p: Tensor, q: Tensor, ref: Tensor | None, draft: Tensor, temperature: Param,
    accept_uniforms: Tensor | None, draw_uniforms: Tensor | None, seed: Tensor | None = None,
    offset: Tensor | None = None, maybe_greedy: bool = True,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    return torch.ops.kad.native_verify(
        int(kind), *value_args(param), p, q, ref, draft, *value_args(temperature), accept_uniforms, draw_uniforms,
        seed, offset,
    )


def cpu_backend() -> Backend:
    return FunctionBackend("cpu", _mixture, _sample, _verify, philox_in_kernel=True)


def cuda_backend() -> Backend:
    if not _C.with_cuda:
        raise ImportError(
            "the kad_kernels extension was built without CUDA: "
            + (_cuda_left_out or "it needs a CUDA build of torch and nvcc (CUDA_HOME)")
        )
    return FunctionBackend("cuda", _mixture, _sample, _verify, philox_in_kernel=True)
