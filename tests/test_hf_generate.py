"""``kad.hf.generate`` as transformers' ``custom_generate``, on tiny random-weight models.

Checked against implementation-independent facts: ``Dual(0)`` gives the base
model's own greedy tokens and ``Primal(1)`` the aligned model's; against the
decoder behind ``kad generate`` (greedy, same tokens); against π (the first two
sampled tokens, chi-square); and for the generation options it honours or
refuses.  The Hub-layout recipe folder is loaded from disk.
"""

from __future__ import annotations

import copy
import sys

import numpy as np
import pytest
import torch
from decoding_helpers import CHARS, Recorder, exact_pairs, goodness_of_fit, make_tokenizer, pair_counts
from hf_helpers import (
    ALIGNED,
    BASE,
    DECODER,
    EOS,
    MODELS,
    NEUTRAL_OPTIONS,
    NEW,
    TEXTS,
    TOKENIZER,
    V,
    BeyondVocabulary,
    Identity,
    inputs,
    neutral_option,
    new_tokens,
    prompt_ids,
)
from transformers import Qwen2ForCausalLM, WatermarkingConfig
from transformers.generation import (
    EosTokenCriteria,
    GenerateDecoderOnlyOutput,
    MaxLengthCriteria,
    TemperatureLogitsWarper,
)

import kad
import kad.hf
import kad_kernels as kk

KAD = dict(custom_generate=kad.hf.generate, aligned_model=ALIGNED, base_tokenizer=TOKENIZER, aligned_tokenizer=TOKENIZER)


def assert_padded_after_stop(sequences: torch.Tensor, width: int, pad: int, stop_ids=(EOS,)) -> None:
    for row, tokens in zip(sequences[:, width:].tolist(), new_tokens(sequences, width, stop_ids)):
        assert all(t == pad for t in row[len(tokens) :])


# ----------------------------------------------------------------------------- greedy: the same tokens as kad generate

GREEDY_CASES = [
    ("kad", kk.Dual(0.4)),
    ("kad-spec", kk.Dual(0.4)),
    ("kad", kk.Primal(0.9)),
    ("kad-spec", kk.Primal(0.9)),
    ("nudging", kk.Nudging(0.4)),
    ("nudging-spec", kk.Nudging(0.4)),
]


@pytest.mark.parametrize("size", [1, 3])
@pytest.mark.parametrize("mode, rule", GREEDY_CASES, ids=[f"{m}-{r!r}" for m, r in GREEDY_CASES])
def test_greedy_equals_the_kad_decoder(mode, rule, size):
    batch = inputs(size)
    out = BASE.generate(**batch, **KAD, rule=rule, mode=mode, gamma=3, do_sample=False, max_new_tokens=NEW)
    expected = DECODER.generate(prompt_ids(size), mode, rule, gamma=3, temperature=0.0, max_new_tokens=NEW).token_ids
    width = batch["input_ids"].shape[1]
    assert new_tokens(out, width) == expected
    assert torch.equal(out[:, :width], batch["input_ids"])
    assert_padded_after_stop(out, width, TOKENIZER.pad_token_id)


def test_numpy_integers_count_as_gamma():
    """As kad.Decoder takes them (a sweep over np.arange, say)."""
    batch = inputs(3)
    plain = BASE.generate(**batch, **KAD, rule=kk.Dual(0.4), gamma=3, do_sample=False, max_new_tokens=NEW)
    assert torch.equal(BASE.generate(**batch, **KAD, rule=kk.Dual(0.4), gamma=np.int64(3), do_sample=False,
                                     max_new_tokens=NEW), plain)  # fmt: skip


def test_gamma_zero_is_plain_kad():
    batch = inputs(3)
    plain = BASE.generate(**batch, **KAD, rule=kk.Dual(0.4), gamma=0, do_sample=False, max_new_tokens=NEW)
    named = BASE.generate(**batch, **KAD, rule=kk.Dual(0.4), mode="kad", do_sample=False, max_new_tokens=NEW)
    assert torch.equal(plain, named)
    stats = BASE.generate(**batch, **KAD, rule=kk.Dual(0.4), gamma=0, max_new_tokens=NEW, return_dict_in_generate=True)
    assert stats.kad_stats.drafts_proposed == 0


