"""Deferral rules (docs/design.md §1.3): which tokens of the base model p go to the aligned model q.

A rule is a small immutable object holding its parameter, a Python float or a
per-row tensor ``[B]``.  Backends never look at the classes: they receive
``(kind, param)`` from :meth:`Rule.spec`, so a new backend needs one branch per
:class:`Kind`, not per class.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from enum import IntEnum
from typing import Any, Literal, Union

import torch

Param = Union[float, torch.Tensor]
Loss = Literal["logistic", "perceptron", "zero_one", "squared"]
ThresholdForm = Literal["max_q_minus", "max_q_plus", "max_p_plus", "minus_max_p_plus"]

__all__ = [
    "Kind",
    "Rule",
    "Dual",
    "Primal",
    "Nudging",
    "Threshold",
    "ImplicitReward",
    "rule_from_name",
]


class Kind(IntEnum):
    """The deferral mask ``d_v = 1`` iff ... (the exact definitions live in reference.py)."""

    LOGISTIC = 0  # p_v < lam
    PERCEPTRON = 1  # max p - p_v > mu
    ZERO_ONE = 2  # [p_v < max p] > mu
    SQUARED = 3  # 1 - 2 p_v + ||p||^2 > mu
    NUDGING = 4  # max p < lam (every v at once)
    MAX_Q_MINUS = 5  # p_v < max q - lam
    MAX_Q_PLUS = 6  # p_v < max q + lam
    MAX_P_PLUS = 7  # q_v < max p + lam
    MINUS_MAX_P_PLUS = 8  # q_v > max p + lam
    PRIMAL = 9  # C_v <= budget, C_v = sum_{u: x_u <= x_v} p_u over the p-logits x
    IMPLICIT_REWARD = 10  # not a mask: pi ∝ p q / q_ref


def _check_param(name: str, value: Param, low: float, high: float) -> Param:
    """Refuse NaN and values outside ``[low, high]``; a tensor must be 0-d or ``[B]``."""
    if isinstance(value, torch.Tensor):
        if value.dim() > 1:
            raise ValueError(f"{name} must be a float or a 1-d tensor [B], got shape {tuple(value.shape)}")
        if value.is_complex() or not (value.is_floating_point() or value.dtype in (torch.int32, torch.int64)):
            raise TypeError(f"{name} must be a real tensor, got {value.dtype}")
        v = value.double()
        if v.numel() and (torch.isnan(v).any() or (v < low).any() or (v > high).any()):
            raise ValueError(f"{name} must lie in [{low}, {high}] (no NaN), got {value.tolist()}")
        return value.clone()  # the rule's own: a later write to the caller's tensor would skip this check
    if isinstance(value, bool) or not isinstance(value, numbers.Real):  # numpy's numbers too
        raise TypeError(f"{name} must be a float or a tensor [B], got {type(value).__name__}")
    try:
        value = float(value)
    except OverflowError:  # an int beyond float: past either end of every range
        value = math.inf if value > 0 else -math.inf
    if math.isnan(value) or not low <= value <= high:
        raise ValueError(f"{name} must lie in [{low}, {high}], got {value}")
    return value


def _same(a: object, b: object) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (
            isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.device == b.device
            and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
        )
    return a == b


def _hashable(value: object) -> object:
    """A tensor hashes by what :func:`_same` compares first (equal rules hash equal)."""
    return (value.device, value.dtype, tuple(value.shape)) if isinstance(value, torch.Tensor) else value


class _RuleType(type):
    """Marks a rule built when its constructor returns; :meth:`Rule.__setattr__` then refuses."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        rule = super().__call__(*args, **kwargs)
        object.__setattr__(rule, "_built", True)
        return rule


class Rule(metaclass=_RuleType):
    """Base class of the deferral rules; ``kind`` and ``param`` are all a backend sees."""

    kind: Kind
    param: Param = 0.0
    param_name: str = "param"  # the constructor argument, for error messages
    needs_ref: bool = False
    # The mask d (hence α) depends on p alone: π = p⊙(1−d) + α q is then a mixture of
    # p's kept tokens (weight 1 − α) and q (weight α), so a draw needs q only with
    # probability α (kad.draw uses this to skip the aligned model).
    mask_from_p: bool = False

    _built = False  # set once the constructor has returned (_RuleType)

    def __setattr__(self, name: str, value: object) -> None:
        """Fields are set by the constructor only: a rule is checked when it is built."""
        if self._built:
            raise AttributeError(f"{type(self).__name__} is immutable: build a new rule instead of setting {name}")
        object.__setattr__(self, name, value)

    def spec(self, rows: int, device: torch.device) -> tuple[Kind, Param]:
        """``(kind, param)`` with ``param`` as f32 ``[rows]`` on ``device``, or a float for
        every row."""
        p = self.param
        if isinstance(p, torch.Tensor):
            if p.dim() == 1 and p.shape[0] != rows:
                name = f"{type(self).__name__} {self.param_name}"
                raise ValueError(f"{name} has {p.shape[0]} values for {rows} rows")
            if p.device != device:
                raise ValueError(f"{type(self).__name__} {self.param_name} is on {p.device}, logits on {device}")
            return self.kind, p.to(torch.float32).expand(rows).contiguous()
        return self.kind, float(p)

    def _fields(self) -> dict[str, object]:
        return {k: v for k, v in self.__dict__.items() if k != "_built"}

    def __eq__(self, other: object) -> bool:
        """Same class and fields; tensor parameters equal in device, dtype and values."""
        if type(self) is not type(other) or self._fields().keys() != other._fields().keys():
            return False
        theirs = other._fields()
        return all(_same(v, theirs[k]) for k, v in self._fields().items())

    def __hash__(self) -> int:
        return hash((type(self), *((k, _hashable(v)) for k, v in self._fields().items())))

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self._fields().items() if k not in ("kind", "param_name"))
        return f"{type(self).__name__}({fields})"


