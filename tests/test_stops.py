"""Stop strings (kad.stops): a row ends with the first token that completes one.

The oracle is the text: with the character-level tokenizer (plus a few tokens of
several characters) a row's text is its tokens' texts joined, so the token that
completes a string is the first whose text, joined to what came before, holds the
string ending past the text before it.  transformers' own ``generate`` with
``stop_strings`` is the second oracle, for ``kad.hf.generate`` with ``Dual(0)``
(π = p: the base model's own greedy tokens).
"""

from __future__ import annotations

import gc
import random
import weakref

import pytest
import torch
from decoding_helpers import PROMPTS, Recorder, make_tokenizer
from hf_helpers import ALIGNED, BASE, DECODER, NEW, TEXTS, TOKENIZER, BeyondVocabulary, inputs

import kad
import kad.hf
import kad_kernels as kk
from kad import cli
from kad.stops import StopStrings, checked_stop_strings

PIECES = ["st", "op", "stop", "opera", "pper", "las", "topper", "to", "pped", "pp"]


def first_end(tokenizer, prompt: list[int], new: list[int], strings: list[str]) -> int | None:
    """The index in ``new`` of the first token whose text completes one of ``strings``."""
    text = tokenizer.decode(prompt, skip_special_tokens=False)
    for j, token in enumerate(new):
        before = len(text)
        text += tokenizer.decode([token], skip_special_tokens=False)
        if any(text.find(s, max(0, before - len(s) + 1)) != -1 for s in strings):
            return j
    return None


def cut(tokens: list[int], end: int | None) -> list[int]:
    return tokens if end is None else tokens[: end + 1]


# ----------------------------------------------------------------------------- the matching


@pytest.mark.parametrize("seed", range(6))
def test_the_first_token_that_completes_a_string_is_found_as_in_the_text(seed):
    """Strings over several tokens, inside one, overhanging either end, beginning in the
    prompt or in earlier rounds' tokens (read up to the string's length back only)."""
    tokenizer = make_tokenizer(chars="abcdefilnoprst ", pieces=PIECES)
    vocabulary = list(range(4, len(tokenizer)))  # no special token
    draw = random.Random(seed)
    strings = draw.sample(["stop", "op", "pps", "a b", "last", "e", "ss", "toppe"], 3)
    stops = StopStrings(strings, tokenizer)
    rows = [([draw.choice(vocabulary) for _ in range(draw.randint(1, 12))],
             [draw.choice(vocabulary) for _ in range(draw.randint(0, 12))],
             [draw.choice(vocabulary) for _ in range(draw.randint(0, 9))]) for _ in range(40)]  # fmt: skip
    # Only rows not already ended by their earlier tokens: a row would have stopped there.
    rows = [(p, o, n) for p, o, n in rows if first_end(tokenizer, p, o, strings) is None]
    found = stops.first_ends([p for p, _, _ in rows], [o for _, o, _ in rows], [n for _, _, n in rows])
    expected = [first_end(tokenizer, p + o, n, strings) for p, o, n in rows]
    assert found == expected
    assert any(e is None for e in expected) and any(e is not None for e in expected)


@pytest.mark.parametrize("tokens, end", [(["st", "op"], 1), (["stop"], 0), (["st", "opera"], 1), (["s", "to", "pper"], 2),
                                         (["las", "topper"], 1), (["stop", "a"], 0), (["a", "st", "o", "p", "s"], 3)])  # fmt: skip
def test_the_cases_of_transformers_documentation(tokens, end):
    tokenizer = make_tokenizer(chars="abcdefilnoprst ", pieces=PIECES)
    ids = tokenizer.convert_tokens_to_ids(tokens)
    assert StopStrings("stop", tokenizer).first_ends([[tokenizer.convert_tokens_to_ids("a")]], [[]], [ids]) == [end]


