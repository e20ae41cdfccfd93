"""A Ctrl-C at any line of a generation (:mod:`ctrl_c`): it leaves with what was generated,
the streamer ended, and the next generation on the same engines is an uninterrupted run's."""

from __future__ import annotations

import inspect
import itertools
import sys
from pathlib import Path
from collections.abc import Callable

import pytest
import torch
from ctrl_c import frames, interrupted_at, interruptible
from decoding_helpers import PROMPTS, Recorder, make_models, make_tokenizer

import kad
import kad.hf
import kad.batch
import kad.draw
import kad.loop
import kad_kernels as kk
from kad.decoding import Decoder
from kad.engines import HFEngine
from kad.settings import Settings

MODELS = make_models()
TOKENIZER = make_tokenizer()
EOS = TOKENIZER.eos_token_id


def _up_to_eos(tokens: list[int]) -> list[int]:
    """A row of kad.hf.generate's new tokens without the padding after its EOS."""
    return tokens[: tokens.index(EOS) + 1] if EOS in tokens else tokens


# The front end and the loop around the kernels' steps (each step is a call from _Loop.run).
_ENTRY_POINTS = (Decoder.generate, kad.hf.generate, kad.decode)
_INTERRUPTIBLE = interruptible(
    [*_ENTRY_POINTS, Decoder._inputs, Decoder._generation, kad.loop._reset_each, kad.loop._Loop.run,
     kad.loop._Loop.decoded]
)  # fmt: skip


@pytest.mark.parametrize("streamed", [False, True], ids=["two-rows", "streamed"])
@pytest.mark.parametrize("front_end", ["Decoder.generate", "kad.decode", "kad.hf.generate"])
@pytest.mark.parametrize("mode", ["kad", "kad-spec"])
def test_a_ctrl_c_anywhere_leaves_with_a_prefix_and_the_next_generation_is_whole(mode, front_end, streamed):
    """Also the streamer is ended each time (a consumer iterating it waits for end())."""
    if streamed and front_end == "kad.decode":
        pytest.skip("kad.decode's caller puts the prompt and ends the streamer")
    decoder = Decoder(MODELS["base"], MODELS["aligned"], TOKENIZER)
    prompts, budgets = [decoder.encode(p) for p in PROMPTS[:2]], [3, 5]
    if streamed:
        prompts, budgets = prompts[1:], budgets[1:]
    settings = Settings(mode, kk.Dual(0.4), 2, 0.0, True)
    streamers: list[Recorder] = []

    def generate() -> kad.Generation | kad.loop.Decoded:
        streamer = Recorder() if streamed else None
        streamers.append(streamer)
        if front_end == "kad.decode":
            return kad.decode(decoder.engines, prompts, budgets, settings, stop_ids=decoder.stop_ids, generator=None)
        if front_end == "kad.hf.generate":  # one budget for all rows
            width = max(map(len, prompts))
            input_ids = torch.tensor([[EOS] * (width - len(p)) + p for p in prompts])
            attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
            sequences = MODELS["base"].generate(
                input_ids, attention_mask=attention_mask, custom_generate=kad.hf.generate,
                aligned_model=MODELS["aligned"], base_tokenizer=TOKENIZER, aligned_tokenizer=TOKENIZER,
                mode=mode, rule=kk.Dual(0.4), gamma=2, do_sample=False, max_new_tokens=max(budgets), pad_token_id=EOS,
                streamer=streamer,
            )  # fmt: skip
            return kad.loop.Decoded([_up_to_eos(row[width:].tolist()) for row in sequences], None)
        return decoder.generate(prompts, mode, kk.Dual(0.4), gamma=2, temperature=0, max_new_tokens=budgets,
                                streamer=streamer)  # fmt: skip

    kinds = _interrupt_each_line(generate, _INTERRUPTIBLE, streamers, texts=front_end == "Decoder.generate")
    assert all(kinds.values()), kinds  # not vacuous: interrupted before, at the start of and during the generation


def _functions_of(*owners: object) -> list[Callable]:
    """The functions written in each module or class of ``owners`` (not those dataclasses make)."""
    functions = []
    for owner in owners:
        for value in vars(owner).values():
            if inspect.isclass(value) and value.__module__ == owner.__name__:
                functions += _functions_of(value)
            elif inspect.isfunction(value) and value.__module__ == getattr(owner, "__module__", owner.__name__):
                if value.__code__.co_filename == sys.modules[value.__module__].__file__:  # not dataclass's
                    functions.append(value)
    return functions


@pytest.mark.parametrize("mode", ["kad", "kad-spec"])
def test_a_ctrl_c_anywhere_in_the_steps_and_the_engine_leaves_with_a_prefix(mode):
    """Every line of the loop's steps, the batch, the draws and HFEngine, in turn."""
    lines = interruptible(
        [Decoder.generate, Decoder._inputs, Decoder._generation, *_functions_of(kad.loop, kad.batch, kad.draw, HFEngine)],
    )
    decoder = Decoder(MODELS["base"], MODELS["aligned"], TOKENIZER)
    prompts = [decoder.encode(p) for p in PROMPTS[:2]]

    def generate() -> kad.Generation:
        return decoder.generate(prompts, mode, kk.Dual(0.4), gamma=2, temperature=0, max_new_tokens=[2, 3])

    kinds = _interrupt_each_line(generate, lines, [None], texts=True)
    assert sum(kinds.values()) > 300 and all(kinds.values()), kinds


def _where(interrupt: KeyboardInterrupt) -> str:
    return " < ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in frames(interrupt)[:3])


def _in_end(interrupt: KeyboardInterrupt) -> bool:
    """Whether ``interrupt`` landed as the streamer's ``end`` started: nothing can end it then."""
    return frames(interrupt)[0].name == "end"


def _interrupt_each_line(generate: Callable, lines: dict, streamers: list[Recorder | None], texts: bool) -> dict[str, int]:
    """Interrupt ``generate()`` at each of ``lines`` in turn (the last of ``streamers`` is the
    run's); how many interrupts left with no partial, an empty one and some tokens."""
    whole = generate()
    if streamers[-1] is not None:
        assert streamers[-1].ended and sum(streamers[-1].puts[1:], []) == whole.token_ids[0]
    kinds = {"none": 0, "empty": 0, "some": 0}
    for line_event in itertools.count(1):
        interrupt = interrupted_at(line_event, generate, lines)
        if interrupt is None:
            return kinds
        assert streamers[-1] is None or streamers[-1].ended or _in_end(interrupt), f"streamer not ended: {_where(interrupt)}"
        assert hasattr(interrupt, "partial"), f"no partial: {_where(interrupt)}"
        partial = interrupt.partial
        if partial is None:  # before the generation began
            kinds["none"] += 1
        else:
            assert len(partial.token_ids) == len(whole.token_ids)
            for got, full in zip(partial.token_ids, whole.token_ids):
                assert got == full[: len(got)], line_event
            if texts:
                assert partial.texts == TOKENIZER.batch_decode(partial.token_ids, skip_special_tokens=True)
            kinds["some" if any(partial.token_ids) else "empty"] += 1
        again = generate()  # the engines were given back and emptied
        assert again.token_ids == whole.token_ids, line_event
    raise AssertionError("unreachable")
