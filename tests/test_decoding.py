"""The decoding loop (kad/) on tiny random-weight models, CPU, no network.

What is checked against what: speculative decoding against sequential decoding
(greedy: the same tokens; sampling: the same distribution, and both the
mixture computed from fresh forwards), every forward of the loop against a
fresh forward over the row's sequence (caches after rejections, padding and
dropped rows), batched against per-prompt decoding.
"""

from __future__ import annotations

import copy as copy_module
import functools
import importlib.metadata
import json
import math
import pickle
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from decoding_helpers import (
    CHARS,
    PROMPTS,
    Recorder,
    exact_pairs,
    goodness_of_fit,
    make_models,
    make_tokenizer,
    pair_counts,
    tiny_model,
    two_sample,
)
from hypothesis import given
from hypothesis import strategies as st

import kad
import kad_kernels as kk
from kad import cli
from kad.decoding import build_rule, generator_seed
from kad.engines import HFEngine
from kad_kernels.rules import Kind

MODELS = make_models()
TOKENIZER = make_tokenizer()
V = len(TOKENIZER)
DECODER = kad.Decoder(MODELS["base"], MODELS["aligned"], TOKENIZER, reference=MODELS["reference"])

# Rows finish at different steps: budgets differ and the stop token may come early.
BUDGETS = [12, 16, 9, 14]

RULES = [
    kk.Dual(0.4),
    kk.Dual(mu=0.2, loss="perceptron"),
    kk.Dual(mu=0.0, loss="zero_one"),
    kk.Dual(mu=0.9, loss="squared"),
    kk.Primal(0.9),
    kk.Nudging(0.4),
    kk.Threshold(0.1, "max_q_minus"),
    kk.Threshold(0.1, "max_q_plus"),
    kk.Threshold(0.1, "max_p_plus"),
    kk.Threshold(0.1, "minus_max_p_plus"),
    kk.ImplicitReward(),
]
RULE_PARAMS = [pytest.param(i, id=repr(r)) for i, r in enumerate(RULES)]


def _batch(size: int) -> tuple[list[str], list[int]]:
    """Batch 1 is the second prompt alone; batch 4 all the (ragged) prompts."""
    return (PROMPTS, BUDGETS) if size == 4 else (PROMPTS[1:2], BUDGETS[1:2])


@functools.cache
def _greedy_sequential(rule_index: int, size: int) -> list[list[int]]:
    prompts, budgets = _batch(size)
    return DECODER.generate(prompts, "kad", RULES[rule_index], temperature=0.0, max_new_tokens=budgets).token_ids


# ----------------------------------------------------------------------------- greedy: spec == sequential


@pytest.mark.parametrize("gamma", [1, 3, 7])
@pytest.mark.parametrize("size", [1, 4])
@pytest.mark.parametrize("rule_index", RULE_PARAMS)
def test_greedy_speculative_emits_the_sequential_tokens(rule_index, size, gamma):
    prompts, budgets = _batch(size)
    out = DECODER.generate(prompts, "kad-spec", RULES[rule_index], gamma=gamma, temperature=0.0, max_new_tokens=budgets)
    assert out.token_ids == _greedy_sequential(rule_index, size)
    for tokens, budget in zip(out.token_ids, budgets):
        assert 1 <= len(tokens) <= budget


@st.composite
def _greedy_cases(draw):
    """Ragged prompts of random token ids, budgets from 0, any γ, any rule, random stop tokens."""
    rows = draw(st.integers(1, 4))
    prompts = [draw(st.lists(st.integers(0, V - 1), min_size=1, max_size=12)) for _ in range(rows)]
    budgets = [draw(st.integers(0, 10)) for _ in range(rows)]
    return prompts, budgets, draw(st.sampled_from(RULES)), draw(st.integers(1, 8)), draw(st.sets(st.integers(0, V - 1), max_size=3))


@given(case=_greedy_cases())
def test_greedy_speculative_is_sequential_and_batched_is_one_by_one(case):
    prompts, budgets, rule, gamma, stop_ids = case
    decoder = kad.Decoder(MODELS["base"], MODELS["aligned"], TOKENIZER, reference=MODELS["reference"])
    decoder.stop_ids = frozenset(stop_ids)
    mode = {Kind.NUDGING: "nudging", Kind.IMPLICIT_REWARD: "implicit-reward"}.get(rule.kind, "kad")
    sequential = decoder.generate(prompts, mode, rule, temperature=0.0, max_new_tokens=budgets).token_ids
    speculative = decoder.generate(prompts, f"{mode}-spec", rule, gamma=gamma, temperature=0.0, max_new_tokens=budgets)
    assert speculative.token_ids == sequential
    for prompt, budget, tokens in zip(prompts, budgets, sequential):
        assert len(tokens) <= budget and not stop_ids & set(tokens[:-1])
        alone = decoder.generate([prompt], f"{mode}-spec", rule, gamma=gamma, temperature=0.0, max_new_tokens=budget)
        assert alone.token_ids == [tokens]


def test_greedy_speculative_is_not_trivial():
    """The checks above mean something only if drafts are sometimes rejected and sometimes accepted."""
    prompts, budgets = _batch(4)
    stats = DECODER.generate(prompts, "kad-spec", kk.Dual(0.4), gamma=3, temperature=0.0, max_new_tokens=budgets).stats
    assert 0.2 < stats.acceptance_rate < 0.9


# ----------------------------------------------------------------------------- sampling: distributions

ROWS = 6000  # one prompt repeated: i.i.d. samples in a single batched generation
CHI_PROMPT = "hello"


def _exact_pairs(rule: kk.Rule, prompt: list[int], temperature: float) -> np.ndarray:
    return exact_pairs(MODELS, rule, prompt, temperature, V, DECODER.stop_ids)


@pytest.mark.parametrize(
    "mode, rule, temperature, gamma",
    [
        ("kad", kk.Dual(0.4), 1.0, 3),
        ("kad", kk.Dual(0.4), 1.0, 1),
        ("nudging", kk.Nudging(0.4), 0.7, 3),
        ("implicit-reward", kk.ImplicitReward(), 1.3, 1),
    ],
    ids=["dual", "dual-gamma1", "nudging-T0.7", "implicit-reward-T1.3-gamma1"],
)
def test_sampled_pairs_follow_the_mixture(mode, rule, temperature, gamma):
    """The first two tokens (a speculative round can emit both; with γ = 1 the second
    may be the bonus token) are distributed as π, sequentially and speculatively;
    the test can fail: the same samples are far from the base model alone (what a
    verify against p instead of π would give)."""
    prompt = DECODER.encode(CHI_PROMPT)
    rows = [prompt] * ROWS
    # Budget γ + 1 keeps the whole round: both tokens may come from accepted drafts, a correction or the bonus.
    spec = DECODER.generate(
        rows, f"{mode}-spec", rule, gamma=gamma, temperature=temperature, max_new_tokens=gamma + 1, seed=1
    )
    seq = DECODER.generate(rows, mode, rule, temperature=temperature, max_new_tokens=2, seed=2)
    exact = _exact_pairs(rule, prompt, temperature)
    spec_counts, seq_counts = pair_counts(spec.token_ids, V), pair_counts(seq.token_ids, V)
    assert goodness_of_fit(spec_counts, exact) > 1e-3
    assert goodness_of_fit(seq_counts, exact) > 1e-3
    assert two_sample(spec_counts, seq_counts) > 1e-3
    # Rejections (residual draws) and bonus tokens both occur; at γ = 1 the second token is
    # a bonus whenever the draft is accepted (always, for dual here: every token is deferred at first).
    assert 0.1 < spec.stats.acceptance_rate < (0.95 if gamma > 1 else 1.0 + 1e-9)
    base_alone = _exact_pairs(kk.Dual(0.0), prompt, temperature)  # defers nothing: π = p
    assert goodness_of_fit(spec_counts, base_alone) < 1e-6


# ----------------------------------------------------------------------------- caches


@pytest.mark.parametrize(
    "mode, rule, temperature",
    [
        ("kad-spec", kk.Dual(0.4), 1.0),
        ("implicit-reward-spec", kk.ImplicitReward(), 1.0),
        ("nudging-spec", kk.Nudging(0.4), 0.0),
        ("nudging", kk.Nudging(0.5), 1.0),
    ],
    ids=["kad-spec", "implicit-reward-spec", "nudging-spec-greedy", "nudging-lagging-aligned"],
)
def test_every_forward_equals_a_fresh_forward(monkeypatch, mode, rule, temperature):
    """Each forward of the loop (first read of the prompt, drafts, verification, catch-up of a skipped
    model) gives, for every row, the logits of a fresh cacheless forward over the
    row's real tokens: rejected drafts, padding and dropped rows leave no trace."""
    original = HFEngine.advance
    checked = {"positions": 0, "rejected": 0}

    def advance_and_check(self: HFEngine, batch, keep: int = 1):
        logits = original(self, batch, keep)
        end = batch.width
        for b in range(batch.tokens.shape[0]):
            mask = batch.mask[b, :end].bool()
            if not mask.any():  # no real token in this row yet
                continue
            checked["rejected"] += int((~mask & (mask.cumsum(0) > 0)).sum())  # masked columns after real tokens
            sequence = batch.tokens[b, :end][mask]
            fresh = self.model(input_ids=sequence[None]).logits[0, :, : self.vocab_size]
            for k, column in enumerate(range(end - keep, end)):
                if mask[column]:
                    index = int(mask[: column + 1].sum()) - 1
                    torch.testing.assert_close(logits[b, k], fresh[index], atol=2e-5, rtol=1e-4)
                    checked["positions"] += 1
        return logits

    monkeypatch.setattr(HFEngine, "advance", advance_and_check)
    out = DECODER.generate(PROMPTS, mode, rule, gamma=3, temperature=temperature, max_new_tokens=BUDGETS, seed=0)
    assert checked["positions"] > 50
    if mode.endswith("-spec"):
        assert out.stats.drafts_accepted < out.stats.drafts_proposed  # some drafts were rejected
        assert checked["rejected"] > 0  # and sat masked in the middle of a later forward's context