@pytest.mark.parametrize("size", [1, 3])
@pytest.mark.parametrize("gamma", [0, 3])
def test_nothing_deferred_is_the_base_model_and_everything_deferred_the_aligned_one(size, gamma):
    """Dual(0): π = p, the base model's own greedy tokens; Primal(1): π = q*, the aligned model's."""
    batch = inputs(size)
    common = dict(do_sample=False, max_new_tokens=NEW)
    base_alone = BASE.generate(**batch, logits_processor=[BeyondVocabulary()], **common)
    aligned_alone = ALIGNED.generate(**batch, logits_processor=[BeyondVocabulary()], **common)
    assert not torch.equal(base_alone, aligned_alone)  # the two properties are different claims
    assert torch.equal(BASE.generate(**batch, **KAD, rule=kk.Dual(0.0), gamma=gamma, **common), base_alone)
    assert torch.equal(BASE.generate(**batch, **KAD, rule=kk.Primal(1.0), gamma=gamma, **common), aligned_alone)


# ----------------------------------------------------------------------------- sampling follows π

ROWS = 6000


@pytest.mark.parametrize("gamma, temperature", [(0, 1.0), (1, 1.0), (3, 0.7)])
def test_sampled_pairs_follow_the_mixture(gamma, temperature):
    """The first two new tokens (both can come from one speculative round) are distributed as π;
    the same samples are far from the base model alone, so the test can fail."""
    rule = kk.Dual(0.4)
    prompt = TOKENIZER("hello").input_ids
    torch.manual_seed(0)
    out = BASE.generate(
        input_ids=torch.tensor([prompt] * ROWS),
        **KAD,
        rule=rule,
        gamma=gamma,
        do_sample=True,
        temperature=temperature,
        max_new_tokens=2 if gamma == 0 else gamma + 1,
        return_dict_in_generate=True,
    )
    counts = pair_counts(new_tokens(out.sequences, len(prompt)), V)
    assert goodness_of_fit(counts, exact_pairs(MODELS, rule, prompt, temperature, V, {EOS})) > 1e-3
    assert goodness_of_fit(counts, exact_pairs(MODELS, kk.Dual(0.0), prompt, temperature, V, {EOS})) < 1e-6
    if gamma > 1:  # at γ = 1 the second token is a bonus whenever the draft is accepted (here: always)
        assert 0.1 < out.kad_stats.acceptance_rate < 0.95


def test_the_same_seed_gives_the_same_output():
    batch = inputs(3)

    def run(**seed) -> torch.Tensor:
        return BASE.generate(**batch, **KAD, rule=kk.Dual(0.4), do_sample=True, max_new_tokens=NEW, **seed)

    torch.manual_seed(7)
    first = run()
    torch.manual_seed(7)
    assert torch.equal(run(), first)
    torch.manual_seed(8)
    assert not torch.equal(run(), first)
    by_generator = run(generator=torch.Generator().manual_seed(3))
    assert torch.equal(run(generator=torch.Generator().manual_seed(3)), by_generator)


def test_num_return_sequences_samples_each_prompt_several_times():
    batch = inputs(1)
    out = BASE.generate(**batch, **KAD, rule=kk.Dual(0.4), do_sample=True, num_return_sequences=4, max_new_tokens=NEW)
    assert out.shape[0] == 4 and len({tuple(row) for row in out.tolist()}) > 1


# ----------------------------------------------------------------------------- generation options honoured


@pytest.mark.parametrize("as_type", [np.int64, torch.tensor, lambda i: torch.tensor([i]), lambda i: np.array([i])],
                         ids=["numpy-int", "0-d-tensor", "1-d-tensor", "numpy-array"])  # fmt: skip
def test_eos_and_pad_ids_may_be_arrays(as_type):
    """transformers takes token ids as numpy or torch values too: rows stop there all the same."""
    batch = inputs(3)
    width = batch["input_ids"].shape[1]
    free = new_tokens(BASE.generate(**batch, **KAD, rule=kk.Dual(0.4), do_sample=False, max_new_tokens=NEW), width)
    stop, pad = free[0][2], 3
    out = BASE.generate(**batch, **KAD, rule=kk.Dual(0.4), do_sample=False, max_new_tokens=NEW,
                        eos_token_id=as_type(stop), pad_token_id=as_type(pad))  # fmt: skip
    assert new_tokens(out, width, (stop,))[0] == free[0][:3]
    assert_padded_after_stop(out, width, pad, (stop,))


