"""The engine contract (kad/engines/base.py), run once against every engine.

Each case makes fresh engines of one runtime; every check compares an engine
with a fresh engine of the same runtime fed one row's real tokens in one call,
so the tests hold for any runtime and need no knowledge of its internals.  A
new engine adds an :class:`EngineCase` to :data:`CASES`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from decoding_helpers import make_models, make_tokenizer, tiny_model
from gguf_models import require_llama_cpp, tiny_gguf
from transformers import (
    GPTNeoConfig,
    GPTNeoForCausalLM,
    Lfm2Config,
    Lfm2ForCausalLM,
    MambaConfig,
    MambaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    MptConfig,
    MptForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from kad.batch import Batch
from kad.engines import Engine, HFEngine, LlamaCppEngine
from kad.settings import Settings

MODELS = make_models()
TOKENIZER = make_tokenizer()
V = len(TOKENIZER)
# Ragged token ids: rows of different lengths, one of a single token.
PROMPTS = [[5, 17, 22, 9, 40, 3], [31, 8], [12], [60, 61, 62, 7]]


@dataclass(frozen=True)
class EngineCase:
    """A runtime under test: ``make()`` returns a fresh engine; ``atol`` bounds the
    logit difference between a batched/cached evaluation and a fresh one; ``drafts``:
    whether it can drop rejected drafts (else it refuses the speculative modes)."""

    make: Callable[[], Engine]
    atol: float
    drafts: bool = True


def _llama_cpp(role: str) -> Callable[[], Engine]:
    """The tiny ``role`` model as an f32 GGUF in llama.cpp (skipped without llama-cpp-python)."""

    def make() -> Engine:
        require_llama_cpp()
        return LlamaCppEngine(tiny_gguf(role), TOKENIZER, n_ctx=64)

    return make


def _windowed(model_type: str) -> torch.nn.Module:
    """A tiny model whose attention sees the last 3 tokens: every layer (Mistral's
    ``sliding_window``), or the second of two (Qwen2's ``layer_types``, as in Gemma)."""
    if model_type == "mistral":
        return tiny_model(MistralConfig, MistralForCausalLM, V, seed=3, scale=1.0, sliding_window=3)
    return tiny_model(Qwen2Config, Qwen2ForCausalLM, V, seed=3, scale=1.0, sliding_window=3, use_sliding_window=True,
                      max_window_layers=1)


WINDOWED = {name: _windowed(name) for name in ("mistral", "qwen2")}
# Layers that cannot drop drafts: a recurrent state (Mamba: no attention at all; LFM2:
# convolutions beside attention), GPT-Neo's local attention and MPT's ALiBi, both by cache column.
NO_DRAFTS = {
    "mamba": tiny_model(MambaConfig, MambaForCausalLM, V, seed=3, scale=1.0, state_size=4),
    "lfm2": tiny_model(Lfm2Config, Lfm2ForCausalLM, V, seed=3, scale=1.0, layer_types=["conv", "full_attention"]),
    "gptneo": tiny_model(GPTNeoConfig, GPTNeoForCausalLM, V, seed=3, scale=1.0, num_layers=2, num_heads=4,
                         attention_types=[[["global", "local"], 1]], window_size=3),
    "mpt": tiny_model(MptConfig, MptForCausalLM, V, seed=3, scale=1.0, d_model=32, n_layers=2, n_heads=4),
}


CASES = {
    "hf-qwen2": EngineCase(lambda: HFEngine(MODELS["base"], V), atol=1e-4),
    "hf-llama": EngineCase(lambda: HFEngine(MODELS["aligned"], V), atol=1e-4),
    "hf-mistral-window": EngineCase(lambda: HFEngine(WINDOWED["mistral"]), atol=1e-4),
    "hf-qwen2-window": EngineCase(lambda: HFEngine(WINDOWED["qwen2"]), atol=1e-4),
    **{f"hf-{name}": EngineCase(lambda name=name: HFEngine(NO_DRAFTS[name]), atol=1e-4, drafts=False) for name in NO_DRAFTS},
    "llamacpp-qwen2": EngineCase(_llama_cpp("base"), atol=1e-4),
    "llamacpp-llama": EngineCase(_llama_cpp("aligned"), atol=1e-4),
}


@pytest.fixture(params=list(CASES), ids=list(CASES))
def case(request) -> EngineCase:
    return CASES[request.param]


def fresh_logits(case: EngineCase, tokens: list[int]) -> torch.Tensor:
    """``[len(tokens), V]``: a fresh engine's logits after each token, fed in one call."""
    engine = case.make()
    engine.reset()
    return engine.advance(Batch([tokens], engine.device), keep=len(tokens))[0].float()


def assert_rows_match_fresh(case: EngineCase, batch: Batch, logits: torch.Tensor) -> int:
    """Every real column among the last ``keep`` of ``batch`` has the logits a fresh
    evaluation of its row's real tokens gives there; returns how many were compared."""
    keep = logits.shape[1]
    compared = 0
    for row in range(batch.tokens.shape[0]):
        mask = batch.mask[row].bool()
        real = batch.tokens[row][mask].tolist()
        fresh = fresh_logits(case, real)
        for k, column in enumerate(range(batch.width - keep, batch.width)):
            if mask[column]:
                position = int(mask[: column + 1].sum()) - 1
                torch.testing.assert_close(logits[row, k].float(), fresh[position], atol=case.atol, rtol=0)
                compared += 1
    return compared


def prefilled(engine: Engine) -> Batch:
    """The ragged prompts, left padded, fed with every column's logits checked later."""
    engine.reset()
    return Batch(PROMPTS, engine.device)


def test_the_engine_states_its_contract(case):
    engine = case.make()
    assert isinstance(engine, Engine)
    assert isinstance(engine.name, str) and engine.name
    assert isinstance(engine.vocab_size, int) and engine.vocab_size == V
    assert isinstance(engine.device, torch.device)
    assert engine.max_length is None or (isinstance(engine.max_length, int) and engine.max_length > 0)
    assert isinstance(engine.stop_ids, frozenset) and all(isinstance(i, int) for i in engine.stop_ids)
    engine.reset()
    assert engine.cached == 0


def test_advance_returns_the_logits_of_the_new_columns(case):
    engine = case.make()
    batch = prefilled(engine)
    logits = engine.advance(batch, keep=batch.width)
    assert logits.shape == (len(PROMPTS), batch.width, V) and logits.dtype.is_floating_point
    assert engine.cached == batch.width
    assert assert_rows_match_fresh(case, batch, logits) == sum(map(len, PROMPTS))
    batch.append(torch.tensor([1, 2, 3, 4], device=engine.device))
    step = engine.advance(batch)
    assert step.shape == (len(PROMPTS), 1, V) and engine.cached == batch.width
    assert assert_rows_match_fresh(case, batch, step) == len(PROMPTS)


def test_truncate_forgets_rejected_drafts(case):
    """Drafts fed, some rejected per row (masked), the unaccepted tail cropped: the
    next columns see only the accepted tokens, at their positions."""
    engine = case.make()
    if not case.drafts:
        with pytest.raises(ValueError, match="kad-spec needs a model whose cache can drop rejected drafts"):
            engine.reset(Settings(mode="kad-spec"))
        return
    batch = prefilled(engine)
    engine.advance(batch)
    first = batch.width
    for column in ([7, 8, 9, 10], [11, 12, 13, 14], [15, 16, 17, 18]):
        batch.append(torch.tensor(column, device=engine.device))
    drafts = engine.advance(batch, keep=3)
    assert drafts.shape == (len(PROMPTS), 3, V)
    accepted = torch.tensor([0, 2, 1, 0], device=engine.device)
    batch.reject(first, accepted)
    width = first + int(accepted.max())
    batch.truncate(width)
    engine.truncate(width)
    assert engine.cached == width
    batch.append(torch.tensor([20, 21, 22, 23], device=engine.device))
    batch.append(torch.tensor([24, 25, 26, 27], device=engine.device))
    after = engine.advance(batch, keep=2)
    assert assert_rows_match_fresh(case, batch, after) == 2 * len(PROMPTS)


def test_select_keeps_rows_in_their_new_order(case):
    engine = case.make()
    batch = prefilled(engine)
    engine.advance(batch)
    rows = torch.tensor([3, 0], device=engine.device)
    batch.select(rows)
    engine.select(rows)
    batch.append(torch.tensor([30, 31], device=engine.device))
    assert assert_rows_match_fresh(case, batch, engine.advance(batch)) == 2


def test_a_lagging_engine_catches_up_in_one_advance(case):
    """An engine skipped for some steps is fed all the columns it has not seen."""
    engine = case.make()
    batch = prefilled(engine)
    engine.advance(batch)
    for column in ([7, 8, 9, 10], [11, 12, 13, 14]):
        batch.append(torch.tensor(column, device=engine.device))
    assert assert_rows_match_fresh(case, batch, engine.advance(batch, keep=2)) == 2 * len(PROMPTS)


def test_reset_starts_a_new_generation(case):
    engine = case.make()
    engine.advance(prefilled(engine))
    engine.reset()
    assert engine.cached == 0
    batch = Batch([[9, 9, 4], [50]], engine.device)
    assert assert_rows_match_fresh(case, batch, engine.advance(batch, keep=batch.width)) == 4
