"""pytest setup of the benchmark modules run from here (``bench_cpu_kernels.py``).

Loaded only when pytest is given a path under ``benchmarks/``: the test suite
(``testpaths = tests``) never sees it.
"""

import pytest


def pytest_addoption(parser):
    parser.getgroup("kad benchmarks").addoption(
        "--torch-compile", action="store_true", default=False,
        help="bench_cpu_kernels.py: also time torch.compile of the reference (a compilation of "
        "seconds per op, rule and dtype, twice: static then dynamic shapes)")


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    """pyproject's addopts pass ``--dist loadgroup`` (for the test suite's ``-n`` runs).
    Without ``-n``/``--tx`` xdist distributes nothing, but pytest-benchmark takes any
    ``--dist`` for xdist and disables itself (``--benchmark-only`` then refuses to run):
    say ``no`` there, as xdist's own test does.  With ``-n`` benchmarks stay disabled."""
    if config.getoption("dist", "no") != "no" and not config.getoption("tx", None):
        config.option.dist = "no"