@pytest.mark.parametrize(
    "rule, temperature", [(kk.Nudging(0.4), 0.0), (kk.Dual(0.4), 1.0), (kk.Primal(0.9), 1.0), (kk.Dual(0.4), 0.0)]
)
def test_the_aligned_model_runs_only_on_steps_where_a_row_needs_q(monkeypatch, rule, temperature):
    """Where the mask depends on p alone, a step needs q only for rows in q's share of π
    (kad/draw.py); the aligned model catches up on the skipped tokens when it next runs."""
    calls = {"aligned": 0, "needing": 0}
    original_advance, original_draw = HFEngine.advance, kad.loop.draw_from_p

    def counting(self, batch, keep=1):
        calls["aligned"] += self.model is MODELS["aligned"]
        return original_advance(self, batch, keep)

    def recording(*args, **kwargs):
        draw = original_draw(*args, **kwargs)
        calls["needing"] += bool(draw.needs_q.any())
        return draw

    monkeypatch.setattr(HFEngine, "advance", counting)
    monkeypatch.setattr(kad.loop, "draw_from_p", recording)
    mode = "nudging" if isinstance(rule, kk.Nudging) else "kad"
    out = DECODER.generate(PROMPTS[:1], mode, rule, temperature=temperature, max_new_tokens=30, seed=0)
    assert calls["aligned"] == calls["needing"]
    assert 0 < calls["needing"] < out.stats.rounds


@pytest.mark.parametrize("rule", [kk.Dual(0.4), kk.Threshold(0.1, "max_q_minus")], ids=repr)
@pytest.mark.parametrize("size", [1, 4])
def test_the_bonus_position_costs_an_aligned_forward_only_when_a_bonus_needs_q(monkeypatch, size, rule):
    """q at the bonus position is computed only in rounds where some row accepted every
    draft and, where the mask depends on p alone, drew from q's share of π."""
    calls = {"aligned": 0}
    rounds: list[tuple[int, bool]] = []  # (γ, some row accepted all γ drafts)
    bonus_needing_q: list[bool] = []
    original_advance, original_verify, original_draw = HFEngine.advance, kk.verify, kad.loop.draw_from_p

    def counting(self, batch, keep=1):
        calls["aligned"] += self.model is MODELS["aligned"]
        return original_advance(self, batch, keep)

    def recording_verify(p, q, drafts, *args, **kwargs):
        verified = original_verify(p, q, drafts, *args, **kwargs)
        rounds.append((drafts.shape[1], bool((verified.num_accepted == drafts.shape[1]).any())))
        return verified

    def recording_draw(*args, **kwargs):
        draw = original_draw(*args, **kwargs)
        bonus_needing_q.append(bool(draw.needs_q.any()))
        return draw

    monkeypatch.setattr(HFEngine, "advance", counting)
    monkeypatch.setattr(kad.loop.kk, "verify", recording_verify)
    monkeypatch.setattr(kad.loop, "draw_from_p", recording_draw)
    prompts, budgets = _batch(size)
    DECODER.generate(prompts, "kad-spec", rule, gamma=3, temperature=1.0, max_new_tokens=budgets, seed=0)
    with_bonus = sum(bonus for _, bonus in rounds)
    assert 0 < with_bonus and (size > 1 or with_bonus < len(rounds))  # one row: some rounds reject a draft
    drafts = sum(gamma for gamma, _ in rounds)  # the first draft forward also reads the prompt
    if rule.mask_from_p:
        assert len(bonus_needing_q) == with_bonus
        assert calls["aligned"] == drafts + sum(bonus_needing_q)
    else:
        assert not bonus_needing_q and calls["aligned"] == drafts + with_bonus


# ----------------------------------------------------------------------------- batching


@pytest.mark.parametrize(
    "mode, rule",
    [
        ("base", None),
        ("aligned", None),
        ("kad", kk.Primal(0.9)),
        ("kad-spec", kk.Dual(0.4)),
        ("nudging", kk.Nudging(0.4)),
        ("implicit-reward-spec", None),
    ],
)
def test_batched_output_equals_per_prompt_output(mode, rule):
    batched = DECODER.generate(PROMPTS, mode, rule, gamma=3, temperature=0.0, max_new_tokens=BUDGETS)
    single = [
        DECODER.generate([p], mode, rule, gamma=3, temperature=0.0, max_new_tokens=b).token_ids[0]
        for p, b in zip(PROMPTS, BUDGETS)
    ]
    assert batched.token_ids == single
    assert batched.texts == [TOKENIZER.decode(t, skip_special_tokens=True) for t in single]


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_a_sliding_window_base_decodes_speculatively(attention):
    """A window of 3 tokens, far shorter than the rows: rejected drafts (masked columns)
    must not count in it, and cropping them must work past the window."""
    from transformers import MistralConfig, MistralForCausalLM

    base = tiny_model(MistralConfig, MistralForCausalLM, V, sliding_window=3)
    base.set_attn_implementation(attention)
    decoder = kad.Decoder(base, MODELS["aligned"], TOKENIZER)
    rule = kk.Dual(0.4)
    sequential = decoder.generate(PROMPTS, "kad", rule, temperature=0.0, max_new_tokens=BUDGETS).token_ids
    for gamma in (1, 3, 6):
        speculative = decoder.generate(PROMPTS, "kad-spec", rule, gamma=gamma, temperature=0.0, max_new_tokens=BUDGETS)
        assert speculative.token_ids == sequential
        assert 0 < speculative.stats.drafts_accepted < speculative.stats.drafts_proposed
    assert sequential == [
        decoder.generate([p], "kad", rule, temperature=0.0, max_new_tokens=b).token_ids[0] for p, b in zip(PROMPTS, BUDGETS)
    ]


def test_a_model_whose_cache_cannot_drop_drafts():
    """LFM2's convolution layers keep a recurrent state: no drafts to crop (speculative
    modes refused up front); rows that finish first leave it (reorder_cache) exactly."""
    from transformers import Lfm2Config, Lfm2ForCausalLM

    base = tiny_model(Lfm2Config, Lfm2ForCausalLM, V, layer_types=["conv", "full_attention"])
    decoder = kad.Decoder(base, MODELS["aligned"], TOKENIZER)
    with pytest.raises(ValueError, match="kad-spec needs a model whose cache can drop rejected drafts; .*Lfm2.* conv layers"):
        decoder.generate(PROMPTS[:2], "kad-spec", kk.Dual(0.4), temperature=0.0, max_new_tokens=4)
    for mode, rule in (("kad", kk.Dual(0.4)), ("nudging", kk.Nudging(0.4))):
        batched = decoder.generate(PROMPTS, mode, rule, temperature=0.0, max_new_tokens=BUDGETS).token_ids
        assert batched == [decoder.generate([p], mode, rule, temperature=0.0, max_new_tokens=b).token_ids[0]
                           for p, b in zip(PROMPTS, BUDGETS)]


def test_models_keeping_state_outside_the_cache_are_refused():
    from transformers import (
        OpenAIGPTConfig,
        OpenAIGPTLMHeadModel,
        RecurrentGemmaConfig,
        RecurrentGemmaForCausalLM,
        RwkvConfig,
        RwkvForCausalLM,
    )

    for model in (
        tiny_model(RecurrentGemmaConfig, RecurrentGemmaForCausalLM, V, lru_width=32, attention_window_size=3),
        RwkvForCausalLM(RwkvConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2, attention_hidden_size=32)),
        OpenAIGPTLMHeadModel(OpenAIGPTConfig(vocab_size=V, n_embd=32, n_layer=1, n_head=2)),
    ):
        with pytest.raises(ValueError, match=rf"\({model.config.model_type}\) keeps its state outside a transformers "
                                             "DynamicCache"):
            kad.Decoder(model, MODELS["aligned"], TOKENIZER)


def test_rows_stop_at_their_own_stop_token():
    """A stop token ends its row mid-round (the rest of the round is dropped); the other rows go on."""
    rule = kk.Dual(0.4)
    free = DECODER.generate(PROMPTS, "kad-spec", rule, gamma=3, temperature=0.0, max_new_tokens=BUDGETS).token_ids
    stop = free[0][4]  # the fifth token of the first row becomes a stop token
    decoder = kad.Decoder(MODELS["base"], MODELS["aligned"], make_tokenizer(eos=TOKENIZER.convert_ids_to_tokens(stop)))
    assert stop in decoder.stop_ids
    stopped = decoder.generate(PROMPTS, "kad-spec", rule, gamma=3, temperature=0.0, max_new_tokens=BUDGETS).token_ids
    for before, after in zip(free, stopped):
        expected = before[: before.index(stop) + 1] if stop in before else before
        assert after == expected
    assert len(stopped[0]) <= 5 and any(len(s) > 5 for s in stopped)


def test_logits_are_cut_to_the_tokenizer_vocabulary():
    """The base model has 80 logits for 72 tokens; its padded rows carry real mass here."""
    with torch.no_grad():
        probs = MODELS["base"](input_ids=torch.tensor([DECODER.encode("hello")])).logits.softmax(-1)
    assert probs[0, :, V:].sum(-1).mean() > 0.01  # uncut, ~8 of the 800 tokens below would be padding
    out = DECODER.generate(PROMPTS * 25, "base", temperature=1.0, max_new_tokens=8, seed=0)
    assert max(max(t) for t in out.token_ids) < V


