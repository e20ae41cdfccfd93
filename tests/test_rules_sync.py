"""One source of truth across languages: the rule kinds and bad-logit flags that
``csrc/kad/rules.h`` states again for the C++/CUDA kernels must be Python's.

The C++ side is parsed as text (no build needed): every ``k<Name> = <value>`` of
``enum Kind``, ``kNumKinds``, and the ``kBad*`` constants.  A kind added, removed,
renumbered or renamed on one side only fails here, and so does a changed deferral
condition of a rule whose condition both sides state in a comment.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kad_kernels import reference
from kad_kernels.rules import Kind

RULES_H = Path(__file__).resolve().parents[1] / "csrc" / "kad" / "rules.h"
TEXT = RULES_H.read_text()
# Kinds whose comments state the condition differently on purpose: the C++ compares the
# radix-selected key, Python states the budget condition it implements.
DIFFERENT_WORDING = {"PRIMAL"}


def _snake(camel: str) -> str:
    """``MaxQMinus`` -> ``MAX_Q_MINUS``, ``ZeroOne`` -> ``ZERO_ONE``."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", camel).upper()


def _cpp_kinds() -> dict[str, tuple[int, str]]:
    """``{PYTHON_NAME: (value, condition comment)}`` from ``enum Kind`` in rules.h."""
    body = re.search(r"enum Kind : int64_t \{(.*?)\};", TEXT, re.S)
    assert body, f"no `enum Kind : int64_t {{...}}` in {RULES_H}"
    entries = re.findall(r"k(\w+)\s*=\s*(\d+),?\s*//\s*(.*)", body.group(1))
    return {_snake(name): (int(value), comment.strip()) for name, value, comment in entries}


def _python_comments() -> dict[str, str]:
    source = Path(reference.__file__).with_name("rules.py").read_text()
    return dict(re.findall(r"^\s+([A-Z_]+) = \d+  # (.*)$", source, re.M))


def _normalized(condition: str) -> str:
    return re.sub(r"[(),]", "", condition).replace("  ", " ").strip()


def test_the_kinds_have_the_same_names_and_values():
    cpp = {name: value for name, (value, _) in _cpp_kinds().items()}
    assert cpp == {kind.name: int(kind) for kind in Kind}


def test_the_number_of_kinds():
    count = re.search(r"constexpr int64_t kNumKinds = (\d+);", TEXT)
    assert count and int(count.group(1)) == len(Kind)


@pytest.mark.parametrize("kind", [k.name for k in Kind if k.name not in DIFFERENT_WORDING])
def test_the_conditions_read_the_same(kind):
    """The comment of each kind is its deferral condition, on both sides."""
    assert _normalized(_cpp_kinds()[kind][1]) == _normalized(_python_comments()[kind])


def test_the_bad_logit_flags():
    flags = dict(re.findall(r"constexpr int32_t kBad(\w+) = (\d+);", TEXT))
    assert {_snake(name): int(value) for name, value in flags.items()} == {
        "NONFINITE": reference.BAD_NONFINITE,
        "ALL_NEG_INF": reference.BAD_ALL_NEG_INF,
    }
