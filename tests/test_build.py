"""The on-first-use build of the C++/CUDA extension (``kad_kernels/_native.py``,
docs/design.md §3.4): a CUDA build that cannot succeed costs the ``cuda`` backend
only, never the ``cpu`` kernels or ``import kad_kernels``.

The builds themselves are replaced by a recorder here; the real build is what every
cpu-backend test runs (and CI's lowest-torch leg, a CUDA build of torch 2.8 on a
machine without a GPU, is the case these tests stand for).
"""

from __future__ import annotations

import os
import types

import pytest
import torch

from kad_kernels import _build, _native


@pytest.fixture
def builds(monkeypatch):
    """The variants ``_jit_build`` asks for (True: with the CUDA kernels), in order.
    The CUDA build fails as torch 2.8's arch detection does without a visible GPU."""
    asked = []

    def load(cuda: bool):
        asked.append(cuda)
        if cuda:
            raise IndexError("list index out of range")
        return types.SimpleNamespace(with_cuda=False)

    monkeypatch.setattr(_native, "_load", load)
    monkeypatch.setattr(_native, "_cuda_left_out", "")
    monkeypatch.setattr(_build, "with_cuda", lambda: True)
    return asked


def _cuda_backend_error(monkeypatch, module) -> str:
    monkeypatch.setattr(_native, "_C", module)
    with pytest.raises(ImportError) as info:
        _native.cuda_backend()
    return str(info.value)