@pytest.mark.parametrize("prompt, output, new, end", [
    (["a", "s"], [], ["to", "p"], 1),  # begun in the prompt
    (["s"], ["t"], ["o", "p", "a"], 1),  # in the prompt and an earlier round's tokens
    (["a"], ["a", "s", "t", "o"], ["p"], 0),  # in earlier rounds' tokens
    (["st"], [], ["opera"], 0),  # over the prompt's last token and overhanging the new one
    (["stop"], [], ["a", "b"], None),  # wholly in the prompt: no new token completes it
])  # fmt: skip
def test_a_string_may_begin_before_the_rounds_new_tokens(prompt, output, new, end):
    tokenizer = make_tokenizer(chars="abcdefilnoprst ", pieces=PIECES)
    ids = tokenizer.convert_tokens_to_ids
    assert StopStrings("stop", tokenizer).first_ends([ids(prompt)], [ids(output)], [ids(new)]) == [end]


@pytest.mark.parametrize("strings, error, message", [
    (5, TypeError, "stop_strings must be a string or a list of strings, got 5"),
    (["a", 3], TypeError, "stop_strings must be a string or a list of strings"),
    ([], ValueError, "stop_strings is empty"),
    (["a", ""], ValueError, "stop_strings has an empty string"),
])  # fmt: skip
def test_bad_stop_strings_are_named(strings, error, message):
    with pytest.raises(error, match=message):
        checked_stop_strings(strings)
    with pytest.raises(error, match=message):
        DECODER.generate(PROMPTS[:1], "kad", kk.Dual(0.4), max_new_tokens=3, stop_strings=strings)
    with pytest.raises(error, match=message):
        BASE.generate(**inputs(1), custom_generate=kad.hf.generate, aligned_model=ALIGNED, rule=kk.Dual(0.4),
                      base_tokenizer=TOKENIZER, max_new_tokens=3, stop_strings=strings)  # fmt: skip


def test_strings_that_no_token_can_end_are_named():
    with pytest.raises(ValueError, match=r"stop_strings \['\\n\\n', ':'\]: no token of the tokenizer's vocabulary can end"):
        DECODER.generate(PROMPTS[:1], "kad", kk.Dual(0.4), max_new_tokens=3, stop_strings=["\n\n", ":"])
    assert StopStrings(["\n\n", "a"], TOKENIZER).strings == ("\n\n", "a")  # as transformers: one that can end is enough


def test_a_tokenizers_tables_are_built_once_per_strings_and_size():
    tokenizer = make_tokenizer()
    first = StopStrings(["ab", "c"], tokenizer)
    assert StopStrings(("ab", "c"), tokenizer)._criterion is first._criterion
    assert StopStrings(["c", "ab"], tokenizer)._criterion is not first._criterion
    tokenizer.add_tokens(["abc"])
    grown = StopStrings(["ab", "c"], tokenizer)
    assert grown._criterion is not first._criterion
    assert grown.first_ends([[4]], [[]], [[tokenizer.convert_tokens_to_ids("abc")]]) == [0]
    gone = weakref.ref(tokenizer)
    del tokenizer
    gc.collect()
    assert gone() is None  # the tables do not keep their tokenizer


def test_stop_strings_need_a_tokenizer_and_decode_needs_them_with_it():
    with pytest.raises(TypeError, match="tokenizer must be a transformers tokenizer"):
        StopStrings("a", "Qwen/Qwen2.5-0.5B")
    with pytest.raises(TypeError, match=r"stop_strings must be a kad.stops.StopStrings .* got \['a'\]"):
        kad.decode(DECODER.engines, [[5, 6]], [3], kad.Settings("kad", kk.Dual(0.4)), stop_ids=frozenset(),
                   generator=None, stop_strings=["a"])  # fmt: skip
    with pytest.raises(ValueError, match="stop_strings needs the models' tokenizer.*pass base_tokenizer="):
        BASE.generate(**inputs(1), custom_generate=kad.hf.generate, aligned_model=ALIGNED, rule=kk.Dual(0.4),
                      max_new_tokens=3, stop_strings="a")  # fmt: skip


# ----------------------------------------------------------------------------- Decoder


def _strings_that_stop(token_ids: list[list[int]]) -> list[str]:
    """Two strings found inside the rows' texts: most rows stop early, some not at all."""
    texts = [TOKENIZER.decode(t, skip_special_tokens=False) for t in token_ids]
    return [s for s in (texts[0][5:7], texts[-1][3:4]) if s]


