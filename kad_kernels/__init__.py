"""kad_kernels: fused kernels for Knapsack Approximation Deferral (KAD) decoding.

``π = p⊙(1−d) + α q``: the base model's deferred tokens (mask ``d``, mass α) go
to the aligned model q.  See docs/design.md §1 for the math and docs/design.md §2 for this API.
"""

from ._backends import available_backends
from ._validate import LOGIT_DTYPES, TEMPERATURE_RANGE, temperature_in_range
from .api import Mixture, Verified, mixture, resolve_backend, sample, verify
from .rules import Dual, ImplicitReward, Nudging, Primal, Rule, Threshold, rule_from_name

__all__ = [
    "mixture",
    "sample",
    "verify",
    "available_backends",
    "resolve_backend",
    "Mixture",
    "Verified",
    "Rule",
    "Dual",
    "Primal",
    "Nudging",
    "Threshold",
    "ImplicitReward",
    "rule_from_name",
    "temperature_in_range",
    "LOGIT_DTYPES",
    "TEMPERATURE_RANGE",
]
__version__ = "0.1.0"