def test_a_failed_cuda_build_falls_back_to_the_cpu_kernels(builds, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.warns(UserWarning, match="building the CUDA kernels failed: list index out of range"):
        module = _native._jit_build()
    assert builds == [True, False]
    message = _cuda_backend_error(monkeypatch, module)
    assert "built without CUDA: building the CUDA kernels failed: list index out of range" in message


def test_without_a_gpu_the_cuda_kernels_are_not_built(builds, monkeypatch, recwarn):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    module = _native._jit_build()
    assert builds == [False]
    assert not [w for w in recwarn if "kad_kernels" in str(w.message)]
    assert "torch sees no GPU" in _cuda_backend_error(monkeypatch, module)


@pytest.mark.parametrize("failure", [RuntimeError("ninja: build stopped"), SystemExit(1), IndexError("arch")])
def test_a_failed_cpu_build_is_an_import_error(monkeypatch, failure):
    """ImportError is what the backend registry reads as 'unavailable' (auto then uses torch)."""

    def load(cuda: bool):
        raise failure

    monkeypatch.setattr(_native, "_load", load)
    monkeypatch.setattr(_build, "with_cuda", lambda: False)
    with pytest.raises(ImportError, match="building the kad_kernels C\\+\\+ extension failed"):
        _native._jit_build()


def test_the_two_variants_build_in_directories_of_their_own(monkeypatch):
    """A cpu-only fallback must not overwrite (and later be taken for) the full build."""
    names = []
    from torch.utils import cpp_extension

    monkeypatch.setattr(cpp_extension, "load", lambda **kwargs: names.append((kwargs["name"], kwargs["with_cuda"])))
    _native._load(cuda=True)
    _native._load(cuda=False)
    (full, with_cuda), (cpu_only, without_cuda) = names
    assert (with_cuda, without_cuda) == (True, False)
    assert full != cpu_only and cpu_only.startswith(full)


def test_the_cpu_variant_leaves_the_cuda_sources_and_define_out():
    cpu = _build.extension_kwargs(cuda=False)
    assert not any(s.endswith(".cu") for s in cpu["sources"])
    assert "-DKAD_WITH_CUDA" not in cpu["extra_compile_args"]["cxx"]
    full = _build.extension_kwargs(cuda=True)
    assert {s for s in full["sources"] if s.endswith(".cu")} == {str(s) for s in _build.cuda_sources()}
    assert "-DKAD_WITH_CUDA" in full["extra_compile_args"]["cxx"]


def test_the_build_runs_the_ninja_of_this_environment(monkeypatch):
    """Each ninja version keeps its own build log: the system's ninja first on PATH (a
    venv not activated) rebuilt the whole extension after a build by the venv's."""
    ninja = pytest.importorskip("ninja")
    paths = []
    from torch.utils import cpp_extension

    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.setattr(cpp_extension, "load", lambda **kwargs: paths.append(os.environ["PATH"]))
    _native._load(cuda=False)
    assert paths == [os.pathsep.join([ninja.BIN_DIR, "/usr/bin:/bin"])]
    assert os.environ["PATH"] == "/usr/bin:/bin"


@pytest.mark.parametrize("bin_dir", ["", "/nonexistent/bin"])
def test_without_a_ninja_of_its_own_the_path_is_left_alone(monkeypatch, bin_dir):
    """ninja's BIN_DIR is "" when it finds no binary: an empty PATH entry would put the cwd first."""
    ninja = pytest.importorskip("ninja")
    monkeypatch.setattr(ninja, "BIN_DIR", bin_dir)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    with _native._own_ninja_first():
        assert os.environ["PATH"] == "/usr/bin:/bin"


def test_an_unset_path_is_unset_again(monkeypatch):
    ninja = pytest.importorskip("ninja")
    if not os.path.isfile(os.path.join(ninja.BIN_DIR, "ninja")):
        pytest.skip("ninja's package has no binary here")
    monkeypatch.delenv("PATH", raising=False)
    with _native._own_ninja_first():
        assert os.environ["PATH"] == ninja.BIN_DIR
    assert "PATH" not in os.environ


def test_a_failed_build_is_tried_once_and_named_in_the_error(monkeypatch):
    """The cpu and cuda backends share one build: a second try would cost another minute
    and fail alike.  The error says what failed (a source missing), not only what it needs."""
    import kad_kernels as kk
    from kad_kernels import _backends

    tries = []

    def failing_build():
        tries.append(1)
        raise ImportError("building the kad_kernels C++ extension failed: [Errno 2] No such file: 'csrc/ops.cpp'")

    monkeypatch.setattr(_backends, "_import_native", failing_build)
    monkeypatch.setattr(_backends, "_native_failure", None)
    monkeypatch.setattr(_backends, "_LOADED", {})
    monkeypatch.setattr(_backends, "_WHY_MISSING", {})
    assert "cpu" not in kk.available_backends() and "cuda" not in kk.available_backends()
    assert len(tries) == 1
    p = torch.zeros(1, 8)
    with pytest.raises(RuntimeError, match=r"backend 'cpu' is not available here \(building .* No such file: 'csrc/ops.cpp'\)"):
        kk.sample(p, p, kk.Dual(0.4), backend="cpu")


@pytest.mark.parametrize("built", [False, True])
def test_the_first_build_note_shows_only_when_there_is_no_build_yet(monkeypatch, capsys, built):
    """It was printed at every start, saying a minute where loading the cached build takes seconds."""
    from torch.utils import cpp_extension

    monkeypatch.setattr(cpp_extension, "load", lambda **kwargs: None)
    monkeypatch.setattr(_native, "_built_before", lambda cuda: built)
    _native._load(cuda=False)
    assert ("compiling the C++ extension" in capsys.readouterr().err) is not built


def test_a_build_of_this_checkout_is_found_in_torchs_directory():
    """The cpu backend of this process was loaded (or built) under this name."""
    import kad_kernels as kk

    if "cpu" not in kk.available_backends():
        pytest.skip("the C++ extension did not load here")
    if _native._C.__name__ == _build.NAME:
        pytest.skip("the extension was built at install time (setup.py), not on first use")
    assert _native._built_before(cuda=_native._C.with_cuda)


def test_a_lock_left_by_a_killed_build_is_removed_under_kads_own_lock(monkeypatch, tmp_path, capsys):
    """torch's lock file in the build directory, left by a build that was killed (Ctrl-C, a CI
    timeout), made every later first use wait for it forever; kad's flock, which dies with its
    process, tells such a file from a build in progress."""
    fcntl = pytest.importorskip("fcntl")
    from torch.utils import cpp_extension

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    name = _native._build_name(cuda=False)
    directory = cpp_extension._get_build_directory(name, verbose=False)
    open(os.path.join(directory, "lock"), "w").close()  # what the killed build left
    seen = []

    def load(**kwargs):
        seen.append(os.path.exists(os.path.join(directory, "lock")))
        with open(os.path.join(directory, "kad-build.flock")) as other:  # another process's attempt
            with pytest.raises(BlockingIOError):
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return "module"

    monkeypatch.setattr(cpp_extension, "load", load)
    assert _native._load(cuda=False) == "module"
    assert seen == [False]
    assert "left by a build that was interrupted" in capsys.readouterr().err
    with open(os.path.join(directory, "kad-build.flock")) as other:  # released after the build
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