@pytest.mark.parametrize("mode, gamma", [("kad", 1), ("kad-spec", 1), ("kad-spec", 4), ("base", 1)])
def test_greedy_rows_end_where_the_text_first_holds_a_string(mode, gamma):
    rule = None if mode == "base" else kk.Dual(0.4)
    common = dict(gamma=gamma, temperature=0, max_new_tokens=24, chat=False)
    whole = DECODER.generate(PROMPTS, mode, rule, **common)
    strings = _strings_that_stop(whole.token_ids)
    stopped = DECODER.generate(PROMPTS, mode, rule, stop_strings=strings, **common)
    ids = [TOKENIZER(p, add_special_tokens=False).input_ids for p in PROMPTS]
    ends = [first_end(TOKENIZER, p, t, strings) for p, t in zip(ids, whole.token_ids)]
    assert stopped.token_ids == [cut(t, e) for t, e in zip(whole.token_ids, ends)]
    assert any(e is not None and e < len(t) - 1 for t, e in zip(whole.token_ids, ends))  # a row was cut
    assert stopped.texts == [TOKENIZER.decode(t, skip_special_tokens=True) for t in stopped.token_ids]
    assert stopped.stats.new_tokens == sum(map(len, stopped.token_ids))
    one_by_one = [DECODER.generate([p], mode, rule, stop_strings=strings, **common).token_ids[0] for p in PROMPTS]
    assert one_by_one == stopped.token_ids


def test_speculative_and_plain_greedy_stop_at_the_same_token():
    strings = ["a", "h"]
    plain = DECODER.generate(PROMPTS, "kad", kk.Dual(0.4), temperature=0, max_new_tokens=24, stop_strings=strings)
    for gamma in (1, 3, 8):
        spec = DECODER.generate(PROMPTS, "kad-spec", kk.Dual(0.4), gamma=gamma, temperature=0, max_new_tokens=24,
                                stop_strings=strings)  # fmt: skip
        assert spec.token_ids == plain.token_ids


@pytest.mark.parametrize("mode", ["kad", "kad-spec"])
def test_a_sampled_row_stops_inside_the_same_draws(mode):
    """One row at a fixed seed: the stopped row is the unstopped one, cut."""
    common = dict(gamma=3, temperature=1.0, max_new_tokens=30, seed=7, chat=False)
    whole = DECODER.generate(PROMPTS[:1], mode, kk.Dual(0.4), **common).token_ids[0]
    strings = [TOKENIZER.decode(whole[6:8], skip_special_tokens=False)]
    stopped = DECODER.generate(PROMPTS[:1], mode, kk.Dual(0.4), stop_strings=strings, **common).token_ids[0]
    end = first_end(TOKENIZER, TOKENIZER(PROMPTS[0], add_special_tokens=False).input_ids, whole, strings)
    assert end is not None and end <= 7 and stopped == cut(whole, end)


def test_the_streamer_receives_the_row_up_to_the_stop():
    streamer = Recorder()
    out = DECODER.generate(PROMPTS[0], "kad-spec", kk.Dual(0.4), gamma=4, temperature=0, max_new_tokens=24,
                           stop_strings=["e", "q"], streamer=streamer)  # fmt: skip
    assert sum(streamer.puts[1:], []) == out.token_ids[0] and streamer.ended


def test_cli_generate_stops_at_the_stop_text(tmp_path, capsys):
    BASE.save_pretrained(tmp_path / "model")
    TOKENIZER.save_pretrained(tmp_path / "model")
    model = str(tmp_path / "model")
    options = ["--base", model, "--aligned", model, "--mode", "kad", "--temperature", "0", "--max-new-tokens", "20",
               "--device", "cpu", "--no-chat", "--prompt", "hello", "--prompt", "a"]  # fmt: skip
    assert cli.main(["generate", *options]) == 0
    whole = capsys.readouterr().out.splitlines()
    text = whole[0].removeprefix("[0] ")
    assert cli.main(["generate", *options, "--stop", text[4:6], "--stop", "zzz"]) == 0
    stopped = capsys.readouterr().out.splitlines()
    assert stopped[0].startswith("[0] ") and text.startswith(stopped[0][4:]) and len(stopped[0]) < len(whole[0])
    with pytest.raises(SystemExit) as exit:
        cli.main(["generate", *options, "--stop", ""])
    assert exit.value.code == 2 and "argument --stop: empty" in capsys.readouterr().err


