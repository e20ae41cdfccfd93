"""Fixtures shared by the kad_kernels tests.

Backends are exercised through ``backend_case`` (and its views ``backend``,
``device``, ``slow``): every backend that serves CPU tensors in this process,
plus GPU variants marked ``gpu`` and skipped without CUDA.  Under the Triton
interpreter (``triton`` on CPU) kernels run in Python, so such cases are
``slow`` and the size grids shrink for them (see ``helpers.skip_if_too_big``).
"""

from __future__ import annotations

import os

import torch

# No test reads the model hub: a model that is not on disk fails at once instead of
# after network retries (huggingface_hub reads this when first imported).
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Must happen before anything imports triton: CPU tensors reach the Triton
# kernels only through the interpreter.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from dataclasses import dataclass  # noqa: E402

import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

import kad_kernels as kk  # noqa: E402
from kad_kernels import _backends  # noqa: E402

HAS_CUDA = torch.cuda.is_available()

# Hypothesis: CI runs "kad-ci" (derandomized, so a run is reproducible); the long
# profile is for scripts such as ``python tests/test_fuzz.py --examples N``.  Tests
# scale ``settings.default.max_examples`` to their cost.
_FUZZ = dict(
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("kad-ci", max_examples=30, derandomize=True, **_FUZZ)
settings.register_profile("kad-long", max_examples=int(os.environ.get("KAD_FUZZ_EXAMPLES", "2000")), **_FUZZ)
settings.load_profile(os.environ.get("KAD_FUZZ_PROFILE", "kad-ci"))

# xdist workers share the cores: one intra-op pool per worker, not one per core each.
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))

# KAD_TEST_BACKENDS=torch,triton restricts the backends under test (default: all available).
_SELECTED = {b.strip() for b in os.environ.get("KAD_TEST_BACKENDS", "").split(",") if b.strip()}

# Backends whose kernels are interpreted (Python speed) on CPU tensors.
_INTERPRETED_ON_CPU = {"triton"}


@dataclass(frozen=True)
class BackendCase:
    """One backend on one device type."""

    name: str
    device: torch.device
    slow: bool

    @property
    def is_reference(self) -> bool:
        """The ``torch`` backend on CPU: what every other case is compared with."""
        return self.name == "torch" and self.device.type == "cpu"


def _serves(name: str, device_type: str) -> bool:
    try:
        _backends.resolve(name, torch.device(device_type))
    except RuntimeError:
        return False
    return True


def _backend_params(include_reference: bool = True) -> list:
    params = []
    available = [b for b in kk.available_backends() if not _SELECTED or b in _SELECTED]
    for name in available:
        if _serves(name, "cpu") and (include_reference or name != "torch"):
            case = BackendCase(name, torch.device("cpu"), slow=name in _INTERPRETED_ON_CPU)
            params.append(pytest.param(case, id=f"{name}-cpu"))
    for name in available:
        if _serves(name, "cuda"):
            case = BackendCase(name, torch.device("cuda"), slow=False)
            marks = [pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")]
            params.append(pytest.param(case, id=f"{name}-cuda", marks=marks))
    return params


BACKEND_PARAMS = _backend_params()
# Every case except the reference itself (comparing torch-cpu with itself proves nothing).
OTHER_BACKEND_PARAMS = _backend_params(include_reference=False)


@pytest.fixture(params=BACKEND_PARAMS)
def backend_case(request) -> BackendCase:
    return request.param


@pytest.fixture
def backend(backend_case: BackendCase) -> str:
    """The backend name to pass as ``backend=``."""
    return backend_case.name


@pytest.fixture
def device(backend_case: BackendCase) -> torch.device:
    """The device the tensors of this case live on."""
    return backend_case.device


@pytest.fixture
def slow(backend_case: BackendCase) -> bool:
    """True where kernels run interpreted (Triton on CPU): tests shrink their sizes."""
    return backend_case.slow


@pytest.fixture(params=OTHER_BACKEND_PARAMS)
def other_case(request) -> BackendCase:
    """A backend case other than the reference ``torch`` on CPU, to compare with it."""
    return request.param
