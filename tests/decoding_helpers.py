"""Tiny random-weight models and a character-level tokenizer for the decoding tests.

No network: the tokenizer is built from a character list and the models from
configs.  The models' lm_head rows are scaled up so that their next-token
distributions are peaked like a real LM's (random init gives nearly uniform
ones, where every rule defers everything and every draft is accepted); the base
and aligned models differ (seeds, architectures), so drafts are sometimes
rejected.  The base and aligned models have more output logits than the
tokenizer has tokens, to exercise the vocabulary cut.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import numpy as np
import scipy.stats
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
import kad_kernels as kk
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ ,.?!+0123456789"  # 72 tokens with SPECIALS
SPECIALS = ["<eos>", "<system>", "<user>", "<assistant>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)
PROMPTS = ["hello there", "what is 2 + 2?", "a", "the quick brown fox jumps over"]


def make_tokenizer(chars: str = CHARS, eos: str = "<eos>", pieces: Sequence[str] = ()) -> PreTrainedTokenizerFast:
    """One token per character of ``chars``, after the special tokens; ``eos`` is the EOS token.
    ``pieces``: tokens of several characters after those, which decode as their text (text is
    encoded one character a token, never into a piece)."""
    vocab = {token: i for i, token in enumerate(SPECIALS + list(chars) + list(pieces))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<eos>"))
    backend.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=eos, additional_special_tokens=SPECIALS[1:])
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def sharpen(model: torch.nn.Module, scale: float) -> torch.nn.Module:
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(scale)
    return model.eval()


def make_models(eos_token_id: int = 0) -> dict[str, torch.nn.Module]:
    """``{"base", "aligned", "reference"}``: a Qwen2 base (80 logits), a Llama aligned
    model (76 logits) and a Qwen2 reference model (72 logits = the tokenizer's size)."""
    common = dict(num_attention_heads=4, num_key_value_heads=2, eos_token_id=eos_token_id, bos_token_id=None,
                  pad_token_id=None, tie_word_embeddings=False)
    torch.manual_seed(0)
    base = Qwen2ForCausalLM(
        Qwen2Config(vocab_size=80, hidden_size=64, num_hidden_layers=2, intermediate_size=128, **common)
    )
    torch.manual_seed(1)
    aligned = LlamaForCausalLM(
        LlamaConfig(vocab_size=76, hidden_size=32, num_hidden_layers=2, intermediate_size=64, **common)
    )
    torch.manual_seed(2)
    reference = Qwen2ForCausalLM(
        Qwen2Config(vocab_size=72, hidden_size=32, num_hidden_layers=1, intermediate_size=64, **common)
    )
    return {"base": sharpen(base, 15.0), "aligned": sharpen(aligned, 15.0), "reference": sharpen(reference, 15.0)}


def tiny_model(config_class, model_class, vocab_size: int, seed: int = 4, scale: float = 15.0, **options) -> torch.nn.Module:
    """A tiny random model of any architecture (two layers, width 32), its lm_head sharpened
    by ``scale``; ``options`` go to its config (a sliding window, layer types)."""
    torch.manual_seed(seed)
    config = config_class(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, intermediate_size=64,
                          num_attention_heads=4, num_key_value_heads=2, eos_token_id=None, bos_token_id=None,
                          pad_token_id=None, **options)
    return sharpen(model_class(config), scale)


# ----------------------------------------------------------------------------- distributions of the first two tokens


def mixture_probs(
    models: Mapping[str, torch.nn.Module], rule: kk.Rule, contexts: list[list[int]], temperature: float, vocab_size: int
) -> torch.Tensor:
    """π ``[N, V]`` after each context, from fresh full forwards of the models (no cache)."""

    def last_logits(model) -> torch.Tensor:
        with torch.no_grad():
            return model(input_ids=torch.tensor(contexts)).logits[:, -1, :vocab_size]

    p, q = last_logits(models["base"]), last_logits(models["aligned"])
    ref = last_logits(models["reference"]) if rule.needs_ref else None
    return kk.mixture(p, q, rule, temperature, ref_logits=ref).probs.double()


def exact_pairs(
    models: Mapping[str, torch.nn.Module],
    rule: kk.Rule,
    prompt: list[int],
    temperature: float,
    vocab_size: int,
    stop_ids: Collection[int],
) -> np.ndarray:
    """P(first two tokens = (a, b)) ``[V, V + 1]`` when every token is drawn from π;
    column V: the row stopped after ``a`` (a stop token)."""
    first = mixture_probs(models, rule, [prompt], temperature, vocab_size)[0]
    second = mixture_probs(models, rule, [prompt + [a] for a in range(vocab_size)], temperature, vocab_size)
    second = torch.cat([second, torch.zeros(vocab_size, 1, dtype=torch.double)], 1)
    for a in stop_ids:
        second[a] = 0
        second[a, vocab_size] = 1
    return (first[:, None] * second).numpy()


def pair_counts(token_ids: list[list[int]], vocab_size: int) -> np.ndarray:
    """Counts ``[V, V + 1]`` of the first two new tokens (column V: no second token)."""
    counts = np.zeros((vocab_size, vocab_size + 1))
    for tokens in token_ids:
        counts[tokens[0], tokens[1] if len(tokens) > 1 else vocab_size] += 1
    return counts


def goodness_of_fit(counts: np.ndarray, probs: np.ndarray) -> float:
    """Chi-square p-value of ``counts`` against ``probs``; cells expected below 5 are pooled."""
    expected = probs.ravel() * counts.sum()
    big = expected >= 5
    observed = np.append(counts.ravel()[big], counts.ravel()[~big].sum())
    expected = np.append(expected[big], expected[~big].sum())
    return scipy.stats.chisquare(observed, expected * observed.sum() / expected.sum()).pvalue


def two_sample(a: np.ndarray, b: np.ndarray) -> float:
    """Chi-square p-value that two count tables come from one distribution (rare cells pooled)."""
    total = a.ravel() + b.ravel()
    big = total >= 10
    table = np.stack([np.append(x.ravel()[big], x.ravel()[~big].sum()) for x in (a, b)])
    return scipy.stats.chi2_contingency(table[:, table.sum(0) > 0]).pvalue


class Recorder:
    """A transformers-style streamer that records what it receives."""

    def __init__(self) -> None:
        self.puts: list[list[int]] = []
        self.ended = False

    def put(self, value: torch.Tensor) -> None:
        self.puts.append(value.flatten().tolist())

    def end(self) -> None:
        self.ended = True
