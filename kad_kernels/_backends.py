"""Backend registry and dispatch (docs/design.md §3.2–§3.3).

A backend is three functions on already validated, normalized arguments
(``kind``; ``param`` and temperature each f32 ``[B]`` or one float for every row,
which costs no device tensor and so no fill launch) that also return the
per-row bad-logits flags, 2 bits per input tensor (p, q, ref).  ``sample`` and
``verify`` draw from the given uniforms; a backend with ``philox_in_kernel``
is instead handed ``seed``/``offset`` (uniforms None) to draw inside its kernels,
the others never see a seed.  Their keyword ``maybe_greedy=False`` promises that
no row is greedy (a float T > 0), so a backend may skip its arg-max pass.  New backends register a loader here;
callers never change.
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import Callable, NamedTuple

import torch
from torch import Tensor

from . import reference
from ._backend import Backend, FunctionBackend, as_rows
from ._random import philox_uniform
from .rules import Kind, Param


def philox_draws(seed: Tensor, offset: Tensor, batch: int, positions: int) -> Tensor:
    """Uniforms ``[batch, positions]`` of the counter layout documented in ``_random``."""
    counter = offset + torch.arange(batch * positions, device=offset.device)
    return philox_uniform(seed, counter).view(batch, positions)


def _flags(p: Tensor, q: Tensor, ref: Tensor | None) -> Tensor:
    flags = reference.bad_logits_flag(p) | (reference.bad_logits_flag(q) << 2)
    if ref is not None:
        flags |= reference.bad_logits_flag(ref) << 4
    return flags


def _as_tensors(param: Param, temperature: Param, p: Tensor) -> tuple[Tensor, Tensor]:
    return as_rows(param, p.shape[0], p.device), as_rows(temperature, p.shape[0], p.device)


# Signatures as _backend's MixtureFn, SampleFn and VerifyFn; the reference draws from the uniforms it is given
# (never philox_in_kernel: seed and offset stay None).
def _torch_mixture(
    kind: Kind, param: Param, p: Tensor, q: Tensor, ref: Tensor | None, temperature: Param
) -> tuple[Tensor, Tensor, Tensor]:
    param_rows, temperature_rows = _as_tensors(param, temperature, p)
    probs, alpha = reference.mixture(kind, param_rows, p, q, ref, temperature_rows)
    return probs, alpha, _flags(p, q, ref)


def _torch_sample(
    kind: Kind, param: Param, p: Tensor, q: Tensor, ref: Tensor | None, temperature: Param, uniforms: Tensor | None,
    seed: Tensor | None = None, offset: Tensor | None = None, maybe_greedy: bool = True,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    assert uniforms is not None  # not philox_in_kernel: the API draws them
    param_rows, temperature_rows = _as_tensors(param, temperature, p)
    tokens = reference.sample(kind, param_rows, p, q, ref, temperature_rows, uniforms)
    return tokens, _flags(p, q, ref)


def _torch_verify(
    kind: Kind, param: Param, p: Tensor, q: Tensor, ref: Tensor | None, draft: Tensor, temperature: Param,
    accept_uniforms: Tensor | None, draw_uniforms: Tensor | None, seed: Tensor | None = None,
    offset: Tensor | None = None, maybe_greedy: bool = True,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    assert accept_uniforms is not None and draw_uniforms is not None  # not philox_in_kernel: the API draws them
    param_rows, temperature_rows = _as_tensors(param, temperature, p)
    tokens, accepted = reference.verify(
        kind, param_rows, p, q, ref, draft, temperature_rows, accept_uniforms, draw_uniforms
    )
    flat_ref = None if ref is None else ref.flatten(0, 1)
    flags = _flags(p.flatten(0, 1), q.flatten(0, 1), flat_ref).view(p.shape[:2])
    return tokens, accepted, flags


def _load_torch() -> Backend:
    return FunctionBackend("torch", _torch_mixture, _torch_sample, _torch_verify, philox_in_kernel=False)


def _load_triton() -> Backend:
    from .triton import backend

    return backend()


# Why the C++ extension did not load: the cpu and cuda backends share one build, which
# is not tried again (a failed import leaves no module behind to say so).
_native_failure: ImportError | None = None


def _import_native() -> ModuleType:
    from . import _native  # builds the extension on first use

    return _native


def _native_module() -> ModuleType:
    global _native_failure
    if _native_failure is not None:
        raise _native_failure.with_traceback(None)  # the first failure's, not grown by each raise
    try:
        return _import_native()
    except ImportError as error:
        _native_failure = error
        raise


def _load_cpu() -> Backend:
    return _native_module().cpu_backend()


def _load_cuda() -> Backend:
    return _native_module().cuda_backend()


class _Entry(NamedTuple):
    """A backend as the registry knows it before loading it."""

    load: Callable[[], Backend]
    devices: tuple[str, ...]  # the device types whose tensors it serves
    how: str  # how to get it, for the error where it is missing


_REGISTRY: dict[str, _Entry] = {
    "torch": _Entry(_load_torch, ("cpu", "cuda"), "always available"),
    "triton": _Entry(
        _load_triton,
        ("cuda", "cpu"),
        "install triton (pip install triton) and use CUDA tensors, or set TRITON_INTERPRET=1 for CPU tensors",
    ),
    "cpu": _Entry(
        _load_cpu, ("cpu",), "the C++ extension of csrc/ is built on first use, with a C++ compiler (g++) and ninja"
    ),
    "cuda": _Entry(
        _load_cuda,
        ("cuda",),
        "the C++ extension of csrc/ builds its CUDA kernels only with a CUDA build of torch and nvcc (CUDA_HOME)",
    ),
}

# Fastest first, per device type and rule, as measured in benchmarks/RESULTS.md.
# CUDA (H100, 2026-11-26, every B, V and dtype of the grid): triton beats cuda on
# every rule but Primal (1.3–2× at B ≥ 8, within 10 % at B = 1), and cuda's radix
# select beats triton's on Primal (3–13×).  CPU: the C++ kernels (7.5–45× the reference on the
# threshold rules, 50–100× on Primal, 2 cores).
_AUTO_ORDER = {"cuda": ("triton", "cuda", "torch"), "cpu": ("cpu", "torch")}
_AUTO_ORDER_PRIMAL = {**_AUTO_ORDER, "cuda": ("cuda", "triton", "torch")}


_LOADED: dict[str, Backend | None] = {}
_WHY_MISSING: dict[str, str] = {}  # name -> the loader's ImportError, for resolve's message


def _load(name: str) -> Backend | None:
    """The backend, loaded once; None if its package is missing.  (A plain dict
    rather than functools.cache, which torch.compile warns about.)"""
    if name not in _LOADED:
        try:
            _LOADED[name] = _REGISTRY[name].load()
        except ImportError as error:
            _LOADED[name], _WHY_MISSING[name] = None, str(error)
    return _LOADED[name]


# The values for which Triton (3.4 to 3.9: its knobs.runtime.interpret) runs kernels in its
# interpreter, which serves CPU tensors.  Spelled out here rather than read from triton.knobs,
# because that read inside a torch.compile trace breaks the graph; tests/test_triton_interpret.py
# checks that the two readings agree on the installed Triton.
TRITON_INTERPRET_ON = ("1", "true", "on", "yes", "y")


def triton_interprets() -> bool:
    """Whether TRITON_INTERPRET switches Triton's interpreter on (case-insensitive, as Triton reads it)."""
    return os.environ.get("TRITON_INTERPRET", "").lower() in TRITON_INTERPRET_ON