def test_rows_stop_at_any_of_several_eos_ids_and_are_padded():
    batch = inputs(3)
    width = batch["input_ids"].shape[1]
    free = new_tokens(BASE.generate(**batch, **KAD, rule=kk.Dual(0.4), do_sample=False, max_new_tokens=NEW), width)
    stops = (free[0][3], free[2][5])  # two tokens that end rows early
    pad = 3
    out = BASE.generate(**batch, **KAD, rule=kk.Dual(0.4), do_sample=False, max_new_tokens=NEW,
                        eos_token_id=list(stops), pad_token_id=pad)  # fmt: skip
    stopped = new_tokens(out, width, stops)
    for before, after in zip(free, stopped):
        cut = next((i for i, t in enumerate(before) if t in stops), None)
        assert after == (before if cut is None else before[: cut + 1])
    assert len(stopped[0]) <= 4 and len(stopped[2]) <= 6
    assert_padded_after_stop(out, width, pad, stops)


@pytest.mark.parametrize("custom_generate", ["callable", "recipe"])
def test_streamer_receives_the_prompt_then_the_new_tokens(custom_generate):
    batch = inputs(1)
    recorder = Recorder()
    kwargs = dict(KAD, custom_generate=str(kad.hf.RECIPE_DIR), trust_remote_code=True) if custom_generate == "recipe" else KAD
    out = BASE.generate(**batch, **kwargs, rule=kk.Dual(0.4), do_sample=False, max_new_tokens=NEW, streamer=recorder)
    width = batch["input_ids"].shape[1]
    assert recorder.puts[0] == batch["input_ids"][0].tolist() and recorder.ended
    assert sum(recorder.puts[1:], []) == new_tokens(out, width)[0]


def test_streamer_ends_when_the_generation_raises():
    """A consumer iterating a TextIteratorStreamer blocks until end(): it comes also after an error."""

    class Failing(Recorder):
        def put(self, value: torch.Tensor) -> None:
            super().put(value)
            if len(self.puts) == 3:
                raise RuntimeError("the consumer went away")

    failing = Failing()
    with pytest.raises(RuntimeError, match="the consumer went away"):
        BASE.generate(**inputs(1), **KAD, rule=kk.Dual(0.4), do_sample=False, max_new_tokens=NEW, streamer=failing)
    assert failing.ended


def test_streamer_ends_when_a_ctrl_c_lands_before_it_is_read_from_the_call(monkeypatch):
    """transformers passes a custom_generate callable no streamer: it is read from the caller's
    frame, and ended also when a Ctrl-C lands before that read (the consumer waited for ever)."""
    module = sys.modules["kad.hf.generate"]
    read = module._generate_call
    reads = []

    def interrupted_first(model):
        reads.append(model)
        if len(reads) == 1:
            raise KeyboardInterrupt
        return read(model)

    monkeypatch.setattr(module, "_generate_call", interrupted_first)
    recorder = Recorder()
    with pytest.raises(KeyboardInterrupt):
        BASE.generate(**inputs(1), **KAD, rule=kk.Dual(0.4), do_sample=False, max_new_tokens=NEW, streamer=recorder)
    assert recorder.puts and recorder.ended


@pytest.mark.parametrize(
    "kwargs",
    [dict(do_sample=True, top_k=10), dict(gamma=-1), dict(aligned_model=None), dict(rule=None)],
    ids=["top_k", "gamma", "aligned_model", "rule"],
)
def test_streamer_ends_when_the_call_is_refused(kwargs):
    """transformers has put the prompt to the streamer before it calls kad.hf.generate."""
    recorder = Recorder()
    call = dict(KAD, rule=kk.Dual(0.4), max_new_tokens=NEW, streamer=recorder, **inputs(1))
    call.update(kwargs)
    with pytest.raises(ValueError):
        BASE.generate(**call)
    assert recorder.ended


def test_return_dict_carries_the_kad_statistics():
    out = BASE.generate(**inputs(3), **KAD, rule=kk.Dual(0.4), gamma=3, do_sample=True, max_new_tokens=NEW,
                        return_dict_in_generate=True)  # fmt: skip
    assert isinstance(out, GenerateDecoderOnlyOutput) and isinstance(out, kad.hf.KADGenerateOutput)
    stats = out.kad_stats
    assert stats.new_tokens == sum(s.new_tokens for s in out.kad_row_stats) > 0
    assert 0 < stats.acceptance_rate < 1 and 0 < stats.mean_alpha < 1 and stats.rounds > 0
    assert len(out.kad_row_stats) == 3