# ----------------------------------------------------------------------------- statistics, chat, streaming


def test_statistics():
    prompts, budgets = _batch(4)
    spec = DECODER.generate(prompts, "kad-spec", kk.Dual(0.4), gamma=3, max_new_tokens=budgets, seed=0).stats
    seq = DECODER.generate(prompts, "kad", kk.Dual(0.4), max_new_tokens=budgets, seed=0).stats
    nudging = DECODER.generate(prompts, "nudging", kk.Nudging(0.4), max_new_tokens=budgets, seed=0).stats
    base = DECODER.generate(prompts, "base", max_new_tokens=budgets, seed=0).stats
    untracked = DECODER.generate(prompts, "kad", kk.Dual(0.4), max_new_tokens=budgets, track_alpha=False).stats
    for stats in (spec, seq, nudging, base):
        assert stats.new_tokens > 0 and stats.wall_time_s > 0
        assert stats.tokens_per_s == pytest.approx(stats.new_tokens / stats.wall_time_s)
        assert 0 <= stats.mean_alpha <= 1 and 0 <= stats.deferral_fraction <= 1
        assert stats.alpha_count == stats.new_tokens
    assert 0 < spec.acceptance_rate < 1
    assert spec.drafts_proposed <= 3 * spec.verified_rows  # fewer drafts when the budgets are nearly spent
    assert spec.mean_accepted_length == pytest.approx(1 + spec.drafts_accepted / spec.verified_rows)
    assert 1 < spec.mean_accepted_length <= 4
    assert spec.rounds < seq.rounds == max(budgets)
    assert np.isnan(seq.acceptance_rate) and np.isnan(seq.mean_accepted_length)
    assert seq.deferral_fraction == 1.0 and 0 < seq.mean_alpha < 1  # dual defers the unlikely tokens at every step
    assert nudging.mean_alpha == pytest.approx(nudging.deferral_fraction)  # nudging: α ∈ {0, 1}
    assert base.mean_alpha == 0 and base.deferral_fraction == 0
    assert np.isnan(untracked.mean_alpha) and untracked.alpha_count == 0
    assert "acceptance rate" in spec.summary() and "tokens/s" in spec.summary()
    # A sequential mode has no acceptance to report, an untracked α no mean: no "nan" lines.
    assert "acceptance" not in seq.summary() and "mean alpha" in seq.summary()
    assert "mean alpha" not in untracked.summary() and "nan" not in seq.summary() + untracked.summary()


@pytest.mark.parametrize("mode, rule", [("kad-spec", kk.Dual(0.4)), ("kad", kk.Dual(0.4)), ("nudging", kk.Nudging(0.4))])
def test_row_statistics_add_up_to_the_totals(mode, rule):
    prompts, budgets = _batch(4)
    out = DECODER.generate(prompts, mode, rule, gamma=3, max_new_tokens=budgets, seed=0)
    rows, total = out.row_stats, out.stats
    assert len(rows) == len(prompts)
    for field in ("new_tokens", "drafts_proposed", "drafts_accepted", "verified_rows", "alpha_count", "deferring_steps"):
        assert sum(getattr(r, field) for r in rows) == getattr(total, field), field
    assert sum(r.alpha_sum for r in rows) == pytest.approx(total.alpha_sum)
    assert [r.new_tokens for r in rows] == [len(t) for t in out.token_ids]
    assert max(r.rounds for r in rows) == total.rounds
    assert max(r.wall_time_s for r in rows) <= total.wall_time_s
    assert all(r.wall_time_s > 0 for r in rows)


def test_chat_template_and_system_message():
    expected = TOKENIZER(f"<system>{kad.SYSTEM_PROMPT}<user>hi<assistant>", add_special_tokens=False).input_ids
    assert DECODER.encode("hi", chat=True) == expected
    assert DECODER.encode("hi", chat=True, system_prompt=None) == TOKENIZER("<user>hi<assistant>").input_ids
    out = DECODER.generate(["hi"], "base", temperature=0.0, max_new_tokens=5, chat=True)
    assert out.token_ids == DECODER.generate([expected], "base", temperature=0.0, max_new_tokens=5).token_ids


def test_a_chat_template_refusing_the_conversation_is_a_value_error():
    """Gemma's template takes no system message: a ValueError saying how to go without (the CLI's one line)."""
    tokenizer = make_tokenizer()
    tokenizer.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
        "{% endif %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    decoder = kad.Decoder(MODELS["base"], MODELS["aligned"], tokenizer)
    with pytest.raises(ValueError, match=r"chat template refused the conversation: System role not supported "
                                         r"\(without a system prompt: system_prompt=None, --system ''\)"):
        decoder.generate("hi", "base", chat=True, max_new_tokens=2)
    assert decoder.encode("hi", chat=True, system_prompt=None) == TOKENIZER("<user>hi<assistant>").input_ids


def test_numpy_numbers_are_taken_as_python_ones():
    """A numpy budget reached the model as logits_to_keep (an index there, not a count) in a short last round."""
    rule = kk.Dual(0.4)
    want = DECODER.generate(PROMPTS[:2], "kad-spec", rule, gamma=4, temperature=0.0, max_new_tokens=6).token_ids
    for budget in (np.int64(6), [np.int64(6), np.int32(6)]):
        got = DECODER.generate(PROMPTS[:2], "kad-spec", rule, gamma=np.int64(4), temperature=np.float32(0.0),
                               max_new_tokens=budget)
        assert got.token_ids == want
    sampled = DECODER.generate(PROMPTS[:1], "kad-spec", rule, gamma=4, temperature=np.float32(0.5), seed=3,
                               max_new_tokens=6)
    assert sampled.token_ids == DECODER.generate(PROMPTS[:1], "kad-spec", rule, gamma=4, temperature=float(np.float32(0.5)),
                                                 seed=3, max_new_tokens=6).token_ids


def test_streamer_receives_the_prompt_then_each_round():
    recorder = Recorder()
    prompt = DECODER.encode(PROMPTS[0])
    out = DECODER.generate([prompt], "kad-spec", kk.Dual(0.4), gamma=3, max_new_tokens=20, seed=0, streamer=recorder)
    assert recorder.puts[0] == prompt and recorder.ended
    assert sum(recorder.puts[1:], []) == out.token_ids[0]
    assert len(recorder.puts) - 1 == out.stats.rounds


def test_threads_sharing_a_decoder_take_turns():
    """The engines' caches serve one generation at a time: concurrent calls on one Decoder
    give each the tokens it gets alone (they crashed or returned wrong tokens before)."""
    calls = [dict(mode="kad-spec", gamma=g, prompts=PROMPTS[: 1 + g % 3]) for g in (1, 2, 3, 4)]

    def run(call):
        return DECODER.generate(call["prompts"], call["mode"], kk.Dual(0.4), gamma=call["gamma"], temperature=0,
                                max_new_tokens=12).token_ids  # fmt: skip

    alone = [run(call) for call in calls]
    with ThreadPoolExecutor(max_workers=4) as pool:
        together = list(pool.map(run, calls * 2))
    assert together == alone * 2


