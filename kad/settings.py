"""How to decode: the modes (:data:`~kad.choices.MODES`, described in :mod:`kad.loop`), the rule each
mode samples with, and :class:`Settings`, the bundle of one generation's choices
that the loop and the engines read."""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import torch

import kad_kernels as kk

from .choices import GAMMA, MODES, ONE_MODEL_FAMILIES, Mode, is_speculative, mode_family
from .choices import LAM  # noqa: F401  (importable from here too, beside GAMMA)
from .draw import ONE_MODEL


def resolve_rule(mode: str, rule: kk.Rule | None) -> kk.Rule:
    """The rule ``mode`` samples with; baseline modes fix the rule's class."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; modes: {', '.join(MODES)}")
    family = mode_family(mode)
    if family in ONE_MODEL_FAMILIES:
        if rule is not None:
            raise ValueError(f"mode {mode!r} runs one model and takes no rule, got {rule!r}")
        return ONE_MODEL
    if family == "implicit-reward" and rule is None:
        return kk.ImplicitReward()
    required = {"nudging": kk.Nudging, "implicit-reward": kk.ImplicitReward}.get(family, kk.Rule)
    if rule is None:
        example = "Nudging" if family == "nudging" else "Dual"
        raise ValueError(f"mode {mode!r} needs a rule, e.g. rule=kad_kernels.{example}(0.4)")
    if not isinstance(rule, kk.Rule):  # a name ("dual") is the CLI's: the API takes the rule itself
        raise TypeError(f"rule must be a kad_kernels rule, e.g. rule=kad_kernels.Dual(0.4), got {rule!r:.80}")
    if not isinstance(rule, required):
        raise TypeError(f"mode {mode!r} needs a {required.__name__} rule, got {rule!r}")
    return rule


@dataclass(frozen=True)
class Settings:
    """How to decode: ``mode`` (see :mod:`kad.loop`) with ``rule`` (checked against
    the mode by :func:`resolve_rule`; ``None`` where the mode fixes it), ``gamma``
    drafts per speculative round, ``temperature`` (0: greedy), ``track_alpha``:
    compute α for the statistics (one more mixture per step where needed)."""

    mode: Mode = "kad"
    rule: kk.Rule | None = None
    gamma: int = GAMMA
    temperature: float = 1.0
    track_alpha: bool = True

    def __post_init__(self) -> None:
        # numpy's numbers as Python's, so that they pass the checks and reach the kernels as ints and floats
        if isinstance(self.gamma, numbers.Integral) and not isinstance(self.gamma, (bool, int)):
            object.__setattr__(self, "gamma", int(self.gamma))
        if isinstance(self.temperature, numbers.Real) and not isinstance(self.temperature, (bool, float)):
            object.__setattr__(self, "temperature", float(self.temperature))

    @property
    def speculative(self) -> bool:
        return is_speculative(self.mode)

    @property
    def family(self) -> str:
        return mode_family(self.mode)

    def checked_rule(self) -> kk.Rule:
        """The rule, checked against the mode; ``gamma`` (where it is used),
        ``temperature`` and ``track_alpha`` are checked too, so that a bad setting fails before a model runs."""
        rule = resolve_rule(self.mode, self.rule)
        gamma, temperature = self.gamma, self.temperature
        if not isinstance(self.track_alpha, bool):
            raise TypeError(f"track_alpha must be True or False, got {self.track_alpha!r}")
        if self.speculative and (isinstance(gamma, bool) or not isinstance(gamma, int) or gamma < 1):
            raise ValueError(f"gamma (drafts per speculative round) must be an int >= 1, got {gamma!r}")
        if not kk.temperature_in_range(temperature):  # False also for a bool or a non-number
            raise ValueError(f"temperature must be {kk.TEMPERATURE_RANGE}, got {temperature!r}")
        if isinstance(rule.param, torch.Tensor):
            raise ValueError(
                f"{rule!r} has a tensor parameter (one per row, for the kernels): the decoding loop drops rows "
                "as they finish, so give one number for every row"
            )
        return rule