def test_the_recipe_folder_loads_from_disk_and_runs_the_same_decoding():
    batch = inputs(3)
    kwargs = dict(rule=kk.Dual(0.4), gamma=3, do_sample=True, max_new_tokens=NEW, aligned_model=ALIGNED)
    torch.manual_seed(0)
    callable_out = BASE.generate(**batch, custom_generate=kad.hf.generate, **kwargs)
    torch.manual_seed(0)
    recipe_out = BASE.generate(**batch, custom_generate=str(kad.hf.RECIPE_DIR), trust_remote_code=True, **kwargs)
    assert torch.equal(recipe_out, callable_out)
    files = {p.relative_to(kad.hf.RECIPE_DIR).as_posix() for p in kad.hf.RECIPE_DIR.rglob("*") if p.is_file()}
    assert {"README.md", "custom_generate/generate.py", "custom_generate/requirements.txt"} <= files


def test_float64_models_are_decoded_in_float32():
    """The kernels take fp32, bf16 and fp16 logits; a float64 model is read in fp32."""
    wide = {role: copy.deepcopy(m).double() for role, m in (("base", BASE), ("aligned", ALIGNED))}
    call = dict(KAD, rule=kk.Dual(0.4), gamma=3, do_sample=False, max_new_tokens=NEW, **inputs(3))
    expected = BASE.generate(**call)
    assert torch.equal(wide["base"].generate(**{**call, "aligned_model": wide["aligned"]}), expected)
    assert torch.equal(BASE.generate(**{**call, "aligned_model": wide["aligned"]}), expected)


def test_a_generator_that_is_not_one_is_refused_naming_the_argument():
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        BASE.generate(**inputs(1), **KAD, rule=kk.Dual(0.4), do_sample=True, max_new_tokens=NEW, generator=123)


@pytest.mark.parametrize("gamma", [0, 3])
def test_a_float64_default_dtype_changes_nothing(gamma):
    """The loop's coins were drawn in the default dtype, which the kernels refused."""
    call = dict(KAD, rule=kk.Dual(0.4), gamma=gamma, do_sample=True, max_new_tokens=NEW, **inputs(3))
    expected = BASE.generate(**call, generator=torch.Generator().manual_seed(0))
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        out = BASE.generate(**call, generator=torch.Generator().manual_seed(0))
    finally:
        torch.set_default_dtype(default)
    assert torch.equal(out, expected)


def test_int32_prompts_give_int64_sequences_as_transformers_does():
    batch = inputs(3)
    call = dict(KAD, rule=kk.Dual(0.4), gamma=3, do_sample=False, max_new_tokens=NEW)
    expected = BASE.generate(**batch, **call)
    out = BASE.generate(**{**batch, "input_ids": batch["input_ids"].int()}, **call)
    assert out.dtype == torch.int64 and torch.equal(out, expected)


def test_one_engine_in_two_roles_is_refused():
    engine = kad.engines.HFEngine(ALIGNED, V)
    with pytest.raises(ValueError, match="the aligned and reference models are one engine object"):
        BASE.generate(**inputs(1), **{**KAD, "aligned_model": engine}, reference_model=engine,
                      rule=kk.ImplicitReward(), max_new_tokens=NEW)  # fmt: skip


def test_an_engine_of_other_width_is_refused_saying_how_to_make_it():
    """HFEngine(model) alone returns all the aligned model's padded logits (76, the vocabulary 72)."""
    with pytest.raises(ValueError, match=rf"base {V}, aligned 76.*HFEngine\(model, vocab_size={V}\)"):
        BASE.generate(**inputs(1), **{**KAD, "aligned_model": kad.engines.HFEngine(ALIGNED)}, rule=kk.Dual(0.4),
                      max_new_tokens=NEW)  # fmt: skip


def test_a_budget_past_the_context_length_stops_there_with_a_warning():
    short = Qwen2ForCausalLM(BASE.config.__class__(**{**BASE.config.to_dict(), "max_position_embeddings": 20}))
    short.load_state_dict(BASE.state_dict())
    batch = inputs(1)
    width = batch["input_ids"].shape[1]
    with pytest.warns(kad.ContextLengthWarning, match="context length 20"):
        out = short.eval().generate(**batch, **KAD, rule=kk.Dual(0.4), do_sample=False, max_new_tokens=NEW)
    assert out.shape[1] == 20 > width


# ----------------------------------------------------------------------------- refused, naming the option