def test_front_ends_sharing_an_engine_take_turns():
    """One engine object handed to two Decoders (or to kad.hf.generate from threads): the loop
    holds it for a whole generation, so each call gets the tokens it gets alone."""
    aligned = HFEngine(MODELS["aligned"], len(TOKENIZER))
    decoders = [kad.Decoder(HFEngine(MODELS["base"], len(TOKENIZER)), aligned, TOKENIZER) for _ in range(2)]

    def run(job):
        decoder, gamma = job
        return decoder.generate(PROMPTS[: 1 + gamma % 3], "kad-spec", kk.Dual(0.4), gamma=gamma, temperature=0,
                                max_new_tokens=12).token_ids  # fmt: skip

    jobs = [(decoders[i % 2], g) for i, g in enumerate((1, 2, 3, 4))]
    alone = [run(job) for job in jobs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        together = list(pool.map(run, jobs * 2))
    assert together == alone * 2


@pytest.mark.parametrize(
    "call",
    [dict(prompts=PROMPTS[:2]), dict(max_new_tokens=-1), dict(mode="nope"), dict(chat="yes"), dict(seed="x")],
    ids=["two-prompts", "budget", "mode", "chat", "seed"],
)
def test_the_streamer_ends_when_the_call_is_refused(call):
    """A consumer iterating a TextIteratorStreamer in another thread waits for end(): before, a
    refused argument left it waiting for ever."""
    recorder = Recorder()
    arguments = dict(prompts=PROMPTS[:1], mode="kad", rule=kk.Dual(0.4), max_new_tokens=4) | call
    with pytest.raises((TypeError, ValueError)):
        DECODER.generate(arguments.pop("prompts"), streamer=recorder, **arguments)
    assert recorder.ended and not recorder.puts


def test_a_generation_on_an_engine_started_from_the_streamer_of_another_is_refused():
    """Waiting for the engine would never end: the thread asking for it holds it."""
    aligned = HFEngine(MODELS["aligned"], len(TOKENIZER))
    first, second = (kad.Decoder(HFEngine(MODELS["base"], len(TOKENIZER)), aligned, TOKENIZER) for _ in range(2))

    class Reentrant(Recorder):
        def put(self, value: torch.Tensor) -> None:
            super().put(value)
            if len(self.puts) == 2:
                second.generate(PROMPTS[:1], "kad", kk.Dual(0.4), max_new_tokens=2)

    with pytest.raises(RuntimeError, match="started inside another on the same engine"):
        first.generate(PROMPTS[:1], "kad", kk.Dual(0.4), max_new_tokens=6, streamer=Reentrant())
    assert second.generate(PROMPTS[:1], "kad", kk.Dual(0.4), max_new_tokens=2).token_ids  # not left held


def test_a_generation_started_from_its_own_streamer_is_refused():
    class Reentrant(Recorder):
        def put(self, value: torch.Tensor) -> None:
            super().put(value)
            if len(self.puts) == 2:
                DECODER.generate(PROMPTS[:1], "kad", kk.Dual(0.4), max_new_tokens=2)

    streamer = Reentrant()
    with pytest.raises(RuntimeError, match="started inside another on the same engine"):
        DECODER.generate(PROMPTS[:1], "kad", kk.Dual(0.4), max_new_tokens=6, streamer=streamer)
    assert streamer.ended
    assert DECODER.generate(PROMPTS[:1], "kad", kk.Dual(0.4), max_new_tokens=2).token_ids  # not left locked


@pytest.mark.parametrize("mode", ["kad", "kad-spec", "implicit-reward-spec"])
def test_no_cache_outlives_its_generation(mode):
    """A large model's KV cache would hold its memory until the next call."""
    rule = kk.ImplicitReward() if mode.startswith("implicit") else kk.Dual(0.4)
    DECODER.generate(PROMPTS[:3], mode, rule, max_new_tokens=6)
    for engine in DECODER.engines.values():
        assert engine.cached == 0 and engine.cache.get_seq_length() == 0, engine.name


def test_a_decoder_survives_deepcopy_and_pickle():
    expected = DECODER.generate(PROMPTS[:2], "kad-spec", kk.Dual(0.4), temperature=0, max_new_tokens=8).token_ids
    for copy in (copy_module.deepcopy(DECODER), pickle.loads(pickle.dumps(DECODER))):
        assert copy.generate(PROMPTS[:2], "kad-spec", kk.Dual(0.4), temperature=0, max_new_tokens=8).token_ids == expected


def test_cli_generate_streams_and_prints_statistics(tmp_path, capsys):
    # The base model serves as both models: AutoTokenizer picks the tokenizer class from the
    # model's architecture, so two architectures would load two different vocabularies.
    MODELS["base"].save_pretrained(tmp_path / "model")
    TOKENIZER.save_pretrained(tmp_path / "model")
    model = str(tmp_path / "model")
    args = ["generate", "--base", model, "--aligned", model, "--mode", "kad-spec", "--rule", "dual", "--lam", "0.4",
            "--gamma", "3", "--temperature", "0", "--max-new-tokens", "12", "--device", "cpu",
            "--prompt", "hello"]  # fmt: skip
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    decoder = kad.Decoder.from_pretrained(model, model, device="cpu")
    expected = decoder.generate("hello", "kad-spec", kk.Dual(0.4), gamma=3, temperature=0, max_new_tokens=12, chat=True)
    assert expected.texts[0] and printed.startswith(expected.texts[0])
    assert "acceptance rate" in printed and "tokens/s" in printed


def test_cli_rule_names():
    assert build_rule("kad-spec", None, 0.3) == kk.Dual(0.3)
    assert build_rule("kad", "primal", 0.9) == kk.Primal(0.9)
    assert build_rule("kad", "token_v2", 0.1) == kk.Dual(mu=0.1, loss="perceptron")
    assert build_rule("nudging-spec", None, 0.4) == kk.Nudging(0.4)
    assert build_rule("implicit-reward", None, 0.4) == kk.ImplicitReward()
    assert build_rule("base", None, 0.4) is None
    assert build_rule("kad", "token_max", None) == kk.rule_from_name("token_max", 0.0)  # no parameter to give
    with pytest.raises(ValueError, match="fixes its rule"):
        build_rule("nudging", "dual", 0.4)
    with pytest.raises(ValueError, match="rule 'primal' needs its parameter"):
        build_rule("kad", "primal", None)


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("mode", ["kad", "kad-spec", "nudging"])
def test_greedy_decoding_leaves_the_global_random_state_alone(mode):
    """Greedy draws nothing: code after it draws from torch's default generator what it drew before."""
    decoder = kad.Decoder(MODELS["base"], MODELS["aligned"], TOKENIZER)
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    decoder.generate(PROMPTS[:3], mode, kk.Dual(0.4) if mode != "nudging" else kk.Nudging(0.4), temperature=0,
                     max_new_tokens=8)
    assert torch.equal(torch.rand(3), expected)


def test_mismatched_tokenizers_are_refused_naming_both():
    shuffled = make_tokenizer(chars=CHARS[::-1])
    with pytest.raises(ValueError, match="the aligned model.*the base model.*differ"):
        kad.Decoder(MODELS["base"], MODELS["aligned"], TOKENIZER, base_tokenizer=shuffled)
    with pytest.raises(ValueError, match="reference model.*differ"):
        kad.Decoder(MODELS["base"], MODELS["aligned"], TOKENIZER, reference_tokenizer=make_tokenizer(chars=CHARS + "#"))


def test_a_model_with_fewer_logits_than_tokens_is_refused():
    with pytest.raises(ValueError, match="the aligned model has 76 output logits, fewer than the tokenizer's 77"):
        kad.Decoder(MODELS["base"], MODELS["aligned"], make_tokenizer(chars=CHARS + "#$%&*"))


@pytest.mark.parametrize("seed", [2**64 - 1, -(2**63), np.int64(5)], ids=["2**64-1", "-2**63", "numpy"])
def test_every_64_bit_seed_is_taken(seed):
    """The ends of torch.Generator.manual_seed's range; -2**63 and 2**63 are the same 64 bits."""
    tokens = DECODER.generate(["hello"], "kad", kk.Dual(0.4), max_new_tokens=4, seed=seed).token_ids
    twin = {2**64 - 1: -1, -(2**63): 2**63}.get(int(seed), int(seed))
    assert tokens == DECODER.generate(["hello"], "kad", kk.Dual(0.4), max_new_tokens=4, seed=twin).token_ids


def test_seeds_2_to_the_32_apart_draw_differently_on_the_cpu():
    """The CPU generator keeps only a seed's low 32 bits: kad eval's batch seeds (seed · 2**32 +
    first) drew alike for every --seed.  Seeds below 2**32 draw as torch seeds them."""
    prompts = ["hello"] * 16
    draws = {seed: DECODER.generate(prompts, "kad", kk.Dual(0.4), max_new_tokens=6, seed=seed).token_ids
             for seed in (0, 2**32, 2 * 2**32, 1)}  # fmt: skip
    assert len({str(tokens) for tokens in draws.values()}) == 4
    assert generator_seed(7, torch.device("cpu")) == 7 and generator_seed(2**40, torch.device("cuda")) == 2**40
    assert generator_seed(2**32, torch.device("cpu")) < 2**32


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(prompts=[]), ValueError, "prompts is empty"),
        (dict(prompts=[[]]), ValueError, "prompt 0 has no tokens"),
        (dict(prompts=[[1, 999]]), ValueError, "prompt 0 has token ids outside .*: 999 at position 1"),
        (dict(prompts=[[5, 6], [5.9, 6.7]]), TypeError, r"prompt 1 must be a list of token ids \(ints\), got 5.9"),
        (dict(prompts=[[True, False]]), TypeError, "prompt 0 must be a list of token ids .*got True at position 0"),
        (dict(prompts=[[1, None]]), TypeError, "prompt 0 must be a list of token ids .*got None at position 1"),
        (dict(prompts=[[[5, 6]]]), TypeError, r"prompt 0 must be a list of token ids .*got \[5, 6\]"),
        (dict(prompts=[["a", "b"]]), TypeError, "prompt 0 must be a list of token ids .*got 'a'"),
        (dict(mode="kad-spec", gamma=0), ValueError, "gamma"),
        (dict(mode="kad-spec", gamma=-2), ValueError, "gamma"),
        (dict(mode="kad", rule=None), ValueError, "needs a rule"),
        (dict(mode="nudging", rule=kk.Dual(0.4)), TypeError, "needs a Nudging rule"),
        (dict(rule="dual"), TypeError, r"rule must be a kad_kernels rule, e.g. rule=kad_kernels.Dual\(0.4\), got .dual."),
        (dict(mode="base", rule=kk.Dual(0.4)), ValueError, "takes no rule"),
        (dict(mode="speculative"), ValueError, "unknown mode"),
        (dict(max_new_tokens=[3, 4]), ValueError, "max_new_tokens"),
        (dict(max_new_tokens=5.0), ValueError, "max_new_tokens must be an int >= 0 or one per prompt, got 5.0"),
        (dict(max_new_tokens=[2.5]), ValueError, "max_new_tokens must be an int >= 0 or one per prompt"),
        (dict(prompts=[1, 2, 3]), TypeError, "prompts must be a string, a list of strings or a list of token-id"),
        (dict(prompts=7), TypeError, "prompts must be a string"),
        (dict(temperature=-0.5), ValueError, "temperature must be finite and >= 0"),
        (dict(temperature=float("nan")), ValueError, "temperature must be finite and >= 0"),
        (dict(temperature=float("inf")), ValueError, "temperature must be finite and >= 0"),
        (dict(temperature=1e-45), ValueError, r"a float32 normal number when > 0 .*got 1e-45"),
        (dict(temperature=1e300), ValueError, r"a float32 normal number when > 0 .*got 1e\+300"),
        (dict(rule=kk.Dual(torch.tensor([0.1]))), ValueError, "has a tensor parameter"),
        (dict(prompts=["a", "b"], streamer=Recorder()), ValueError, "streamer takes one prompt"),
        (dict(streamer=5), TypeError, r"streamer must be a transformers streamer \(with put and end\), got 5"),
        (dict(chat="no"), TypeError, "chat must be True or False, got 'no'"),
        (dict(track_alpha=1), TypeError, "track_alpha must be True or False, got 1"),
        (dict(seed=2**64), ValueError, r"seed must be an int of 64 bits, in \[-2\*\*63, 2\*\*64\), got 18446744073709551616"),
        (dict(seed=-(2**63) - 1), ValueError, "seed must be an int of 64 bits"),
        (dict(seed=1.5), ValueError, "seed must be an int of 64 bits"),
        (dict(seed="7"), ValueError, "seed must be an int of 64 bits"),
    ],
    ids=lambda x: x if isinstance(x, str) else None,
)
def test_bad_arguments_are_refused(kwargs, error, match):
    kwargs = dict(dict(prompts=["hello"], mode="kad", rule=kk.Dual(0.4)), **kwargs)
    with pytest.raises(error, match=match):
        DECODER.generate(kwargs.pop("prompts"), **kwargs)


