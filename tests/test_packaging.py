"""What the installed distribution says of itself (one version everywhere, typed
packages), and what its sdist and wheel carry: the C++/CUDA sources an installed
package compiles on first use (setup.py's BuildPy, MANIFEST.in)."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

import kad
import kad_kernels as kk

ROOT = Path(__file__).resolve().parents[1]


def test_one_version_for_both_packages_and_the_distribution():
    assert kad.__version__ == kk.__version__ == importlib.metadata.version("kad-kernels")


def test_both_packages_ship_their_type_annotations():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    for package in (kad, kk):
        name = package.__name__
        assert (Path(package.__file__).parent / "py.typed").is_file(), name
        assert "py.typed" in package_data.get(name, []), f"pyproject.toml's package-data leaves out {name}/py.typed"


def _setup(directory: Path, *commands: str) -> None:
    """``python setup.py -q COMMANDS`` in ``directory`` (setuptools' own commands: no
    network, no build of the extension, which only ``build_ext`` runs)."""
    done = subprocess.run([sys.executable, "setup.py", "-q", *commands], cwd=directory, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]


def _tracked(*under: str) -> list[str]:
    """The files git tracks (``under`` a folder)."""
    if not (ROOT / ".git").exists() or shutil.which("git") is None:
        pytest.skip("not a git checkout: the tracked files are unknown")
    listed = subprocess.run(["git", "ls-files", *under], cwd=ROOT, capture_output=True, text=True, check=True)
    return listed.stdout.split()


def test_the_sdist_carries_the_sources_and_the_wheel_the_kernels_sources(tmp_path):
    """An sdist holds every tracked file (but .gitignore), and a wheel built from it
    puts ``csrc/`` in the package, where ``_build`` finds it: without it a non-editable
    install had no ``cpu`` or ``cuda`` backend (``ops.cpp`` missing at the first-use build)."""
    tracked = [f for f in _tracked() if f != ".gitignore"]
    _setup(ROOT, "egg_info", "--egg-base", str(tmp_path), "sdist", "--dist-dir", str(tmp_path))
    (archive,) = tmp_path.glob("*.tar.gz")
    with tarfile.open(archive) as sdist:
        # filter="data" where this Python has it (3.10.12+, 3.11.4+): no links out of the folder
        sdist.extractall(tmp_path / "sdist", **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    (unpacked,) = (tmp_path / "sdist").iterdir()
    missing = [f for f in tracked if not (unpacked / f).is_file()]
    assert not missing, f"the sdist leaves out {missing[:10]} (MANIFEST.in)"

    package = tmp_path / "wheel" / "kad_kernels"
    stale = package / "csrc" / "cpu" / "removed_since.cpp"  # an earlier build's, which the glob would compile
    stale.parent.mkdir(parents=True)
    stale.write_text("#error an old source\n")
    _setup(unpacked, "build_py", "--build-lib", str(tmp_path / "wheel"))
    shipped = sorted(str(f.relative_to(package)) for f in (package / "csrc").rglob("*") if f.is_file())
    assert shipped == sorted(_tracked("csrc"))
    spec = importlib.util.spec_from_file_location("_installed_build", package / "_build.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    assert build.CSRC == package / "csrc"
    assert all(Path(s).is_file() and package in Path(s).parents for s in build.sources(cuda=True))


def test_a_checkout_builds_its_own_sources():
    """The editable install (and the tests) compile the checkout's ``csrc/``, not a copy."""
    from kad_kernels import _build

    if Path(kk.__file__).resolve().parent.parent != ROOT:
        pytest.skip("kad_kernels is installed, not this checkout's")
    assert _build.CSRC == ROOT / "csrc"
    assert not (ROOT / "kad_kernels" / "csrc").exists()


def test_the_distribution_names_its_license_files():
    metadata = importlib.metadata.metadata("kad-kernels")
    assert metadata["License-Expression"] == "Apache-2.0"
    assert (ROOT / "LICENSE").read_text().lstrip().startswith("Apache License")


def test_kad_names_the_extra_it_needs_when_a_package_of_it_is_missing():
    """``kad`` is installed by a plain install too; without the decoding extra it said only
    ``No module named 'httpx'`` from deep inside an import."""
    hide = "import sys; sys.modules['httpx'] = None; sys.modules['tqdm'] = None; import kad"
    done = subprocess.run([sys.executable, "-c", hide], capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1] == (
        "ModuleNotFoundError: kad needs tqdm, httpx, from the decoding extra: pip install 'kad-kernels[decoding]'"
    )


def test_kad_checks_the_packages_of_the_decoding_extra():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    from packaging.requirements import Requirement

    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["decoding"]
    assert {Requirement(r).name for r in extra} == {*kad._NEEDS, "matplotlib"}  # matplotlib: kad plot, on use