REFUSED = [
    (dict(do_sample=True, top_k=10), "top_k=10"),
    (dict(do_sample=True, top_p=0.9), "top_p=0.9"),
    (dict(do_sample=True, min_p=0.1), "min_p=0.1"),
    (dict(repetition_penalty=1.2), "repetition_penalty=1.2"),
    (dict(encoder_repetition_penalty=1.25), r"encoder_repetition_penalty=1.25:"),  # transformers holds 1/1.25
    (dict(exponential_decay_length_penalty=(2, 1.5)), r"support exponential_decay_length_penalty:"),
    (dict(no_repeat_ngram_size=2), "no_repeat_ngram_size=2"),
    # Named as the user set them: the option transformers builds its processor from, a list as a list,
    # a float32-held value with its own digits, a config object by name.
    (dict(encoder_no_repeat_ngram_size=2), "support encoder_no_repeat_ngram_size=2:"),
    (dict(suppress_tokens=[5]), r"support suppress_tokens=\[5\]:"),
    (dict(do_sample=True, eta_cutoff=3e-4), "support eta_cutoff=0.0003:"),
    (dict(watermarking_config=WatermarkingConfig()), "support watermarking_config:"),
    (dict(min_new_tokens=3), r"min_length=\d+ \(set by min_length or min_new_tokens\)"),
    (dict(num_beams=2), "num_beams=2"),
    # Other decoding methods, which transformers would run instead (KAD ran and dropped them).
    (dict(penalty_alpha=0.6, top_k=4), "penalty_alpha: contrastive search"),
    (dict(dola_layers="high"), "dola_layers: dola generation"),
    (dict(force_words_ids=[[5, 6]]), "force_words_ids/constraints: constrained beam search"),
    (dict(prefix_allowed_tokens_fn=lambda batch, ids: list(range(10))), "support prefix_allowed_tokens_fn:"),
    (dict(assistant_model=ALIGNED), "assistant_model"),
    (dict(return_dict_in_generate=True, output_scores=True), "output_scores"),
    (dict(max_time=5.0), "max_time"),
    (dict(logits_processor=[Identity()]), r"logits_processor \[Identity\]"),
    # Instances of the kinds kad honours from the generation config: theirs would be dropped.
    (dict(do_sample=True, logits_processor=[TemperatureLogitsWarper(0.3)]), r"logits_processor \[TemperatureLogitsWarper\]"),
    (dict(stopping_criteria=[MaxLengthCriteria(10)]), r"stopping_criteria \[MaxLengthCriteria\]"),
    (dict(stopping_criteria=[EosTokenCriteria(10)]), r"stopping_criteria \[EosTokenCriteria\]"),
    (dict(do_sample=True, top_k=50), "top_k=50"),  # transformers' default value, asked for
    (dict(streamer=Recorder()), "a streamer takes one row, got 3"),
    (dict(aligned_model=None), "needs aligned_model"),
    (dict(rule=None), "needs a rule"),
    (dict(gamma=-1), "gamma"),
    (dict(mode="speculative"), "unknown mode"),
    (dict(rule=kk.ImplicitReward()), "ImplicitReward needs a reference model .*: pass reference_model="),
    (dict(aligned_tokenizer=make_tokenizer(chars=CHARS[::-1])), "the base model.*the aligned model.*differ"),
    (dict(vocab_size=77, base_tokenizer=None, aligned_tokenizer=None),  # no tokenizer to check it against
     "the aligned model has 76 output logits, fewer than the vocabulary's 77"),
    (dict(vocab_size=2.5), r"vocab_size must be an int >= 1, got 2.5"),
    (dict(vocab_size=70), r"vocab_size=70 but the tokenizer of the base model .* has 72 tokens"),
]


@pytest.mark.parametrize("kwargs, match", REFUSED, ids=[str(sorted(k)) for k, _ in REFUSED])
def test_unsupported_options_are_refused_by_name(kwargs, match):
    call = dict(KAD, rule=kk.Dual(0.4), max_new_tokens=NEW, **inputs(3))
    call.update(kwargs)
    with pytest.raises(ValueError, match=match):
        BASE.generate(**call)


@pytest.mark.parametrize("option", NEUTRAL_OPTIONS, ids=str)
def test_options_at_their_neutral_value_are_no_request(option):
    batch = inputs(3)
    option = neutral_option(option, batch)
    call = dict(KAD, rule=kk.Dual(0.4), max_new_tokens=NEW, do_sample=True, **batch)
    torch.manual_seed(0)
    plain = BASE.generate(**call)
    torch.manual_seed(0)
    assert torch.equal(BASE.generate(**call, **option), plain)