@pytest.mark.parametrize(
    "prompts, budgets, error, match",
    [
        ([[5, 6], [7]], [3], ValueError, r"budgets must be one per prompt \(2\), got \[3\]"),
        ([[5, 6]], [3, 3], ValueError, r"budgets must be one per prompt \(1\)"),
        ([[5, 6]], [-2], ValueError, r"the budget of prompt 0 must be an int >= 0, got -2"),
        ([[5, 6]], [2.9], ValueError, r"the budget of prompt 0 must be an int >= 0, got 2.9"),
        ([[5, 6]], [True], ValueError, r"the budget of prompt 0 must be an int >= 0, got True"),
        ([[5, 6], []], [3, 3], ValueError, "prompt 1 has no tokens"),
        ([[5, V]], [3], ValueError, f"prompt 0 has token ids outside \\[0, {V}\\): {V} at position 1"),
        ([[5, 6.0]], [3], TypeError, "prompt 0 must be a list of token ids"),
        (["hello"], [3], TypeError, "prompt 0 must be a list of token ids, got str"),
        ([], [], TypeError, "prompts must be a non-empty list of token-id lists"),
        (np.array([[5, 6]]), np.array([3, 3]), ValueError, r"budgets must be one per prompt \(1\)"),
    ],
)
def test_decode_refuses_bad_prompts_and_budgets(prompts, budgets, error, match):
    """kad.decode, the loop under every front end, is public: it checks what it is given."""
    engines = {"base": HFEngine(MODELS["base"], V), "aligned": HFEngine(MODELS["aligned"], V)}
    settings = kad.settings.Settings("kad", kk.Dual(0.4), 4, 0.0, True)
    with pytest.raises(error, match=match):
        kad.decode(engines, prompts, budgets, settings, stop_ids=frozenset(), generator=torch.Generator())
    assert all(engine.cached == 0 for engine in engines.values())


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(settings={"mode": "kad"}), r"settings must be a kad.Settings, got \{'mode': 'kad'\}"),
        (dict(engines=[("base", None)]), "engines must map the roles 'base', 'aligned'"),
        (dict(engines=MODELS), "engines\\['base'\\] must be a kad.engines.Engine, got .*ForCausalLM: wrap a "
                               "transformers model in kad.engines.HFEngine"),
        (dict(stop_ids=None), "stop_ids must be a set of token ids, got None"),
        (dict(stop_ids=[0, 1.5]), r"stop_ids must be token ids \(ints\)"),
        (dict(generator=3), "generator must be a torch.Generator"),
        (dict(streamer=object()), r"streamer must have a put\(token_ids\) method"),
    ],
    ids=["settings", "engines", "models", "stop-ids", "stop-id", "generator", "streamer"],
)
def test_decode_names_an_argument_of_another_type_before_any_engine_runs(change, match):
    engines = {"base": HFEngine(MODELS["base"], V), "aligned": HFEngine(MODELS["aligned"], V)}
    arguments = dict(engines=engines, prompts=[[5, 6]], budgets=[4], settings=kad.Settings("kad", kk.Dual(0.4)),
                     stop_ids=frozenset([0]), generator=torch.Generator(), streamer=None)  # fmt: skip
    with pytest.raises(TypeError, match=match):
        kad.decode(**{**arguments, **change})
    assert all(engine.cached == 0 for engine in engines.values())
    torch.manual_seed(5)  # generator=None: torch's default generator
    default = kad.decode(**{**arguments, "generator": None}).token_ids
    assert default == kad.decode(**{**arguments, "generator": torch.Generator().manual_seed(5)}).token_ids


class _Elsewhere(HFEngine):
    """An engine that says it is on another device (where no generator can be made on a CPU machine)."""

    @property
    def device(self) -> torch.device:
        return torch.device("meta")


def test_a_one_model_mode_draws_on_that_models_device():
    """mode 'aligned' runs the aligned model alone: its draws (and generator) are on its device,
    not the base model's (a GPU base beside a CPU aligned engine, here a device no generator is made on)."""
    elsewhere = kad.Decoder(_Elsewhere(MODELS["base"], V), MODELS["aligned"], TOKENIZER)
    settings = kad.Settings("aligned", None)
    assert kad.loop.draw_device(elsewhere.engines, settings) == torch.device("cpu")
    expected = DECODER.generate(["hello"], "aligned", max_new_tokens=6, seed=3)
    assert elsewhere.generate(["hello"], "aligned", max_new_tokens=6, seed=3).token_ids == expected.token_ids
    with pytest.raises(ValueError, match="generator is on cpu, but this generation draws on meta, the device of"):
        kad.decode(elsewhere.engines, [[5, 6]], [4], kad.Settings("base", None), stop_ids=frozenset(),
                   generator=torch.Generator())  # fmt: skip


class _CountingLikeAServer(HFEngine):
    """An engine with a served model's counters (kad.engines.ServedEngine), fixed values; the
    first time the loop's statistics read them, a Ctrl-C lands in the middle of the reading."""

    requests, wait_s, partial_positions = 3, 0.25, 7
    interrupt = False

    @property
    def inexact_positions(self) -> int:
        if self.interrupt and sys._getframe(1).f_code.co_name == "decoded":  # not isinstance's look
            self.interrupt = False
            raise KeyboardInterrupt
        return 2


def test_a_served_base_models_counters_are_reported_once():
    engine = _CountingLikeAServer(MODELS["base"], V)
    served = kad.Decoder(engine, MODELS["aligned"], TOKENIZER)
    assert isinstance(served.engines["base"], kad.engines.ServedEngine)
    stats = served.generate(["hello"], "kad", kk.Dual(0.5), max_new_tokens=4, seed=3).stats
    assert (stats.requests, stats.server_wait_s, stats.partial_positions, stats.inexact_positions) == (3, 0.25, 7, 2)
    engine.interrupt = True  # the partial result reads them again: counted once still
    with pytest.raises(KeyboardInterrupt) as interrupted:
        served.generate(["hello"], "kad", kk.Dual(0.5), max_new_tokens=4, seed=3)
    stats = interrupted.value.partial.stats
    assert (stats.requests, stats.server_wait_s, stats.partial_positions, stats.inexact_positions) == (3, 0.25, 7, 2)
    stats = served.generate(["hello"], "aligned", max_new_tokens=4, seed=3).stats  # the base model does not run
    assert (stats.requests, stats.server_wait_s, stats.partial_positions, stats.inexact_positions) == (0, 0.0, 0, 0)


@pytest.mark.parametrize("where", ["kernels", "turn"])
def test_a_ctrl_c_before_the_engines_run_leaves_an_empty_partial(monkeypatch, where):
    """A Ctrl-C while the kernels load (the C++ extension builds on first use) or while another
    generation holds the engines: nothing generated yet, said as such (not an AttributeError
    for the partial result), without the served engine's counters of its last generation."""
    engine = _CountingLikeAServer(MODELS["base"], V)  # its counters read 3 requests, ... at any time
    served = kad.Decoder(engine, MODELS["aligned"], TOKENIZER)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    if where == "kernels":
        monkeypatch.setattr(kad.loop.kk, "resolve_backend", interrupted)
    else:
        monkeypatch.setattr(kad.loop.Hold, "take", interrupted)
    with pytest.raises(KeyboardInterrupt) as info:
        served.generate(["hello", "hi"], "kad", kk.Dual(0.5), max_new_tokens=4, seed=3)
    partial = info.value.partial
    assert partial.token_ids == [[], []] and partial.texts == ["", ""]
    stats = partial.stats
    assert (stats.requests, stats.server_wait_s, stats.partial_positions, stats.inexact_positions) == (0, 0.0, 0, 0)
    assert stats.new_tokens == 0 and engine.cached == 0


class _ResetInterrupted(HFEngine):
    """An engine whose reset at the end of its next generation is interrupted (a Ctrl-C landing there)."""

    interrupt = False

    def reset(self, settings=None):
        if settings is None and self.interrupt:
            self.interrupt = False
            raise KeyboardInterrupt
        super().reset(settings)


