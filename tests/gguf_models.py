"""The tiny test models of :mod:`decoding_helpers` written as GGUF files for llama.cpp.

The same weights as the transformers models (f32 or f16), so the llama.cpp engine
and the transformers engine can be compared on one model; and the test tokenizer's
vocabulary as a byte-level BPE vocabulary, so llama.cpp tokenizes
text into the same ids as the character tokenizer (each character is a token; the
space is GPT-2's byte symbol ``Ġ``).  The lm_head's padding rows beyond the
tokenizer are tokens too (``<|endoftext|>``, which transformers' GPT-2 tokenizer
adds when it reads the file anyway, the merged token of :data:`_MERGE`, then
``[PAD<id>]`` padding), so the GGUF has as many tokens as the model has logits, as llama.cpp requires.

:func:`write_sentencepiece_gguf` writes a tiny Llama with a SentencePiece vocabulary
instead, as Llama-2 and Mistral GGUFs have; :func:`write_mamba_gguf` a tiny recurrent model.

Tensor names come from ``gguf``'s own HF-to-GGUF name map.  llama.cpp's ``llama``
architecture applies rotary embeddings to interleaved pairs where transformers
rotates halves, so the Q and K rows are permuted as llama.cpp's converter does;
``qwen2`` uses transformers' layout as is.
"""

from __future__ import annotations

import atexit
import functools
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from decoding_helpers import make_models, make_tokenizer
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MambaConfig,
    MambaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

_ARCHITECTURES = {"qwen2": gguf.MODEL_ARCH.QWEN2, "llama": gguf.MODEL_ARCH.LLAMA}
_SPACE = "\u0120"  # GPT-2's byte-level symbol for the byte 0x20
# llama.cpp refuses a BPE vocabulary without merges (and gguf writes no empty list), so the
# GGUF has one merge, of a letter and a digit, whose result takes the first padding slot:
# both pre-tokenizers split letters from digits, so no text is ever tokenized into it.
_MERGE = "a 1"


def _permute_for_interleaved_rope(weight: np.ndarray, heads: int) -> np.ndarray:
    """Rows of a Q or K projection ``[heads·head_dim, ...]`` from rotated halves to rotated pairs."""
    return weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _tokens(tokenizer: PreTrainedTokenizerFast, logits: int) -> tuple[list[str], list[int]]:
    """The GGUF token list and token types: the tokenizer's tokens in id order, then padding."""
    by_id = {i: token for token, i in tokenizer.get_vocab().items()}
    special = set(tokenizer.all_special_tokens)
    tokens, types = [], []
    for i in range(logits):
        token = by_id.get(i)
        if token is None and i == len(by_id):  # transformers would add it when reading the file
            tokens.append("<|endoftext|>")
            types.append(gguf.TokenType.CONTROL)
        elif token is None and i == len(by_id) + 1:
            tokens.append(_MERGE.replace(" ", ""))
            types.append(gguf.TokenType.NORMAL)
        elif token is None:  # named as llama.cpp's converter names padding (kad drops these)
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif token in special:
            tokens.append(token)
            types.append(gguf.TokenType.CONTROL)
        else:
            tokens.append(token.replace(" ", _SPACE))
            types.append(gguf.TokenType.NORMAL)
    return tokens, types


def write_gguf(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, path: Path, dtype: torch.dtype = torch.float32
) -> Path:
    """Write ``model`` (a transformers Qwen2 or Llama causal LM) with ``tokenizer``'s
    vocabulary to ``path`` as GGUF with ``dtype`` weights (norms stay f32)."""

    return _write(model, path, dtype, functools.partial(_add_byte_level_vocabulary, model, tokenizer))


def _add_byte_level_vocabulary(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, writer: gguf.GGUFWriter) -> None:
    tokens, types = _tokens(tokenizer, model.get_output_embeddings().weight.shape[0])
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges([_MERGE])
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_bos_token_id(tokenizer.eos_token_id)  # never added (add_bos_token false), but llama.cpp wants one
    writer.add_add_bos_token(False)