@pytest.mark.parametrize("name", ["aligned_model", "reference_model"])
def test_a_model_that_is_not_one_is_refused_naming_the_argument(name):
    call = dict(KAD, rule=kk.Dual(0.4), max_new_tokens=NEW, **inputs(3))
    call[name] = "Qwen/Qwen2.5-0.5B"  # a hub id: the model must be loaded first
    with pytest.raises(TypeError, match=rf"{name} must be a transformers PreTrainedModel or a kad.engines.Engine"):
        BASE.generate(**call)


@pytest.mark.parametrize("name", ["base_tokenizer", "aligned_tokenizer"])
@pytest.mark.parametrize("value", ["gpt2", 5])
def test_a_tokenizer_that_is_not_one_is_refused_naming_the_argument(name, value):
    """A hub id has a len too (that of the id: "gpt2" cut the vocabulary to 4 tokens)."""
    call = dict(KAD, rule=kk.Dual(0.4), max_new_tokens=NEW, **inputs(3), **{name: value})
    with pytest.raises(TypeError, match=rf"^{name} must be a transformers tokenizer \(PreTrainedTokenizerBase\), got"):
        BASE.generate(**call)


def test_greedy_decoding_leaves_the_global_random_state_alone():
    """As transformers' own greedy search: code after generate draws what it drew before."""
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    BASE.generate(**KAD, rule=kk.Dual(0.4), max_new_tokens=NEW, do_sample=False, **inputs(3))
    assert torch.equal(torch.rand(3), expected)


def test_numpy_numbers_and_outputs_transformers_would_not_return_are_no_refusal():
    """vocab_size as numpy's int is an int; output_scores without return_dict_in_generate
    asks for nothing (transformers returns no scores then either)."""
    call = dict(KAD, rule=kk.Dual(0.4), max_new_tokens=NEW, do_sample=False, **inputs(3))
    plain = BASE.generate(**call)
    assert torch.equal(BASE.generate(**call, vocab_size=np.int64(V)), plain)
    assert torch.equal(BASE.generate(**call, output_scores=True), plain)


def test_track_alpha_must_be_a_bool():
    with pytest.raises(TypeError, match="track_alpha must be True or False, got 'no'"):
        BASE.generate(**KAD, rule=kk.Dual(0.4), max_new_tokens=NEW, track_alpha="no", **inputs(3))


def test_position_ids_of_the_caller_are_refused_not_dropped():
    """KAD feeds both models their own positions: the caller's would be ignored, and a model
    with absolute positions would then give other tokens than transformers' own greedy."""
    batch = inputs(1)
    positions = torch.arange(batch["input_ids"].shape[1])[None] + 40
    with pytest.raises(ValueError, match="does not support the model inputs position_ids"):
        BASE.generate(**KAD, rule=kk.Dual(0.4), max_new_tokens=NEW, position_ids=positions, **batch)


def test_transformers_default_top_k_is_not_a_request():
    """Sampling without top_k gets transformers' global default top_k=50: kad draws from
    all of π (72 tokens here) rather than refusing the call."""
    torch.manual_seed(0)
    out = BASE.generate(**inputs(3), **KAD, rule=kk.Dual(0.4), do_sample=True, max_new_tokens=NEW)
    assert out.shape[0] == 3


def test_right_padding_is_refused():
    batch = dict(TOKENIZER(TEXTS[3], return_tensors="pt", padding=True, padding_side="right"))
    with pytest.raises(ValueError, match="left padding"):
        BASE.generate(**batch, **KAD, rule=kk.Dual(0.4), max_new_tokens=NEW)


def test_the_vocabulary_check_runs_again_when_a_tokenizer_grows():
    base_tokenizer, aligned_tokenizer = make_tokenizer(), make_tokenizer()
    call = dict(KAD, rule=kk.Dual(0.4), max_new_tokens=2, base_tokenizer=base_tokenizer,
                aligned_tokenizer=aligned_tokenizer, **inputs(1))  # fmt: skip
    BASE.generate(**call)  # checked, and remembered
    aligned_tokenizer.add_tokens(["#"])
    with pytest.raises(ValueError, match="differ"):
        BASE.generate(**call)