@pytest.mark.parametrize("mode", ["kad", "kad-spec"])
def test_a_ctrl_c_while_the_engines_reset_keeps_the_result_and_resets_the_others(mode):
    """The generation had finished: its result is the partial, and every other engine still
    empties its cache (a large model's KV cache would stay until the next generation)."""
    base = _ResetInterrupted(MODELS["base"], V)
    aligned = HFEngine(MODELS["aligned"], V)
    decoder = kad.Decoder(base, aligned, TOKENIZER)
    expected = decoder.generate(PROMPTS, mode, kk.Dual(0.5), gamma=2, max_new_tokens=6, seed=3)
    base.interrupt = True
    with pytest.raises(KeyboardInterrupt) as info:
        decoder.generate(PROMPTS, mode, kk.Dual(0.5), gamma=2, max_new_tokens=6, seed=3)
    assert info.value.partial.token_ids == expected.token_ids and info.value.partial.texts == expected.texts
    assert aligned.cached == 0
    assert decoder.generate(PROMPTS, mode, kk.Dual(0.5), gamma=2, max_new_tokens=6, seed=3).token_ids == expected.token_ids


def test_a_ctrl_c_after_the_generation_keeps_it_whole(monkeypatch):
    """Interrupted while the tokens are detokenized: the partial is the whole generation."""
    expected = DECODER.generate(PROMPTS, "kad", kk.Dual(0.5), max_new_tokens=6, seed=3)
    generation = kad.Decoder._generation
    calls = []

    def interrupted_once(self, out):
        calls.append(out)
        if len(calls) == 1:
            raise KeyboardInterrupt
        return generation(self, out)

    monkeypatch.setattr(kad.Decoder, "_generation", interrupted_once)
    with pytest.raises(KeyboardInterrupt) as info:
        DECODER.generate(PROMPTS, "kad", kk.Dual(0.5), max_new_tokens=6, seed=3)
    assert info.value.partial.token_ids == expected.token_ids and info.value.partial.texts == expected.texts


def test_a_ctrl_c_while_the_prompt_is_streamed_ends_the_streamer():
    """A consumer of the streamer (TextIteratorStreamer) waits for end(): it comes also here."""

    class Ended(_InterruptedStreamer):
        ended = False

        def end(self):
            self.ended = True

    streamer = Ended(at=1)  # the prompt's put
    with pytest.raises(KeyboardInterrupt):
        DECODER.generate(PROMPTS[0], "kad", kk.Dual(0.5), max_new_tokens=6, seed=3, streamer=streamer)
    assert streamer.ended


@pytest.mark.parametrize(
    "roles, mode, prompts, match",
    [
        ({"base": V, "aligned": V - 1}, "kad", 1, r"the engines must share one vocabulary; logits per position: "
                                                   rf"the base model \S+ {V}, the aligned model \S+ {V - 1}$"),
        ({"base": V, "aligned": V - 1}, "kad-spec", 1, "the engines must share one vocabulary"),
        ({"base": V}, "kad", 1, r"mode 'kad' needs the engines \['base', 'aligned'\]; engines has no 'aligned'$"),
        ({"base": V}, "aligned", 1, r"mode 'aligned' needs the engines \['aligned'\]; engines has no 'aligned'$"),
        ({"base": V, "aligned": V}, "kad", 2, "a streamer takes one prompt, got 2"),
    ],
    ids=["vocabularies", "vocabularies-spec", "no-aligned", "no-aligned-for-aligned-mode", "streamer"],
)
def test_decode_refuses_engines_it_cannot_run(roles, mode, prompts, match):
    """An aligned engine of a larger vocabulary would give tokens the base model does not
    have wherever α takes a row (drawn from q* alone): refused before any step."""
    engines = {role: HFEngine(MODELS[role], size) for role, size in roles.items()}
    settings = kad.settings.Settings(mode, kk.Dual(0.9) if mode.startswith("kad") else None, 2, 1.0, True)
    streamer = _InterruptedStreamer(at=0) if prompts > 1 else None
    with pytest.raises(ValueError, match=match):
        kad.decode(engines, [[5, 6]] * prompts, [4] * prompts, settings, stop_ids=frozenset(),
                   generator=torch.Generator(), streamer=streamer)  # fmt: skip
    assert all(engine.cached == 0 for engine in engines.values())


@pytest.mark.parametrize(
    "arguments, match",
    [
        (dict(base="Qwen/Qwen2.5-1.5B"), r"base must be a transformers PreTrainedModel or a kad.engines.Engine, "
                                         r"got 'Qwen/Qwen2.5-1.5B': Decoder.from_pretrained loads models by name"),
        (dict(aligned=None), "aligned must be a transformers PreTrainedModel or a kad.engines.Engine, got None$"),
        (dict(reference=TOKENIZER), "reference must be a transformers PreTrainedModel"),
        (dict(tokenizer=None), r"tokenizer must be a transformers tokenizer \(PreTrainedTokenizerBase\), got None$"),
        (dict(tokenizer="Qwen/Qwen2.5-0.5B-Instruct"), "tokenizer must be .*: Decoder.from_pretrained loads models"),
        (dict(base_tokenizer=MODELS["base"].config), "base_tokenizer must be a transformers tokenizer"),
    ],
)
def test_decoder_arguments_of_the_wrong_kind_are_named(arguments, match):
    given = dict(base=MODELS["base"], aligned=MODELS["aligned"], tokenizer=TOKENIZER) | arguments
    with pytest.raises(TypeError, match=match):
        kad.Decoder(given.pop("base"), given.pop("aligned"), given.pop("tokenizer"), **given)


@pytest.mark.parametrize(
    "ids, error, match",
    [(5, TypeError, "stop_ids must be a set of token ids, got 5"), ("ab", TypeError, "stop_ids must be a set"),
     ({1.5}, TypeError, r"stop_ids must be token ids \(ints\), got \[1.5\]"),
     ({V}, ValueError, rf"stop_ids must be in \[0, {V}\), got \[{V}\]")],
)
def test_stop_ids_that_are_not_token_ids_are_refused_when_set(ids, error, match):
    decoder = kad.Decoder(MODELS["base"], MODELS["aligned"], TOKENIZER)
    with pytest.raises(error, match=match):
        decoder.stop_ids = ids
    decoder.stop_ids = [np.int64(3)]
    assert decoder.stop_ids == frozenset({3}) and type(next(iter(decoder.stop_ids))) is int


def test_decode_takes_numpy_arrays_and_tensors_as_lists():
    engines = {"base": HFEngine(MODELS["base"], V), "aligned": HFEngine(MODELS["aligned"], V)}
    settings = kad.settings.Settings("kad", kk.Dual(0.4), 4, 0.0, True)
    prompts = [TOKENIZER("hello there").input_ids[:4], TOKENIZER("what is 2 + 2?").input_ids[:4]]

    def decode(prompts, budgets):
        return kad.decode(engines, prompts, budgets, settings, stop_ids=frozenset(), generator=torch.Generator())

    expected = decode(prompts, [3, 5]).token_ids
    assert [len(t) for t in expected] == [3, 5]
    for rows, budgets in [(np.array(prompts), np.array([3, 5])), (torch.tensor(prompts), torch.tensor([3, 5])),
                          ([np.array(p, dtype=np.int32) for p in prompts], [np.int64(3), 5])]:  # fmt: skip
        assert decode(rows, budgets).token_ids == expected
    settings = dict(mode="kad", rule=kk.Dual(0.4), temperature=0.0)
    assert (DECODER.generate(prompts, max_new_tokens=np.array([3, 5]), **settings).token_ids
            == DECODER.generate(prompts, max_new_tokens=[3, 5], **settings).token_ids)  # fmt: skip


class _FailsAt:
    """An HFEngine whose ``reset`` or ``advance`` number ``at`` fails, as a served model may
    (or raises ``error``: Ctrl-C, a device out of memory)."""

    def __init__(self, engine: HFEngine, method: str, at: int, error: type[BaseException] | None = None):
        self.engine, self.method, self.at, self.calls, self.error = engine, method, at, 0, error

    def __getattr__(self, name):
        attribute = getattr(self.engine, name)
        if name != self.method:
            return attribute

        def failing(*args, **kwargs):
            self.calls += 1
            if self.calls == self.at:
                raise (self.error or kad.engines.EngineError)(f"{name} failed")
            return attribute(*args, **kwargs)

        return failing


@pytest.mark.parametrize("error", [kad.engines.EngineError, KeyboardInterrupt, torch.OutOfMemoryError],
                         ids=lambda e: e.__name__)  # fmt: skip
@pytest.mark.parametrize("method, at, emitted", [("reset", 1, 0), ("advance", 1, 0), ("advance", 3, 2)])
def test_an_engine_error_keeps_what_was_generated(method, at, emitted, error):
    """From the first reset on, an EngineError (or Ctrl-C, or a device out of memory) leaves with
    every row's tokens so far (none before the first step)."""
    base = _FailsAt(HFEngine(MODELS["base"], V), method, at, error)
    decoder = kad.Decoder(base, MODELS["aligned"], TOKENIZER)
    with pytest.raises(error, match=f"{method} failed") as failure:
        decoder.generate(PROMPTS[:2], "kad", kk.Dual(0.4), temperature=0.0, max_new_tokens=6)
    expected = DECODER.generate(PROMPTS[:2], "kad", kk.Dual(0.4), temperature=0.0, max_new_tokens=6).token_ids
    partial = failure.value.partial
    assert partial.token_ids == [tokens[:emitted] for tokens in expected]
    assert partial.texts == [TOKENIZER.decode(t, skip_special_tokens=True) for t in partial.token_ids]


class _InterruptedStreamer:
    """A streamer that raises KeyboardInterrupt at its put number ``at`` (the prompt is the first)."""

    def __init__(self, at: int):
        self.at, self.calls, self.shown = at, 0, []

    def put(self, tokens):
        self.calls += 1
        if self.calls == self.at:
            raise KeyboardInterrupt
        self.shown.append(tokens.tolist())

    def end(self):
        pass