_LOSS_KIND = {
    "logistic": Kind.LOGISTIC,
    "perceptron": Kind.PERCEPTRON,
    "zero_one": Kind.ZERO_ONE,
    "squared": Kind.SQUARED,
}


class Dual(Rule):
    """KAD dual approximation: defer v iff its loss ``l(p, v)`` exceeds ``mu``.

    ``Dual(lam)`` is the logistic loss ``-log p_v > mu`` written with ``lam = e^(-mu)``,
    i.e. ``d_v = [p_v < lam]`` (the paper uses lam = 0.3–0.4).  The other losses take
    ``mu``: perceptron ``max p - p_v``, zero_one ``[v is not an arg-max of p]``,
    squared ``||p - e_v||^2 = 1 - 2 p_v + ||p||^2``.
    """

    mask_from_p = True

    def __init__(self, lam: Param | None = None, loss: Loss = "logistic", *, mu: Param | None = None):
        if loss not in _LOSS_KIND:
            raise ValueError(f"loss must be one of {sorted(_LOSS_KIND)}, got {loss!r}")
        if (lam is None) == (mu is None):
            raise ValueError("Dual needs exactly one of lam (logistic loss) or mu")
        self.loss = loss
        self.kind = _LOSS_KIND[loss]
        if loss == "logistic":
            if mu is not None:
                mu = _check_param("mu", mu, 0.0, math.inf)
                lam = torch.exp(-mu) if isinstance(mu, torch.Tensor) else math.exp(-mu)
            assert lam is not None  # given, or made from mu: exactly one of them was given
            self.param = _check_param("lam", lam, 0.0, 1.0)
            self.param_name = "lam"
        else:
            if lam is not None:
                raise ValueError(f"the {loss} loss takes mu=, not lam")
            assert mu is not None  # lam is None here, and exactly one of them was given
            self.param = _check_param("mu", mu, 0.0, math.inf)
            self.param_name = "mu"


class Primal(Rule):
    """KAD primal (greedy knapsack with critical item): defer the least likely tokens
    while their cumulative mass fits ``budget``; tokens with equal logits go together or
    not at all (docs/design.md §1.4);
    ``budget >= 1`` defers everything (pi = q exactly).  Paper: budget = 0.9."""

    kind = Kind.PRIMAL
    param_name = "budget"
    mask_from_p = True

    def __init__(self, budget: Param):
        self.param = _check_param("budget", budget, 0.0, math.inf)


class Nudging(Rule):
    """Distribution-level baseline: defer the whole row iff ``max p < lam``."""

    kind = Kind.NUDGING
    param_name = "lam"
    mask_from_p = True

    def __init__(self, lam: Param):
        self.param = _check_param("lam", lam, 0.0, 1.0)


_FORM_KIND: dict[ThresholdForm, Kind] = {
    "max_q_minus": Kind.MAX_Q_MINUS,
    "max_q_plus": Kind.MAX_Q_PLUS,
    "max_p_plus": Kind.MAX_P_PLUS,
    "minus_max_p_plus": Kind.MINUS_MAX_P_PLUS,
}


class Threshold(Rule):
    """The q-dependent rules of the authors' code, named by their strings:
    ``max_q_minus``: p_v < max q - lam, ``max_q_plus``: p_v < max q + lam,
    ``max_p_plus``: q_v < max p + lam, ``minus_max_p_plus``: q_v > max p + lam."""

    param_name = "lam"

    def __init__(self, lam: Param, form: ThresholdForm):
        if form not in _FORM_KIND:
            raise ValueError(f"form must be one of {sorted(_FORM_KIND)}, got {form!r}")
        self.form = form
        self.kind = _FORM_KIND[form]
        self.param = _check_param("lam", lam, 0.0, 1.0)


class ImplicitReward(Rule):
    """Not a deferral rule: ``pi ∝ p q / q_ref`` with ``q_ref`` from ``ref_logits``
    (the small unaligned model); uniform where no token has ``p q > 0``."""

    kind = Kind.IMPLICIT_REWARD
    needs_ref = True


def _threshold(form: ThresholdForm) -> Callable[[Param], Rule]:
    """The Threshold rule of ``form`` as a function of its lam (a closure per form, bound now)."""
    return lambda alpha: Threshold(alpha, form)


# The rule names of the authors' code, each with the rule it names for its hyper-parameter alpha.
AUTHOR_RULES: dict[str, Callable[[Param], Rule]] = {
    "token_wise": Dual,
    "max": Nudging,
    **{form: _threshold(form) for form in _FORM_KIND},
    "token_v2": lambda alpha: Dual(mu=alpha, loss="perceptron"),
    "token_max": lambda alpha: Dual(mu=0.0, loss="zero_one"),
    "budget_lr": Primal,
}


def rule_from_name(name: str, alpha: Param) -> Rule:
    """The rule a configuration of the authors' code names (:data:`AUTHOR_RULES`), ``alpha``
    being its hyper-parameter.

    ``token_max`` (defer every non-arg-max token) has no parameter and ignores ``alpha``.
    """
    if name not in AUTHOR_RULES:
        raise ValueError(f"unknown rule name {name!r}; known: {', '.join(AUTHOR_RULES)}")
    return AUTHOR_RULES[name](alpha)