# ----------------------------------------------------------------------------- kad.hf.generate


@pytest.mark.parametrize("strings", [["e"], ["he", "o t"], "dS", ["zz"]], ids=repr)
@pytest.mark.parametrize("gamma", [0, 1, 4])
def test_hf_generate_stops_where_transformers_own_generate_stops(strings, gamma):
    """Dual(0) is π = p: the base model's own greedy decoding, with transformers' own stop strings."""
    batch = inputs(3)
    common = dict(do_sample=False, max_new_tokens=NEW)
    own = BASE.generate(**batch, logits_processor=[BeyondVocabulary()], stop_strings=strings, tokenizer=TOKENIZER,
                        **common)  # fmt: skip
    kad_out = BASE.generate(**batch, custom_generate=kad.hf.generate, aligned_model=ALIGNED, rule=kk.Dual(0.0),
                            gamma=gamma, base_tokenizer=TOKENIZER, stop_strings=strings, **common)  # fmt: skip
    assert torch.equal(kad_out, own)


def test_hf_generate_reads_the_tokenizer_saved_with_the_model(tmp_path):
    BASE.save_pretrained(tmp_path / "base")
    TOKENIZER.save_pretrained(tmp_path / "base")
    base = type(BASE).from_pretrained(tmp_path / "base").eval()
    common = dict(do_sample=False, max_new_tokens=NEW, stop_strings=["S"])
    own = base.generate(**inputs(3), logits_processor=[BeyondVocabulary()], tokenizer=TOKENIZER, **common)
    assert torch.equal(base.generate(**inputs(3), custom_generate=kad.hf.generate, aligned_model=ALIGNED,
                                     rule=kk.Dual(0.0), **common), own)  # fmt: skip
    assert not torch.equal(own, base.generate(**inputs(3), logits_processor=[BeyondVocabulary()],
                                              do_sample=False, max_new_tokens=NEW))  # fmt: skip


def test_the_recipe_folder_passes_stop_strings_on():
    batch, common = inputs(3), dict(do_sample=False, max_new_tokens=NEW, stop_strings=["S", "2J"])
    own = BASE.generate(**batch, logits_processor=[BeyondVocabulary()], tokenizer=TOKENIZER, **common)
    recipe = BASE.generate(**batch, custom_generate=str(kad.hf.RECIPE_DIR), trust_remote_code=True, aligned_model=ALIGNED,
                           rule=kk.Dual(0.0), base_tokenizer=TOKENIZER, **common)  # fmt: skip
    assert torch.equal(recipe, own)


def test_a_rows_left_padding_is_not_read_as_text():
    """transformers' batched generate reads a short row's pad tokens as text ("<eos>"), so a
    string longer than the prompt can begin in them; kad reads the row's own tokens: the row
    stops as it does alone."""
    batch, width = inputs(3), inputs(3)["input_ids"].shape[1]
    common = dict(do_sample=False, max_new_tokens=NEW, stop_strings=[">ah", "zz"])
    kad_call = dict(custom_generate=kad.hf.generate, aligned_model=ALIGNED, rule=kk.Dual(0.0), base_tokenizer=TOKENIZER)
    together = BASE.generate(**batch, **kad_call, **common)
    alone = BASE.generate(**inputs(1, ["a"]), **kad_call, **common)[0, 1:].tolist()
    assert TEXTS[3][1] == "a" and together[1, width:].tolist()[: len(alone)] == alone and len(alone) > 1
    own = BASE.generate(**batch, logits_processor=[BeyondVocabulary()], tokenizer=TOKENIZER, **common)
    assert own[1, width:].tolist()[:2] == [alone[0], TOKENIZER.pad_token_id]  # transformers stopped in the pads
