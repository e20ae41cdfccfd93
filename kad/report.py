"""The scores of ``kad eval`` results and the table of ``kad summary``.

:func:`summarize` turns a result (as :func:`kad.evaluate.evaluate` returns it or
:func:`kad.results.load_result` reads it) into a :class:`Summary`: accuracy (with a Wilson
95 % interval), tokens/s (new tokens over the batches' wall time), acceptance rate, mean
accepted length and mean α.  :func:`run_label` and :func:`distinguishing_fields` name the
runs, in :func:`summary_table` and in the figures of :mod:`kad.plots`.  Of kad this imports
only :mod:`kad.stats`, not the decoding stack.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .stats import GenerationStats

_Z95 = 1.959963984540054  # two-sided 95 % normal quantile


@dataclass(frozen=True)
class Summary:
    """A run's scores; rates are NaN where there is nothing to count."""

    items: int
    correct: int
    accuracy: float
    ci_low: float  # Wilson 95 % interval of the accuracy
    ci_high: float
    new_tokens: int
    tokens_per_s: float
    acceptance_rate: float
    mean_accepted_length: float
    mean_alpha: float
    deferral_fraction: float


def wilson_interval(successes: int, trials: int, z: float = _Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (sensible at 0 % and 100 % and for
    small samples, unlike the normal approximation); ``(nan, nan)`` for no trials."""
    if trials == 0:
        return math.nan, math.nan
    p = successes / trials
    center = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    # Exact ends at 0 % and 100 % (rounding left 5.6e-17 and 0.9999999999999999).
    low = 0.0 if successes == 0 else max(0.0, center - half)
    high = 1.0 if successes == trials else min(1.0, center + half)
    return low, high


def summarize(result: dict) -> Summary:
    """The :class:`Summary` of a result (as :func:`kad.evaluate.evaluate` returns or writes it)."""
    items = result["items"]
    total = GenerationStats()
    for item in items:
        for name, value in item["stats"].items():
            if name not in ("wall_time_s", "rounds"):  # per-row times overlap within a batch
                setattr(total, name, getattr(total, name) + value)
    total.wall_time_s = sum(b["wall_time_s"] for b in result["batches"])
    correct = sum(item["correct"] for item in items)
    low, high = wilson_interval(correct, len(items))
    return Summary(
        items=len(items),
        correct=correct,
        accuracy=correct / len(items) if items else math.nan,
        ci_low=low,
        ci_high=high,
        new_tokens=total.new_tokens,
        tokens_per_s=total.tokens_per_s,
        acceptance_rate=total.acceptance_rate,
        mean_accepted_length=total.mean_accepted_length,
        mean_alpha=total.mean_alpha,
        deferral_fraction=total.deferral_fraction,
    )


def run_label(config: dict, without: str | None = None) -> str:
    """``"kad-spec dual 0.4 γ=4"``: mode, rule and parameter, γ — leaving out the
    field ``without`` (``"lam"`` or ``"gamma"``, the x axis of a plot)."""
    label = config["mode"]
    if config["rule"] is not None:
        if config["rule"] != config["mode"].removesuffix("-spec"):  # "nudging 0.4", not "nudging nudging 0.4"
            label += f" {config['rule']}"
        label += f" {config['lam']:g}" if without != "lam" and config["lam"] is not None else ""
    if config["gamma"] is not None and without != "gamma":
        label += f" γ={config['gamma']}"
    return label


def distinguishing_fields(configs: Sequence[Mapping[str, object]], labels: Sequence[str]) -> list[str]:
    """For each config, ``", field=value"`` for each field in which the configs of the same
    label differ (seed, grading, models, batch size, ...: what the label alone would hide);
    ``""`` for a label no other config has.  Files of other versions may lack a field: it
    reads as None there."""
    suffixes = []
    for config, label in zip(configs, labels):
        twins = [c for c, other in zip(configs, labels) if other == label]
        fields = dict.fromkeys(f for c in twins for f in c)
        differ = [f for f in fields if len({repr(c.get(f)) for c in twins}) > 1]
        suffixes.append("".join(f", {f}={_one_line(config.get(f))}" for f in differ))
    return suffixes


def _one_line(value: object, width: int = 40) -> str:
    """A config value on one short line: text with line breaks (a system prompt) or none
    as its repr, anything longer than ``width`` cut with "…"."""
    text = repr(value) if isinstance(value, str) and (not value or "\n" in value) else str(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def number(x: float, spec: str) -> str:
    """``x`` formatted with ``spec``, or "–" for a rate with nothing to count (NaN)."""
    return "–" if math.isnan(x) else format(x, spec)


def summary_table(results: Sequence[dict]) -> str:
    """A Markdown table with one line per result; runs whose label is the same are told
    apart by the fields in which they differ (:func:`distinguishing_fields`)."""
    lines = [
        "| task | run | n | accuracy (95 % CI) | tok/s | acceptance | accepted length | mean α |",
        "|---|---|---|---|---|---|---|---|",
    ]
    configs = [result["config"] for result in results]
    runs = [run_label(config) for config in configs]
    suffixes = distinguishing_fields(configs, [f"{c['task']}: {run}" for c, run in zip(configs, runs)])
    for result, run, suffix in zip(results, runs, suffixes):
        s = summarize(result)
        accuracy = f"{number(s.accuracy, '.1%')} ({number(s.ci_low, '.0%')}–{number(s.ci_high, '.0%')})" if s.items else "–"
        lines.append(
            f"| {result['config']['task']} | {run}{suffix.replace('|', '/')} | {s.items} | {accuracy} "
            f"| {number(s.tokens_per_s, '.2f')} | {number(s.acceptance_rate, '.3f')} "
            f"| {number(s.mean_accepted_length, '.2f')} | {number(s.mean_alpha, '.3f')} |"
        )
    return "\n".join(lines)