def write_mamba_gguf(path: Path) -> Path:
    """A tiny random Mamba (a recurrent state, no attention) with the test tokenizer's
    vocabulary, written as llama.cpp's converter writes one (A as ``-exp(A_log)``, the
    convolution weights without their middle axis)."""
    tokenizer = make_tokenizer()
    torch.manual_seed(5)
    config = MambaConfig(vocab_size=len(tokenizer) + 8, hidden_size=32, state_size=4, num_hidden_layers=2, expand=2,
                         conv_kernel=4, tie_word_embeddings=False, eos_token_id=tokenizer.eos_token_id)  # fmt: skip
    model = MambaForCausalLM(config).eval()
    arch = gguf.MODEL_ARCH.MAMBA
    writer = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[arch])
    writer.add_context_length(2048)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(0)
    writer.add_head_count(0)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_ssm_conv_kernel(config.conv_kernel)
    writer.add_ssm_inner_size(config.intermediate_size)
    writer.add_ssm_state_size(config.state_size)
    writer.add_ssm_time_step_rank(config.time_step_rank)
    writer.add_layer_norm_rms_eps(config.layer_norm_epsilon)
    writer.add_ssm_dt_b_c_rms(False)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    _add_byte_level_vocabulary(model, tokenizer, writer)
    names = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    for hf_name, tensor in model.state_dict().items():
        data = tensor.detach().float()
        if hf_name.endswith(".A_log"):
            data = -torch.exp(data)
        if hf_name.endswith("conv1d.weight"):
            data = data.squeeze(1)
        writer.add_tensor(names.get_name(hf_name, try_suffixes=(".weight", ".bias")), data.numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_sentencepiece_gguf(path: Path) -> Path:
    """A tiny random Llama with a SentencePiece vocabulary (``tokenizer.ggml.model`` "llama", as
    Llama-2 and Mistral GGUFs have): byte tokens, letters and ``▁``-prefixed pieces, a space
    prefix added to text.  transformers decodes a ``▁`` piece alone without its space."""
    tokens, scores, types = ["<unk>", "<s>", "</s>"], [0.0, 0.0, 0.0], [gguf.TokenType.UNKNOWN] + [gguf.TokenType.CONTROL] * 2
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    scores += [0.0] * 256
    types += [gguf.TokenType.BYTE] * 256
    letters = "abcdefghijklmnopqrstuvwxyz"
    pieces = [("\u2581", -1000.0)] + [(c, -1000.0) for c in letters + letters.upper() + "0123456789.,?!"]
    pieces += [("\u2581" + a, -100.0 - i) for i, a in enumerate(letters)]
    pieces += [("\u2581" + a + b, -10.0 - i - j / 100) for i, a in enumerate(letters) for j, b in enumerate(letters)]
    tokens += [piece for piece, _ in pieces]
    scores += [score for _, score in pieces]
    types += [gguf.TokenType.NORMAL] * len(pieces)
    torch.manual_seed(3)
    config = LlamaConfig(vocab_size=len(tokens), hidden_size=32, num_hidden_layers=1, intermediate_size=64,
                         num_attention_heads=4, num_key_value_heads=2, bos_token_id=1, eos_token_id=2,
                         tie_word_embeddings=False)  # fmt: skip

    def add_vocabulary(writer: gguf.GGUFWriter) -> None:
        writer.add_tokenizer_model("llama")
        writer.add_token_list(tokens)
        writer.add_token_scores(scores)
        writer.add_token_types(types)
        writer.add_unk_token_id(0)
        writer.add_bos_token_id(1)
        writer.add_eos_token_id(2)
        writer.add_add_bos_token(True)
        writer.add_add_space_prefix(True)

    return _write(LlamaForCausalLM(config).eval(), path, torch.float32, add_vocabulary)


def _write(model: PreTrainedModel, path: Path, dtype: torch.dtype, add_vocabulary) -> Path:
    """``model``'s hyperparameters and weights, and the vocabulary ``add_vocabulary(writer)`` adds."""
    config = model.config
    arch_name = config.model_type
    arch = _ARCHITECTURES[arch_name]
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    writer = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[arch])
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_file_type(gguf.LlamaFileType.ALL_F32 if dtype == torch.float32 else gguf.LlamaFileType.MOSTLY_F16)
    add_vocabulary(writer)

    names = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    for hf_name, tensor in model.state_dict().items():
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ValueError(f"no GGUF name for {hf_name}")
        data = tensor.detach().float().numpy()
        if arch_name == "llama" and hf_name.endswith(("q_proj.weight", "k_proj.weight")):
            data = _permute_for_interleaved_rope(data, heads if "q_proj" in hf_name else kv_heads)
        matrix = data.ndim == 2 and not hf_name.endswith("norm.weight")
        writer.add_tensor(name, data.astype(np.float16 if matrix and dtype == torch.float16 else np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def require_llama_cpp() -> None:
    """Skip the calling test without llama-cpp-python, or fail under ``KAD_REQUIRE_LLAMACPP=1``
    (CI installs it: a test that silently skips there would test nothing)."""
    if importlib.util.find_spec("llama_cpp") is None:
        message = "needs llama-cpp-python: pip install -e '.[llamacpp]' (bash .ci/run installs it)"
        if os.environ.get("KAD_REQUIRE_LLAMACPP") == "1":
            raise RuntimeError(message)
        pytest.skip(message)


@functools.cache
def tiny_gguf(role: str, dtype: torch.dtype = torch.float32) -> Path:
    """The tiny ``role`` model of :func:`decoding_helpers.make_models` as a GGUF file
    (written once per test process, removed at exit)."""
    directory = Path(tempfile.mkdtemp(prefix="kad-gguf-"))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    return write_gguf(make_models()[role], make_tokenizer(), directory / f"{role}.gguf", dtype)
