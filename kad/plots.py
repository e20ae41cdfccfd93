"""``kad plot``: figures from ``kad eval`` result files (matplotlib, PNG).

* ``acceptance_vs_gamma.png``: acceptance rate of the speculative runs vs γ;
* ``tokens_per_s_vs_gamma.png``: tok/s vs γ, runs without speculation as dashed lines;
* ``accuracy_vs_lambda.png`` / ``accuracy_vs_budget.png``: accuracy with its 95 %
  interval vs λ (dual, nudging and the other thresholded rules) / vs the primal
  budget (``primal``, ``budget_lr``), the single-model runs as dashed lines in their
  shaded interval.

A line joins the runs of one task that differ only in the plotted parameter; a
figure is written only when some line has two or more points.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

from .choices import PRIMAL_RULES, rule_name
from .report import Summary, distinguishing_fields, run_label, summarize


def _is_primal(config: dict) -> bool:
    """Whether the run's rule spends a primal budget: ``--rule primal``, or a rule name of the
    authors' code that builds one (``budget_lr``)."""
    try:
        return rule_name(config["mode"], config["rule"]) in PRIMAL_RULES
    except (KeyError, ValueError):  # a file of another version: a field missing, a rule that does not go with the mode
        return False


class _Figure(NamedTuple):
    name: str  # file name
    x: str  # config field on the x axis
    x_label: str
    y: str  # Summary field on the y axis
    y_label: str
    keep: Callable[[dict], bool]  # which runs make the lines (by config)
    is_baseline: Callable[[dict], bool]  # which runs are drawn as horizontal lines


_FIGURES = (
    _Figure("acceptance_vs_gamma.png", "gamma", "γ (drafts per round)", "acceptance_rate", "acceptance rate",
            lambda c: True, lambda c: False),
    _Figure("tokens_per_s_vs_gamma.png", "gamma", "γ (drafts per round)", "tokens_per_s", "tokens/s",
            lambda c: True, lambda c: c["gamma"] is None),
    _Figure("accuracy_vs_lambda.png", "lam", "λ", "accuracy", "accuracy",
            lambda c: not _is_primal(c), lambda c: c["rule"] is None),
    _Figure("accuracy_vs_budget.png", "lam", "primal budget b", "accuracy", "accuracy",
            _is_primal, lambda c: c["rule"] is None),
)  # fmt: skip


def _fields(results: Sequence[dict], without: str | None = None) -> list[str]:
    """The config fields of all ``results`` but ``without``, over which runs are grouped."""
    return sorted({f for result in results for f in result["config"]} - {without})


def _configuration(config: dict, fields: Sequence[str]) -> tuple:
    """``config`` as a key over ``fields`` (:func:`_fields`): a field a file lacks reads as
    None, as in the labels (:func:`~kad.report.distinguishing_fields`)."""
    return tuple((f, repr(config.get(f))) for f in fields)


def _lines(results: Sequence[dict], x: str, keep: Callable[[dict], bool]) -> dict[str, list[tuple[float, Summary]]]:
    """``{label: [(x, summary), ...]}`` sorted by x, over the runs that have ``x`` and pass
    ``keep``: one line per configuration but ``x`` (seed, models and grading included), one
    point per x (the run with the most items).  Lines that the run label does not tell
    apart are labelled with the fields in which they differ."""
    groups: dict[tuple, dict[float, dict]] = defaultdict(dict)
    fields = _fields(results, without=x)
    for result in results:
        config = result["config"]
        if config[x] is None or not keep(config):
            continue
        points = groups[_configuration(config, fields)]
        kept = points.get(config[x])
        if kept is None or len(result["items"]) > len(kept["items"]):
            points[config[x]] = result
    configs = [next(iter(points.values()))["config"] for points in groups.values()]
    labels = [f"{c['task']}: {run_label(c, without=x)}" for c in configs]
    suffixes = distinguishing_fields([{k: v for k, v in c.items() if k != x} for c in configs], labels)
    return {
        label + suffix: [(value, summarize(points[value])) for value in sorted(points)]
        for label, suffix, points in zip(labels, suffixes, groups.values())
    }


