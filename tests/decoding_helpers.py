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

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ ,.?!+0123456789"  # 72 tokens with SPECIALS
SPECIALS = ["<eos>", "<system>", "<user>", "<assistant>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)
PROMPTS = ["hello there", "what is 2 + 2?", "a", "the quick brown fox jumps over"]


def make_tokenizer(chars: str = CHARS, eos: str = "<eos>") -> PreTrainedTokenizerFast:
    """One token per character of ``chars``, after the special tokens; ``eos`` is the EOS token."""
    vocab = {token: i for i, token in enumerate(SPECIALS + list(chars))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<eos>"))
    backend.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=eos, additional_special_tokens=SPECIALS[1:])
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _sharpen(model: torch.nn.Module, scale: float) -> torch.nn.Module:
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
    return {"base": _sharpen(base, 15.0), "aligned": _sharpen(aligned, 15.0), "reference": _sharpen(reference, 15.0)}
