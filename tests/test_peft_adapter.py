"""A local PEFT adapter directory as a model: kad loads its base model with the adapter applied
(transformers' PEFT integration), and the tokenizer of the adapter or else of its base model."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from decoding_helpers import make_models, make_tokenizer
from transformers import AutoModelForCausalLM

import kad
import kad_kernels as kk
from kad import cli
from kad.models import ModelLoadError, load

peft = pytest.importorskip("peft", reason="the PEFT tests need peft (pip install -e '.[peft]')")
CPU = torch.device("cpu")
MODELS, TOKENIZER = make_models(), make_tokenizer()
IDS = torch.tensor([[5, 9, 30, 41, 7]])


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """``(base_dir, adapter_dir)``: the tiny aligned model with its tokenizer, and a LoRA adapter of it
    whose weights are random (a fresh LoRA is the identity), saved without tokenizer files."""
    root = tmp_path_factory.mktemp("peft")
    base_dir, adapter_dir = root / "base", root / "adapter"
    MODELS["aligned"].save_pretrained(base_dir)
    TOKENIZER.save_pretrained(base_dir)
    torch.manual_seed(0)
    config = peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    adapted = peft.get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir), config)
    adapted.save_pretrained(adapter_dir)
    with torch.no_grad():
        expected = adapted(input_ids=IDS).logits
    return base_dir, adapter_dir, expected


def test_an_adapter_loads_onto_its_base_model(saved):
    base_dir, adapter_dir, expected = saved
    model, tokenizer = load(str(adapter_dir), CPU)
    with torch.no_grad():
        logits = model(IDS).logits
        plain = load(str(base_dir), CPU)[0](IDS).logits
    torch.testing.assert_close(logits, expected)
    assert not torch.allclose(logits, plain, atol=1e-3)  # the adapter changed the model
    assert tokenizer.get_vocab() == TOKENIZER.get_vocab()  # the base model's, the adapter has none


def test_an_adapter_with_its_own_tokenizer_uses_it(saved, tmp_path):
    base_dir, adapter_dir, _ = saved
    own = tmp_path / "adapter"
    own.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (own / name).write_bytes((adapter_dir / name).read_bytes())
    tokenizer = TOKENIZER.__class__.from_pretrained(base_dir)
    tokenizer.add_tokens(["<tool>"])
    tokenizer.save_pretrained(own)
    assert "<tool>" in load(str(own), CPU)[1].get_vocab()


def test_kad_generate_takes_an_adapter_as_the_aligned_model(saved, capsys):
    base_dir, adapter_dir, _ = saved
    args = ["generate", "--base", str(base_dir), "--aligned", str(adapter_dir), "--mode", "kad", "--rule", "dual",
            "--lam", "0.4", "--temperature", "0", "--max-new-tokens", "8", "--device", "cpu", "--prompt", "hello",
            "--no-chat"]  # fmt: skip
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    decoder = kad.Decoder.from_pretrained(str(base_dir), str(adapter_dir), device="cpu")
    expected = decoder.generate("hello", "kad", kk.Dual(0.4), temperature=0, max_new_tokens=8, chat=False)
    assert printed.startswith(expected.texts[0])


def test_an_adapter_without_peft_installed_says_so(saved, monkeypatch):
    _, adapter_dir, _ = saved
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "peft" else find_spec(name, *a))
    with pytest.raises(ModelLoadError, match=r"is a PEFT adapter \(adapter_config.json\): pip install peft"):
        load(str(adapter_dir), CPU)


@pytest.mark.parametrize(
    "config, message",
    [
        ({"peft_type": "LORA"}, "no tokenizer files and no base_model_name_or_path"),
        ("{not json", "unreadable adapter_config.json"),
        ({"peft_type": "LORA", "base_model_name_or_path": "/nonexistent/base"}, "cannot load the model"),
    ],
    ids=["no-base", "bad-json", "base-missing"],
)
def test_an_adapter_that_cannot_be_loaded_is_named(tmp_path, config, message):
    (tmp_path / "adapter_config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    with pytest.raises(ModelLoadError, match=rf"'{tmp_path}'.*{message}|{message}.*'{tmp_path}'"):
        load(str(tmp_path), CPU)
