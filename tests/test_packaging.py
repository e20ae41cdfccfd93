"""What the installed distribution says of itself: one version everywhere, typed packages."""

from __future__ import annotations

import importlib.metadata
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
