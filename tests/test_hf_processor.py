"""``kad.hf.KADLogitsProcessor`` inside transformers' own ``generate``, on tiny random-weight models.

Checked against implementation-independent facts: ``Dual(0)`` gives the base
model's own greedy tokens and ``Primal(1)`` the aligned model's; against the
decoder behind ``kad generate`` (greedy, same tokens); against π (the first two
sampled tokens, chi-square, and far from the base model alone); the aligned
model's cache against fresh forwards and fresh processors; and every option
that would break exactness refused by name.
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
from decoding_helpers import CHARS, exact_pairs, goodness_of_fit, make_tokenizer, pair_counts
from hf_helpers import (
    ALIGNED,
    BASE,
    DECODER,
    EOS,
    MODELS,
    NEUTRAL_OPTIONS,
    NEW,
    TOKENIZER,
    V,
    BeyondVocabulary,
    Identity,
    inputs,
    neutral_option,
    new_tokens,
    prompt_ids,
)
from transformers import LogitsProcessor

import kad
import kad_kernels as kk
from kad.hf import KADLogitsProcessor


def kad_processor(rule: kk.Rule, **kwargs) -> KADLogitsProcessor:
    return KADLogitsProcessor(ALIGNED, rule, tokenizer=TOKENIZER, pad_token_id=TOKENIZER.pad_token_id, **kwargs)


def generate(batch: dict[str, torch.Tensor], processor: LogitsProcessor, **kwargs) -> torch.Tensor:
    kwargs = dict(dict(do_sample=False, max_new_tokens=NEW), **kwargs)
    return BASE.generate(**batch, logits_processor=[processor], **kwargs)


# ----------------------------------------------------------------------------- greedy


@pytest.mark.parametrize("size", [1, 3])
def test_nothing_deferred_is_the_base_model_and_everything_deferred_the_aligned_one(size):
    """Dual(0): π = p, the base model's own greedy tokens; Primal(1): π = q*, the aligned model's
    (both cut to the tokenizer's 72 tokens); the left-padded rows of size 3 included."""
    batch = inputs(size)
    cut = dict(logits_processor=[BeyondVocabulary()], do_sample=False, max_new_tokens=NEW)
    base_alone, aligned_alone = BASE.generate(**batch, **cut), ALIGNED.generate(**batch, **cut)
    assert not torch.equal(base_alone, aligned_alone)  # the two properties are different claims
    assert torch.equal(generate(batch, kad_processor(kk.Dual(0.0))), base_alone)
    assert torch.equal(generate(batch, kad_processor(kk.Primal(1.0))), aligned_alone)


GREEDY_RULES = [kk.Dual(0.4), kk.Primal(0.9), kk.Nudging(0.4), kk.Threshold(0.1, "max_q_minus")]


@pytest.mark.parametrize("size", [1, 3])
@pytest.mark.parametrize("rule", GREEDY_RULES, ids=repr)
def test_greedy_equals_the_kad_decoder(rule, size):
    batch = inputs(size)
    width = batch["input_ids"].shape[1]
    out = generate(batch, kad_processor(rule))
    prompts = prompt_ids(size)
    expected = DECODER.generate(prompts, "kad", rule, temperature=0.0, max_new_tokens=NEW).token_ids
    assert new_tokens(out, width) == expected
    assert torch.equal(out[:, :width], batch["input_ids"])


def test_greedy_mixes_the_two_models():
    """The check above means something only if KAD's tokens are neither model's own."""
    batch = inputs(3)
    kad_tokens = generate(batch, kad_processor(kk.Dual(0.4)))
    assert not torch.equal(kad_tokens, generate(batch, kad_processor(kk.Dual(0.0))))
    assert not torch.equal(kad_tokens, generate(batch, kad_processor(kk.Primal(1.0))))


# ----------------------------------------------------------------------------- sampling follows π

ROWS = 6000  # one prompt repeated: i.i.d. samples in a single batched generate


@pytest.mark.parametrize(
    "rule, temperature", [(kk.Dual(0.4), 1.0), (kk.Primal(0.9), 0.7)], ids=["dual", "primal-T0.7"]
)
def test_sampled_pairs_follow_the_mixture(rule, temperature):
    """The first two new tokens are distributed as π (pairs, so the cached second step is
    checked too); the same samples are far from the base model alone, so the test can fail."""
    prompt = TOKENIZER("hello").input_ids
    torch.manual_seed(0)
    processor = kad_processor(rule, temperature=temperature)
    out = generate({"input_ids": torch.tensor([prompt] * ROWS)}, processor, do_sample=True, top_k=0, max_new_tokens=2)
    counts = pair_counts(new_tokens(out, len(prompt)), V)
    assert goodness_of_fit(counts, exact_pairs(MODELS, rule, prompt, temperature, V, {EOS})) > 1e-3
    assert goodness_of_fit(counts, exact_pairs(MODELS, kk.Dual(0.0), prompt, temperature, V, {EOS})) < 1e-6


def test_the_same_seed_gives_the_same_output():
    batch = inputs(3)
    processor = kad_processor(kk.Dual(0.4))

    def run() -> torch.Tensor:
        return generate(batch, processor, do_sample=True, top_k=0)

    torch.manual_seed(7)
    first = run()
    torch.manual_seed(7)
    assert torch.equal(run(), first)
    torch.manual_seed(8)
    assert not torch.equal(run(), first)


# ----------------------------------------------------------------------------- the aligned model's cache


def test_consecutive_generations_equal_fresh_processors():
    """One processor across generate calls (other prompts, batch sizes, a continuation of
    its own output) gives what a fresh processor gives each time, with one aligned
    forward per step."""
    processor = kad_processor(kk.Dual(0.4))
    forwards = []  # the aligned model's forwards: how many columns each fed
    advance = processor.engine.advance

    def counted_advance(batch, keep=1):
        forwards.append(batch.width - processor.engine.cached)
        return advance(batch, keep)

    processor.engine.advance = counted_advance
    outputs = []
    for batch in (inputs(3), inputs(1), None):
        batch = batch or {"input_ids": outputs[-1]}  # the last output: the previous call's last ids plus one column
        forwards.clear()
        out = generate(batch, processor)
        outputs.append(out)
        assert torch.equal(out, generate(batch, kad_processor(kk.Dual(0.4))))
        width = batch["input_ids"].shape[1]
        assert len(forwards) == out.shape[1] - width  # one forward per new token
        assert forwards[1:] == [1] * (len(forwards) - 1)  # a prefill, then one column per step
        assert forwards[0] == width  # the prefill: the prompts (one row is unpadded in each batch)


def test_direct_calls_give_log_pi_of_fresh_forwards():
    """Called outside generate (no check), step by step; without a tokenizer V is the
    fewer logits of the two models (76), and the columns past it are -inf."""
    processor = KADLogitsProcessor(ALIGNED, kk.Dual(0.4))
    ids = torch.tensor([TOKENIZER("hello").input_ids, TOKENIZER("there").input_ids])
    for step in range(3):
        with torch.no_grad():
            p_logits = BASE(input_ids=ids).logits[:, -1]
            q_logits = ALIGNED(input_ids=ids).logits[:, -1]
        log_pi = processor(ids, p_logits.clone())
        assert log_pi.shape == (2, 80) and log_pi.dtype == torch.float32
        assert torch.isneginf(log_pi[:, 76:]).all()
        expected = kk.mixture(p_logits[:, :76].contiguous(), q_logits.contiguous(), kk.Dual(0.4)).probs
        torch.testing.assert_close(log_pi[:, :76].exp(), expected, atol=1e-6, rtol=1e-4)
        ids = torch.cat([ids, log_pi.argmax(-1, keepdim=True)], dim=1)
    assert processor.engine.cached == ids.shape[1] - 1  # fed one column per call


# ----------------------------------------------------------------------------- refused, naming the option


REFUSED_IN_GENERATE = [
    (dict(do_sample=True, top_k=0, temperature=0.7), r"temperature=0.7 .*pass temperature=0.7 to KADLogitsProcessor"),
    (dict(do_sample=True), r"top_k=50 after KADLogitsProcessor truncates π: pass top_k=0"),
    (dict(do_sample=True, top_k=10), r"top_k=10 after"),
    (dict(do_sample=True, top_k=0, top_p=0.9), r"top_p=0.9 after"),
    (dict(do_sample=True, top_k=0, min_p=0.1), r"min_p=0.1 after"),
    (dict(repetition_penalty=1.2), r"repetition_penalty=1.2 before KADLogitsProcessor"),
    (dict(no_repeat_ngram_size=2), r"no_repeat_ngram_size=2 before"),
    (dict(min_new_tokens=3), r"min_length=\d+ \(set by min_length or min_new_tokens\) before"),
    (dict(num_beams=2), r"num_beams=2: .*beam search"),
    (dict(assistant_model=copy.deepcopy(BASE)), r"^assistant_model: .*assisted generation"),
    (dict(prompt_lookup_num_tokens=3), r"^prompt_lookup_num_tokens=3: .*assisted generation"),
    (dict(extra=Identity()), r"logits_processor \[Identity\] after"),
    (dict(prefix_allowed_tokens_fn=lambda batch, ids: list(range(10))), r"^prefix_allowed_tokens_fn before"),
]


@pytest.mark.parametrize("kwargs, match", REFUSED_IN_GENERATE, ids=[m.split(" ")[0] for _, m in REFUSED_IN_GENERATE])
def test_generate_options_that_break_exactness_are_refused(kwargs, match):
    processors = [kad_processor(kk.Dual(0.4))]
    if "extra" in kwargs:
        processors.append(kwargs.pop("extra"))
    with pytest.raises(ValueError, match=match):
        BASE.generate(**inputs(1), logits_processor=processors, max_new_tokens=NEW, **kwargs)  # assisted: batch 1


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_a_processor_temperature_with_greedy_decoding_is_refused(temperature):
    """Greedy KAD is the arg-max of π at T = 1 (design §1.2); the arg-max of π at another T
    is another token sequence than Decoder.generate(temperature=0) gives."""
    processor = kad_processor(kk.Dual(0.4), temperature=temperature)
    with pytest.raises(ValueError, match=rf"KADLogitsProcessor\(temperature={temperature}\) with do_sample=False"):
        BASE.generate(**inputs(3), logits_processor=[processor], max_new_tokens=NEW, do_sample=False)


@pytest.mark.parametrize("option", NEUTRAL_OPTIONS, ids=str)
def test_options_at_their_neutral_value_are_allowed(option):
    """transformers builds a processor even from these; it changes nothing, so it is no request."""
    batch = inputs(3)
    option = neutral_option(option, batch)
    torch.manual_seed(0)
    plain = generate(batch, kad_processor(kk.Dual(0.4)), do_sample=True, top_k=0)
    torch.manual_seed(0)
    assert torch.equal(generate(batch, kad_processor(kk.Dual(0.4)), do_sample=True, top_k=0, **option), plain)


def test_renormalize_logits_is_harmless_and_allowed():
    batch = inputs(3)
    plain = generate(batch, kad_processor(kk.Dual(0.4)))
    assert torch.equal(generate(batch, kad_processor(kk.Dual(0.4)), renormalize_logits=True), plain)


def test_each_generate_is_checked_again():
    """A continuation of the last call's output looks like the next step, but it is a new
    generate with new options."""
    processor = kad_processor(kk.Dual(0.4))
    out = generate(inputs(1), processor)
    with pytest.raises(ValueError, match="top_p=0.9"):
        generate({"input_ids": out}, processor, do_sample=True, top_k=0, top_p=0.9)


def test_a_row_past_the_aligned_models_context_is_warned_once():
    """transformers decides where rows stop; the processor says when the aligned model runs past its context."""
    short = type(ALIGNED)(type(ALIGNED.config)(**{**ALIGNED.config.to_dict(), "max_position_embeddings": 16}))
    short.load_state_dict(ALIGNED.state_dict())
    processor = KADLogitsProcessor(short.eval(), kk.Dual(0.4), tokenizer=TOKENIZER, pad_token_id=TOKENIZER.pad_token_id)
    batch = inputs(1)
    width = batch["input_ids"].shape[1]
    with pytest.warns(kad.ContextLengthWarning, match="context length 16 of the aligned model") as record:
        generate(batch, processor, max_new_tokens=16 - width + 4)
    assert len([w for w in record if issubclass(w.category, kad.ContextLengthWarning)]) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error", kad.ContextLengthWarning)
        generate(batch, processor, max_new_tokens=16 - width)  # the last token is never fed


def test_inputs_embeds_are_refused():
    embeds = BASE.get_input_embeddings()(inputs(1)["input_ids"])
    with pytest.raises(ValueError, match="input_ids has no tokens .*inputs_embeds"):
        BASE.generate(inputs_embeds=embeds, logits_processor=[kad_processor(kk.Dual(0.4))], max_new_tokens=3)


@pytest.mark.parametrize("token", [74, 78], ids=["past-the-vocabulary", "past-the-aligned-embedding"])
def test_prompt_ids_outside_the_vocabulary_are_refused(token):
    """72 tokens; the aligned model has 76 logits: 74 would be fed as it is, 78 fail in its embedding."""
    processor = KADLogitsProcessor(ALIGNED, kk.Dual(0.4), tokenizer=TOKENIZER, pad_token_id=EOS)
    with pytest.raises(ValueError, match=rf"prompt 0 has token ids outside \[0, 72\): {token} at position 2"):
        BASE.generate(input_ids=torch.tensor([[10, 11, token, 12]]), logits_processor=[processor], do_sample=False,
                      max_new_tokens=3)  # fmt: skip


@pytest.mark.parametrize(
    "batch, pad_token_id, match",
    [
        (inputs(3), None, "no pad_token_id: pass pad_token_id"),
        (inputs(3, padding_side="right"), EOS, "pad on the left"),
        (inputs(2, ["<eos>hello", "a"]), EOS, "a pad token no prompt starts with"),
        # No padding at all: transformers passes no attention mask, and the prompts still start with pad.
        (inputs(2, ["<eos>hello", "<eos>abcde"]), EOS, "a pad token no prompt starts with"),
    ],
    ids=["no-pad-token-id", "right-padding", "prompt-starts-with-pad", "unpadded-prompts-start-with-pad"],
)
def test_padding_the_processor_would_misread_is_refused(batch, pad_token_id, match):
    processor = KADLogitsProcessor(ALIGNED, kk.Dual(0.4), tokenizer=TOKENIZER, pad_token_id=pad_token_id)
    with pytest.raises(ValueError, match=match):
        generate(batch, processor)


@pytest.mark.parametrize(
    "args, kwargs, error, match",
    [
        ((ALIGNED, kk.ImplicitReward()), {}, ValueError, "ImplicitReward needs a reference model"),
        ((ALIGNED, "dual"), {}, TypeError, "rule must be a kad_kernels rule"),
        ((ALIGNED, kk.Dual(0.4)), dict(vocab_size=77), ValueError,
         "the aligned model has 76 output logits, fewer than the vocabulary's 77"),
        ((ALIGNED, kk.Dual(0.4)), dict(tokenizer=make_tokenizer(chars=CHARS + "#$%&*")), ValueError,
         "the aligned model has 76 output logits, fewer than the vocabulary's 77"),
        ((ALIGNED, kk.Dual(0.4)), dict(temperature=0.0), ValueError, "do_sample=False"),
        ((ALIGNED, kk.Dual(0.4)), dict(vocab_size=2.5), ValueError, r"vocab_size must be an int >= 1, got 2.5"),
        ((ALIGNED, kk.Dual(0.4)), dict(vocab_size=True), ValueError, r"vocab_size must be an int >= 1, got True"),
        ((ALIGNED, kk.Dual(0.4)), dict(vocab_size=0), ValueError, r"vocab_size must be an int >= 1, got 0"),
        ((ALIGNED, kk.Dual(0.4)), dict(tokenizer="gpt2"), TypeError,  # its len would be the vocabulary
         r"tokenizer must be a transformers tokenizer \(PreTrainedTokenizerBase\), got 'gpt2'"),
        ((ALIGNED, kk.Dual(0.4)), dict(pad_token_id="<eos>"), TypeError,
         "pad_token_id must be a token id \\(an int\\) or None, got '<eos>'"),
        ((ALIGNED, kk.Dual(0.4)), dict(pad_token_id=[0]), TypeError, r"pad_token_id must be a token id"),
    ],
    ids=["implicit-reward", "not-a-rule", "vocab-size", "tokenizer", "temperature-0", "vocab-size-float",
         "vocab-size-bool", "vocab-size-0", "tokenizer-name", "pad-token", "pad-id-list"],
)  # fmt: skip
def test_bad_arguments_are_refused(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        KADLogitsProcessor(*args, **kwargs)


def test_numpy_numbers_are_taken_as_python_numbers():
    processor = KADLogitsProcessor(ALIGNED, kk.Dual(0.4), temperature=np.float32(0.5), vocab_size=np.int64(72),
                                   pad_token_id=np.int64(0))  # fmt: skip
    assert (processor.temperature, processor.vocab_size, processor.pad_token_id) == (0.5, 72, 0)  # 0.5: exact in f32
    assert all(type(x) in (int, float) for x in (processor.temperature, processor.vocab_size, processor.pad_token_id))


def test_base_scores_narrower_than_the_vocabulary_are_refused():
    processor = KADLogitsProcessor(ALIGNED, kk.Dual(0.4), vocab_size=76)
    ids = torch.tensor([TOKENIZER("hello").input_ids])
    with pytest.raises(ValueError, match="the base model's scores have 72 columns, fewer than the vocabulary's 76"):
        processor(ids, torch.zeros(1, 72))


# ----------------------------------------------------------------------------- vocabularies


def _saved(model: torch.nn.Module, tokenizer, directory) -> torch.nn.Module:
    """``model`` loaded again from ``directory``, with ``tokenizer`` saved beside it (if any)."""
    model.save_pretrained(directory)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    return type(model).from_pretrained(directory).eval()


def test_an_aligned_model_of_another_vocabulary_is_refused(tmp_path):
    """The tokenizer saved with the aligned model numbers the tokens otherwise (same size): mixing
    id by id would be a wrong answer, so the given tokenizer, or else the base model's, is compared.
    (Every model here is BASE's architecture: AutoTokenizer reads a saved tokenizer by it.)"""
    other = _saved(BASE, make_tokenizer(chars=CHARS[::-1]), tmp_path / "aligned")
    with pytest.raises(ValueError, match=r"the tokenizer \(tokenizer=\) and the aligned model .* differ"):
        KADLogitsProcessor(other, kk.Dual(0.4), tokenizer=TOKENIZER)
    base = _saved(BASE, TOKENIZER, tmp_path / "base")
    processor = KADLogitsProcessor(other, kk.Dual(0.4), pad_token_id=TOKENIZER.pad_token_id)
    with pytest.raises(ValueError, match=r"the base model '.*/base' and the aligned model '.*/aligned' differ"):
        base.generate(**inputs(1), logits_processor=[processor], do_sample=False, max_new_tokens=NEW)
    same = _saved(BASE, TOKENIZER, tmp_path / "same")  # the same vocabulary saved: no refusal
    processor = KADLogitsProcessor(same, kk.Dual(0.4), pad_token_id=TOKENIZER.pad_token_id)
    expected = generate(inputs(1), KADLogitsProcessor(BASE, kk.Dual(0.4), tokenizer=TOKENIZER,
                                                      pad_token_id=TOKENIZER.pad_token_id))  # fmt: skip
    assert torch.equal(base.generate(**inputs(1), logits_processor=[processor], do_sample=False, max_new_tokens=NEW),
                       expected)


def test_a_model_saved_without_a_tokenizer_is_not_checked_against_one(tmp_path):
    """transformers reads an empty tokenizer from such a folder (a Qwen2 config alone): no vocabulary to compare."""
    bare = _saved(BASE, None, tmp_path / "bare")
    processor = KADLogitsProcessor(bare, kk.Dual(0.4), tokenizer=TOKENIZER, pad_token_id=TOKENIZER.pad_token_id)
    expected = generate(inputs(1), KADLogitsProcessor(BASE, kk.Dual(0.4), tokenizer=TOKENIZER,
                                                      pad_token_id=TOKENIZER.pad_token_id))  # fmt: skip
    assert torch.equal(generate(inputs(1), processor), expected)
    assert torch.equal(bare.generate(**inputs(1), logits_processor=[KADLogitsProcessor(
        BASE, kk.Dual(0.4), pad_token_id=TOKENIZER.pad_token_id)], do_sample=False, max_new_tokens=NEW), expected)
