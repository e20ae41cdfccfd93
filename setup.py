"""Build script: the C++/CUDA extension ``kad_kernels._C`` of ``csrc/`` (docs/design.md §3.4).

The extension is compiled here, with ninja, when torch is importable in the
build environment: ``pip install --no-build-isolation .`` (or ``-e .``) after
torch.  A plain ``pip install .`` builds in an isolated environment without
torch, installs the Python package alone, and the extension is compiled on
first use instead (``kad_kernels/_native.py``).  The CUDA kernels are included
when torch is a CUDA build and nvcc is found; sources and flags live in
``kad_kernels/_build.py``, shared with the on-first-use build.

A wheel carries the sources as ``kad_kernels/csrc/`` (:class:`BuildPy`), so that an
installed package can compile them on first use; an sdist carries ``csrc/`` by
``MANIFEST.in``.
"""

import importlib.util
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


class BuildPy(build_py):
    """The packages, and ``csrc/`` copied into ``kad_kernels/csrc/`` (where
    ``kad_kernels/_build.py`` looks first).  Not in an editable install, whose
    ``kad_kernels`` is the checkout's own, beside ``csrc/``."""

    def run(self) -> None:
        super().run()
        if not self.editable_mode:
            target = Path(self.build_lib) / "kad_kernels" / "csrc"
            shutil.rmtree(target, ignore_errors=True)  # a file left by an earlier build would be compiled too
            shutil.copytree(ROOT / "csrc", target, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.o", "*.so"))


def _extension() -> dict:
    try:
        from torch.utils import cpp_extension
    except ImportError:
        return {}
    spec = importlib.util.spec_from_file_location("_kad_build", ROOT / "kad_kernels" / "_build.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    if not build.has_compiler():
        return {}
    cuda = build.with_cuda()
    kwargs = build.extension_kwargs(cuda)
    kwargs["sources"] = [str(Path(s).relative_to(ROOT)) for s in kwargs["sources"]]
    kind = cpp_extension.CUDAExtension if cuda else cpp_extension.CppExtension
    return {
        "ext_modules": [kind(build.NAME, **kwargs)],
        "cmdclass": {"build_ext": cpp_extension.BuildExtension},
    }


arguments = _extension()
setup(**{**arguments, "cmdclass": {"build_py": BuildPy, **arguments.get("cmdclass", {})}})