@pytest.mark.parametrize("mode", ["kad", "kad-spec"])
def test_ctrl_c_in_the_streamer_keeps_the_rounds_counted(mode):
    """Ctrl-C while a streamer prints (TextStreamer's put) comes after the round it shows is
    committed: the partial holds its tokens, and every count of that round with them."""
    streamer = _InterruptedStreamer(at=4)  # the prompt, two rounds, then the third
    with pytest.raises(KeyboardInterrupt) as failure:
        DECODER.generate(PROMPTS[0], mode, kk.Dual(0.4), gamma=3, temperature=0.0, max_new_tokens=40,
                         streamer=streamer)  # fmt: skip
    partial = failure.value.partial
    stats, row = partial.stats, partial.row_stats[0]
    assert stats.rounds == row.rounds == 3
    assert len(partial.token_ids[0]) == stats.new_tokens > sum(map(len, streamer.shown[1:]))
    if mode == "kad":
        assert stats.new_tokens == 3
    else:
        assert stats.verified_rows == 3 and stats.drafts_proposed == 9


class _BreaksAt:
    """An HFEngine whose forward number ``at`` gives prompt ``row`` the logits ``value``
    (NaN or +inf at one token, as a float16 overflow does, or -inf at every token)."""

    def __init__(self, engine: HFEngine, at: int, value: float, row: int = 1):
        self.engine, self.at, self.value, self.row, self.calls = engine, at, value, row, 0

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def advance(self, batch, keep=1):
        logits = self.engine.advance(batch, keep)
        self.calls += 1
        if self.calls == self.at:
            logits = logits.clone()
            logits[self.row, -1, 3 if self.value != -math.inf else slice(None)] = self.value
        return logits


@pytest.mark.parametrize("value, what", [(math.nan, "NaN"), (math.inf, r"\+inf"), (-math.inf, "-inf for every token")])
@pytest.mark.parametrize("mode, role", [("base", "base"), ("aligned", "aligned"), ("kad", "base"), ("kad", "aligned"),
                                        ("kad-spec", "base"), ("kad-spec", "aligned")])  # fmt: skip
def test_a_model_giving_broken_logits_is_an_engine_error_not_tokens(mode, role, value, what):
    """The kernels would draw a token from a broken row (greedy: token 0, which stops the
    row here); the round is dropped and the rows keep what came before it."""
    engines = {"base": HFEngine(MODELS["base"], V), "aligned": HFEngine(MODELS["aligned"], V)}
    engines[role] = _BreaksAt(engines[role], at=3, value=value)
    decoder = kad.Decoder(engines["base"], engines["aligned"], TOKENIZER)
    settings = dict(mode=mode, rule=kk.Dual(0.4) if mode.startswith("kad") else None, gamma=2, max_new_tokens=8)
    with pytest.raises(kad.engines.EngineError, match=f"gave logits with {what} for prompt 1 after ") as failure:
        decoder.generate(PROMPTS[:3], temperature=0.0, **settings)
    expected = DECODER.generate(PROMPTS[:3], temperature=0.0, **settings).token_ids
    partial = failure.value.partial.token_ids
    assert all(expected[row][: len(kept)] == kept and len(kept) < len(expected[row]) for row, kept in enumerate(partial))
    stats = failure.value.partial  # the dropped round is in no count
    assert stats.stats.rounds == max(s.rounds for s in stats.row_stats)
    assert stats.stats.new_tokens == sum(map(len, partial))


class _BrokenPastTheFirstRejection:
    """An HFEngine whose verify logits are NaN at every position after a row's first
    rejected draft (greedy Dual(0): π = p), which verify never reads."""

    def __init__(self, engine: HFEngine):
        self.engine, self.broken_rows = engine, 0

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def advance(self, batch, keep=1):
        logits = self.engine.advance(batch, keep)
        if keep > 1:
            drafts = batch.tokens[:, -(keep - 1) :]
            accepted = (logits[:, :-1].argmax(-1) == drafts).long().cumprod(1).sum(1)
            logits = logits.clone()
            for row, read_up_to in enumerate(accepted.tolist()):
                logits[row, read_up_to + 1 :] = math.nan
                self.broken_rows += read_up_to + 1 < keep
        return logits


def test_broken_logits_that_no_draw_reads_are_no_error():
    settings = dict(mode="kad-spec", rule=kk.Dual(0.0), gamma=4, temperature=0.0, max_new_tokens=12)
    base = _BrokenPastTheFirstRejection(HFEngine(MODELS["base"], V))
    out = kad.Decoder(base, MODELS["aligned"], TOKENIZER).generate(PROMPTS, **settings)
    assert base.broken_rows > 0 and out.token_ids == DECODER.generate(PROMPTS, **settings).token_ids


def test_one_engine_object_in_two_roles_is_refused():
    """Its cache serves one role; the same transformers model twice gets an engine per role."""
    engine = HFEngine(MODELS["aligned"], V)
    with pytest.raises(ValueError, match="the aligned and reference models are one engine object"):
        kad.Decoder(MODELS["base"], engine, TOKENIZER, reference=engine)
    twice = kad.Decoder(MODELS["base"], MODELS["aligned"], TOKENIZER, reference=MODELS["aligned"])
    out = twice.generate(["hello"], "implicit-reward", temperature=0.0, max_new_tokens=4)
    assert len(out.token_ids[0]) == 4


@pytest.mark.parametrize("dtype", ["nonsense", "float64", torch.int8])
def test_a_dtype_that_is_not_one_is_refused_before_loading(dtype):
    with pytest.raises(ValueError, match="dtype must be 'auto', 'float32', 'bfloat16', 'float16' or that torch"):
        kad.Decoder.from_pretrained("/nonexistent/b", "/nonexistent/a", dtype=dtype, device="cpu")


def test_a_tokenizer_without_a_chat_template_names_the_way_out():
    tokenizer = make_tokenizer()
    tokenizer.chat_template = None  # a GGUF converted without one, a base model's tokenizer
    decoder = kad.Decoder(MODELS["base"], MODELS["aligned"], tokenizer)
    with pytest.raises(ValueError, match=r"tokenizer .* has no chat template: pass raw prompts \(chat=False; kad generate --no-chat\)"):
        decoder.generate("hello", "base", chat=True, max_new_tokens=1)
    assert len(decoder.generate("hello", "base", max_new_tokens=1).token_ids[0]) == 1


@pytest.mark.parametrize("damage", ["lfs-pointer", "cut-off", "other-shapes"])
def test_damaged_weights_are_named_in_one_line(tmp_path, damage):
    """A clone without git-lfs, a cut-off download, a config.json edited apart from its weights."""
    directory = tmp_path / "model"
    MODELS["base"].save_pretrained(directory)
    TOKENIZER.save_pretrained(directory)
    weights = directory / "model.safetensors"
    if damage == "lfs-pointer":
        weights.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 1234\n")
    elif damage == "cut-off":
        weights.write_bytes(weights.read_bytes()[:1000])
    else:
        config = json.loads((directory / "config.json").read_text())
        (directory / "config.json").write_text(json.dumps(config | {"intermediate_size": 2 * config["intermediate_size"]}))
    with pytest.raises(kad.models.ModelLoadError, match=f"^cannot load the model '{directory}': "):
        kad.models.load(str(directory), torch.device("cpu"))


@pytest.mark.parametrize("served", [dict(base_model="m"), dict(api_key="sk-1"), dict(approximate=True)], ids=repr)
def test_options_of_a_served_base_are_refused_without_one(served):
    """They would be dropped without a word: the base model would not be the one named."""
    with pytest.raises(ValueError, match=r"^base_model, api_key and approximate go with base_url"):
        kad.Decoder.from_pretrained("/nonexistent/b", "/nonexistent/a", device="cpu", **served)


@pytest.mark.parametrize("mode, rule", [("kad", kk.ImplicitReward()), ("implicit-reward-spec", None)])
def test_a_rule_needing_ref_logits_needs_a_reference_model(mode, rule):
    decoder = kad.Decoder(MODELS["base"], MODELS["aligned"], TOKENIZER)
    with pytest.raises(ValueError, match=r"ImplicitReward needs a reference model .*: pass reference= to Decoder"):
        decoder.generate(["hello"], mode, rule)
    with pytest.raises(ValueError, match=r"ImplicitReward needs a reference model .*; engines has no 'reference'"):
        kad.decode(decoder.engines, [[1, 2]], [2], kad.Settings(mode, rule), stop_ids=frozenset(), generator=torch.Generator())


# ----------------------------------------------------------------------------- models, devices and context that cannot be had