def _serves(name: str, device: torch.device) -> bool:
    if device.type not in _REGISTRY[name].devices:
        return False
    if name == "triton" and device.type == "cpu":
        return triton_interprets()
    return True


def available_backends() -> list[str]:
    """Names of the backends that load on this machine (for some device)."""
    return [name for name in _REGISTRY if _load(name) is not None]


def resolve(name: str, device: torch.device, kind: Kind | None = None) -> Backend:
    """The backend ``name`` (or, if ``"auto"``, the fastest for ``device`` and the
    rule ``kind``)."""
    if name == "auto":
        order = _AUTO_ORDER_PRIMAL if kind == Kind.PRIMAL else _AUTO_ORDER
        for candidate in order.get(device.type, ()):  # another device: the reference's error below
            backend = _load(candidate)
            if backend is not None and _serves(candidate, device):
                return backend
        name = "torch"
    if name not in _REGISTRY:
        raise RuntimeError(f"unknown backend {name!r}; known: {', '.join(_REGISTRY)} or 'auto'")
    backend = _load(name)
    how = _REGISTRY[name].how
    if backend is None:
        raise RuntimeError(f"backend {name!r} is not available here ({_WHY_MISSING.get(name, 'unknown why')}): {how}")
    if not _serves(name, device):
        devices = _REGISTRY[name].devices
        if device.type in devices:  # triton on CPU tensors, without the interpreter
            raise RuntimeError(f"backend {name!r} does not run on {device.type} tensors here: {how}")
        raise RuntimeError(
            f"backend {name!r} does not run on {device.type} tensors; it serves {' and '.join(devices)} tensors"
        )
    return backend