def _baselines(results: Sequence[dict], is_baseline: Callable[[dict], bool]) -> dict[str, Summary]:
    """``{label: summary}`` of the runs drawn as horizontal lines: one per configuration (the
    run with the most items), labelled as :func:`_lines` labels its lines."""
    runs: dict[tuple, dict] = {}
    fields = _fields(results)
    for result in results:
        if not is_baseline(result["config"]):
            continue
        key = _configuration(result["config"], fields)
        if key not in runs or len(result["items"]) > len(runs[key]["items"]):
            runs[key] = result
    configs = [result["config"] for result in runs.values()]
    labels = [f"{c['task']}: {run_label(c)}" for c in configs]
    suffixes = distinguishing_fields(configs, labels)
    return {label + suffix: summarize(result) for label, suffix, result in zip(labels, suffixes, runs.values())}


def _colors(count: int) -> list:
    """``count`` distinct colours: matplotlib's default cycle, which repeats after 10, then tab20,
    then samples of turbo."""
    import matplotlib

    if count <= 10:
        return [f"C{i}" for i in range(count)]
    if count <= 20:
        return [matplotlib.colormaps["tab20"](i) for i in range(count)]
    return [matplotlib.colormaps["turbo"](i / (count - 1)) for i in range(count)]


def figures(results: Sequence[dict]) -> list[tuple[_Figure, dict[str, list[tuple[float, Summary]]]]]:
    """The figures the results support, each with its lines."""
    supported = []
    for figure in _FIGURES:
        lines = _lines(results, figure.x, figure.keep)
        if any(len(points) > 1 for points in lines.values()):
            supported.append((figure, lines))
    return supported


def plot_results(results: Sequence[dict], out_dir: str | Path) -> list[Path]:
    """Write the figures the results support to ``out_dir``; returns their paths."""
    return draw(results, figures(results), out_dir)


def draw(
    results: Sequence[dict], supported: list[tuple[_Figure, dict[str, list[tuple[float, Summary]]]]], out_dir: str | Path
) -> list[Path]:
    """Write ``supported`` (:func:`figures` of ``results``) to ``out_dir``; returns their paths.
    ``ValueError`` naming a figure that cannot be written."""
    if not supported:  # no empty out_dir left behind
        return []
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for (name, x, x_label, y, y_label, keep, is_baseline), lines in supported:
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        baselines = _baselines(results, is_baseline)
        colors = iter(_colors(len(lines) + len(baselines)))
        for label, points in lines.items():
            xs, ys = [p[0] for p in points], [getattr(s, y) for _, s in points]
            if y == "accuracy":
                errors = [[max(0.0, v - s.ci_low) for v, (_, s) in zip(ys, points)],
                          [max(0.0, s.ci_high - v) for v, (_, s) in zip(ys, points)]]  # fmt: skip
                ax.errorbar(xs, ys, yerr=errors, fmt="o-", capsize=3, label=label, color=next(colors))
            else:
                ax.plot(xs, ys, "o-", label=label, color=next(colors))
        for label, s in baselines.items():
            color = next(colors)
            ax.axhline(getattr(s, y), ls="--", lw=1, color=color, label=label)
            if y == "accuracy":
                ax.axhspan(s.ci_low, s.ci_high, alpha=0.08, color=color)
        ax.set(xlabel=x_label, ylabel=y_label, title=f"{y_label} vs {x_label}")
        if y != "tokens_per_s":
            ax.set_ylim(0, 1.02)
        ax.legend(fontsize="x-small", loc="best")
        fig.tight_layout()
        path = out_dir / name
        try:
            fig.savefig(path, dpi=120)
        except OSError as error:  # a directory of that name, a full disk, a read-only file
            raise ValueError(f"cannot write the figure {path}: {error.strerror or error}") from None
        finally:
            plt.close(fig)
        written.append(path)
    return written