@pytest.mark.parametrize(
    "options, message",
    [
        (["--base", "/nonexistent/model", "--aligned", "/nonexistent/model"], "model '/nonexistent/model': no such directory"),
        (["--base", "out/ckpt/final", "--aligned", "out/ckpt/final"], "model 'out/ckpt/final': no such directory"),
        (["--base", "kad-tests/not-a-model", "--aligned", "kad-tests/not-a-model"], "cannot load the model 'kad-tests/not-a-model'"),
        (["--device", "cuda:99"], "device 'cuda:99' is not available"),
        (["--device", "gpu0"], "device 'gpu0' is not a device"),
        (["--device", "xpu"], "device 'xpu' is not available on this machine"),  # torch's module says
        (["--device", "hpu"], "device 'hpu' is not available on this machine"),  # torch has no such module
        (["--device", "meta"], "device 'meta' is not available on this machine"),  # holds no data
        (["--base", "{tmp}", "--aligned", "{tmp}"], "no config.json, so not a transformers model directory"),
        (["--base", "{tmp}/file.json", "--aligned", "{tmp}"], "file.json': not a directory (a transformers model is one)"),
    ],
    ids=["missing-path", "missing-relative-path", "unknown-hub-id", "absent-device", "malformed-device", "xpu", "hpu", "meta", "not-a-model-dir",
         "a-file"],  # fmt: skip
)
def test_cli_says_in_one_line_what_cannot_be_loaded(tmp_path, capsys, options, message):
    (tmp_path / "file.json").write_text("{}")
    options = [o.format(tmp=tmp_path) for o in options]
    if "--base" not in options:
        MODELS["base"].save_pretrained(tmp_path / "model")
        TOKENIZER.save_pretrained(tmp_path / "model")
        options = ["--base", str(tmp_path / "model"), "--aligned", str(tmp_path / "model"), *options]
        capsys.readouterr()  # the progress bar of saving
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["generate", *options, "--prompt", "hello"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert message in error and "Traceback" not in error
    lines = error.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kad: error: ")  # one line, no usage of another command


@pytest.mark.parametrize("engine, role", [("torch", "base"), ("torch", "reference"), ("llama.cpp", "base"),
                                         ("llama.cpp", "reference")])  # fmt: skip
def test_a_missing_model_path_is_named_before_any_model_loads(monkeypatch, tmp_path, engine, role):
    """Loading the others first would take minutes before the error."""
    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded before every path was checked")

    monkeypatch.setattr(kad.models, "load", no_loading)
    monkeypatch.setattr(kad.models, "load_gguf", no_loading)
    suffix = ".gguf" if engine == "llama.cpp" else ""
    if suffix:
        (tmp_path / "model.gguf").write_bytes(b"")
    else:
        (tmp_path / "model").mkdir()
    models = {"base": str(tmp_path / f"model{suffix}"), "aligned": str(tmp_path / f"model{suffix}"),
              "reference": str(tmp_path / f"model{suffix}")}  # fmt: skip
    models[role] = str(tmp_path / f"missing{suffix}")
    with pytest.raises(kad.models.ModelLoadError, match=f"'{tmp_path}/missing{suffix}'"):
        kad.Decoder.from_pretrained(**models, engine=engine, device="cpu")


@pytest.mark.parametrize("command", ["generate", "eval"])
@pytest.mark.parametrize(
    "options, message",
    [
        (["--mode", "kad-spec", "--gamma", "0"], "gamma (drafts per speculative round) must be an int >= 1, got 0"),
        (["--temperature", "-1"], "temperature must be finite and >= 0 (0 = greedy), a float32 normal"),
        (["--temperature", "nan"], "temperature must be finite and >= 0 (0 = greedy), a float32 normal"),
        (["--max-new-tokens", "-1"], "--max-new-tokens must be >= 0, got -1"),
        (["--lam", "1.5"], "lam must lie in [0.0, 1.0], got 1.5"),
        (["--base-url", "localhost:8000/v1"], "base URL 'localhost:8000/v1' must start with http:// or https://"),
        (["--mode", "implicit-reward-spec"], "--mode implicit-reward-spec needs --reference: the small unaligned model"),
        (["--seed", str(2**64)], "seed must be an int"),
        (["--reference", "/nonexistent/model"], "--reference is read only by the implicit-reward rule, not by "
                                                "--mode kad-spec with --rule dual: leave it out"),
        (["--mode", "base", "--reference", "/x"], "--reference is read only by the implicit-reward rule, not by "
                                                  "--mode base: leave it out"),
        (["--rule", "primal", "--lam", "-1"], "--lam -1.0: budget must lie in [0.0, inf], got -1.0"),
        (["--rule", "token_v2", "--lam", "-1"], "--lam -1.0: mu must lie in [0.0, inf], got -1.0"),
        (["--api-key", ""], "--base-model, --api-key and --approximate go with --base-url"),  # "$KEY" of no key
        (["--rule", "token_max", "--lam", "0.9"], "--lam is read only by a rule with a parameter, not by "
                                                  "--mode kad-spec with --rule token_max: leave it out"),
        (["--mode", "aligned", "--lam", "0.4"], "--lam is read only by a rule with a parameter, not by "
                                                "--mode aligned: leave it out"),
        (["--mode", "kad", "--gamma", "8"], "--gamma is read only by the speculative (-spec) modes, not by "
                                            "--mode kad: leave it out"),
        (["--n-ctx", "64"], "n_ctx goes with the llama.cpp engine"),
        (["--n-ctx", "0"], "--n-ctx 0: n_ctx must be in [1, 16777215], got 0"),
    ],
    ids=["gamma", "negative-temperature", "nan-temperature", "max-new-tokens", "lam", "base-url", "reference", "seed",
         "unused-reference", "unused-reference-base", "primal-budget", "token-v2-mu", "empty-api-key",
         "unused-lam", "unused-lam-one-model", "unused-gamma", "n-ctx-torch", "n-ctx-zero"],
)
def test_cli_refuses_bad_options_before_loading_a_model(capsys, command, options, message):
    # The models do not exist: an option checked only after loading would fail on them first.
    models = ["--aligned", "/nonexistent/model"] + ([] if "--base-url" in options else ["--base", "/nonexistent/model"])
    task = ["--task", "gsm8k"] if command == "eval" else ["--prompt", "hello"]
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, *task, *models, *options])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert message in error and "Traceback" not in error and "/nonexistent/model" not in error


@pytest.mark.parametrize("options, message", [(["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
                                              (["--limit", "-2"], "--limit must be >= 1, got -2")])  # fmt: skip
def test_cli_eval_names_a_bad_batch_size_or_limit(capsys, options, message):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["eval", "--task", "gsm8k", "--base", "/nonexistent/model", "--aligned", "/nonexistent/model", *options])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_version_is_the_package_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith(f"kad {kk.__version__} (torch {torch.__version__}, ")
    assert importlib.metadata.version("kad-kernels") == kk.__version__  # pyproject reads it from kad_kernels


def _short_context_model(positions: int) -> torch.nn.Module:
    """The base model's weights with a context length of ``positions``."""
    config = MODELS["base"].config.to_dict() | {"max_position_embeddings": positions}
    short = type(MODELS["base"])(type(MODELS["base"].config)(**config))
    short.load_state_dict(MODELS["base"].state_dict())
    return short.eval()


@pytest.mark.parametrize("mode, gamma", [("kad", 1), ("kad-spec", 3), ("kad-spec", 8)])
def test_rows_stop_at_the_context_length_with_a_warning(monkeypatch, mode, gamma):
    decoder = kad.Decoder(_short_context_model(20), MODELS["aligned"], TOKENIZER)
    decoder.stop_ids = frozenset()
    prompts = [DECODER.encode(p) for p in PROMPTS]  # 11, 14, 1 and 30 tokens
    with pytest.raises(ValueError, match="prompt 3 has 30 tokens, which fill the context length 20"):
        decoder.generate(prompts, mode, kk.Dual(0.4), gamma=gamma, max_new_tokens=40)
    # No forward may hold more than 20 positions in a row: a draft past the context would
    # read positions the model has no embedding for (llama.cpp and vLLM refuse them).
    original, longest = HFEngine.advance, []

    def advance(self: HFEngine, batch, keep: int = 1):
        longest.append(int(batch.lengths.max()))
        return original(self, batch, keep)

    monkeypatch.setattr(HFEngine, "advance", advance)
    with pytest.warns(kad.ContextLengthWarning, match=r"context length 20 of .* for prompt\(s\) 0, 1, 2"):
        out = decoder.generate(prompts[:3], mode, kk.Dual(0.4), gamma=gamma, max_new_tokens=40, seed=0)
    assert [len(p) + len(t) for p, t in zip(prompts, out.token_ids)] == [20, 20, 20]
    assert max(longest) == (20 if mode == "kad-spec" else 19)  # the last token of a row is never fed


def test_cli_warns_in_one_line_at_the_context_length(tmp_path, capsys):
    _short_context_model(20).save_pretrained(tmp_path / "model")
    TOKENIZER.save_pretrained(tmp_path / "model")
    model = str(tmp_path / "model")
    args = ["generate", "--base", model, "--aligned", model, "--mode", "kad", "--temperature", "0",
            "--max-new-tokens", "40", "--no-chat", "--device", "cpu", "--prompt", "hello"]  # fmt: skip
    assert cli.main(args) == 0
    error = capsys.readouterr().err
    assert "kad: warning: max_new_tokens runs past the context length 20" in error


def test_loading_the_kernels_is_not_timed(monkeypatch):
    """A process's first kernel call loads the C++ extension (building it takes a minute):
    outside the generation's clock, which the first eval batch and demo row reported."""
    from kad_kernels import _backends

    cpu = _backends._REGISTRY["cpu"]

    def slow_loader():
        time.sleep(2.0)
        return cpu.load()

    def unused_loader():
        raise AssertionError("a backend auto does not pick here was loaded (on a GPU: minutes of nvcc)")

    monkeypatch.setitem(_backends._REGISTRY, "cpu", cpu._replace(load=slow_loader))
    monkeypatch.setitem(_backends._REGISTRY, "cuda", _backends._REGISTRY["cuda"]._replace(load=unused_loader))
    monkeypatch.setattr(_backends, "_LOADED", {})
    out = DECODER.generate(["hello"], "kad", kk.Dual(0.4), temperature=0, max_new_tokens=4)
    assert 0 < out.stats.wall_time_s < 2.0
