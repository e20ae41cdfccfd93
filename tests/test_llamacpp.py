"""The llama.cpp engine (kad/engines/llamacpp.py) on the tiny test models written as GGUF.

The GGUF files hold the transformers models' own f32 weights (tests/gguf_models.py),
so llama.cpp is checked against transformers on the same model, and the decoding
properties are checked on llama.cpp alone: greedy speculative == greedy sequential,
sampled tokens follow π computed from the transformers models.  The engine
contract itself runs in tests/test_engines.py.
"""

from __future__ import annotations

import copy as copy_module
import pickle
import re
import threading
import time
import warnings

import numpy as np
import pytest
import torch
from decoding_helpers import CHARS, PROMPTS, goodness_of_fit, make_models, make_tokenizer, mixture_probs
from gguf_models import require_llama_cpp, tiny_gguf, write_gguf, write_mamba_gguf, write_sentencepiece_gguf

import kad
import kad_kernels as kk
from kad import cli
from kad.batch import Batch
from kad.engines import EngineError, LlamaCppEngine
from kad.loop import ContextLengthWarning
from kad.models import ModelLoadError, load_gguf, resolve_engine

MODELS = make_models()
TOKENIZER = make_tokenizer()
V = len(TOKENIZER)
BUDGETS = [10, 14, 8]
F16_KV_ATOL = 5e-3  # llama.cpp (f16 KV cache) vs transformers (f32) on the same f32 weights


@pytest.fixture(scope="module")
def decoder() -> kad.Decoder:
    require_llama_cpp()
    return kad.Decoder(
        LlamaCppEngine(tiny_gguf("base"), TOKENIZER, n_ctx=128),
        LlamaCppEngine(tiny_gguf("aligned"), TOKENIZER, n_ctx=128),
        TOKENIZER,
    )


def _fresh(role: str, tokens: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return MODELS[role](input_ids=torch.tensor([tokens])).logits[0, :, :V]


# ----------------------------------------------------------------------------- the same model as transformers


@pytest.mark.parametrize("role", ["base", "aligned"], ids=["qwen2", "llama"])
def test_llamacpp_gives_the_transformers_logits_of_the_same_weights(role):
    require_llama_cpp()
    engine = LlamaCppEngine(tiny_gguf(role), TOKENIZER, n_ctx=64)
    tokens = TOKENIZER(PROMPTS[3]).input_ids
    logits = engine.advance(Batch([tokens], engine.device), keep=len(tokens))[0]
    # llama.cpp keeps K and V in f16: about 3e-4 of the logits' range (9) apart from f32 transformers.
    torch.testing.assert_close(logits, _fresh(role, tokens), atol=F16_KV_ATOL, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["f32", "f16"])
def test_logits_of_float_weights_do_not_depend_on_how_tokens_are_fed(dtype):
    """Quantized weights do (docs/llamacpp.md); f32 and f16 weights, which these tests use, do not."""
    require_llama_cpp()
    engine = LlamaCppEngine(tiny_gguf("base", dtype), TOKENIZER, n_ctx=64)
    tokens = TOKENIZER(PROMPTS[1]).input_ids
    whole = engine.advance(Batch([tokens], engine.device), keep=3)[0]
    engine.reset()
    batch = Batch([tokens[:-1]], engine.device)
    split = [engine.advance(batch, keep=2)[0]]
    batch.append(torch.tensor(tokens[-1:]))
    split.append(engine.advance(batch)[0])
    torch.testing.assert_close(torch.cat(split), whole, atol=1e-4, rtol=0)


def test_greedy_llamacpp_emits_the_tokens_of_greedy_torch(decoder):
    torch_decoder = kad.Decoder(MODELS["base"], MODELS["aligned"], TOKENIZER)
    for mode in ("base", "kad"):
        rule = kk.Dual(0.4) if mode == "kad" else None
        ours = decoder.generate(PROMPTS[:3], mode, rule, temperature=0.0, max_new_tokens=BUDGETS).token_ids
        assert ours == torch_decoder.generate(PROMPTS[:3], mode, rule, temperature=0.0, max_new_tokens=BUDGETS).token_ids


# ----------------------------------------------------------------------------- decoding on llama.cpp alone


@pytest.mark.parametrize("gamma", [1, 3, 6])
@pytest.mark.parametrize("rule", [kk.Dual(0.4), kk.Primal(0.9), kk.Nudging(0.4)], ids=repr)
def test_greedy_speculative_emits_the_sequential_tokens(decoder, rule, gamma):
    mode = "nudging" if isinstance(rule, kk.Nudging) else "kad"
    sequential = decoder.generate(PROMPTS[:3], mode, rule, temperature=0.0, max_new_tokens=BUDGETS)
    spec = decoder.generate(PROMPTS[:3], f"{mode}-spec", rule, gamma=gamma, temperature=0.0, max_new_tokens=BUDGETS)
    assert spec.token_ids == sequential.token_ids
    assert [len(t) for t in spec.token_ids] != [1, 1, 1]  # rows decoded more than a stop token


def test_greedy_speculative_rejects_and_accepts_drafts(decoder):
    stats = decoder.generate(PROMPTS[:3], "kad-spec", kk.Dual(0.4), gamma=3, temperature=0.0,
                             max_new_tokens=BUDGETS).stats  # fmt: skip
    assert 0.2 < stats.acceptance_rate < 0.95


@pytest.mark.parametrize("mode", ["kad", "kad-spec"])
def test_sampled_first_token_follows_the_mixture(decoder, mode):
    """2000 first tokens (40 batches of 50 rows) against π from the transformers models;
    the same counts are far from p alone (what a verify against p would give)."""
    rule, temperature = kk.Dual(0.4), 1.0
    prompt = decoder.encode("hello")
    counts = np.zeros(V)
    for seed in range(40):
        out = decoder.generate([prompt] * 50, mode, rule, gamma=3, temperature=temperature, max_new_tokens=1, seed=seed)
        np.add.at(counts, [tokens[0] for tokens in out.token_ids], 1)
    pi = mixture_probs(MODELS, rule, [prompt], temperature, V)[0].numpy()
    assert goodness_of_fit(counts, pi) > 1e-3
    p = mixture_probs(MODELS, kk.Dual(0.0), [prompt], temperature, V)[0].numpy()
    assert goodness_of_fit(counts, p) < 1e-6


def test_batched_output_equals_per_prompt_output(decoder):
    batched = decoder.generate(PROMPTS[:3], "kad-spec", kk.Dual(0.4), temperature=0.0, max_new_tokens=BUDGETS)
    for prompt, budget, tokens in zip(PROMPTS[:3], BUDGETS, batched.token_ids):
        alone = decoder.generate([prompt], "kad-spec", kk.Dual(0.4), temperature=0.0, max_new_tokens=budget)
        assert alone.token_ids[0] == tokens


@pytest.mark.parametrize("rule", [kk.Dual(0.0), kk.Primal(0.1), kk.Nudging(0.4)], ids=repr)
def test_a_row_finishing_before_the_aligned_model_first_runs(decoder, rule):
    """Where p alone decides, the aligned model may not have run when a row leaves the batch;
    dropping the row from its empty cache is no fault (§5.3)."""
    prompts, budgets = PROMPTS[:3], [1, 6, 3]
    sampled = decoder.generate(prompts, "kad", rule, temperature=1.0, max_new_tokens=budgets, seed=0)
    assert all(len(t) <= b for t, b in zip(sampled.token_ids, budgets))
    greedy = decoder.generate(prompts, "kad", rule, temperature=0.0, max_new_tokens=budgets)
    expected = kad.Decoder(MODELS["base"], MODELS["aligned"], TOKENIZER).generate(
        prompts, "kad", rule, temperature=0.0, max_new_tokens=budgets
    )
    assert greedy.token_ids == expected.token_ids


def test_a_row_kept_twice_gets_a_sequence_of_its_own():
    """Rows dropped and one kept twice (the protocol allows it; the loop only drops rows)."""
    require_llama_cpp()
    engine = LlamaCppEngine(tiny_gguf("base"), TOKENIZER, n_ctx=64)
    prompts = [TOKENIZER(p).input_ids for p in PROMPTS[:3]]
    batch = Batch(prompts, engine.device)
    engine.advance(batch)
    rows = torch.tensor([2, 2, 0])
    batch.select(rows)
    engine.select(rows)
    batch.append(torch.tensor([10, 20, 30]))
    logits = engine.advance(batch)[:, 0]
    for row, (source, token) in enumerate(zip([2, 2, 0], [10, 20, 30])):
        expected = _fresh("base", prompts[source] + [token])[-1]
        torch.testing.assert_close(logits[row], expected, atol=F16_KV_ATOL, rtol=0)
    with pytest.raises(ValueError, match="more than the 3 sequences"):
        engine.select(torch.tensor([0, 0, 1, 2]))


# ----------------------------------------------------------------------------- bad input and limits


def test_a_gguf_of_another_vocabulary_is_refused_naming_both():
    require_llama_cpp()
    other = make_tokenizer(CHARS[::-1])
    with pytest.raises(ValueError, match=r"base\.gguf.*different vocabularies") as refused:
        LlamaCppEngine(tiny_gguf("base"), other)
    assert len(str(refused.value)) < 400  # a few ids from the first difference, not the probe's every id


def test_a_sentencepiece_gguf_passes_the_check_against_its_own_tokenizer(tmp_path, monkeypatch):
    """transformers decodes a ``▁`` piece alone without its space, llama.cpp's piece keeps it: one
    token still (Llama-2 and Mistral GGUFs were refused against their own tokenizer)."""
    require_llama_cpp()
    monkeypatch.setenv("KAD_CACHE", str(tmp_path / "cache"))
    path = write_sentencepiece_gguf(tmp_path / "spm.gguf")
    engine, tokenizer = load_gguf(str(path))
    probed = [len(tokenizer) // 3, len(tokenizer) // 2, len(tokenizer) - 1]  # ids the check reads back
    assert all(tokenizer.convert_ids_to_tokens(i).startswith("\u2581") for i in probed)
    assert engine.vocab_size == len(tokenizer)
    with pytest.raises(ValueError, match="different vocabularies"):  # another vocabulary is still told apart
        LlamaCppEngine(path, TOKENIZER)


def test_a_gguf_tokenizer_larger_than_the_model_is_named_by_its_gguf(tmp_path, monkeypatch):
    """The aligned GGUF's own tokenizer (1028 tokens) against a base GGUF of 80: the message names
    the aligned GGUF, not the cache folder its tokenizer was saved in."""
    require_llama_cpp()
    monkeypatch.setenv("KAD_CACHE", str(tmp_path / "cache"))
    path = write_sentencepiece_gguf(tmp_path / "spm.gguf")
    _, tokenizer = load_gguf(str(path))
    with pytest.raises(ValueError, match=rf"^the vocabularies differ: the tokenizer '{re.escape(str(path))}' has "
                                         rf"{len(tokenizer)} tokens, the GGUF model '.*base\.gguf' 80$"):  # fmt: skip
        LlamaCppEngine(tiny_gguf("base"), tokenizer)


def test_llama_cpps_log_shows_only_when_verbose(capsys):
    """Its load warnings ("missing newline token" here, "control-looking token" for the default pair)
    showed on every run: llama-cpp-python reads ggml's log levels from an older enum."""
    require_llama_cpp()
    LlamaCppEngine(tiny_gguf("base"), TOKENIZER, n_ctx=16).advance(Batch([[5, 6]], "cpu"))
    assert capsys.readouterr().err == ""
    LlamaCppEngine(tiny_gguf("base"), TOKENIZER, n_ctx=16, verbose=True)
    assert "llama_model_loader" in capsys.readouterr().err


def test_bad_arguments_are_refused(tmp_path):
    require_llama_cpp()
    with pytest.raises(ValueError, match="no such file"):
        LlamaCppEngine(tmp_path / "absent.gguf", TOKENIZER)
    with pytest.raises(ValueError, match="a directory, not a .gguf file"):
        LlamaCppEngine(tmp_path, TOKENIZER)
    with pytest.raises(TypeError, match="model_path must be the path of a GGUF file, got 123"):
        LlamaCppEngine(123, TOKENIZER)
    with pytest.raises(TypeError, match="tokenizer must be a transformers tokenizer .*got 'Qwen/Qwen2.5-0.5B'"):
        LlamaCppEngine(tiny_gguf("base"), "Qwen/Qwen2.5-0.5B")  # its len() is the string's
    (tmp_path / "garbage.gguf").write_bytes(b"not a gguf file")
    with pytest.raises(ValueError, match="garbage.gguf.*cannot load"):
        LlamaCppEngine(tmp_path / "garbage.gguf", TOKENIZER)
    for name, value, message in [
        ("n_ctx", 0, "n_ctx must be in [1, 16777215], got 0"),
        ("n_ctx", 2**31, "n_ctx must be in [1, 16777215], got 2147483648"),  # n_ctx × rows wrapped in llama.cpp's uint32
        ("n_ctx", 64.5, "n_ctx must be an int, got 64.5"),
        ("n_ctx", True, "n_ctx must be an int, got True"),
        ("n_batch", 0, "n_batch must be >= 1, got 0"),
        ("n_batch", "8", "n_batch must be an int, got '8'"),
        ("n_threads", -2, "n_threads must be >= 1, got -2"),
        ("n_gpu_layers", -1, "n_gpu_layers must be >= 0, got -1"),
    ]:
        with pytest.raises(ValueError, match=re.escape(message)):
            LlamaCppEngine(tiny_gguf("base"), TOKENIZER, **{name: value})


@pytest.mark.parametrize("damage", ["empty", "header cut", "tensors cut"])
def test_a_damaged_gguf_is_named_in_one_line(tmp_path, capsys, damage):
    """Its tokenizer is read by transformers' GGUF reader first, which fails in many exception types."""
    require_llama_cpp()
    data = tiny_gguf("aligned").read_bytes()
    damaged = tmp_path / "damaged.gguf"
    damaged.write_bytes({"empty": b"", "header cut": data[:2000], "tensors cut": data[: len(data) // 2]}[damage])
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["generate", "--base", str(tiny_gguf("base")), "--aligned", str(damaged), "--prompt", "hi",
                  "--no-chat", "--max-new-tokens", "2"])  # fmt: skip
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert f"cannot read the tokenizer of the GGUF model '{damaged}'" in error and "Traceback" not in error


def test_a_tokenizer_cache_that_cannot_be_made_is_named(tmp_path, monkeypatch):
    require_llama_cpp()
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("KAD_CACHE", str(tmp_path / "file"))
    with pytest.raises(ModelLoadError, match=r"cannot write the tokenizer cache .*file/tokenizers: .*set KAD_CACHE"):
        load_gguf(str(tiny_gguf("aligned")))


@pytest.mark.parametrize("n_batch", [1, 3])
def test_a_batch_of_more_rows_than_n_batch_tokens(n_batch):
    """llama.cpp aborted the process when a context's batch had fewer tokens than it has rows;
    n_batch only splits the feeds, so the logits are those of one feed."""
    require_llama_cpp()
    prompts = [TOKENIZER(p).input_ids for p in PROMPTS[:4]]
    logits = {}
    for size in (n_batch, 2048):
        engine = LlamaCppEngine(tiny_gguf("base"), TOKENIZER, n_ctx=64, n_batch=size)
        logits[size] = engine.advance(Batch(prompts, engine.device), keep=2)
    torch.testing.assert_close(logits[n_batch], logits[2048], atol=F16_KV_ATOL, rtol=0)


@pytest.mark.parametrize("rows_after", [2, 3], ids=["same-rows", "more-rows"])
def test_a_closed_engine_refuses_to_run(rows_after):
    """After close() a call names the closed engine (it was an AttributeError on the freed
    batch, or an EngineError blaming memory when the context had to grow)."""
    require_llama_cpp()
    engine = LlamaCppEngine(tiny_gguf("base"), TOKENIZER, n_ctx=64)
    decoder = kad.Decoder(engine, LlamaCppEngine(tiny_gguf("aligned"), TOKENIZER, n_ctx=64), TOKENIZER)
    decoder.generate(PROMPTS[:2], rule=kk.Dual(0.4), max_new_tokens=2, temperature=0)
    engine.close()
    with pytest.raises(EngineError, match="base.gguf: the engine is closed"):
        decoder.generate(PROMPTS[:rows_after], rule=kk.Dual(0.4), max_new_tokens=2, temperature=0)
    with pytest.raises(EngineError, match="the engine is closed"):
        engine.advance(Batch([[5]], engine.device))


def test_close_waits_for_a_generation_another_thread_runs_and_is_refused_inside_one():
    """Freeing llama.cpp's memory under a running generation would crash the process."""
    require_llama_cpp()
    engine = LlamaCppEngine(tiny_gguf("base"), TOKENIZER, n_ctx=64)
    decoder = kad.Decoder(engine, LlamaCppEngine(tiny_gguf("aligned"), TOKENIZER, n_ctx=64), TOKENIZER)
    started, events = threading.Event(), []

    class SlowStreamer:
        puts = 0

        def put(self, value):  # the first put is the prompt's, before the generation holds the engines
            self.puts += 1
            events.append("put")
            if self.puts == 2:
                started.set()
            time.sleep(0.05)

        def end(self):  # after the loop gives the engines back: no order with close()
            pass

    def generate():
        out = decoder.generate(PROMPTS[0], rule=kk.Dual(0.4), max_new_tokens=6, temperature=0, streamer=SlowStreamer())
        events.append(len(out.token_ids[0]))

    worker = threading.Thread(target=generate)
    worker.start()
    assert started.wait(60)
    engine.close()
    events.append("closed")
    worker.join(60)
    # Every token was put (inside the generation) before the engine was freed, and all 6 came back.
    assert len(events) - events[::-1].index("put") - 1 < events.index("closed") and 6 in events

    class ClosingStreamer(SlowStreamer):
        def put(self, value):
            self.puts += 1
            if self.puts == 2:  # inside the generation
                own.close()

    own = LlamaCppEngine(tiny_gguf("base"), TOKENIZER, n_ctx=64)
    decoder = kad.Decoder(own, LlamaCppEngine(tiny_gguf("aligned"), TOKENIZER, n_ctx=64), TOKENIZER)
    with pytest.raises(RuntimeError, match="an engine runs one generation at a time"):
        decoder.generate(PROMPTS[0], rule=kk.Dual(0.4), max_new_tokens=2, streamer=ClosingStreamer())


def test_an_engine_cannot_be_pickled_or_copied_and_says_so():
    require_llama_cpp()
    engine = LlamaCppEngine(tiny_gguf("base"), TOKENIZER, n_ctx=16)
    decoder = kad.Decoder(engine, LlamaCppEngine(tiny_gguf("aligned"), TOKENIZER, n_ctx=16), TOKENIZER)
    for copy in (pickle.dumps, copy_module.deepcopy, copy_module.copy):
        with pytest.raises(TypeError, match=r"a LlamaCppEngine \(.*base.gguf\) holds llama.cpp's model"):
            copy(decoder if copy is not copy_module.copy else engine)


def test_an_n_ctx_past_the_training_context_is_warned():
    """The loop stops rows at n_ctx; positions past the training context give logits the model never learnt."""
    require_llama_cpp()
    trained = MODELS["aligned"].config.max_position_embeddings
    with pytest.warns(ContextLengthWarning, match=rf"n_ctx={trained + 1} is past the context length {trained}"):
        LlamaCppEngine(tiny_gguf("aligned"), TOKENIZER, n_ctx=trained + 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ContextLengthWarning)
        LlamaCppEngine(tiny_gguf("aligned"), TOKENIZER, n_ctx=trained)


def test_a_context_that_cannot_be_made_leaves_the_engine_usable_for_a_smaller_batch(monkeypatch):
    """A failed context (out of memory for a bigger batch) must not leave a smaller batch
    decoding on the context it freed (that crashed the process)."""
    require_llama_cpp()
    engine = LlamaCppEngine(tiny_gguf("base"), TOKENIZER, n_ctx=64)
    decoder = kad.Decoder(engine, LlamaCppEngine(tiny_gguf("aligned"), TOKENIZER, n_ctx=64), TOKENIZER)
    first = decoder.generate(PROMPTS[:1], "base", max_new_tokens=4, temperature=0).token_ids
    with monkeypatch.context() as patch:
        patch.setattr(engine._lib, "llama_init_from_model", lambda model, params: None)
        with pytest.raises(EngineError, match=r"base.gguf: cannot make a context for 3 rows of 64 positions"):
            decoder.generate(PROMPTS[:3], "base", max_new_tokens=4, temperature=0)
    assert decoder.generate(PROMPTS[:1], "base", max_new_tokens=4, temperature=0).token_ids == first


def test_a_recurrent_gguf_decodes_and_refuses_drafts_before_it_starts(tmp_path):
    """A recurrent state (Mamba) cannot be cut back past rejected drafts: speculative modes
    are refused when the generation starts, as the transformers engine refuses them; the
    modes without drafts run (Dual(0) gives the base model's tokens)."""
    require_llama_cpp()
    mamba = LlamaCppEngine(write_mamba_gguf(tmp_path / "mamba.gguf"), TOKENIZER, n_ctx=64)
    decoder = kad.Decoder(mamba, LlamaCppEngine(tiny_gguf("aligned"), TOKENIZER, n_ctx=64), TOKENIZER)
    base = decoder.generate(PROMPTS[:2], "base", max_new_tokens=6, temperature=0).token_ids
    assert decoder.generate(PROMPTS[:2], "kad", kk.Dual(0.0), max_new_tokens=6, temperature=0).token_ids == base
    with pytest.raises(ValueError, match=r"kad-spec needs a model whose cache can drop rejected drafts; the llama.cpp "
                                         r"model '.*mamba.gguf' keeps recurrent state"):  # fmt: skip
        decoder.generate(PROMPTS[:2], "kad-spec", kk.Dual(0.0), max_new_tokens=6, temperature=0)


def test_rows_stop_where_llama_cpp_ends_a_generation(tmp_path):
    """The stop ids are llama.cpp's end-of-generation set, not EOS and EOT alone: here
    <|im_end|> and <|fim_pad|> (72, 73) and <|endoftext|> (74), of which EOT is one."""
    require_llama_cpp()
    tokenizer = make_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_end|>", "<|fim_pad|>"]})
    engine = LlamaCppEngine(write_gguf(MODELS["base"], tokenizer, tmp_path / "base.gguf"), n_ctx=16)
    assert engine.stop_ids == {tokenizer.eos_token_id, 72, 73, 74}


def test_too_many_rows_are_refused_in_one_line():
    require_llama_cpp()
    engine = LlamaCppEngine(tiny_gguf("base"), TOKENIZER, n_ctx=16)
    with pytest.raises(EngineError, match="at most 256"):
        engine.advance(Batch([[5]] * 257, engine.device))


@pytest.mark.parametrize("mode, gamma", [("kad", 1), ("kad-spec", 1), ("kad-spec", 4), ("kad-spec", 8)])
def test_rows_stop_at_the_context_length_with_a_warning(mode, gamma):
    """llama.cpp refuses a row past n_ctx, so every round must fit: a row near the context
    with a short row beside it (whose budget would allow more drafts) included."""
    require_llama_cpp()
    small = kad.Decoder(LlamaCppEngine(tiny_gguf("base"), TOKENIZER, n_ctx=20),
                        LlamaCppEngine(tiny_gguf("aligned"), TOKENIZER, n_ctx=20), TOKENIZER)  # fmt: skip
    small.stop_ids = frozenset()
    long = TOKENIZER(PROMPTS[3]).input_ids
    for prompts in ([long[:12]], [long[:18], long[:1]], [long[:1], long[:19], long[:5]]):
        with pytest.warns(ContextLengthWarning):
            out = small.generate(prompts, mode, kk.Dual(0.4), gamma=gamma, temperature=0.0, max_new_tokens=30)
        assert [len(p) + len(t) for p, t in zip(prompts, out.token_ids)] == [20] * len(prompts)


def test_a_processor_generation_past_the_engines_n_ctx_is_refused_before_it_starts():
    """llama.cpp cannot run past n_ctx: the generation would fail there and lose every token
    (a transformers aligned model runs on, with a warning)."""
    require_llama_cpp()
    from kad.hf import KADLogitsProcessor

    processor = KADLogitsProcessor(LlamaCppEngine(tiny_gguf("aligned"), TOKENIZER, n_ctx=16), kk.Dual(0.4))
    ids = torch.tensor([TOKENIZER(PROMPTS[1]).input_ids])  # 14 tokens
    with pytest.raises(ValueError, match=r"max_new_tokens=4: .* context length 16 .* lower max_new_tokens to 3"):
        MODELS["base"].generate(input_ids=ids, logits_processor=[processor], do_sample=False, max_new_tokens=4)
    out = MODELS["base"].generate(input_ids=ids, logits_processor=[processor], do_sample=False, max_new_tokens=3,
                                  eos_token_id=None)  # fmt: skip
    assert out.shape == (1, 17)


def test_the_engine_choice():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_engine("torch", cpu, []) == "torch"
    with pytest.raises(ModelLoadError, match="--engine llama.cpp"):
        resolve_engine("torch", cpu, ["m.gguf"])
    with pytest.raises(ModelLoadError, match="runs on the CPU"):
        resolve_engine("llama.cpp", cuda, [])
    with pytest.raises(ModelLoadError, match="engine must be one of"):
        resolve_engine("onnx", cpu, [])
    assert resolve_engine("auto", cpu, ["some/dir"]) == "torch"
    with pytest.raises(ModelLoadError, match="runs on the CPU, not 'cuda'"):  # was torch, then "no such directory"
        resolve_engine("auto", cuda, ["m.gguf"])
    with pytest.raises(ModelLoadError, match="'b.gguf' is a GGUF file and 'some/dir' is not: give every model"):
        resolve_engine("auto", cpu, ["b.gguf", "some/dir"])
    require_llama_cpp()
    assert resolve_engine("auto", cpu, []) == "llama.cpp"
    assert resolve_engine("auto", cpu, ["a.gguf", "b.gguf"]) == "llama.cpp"
    assert resolve_engine("auto", cpu, ["A.GGUF", "b.Gguf"]) == "llama.cpp"  # the suffix in any case
    with pytest.raises(ModelLoadError, match="'some/dir' is not one"):
        resolve_engine("llama.cpp", cpu, ["a.gguf", "some/dir"])


@pytest.mark.parametrize("dtype", [torch.float16, "bfloat16"])
def test_a_dtype_is_refused_with_gguf_files(dtype):
    """llama.cpp runs each GGUF file's own types: a dtype would be ignored, so it is refused before loading."""
    require_llama_cpp()
    with pytest.raises(ValueError, match=r"^dtype (float16|bfloat16) goes with the torch engine"):
        kad.Decoder.from_pretrained("/nonexistent/b.gguf", "/nonexistent/a.gguf", engine="llama.cpp", dtype=dtype)


def test_n_ctx_reaches_every_gguf_engine(tmp_path):
    require_llama_cpp()
    TOKENIZER.save_pretrained(tmp_path / "tokenizer")
    models = dict(base=str(tiny_gguf("base")), aligned=str(tiny_gguf("aligned")), reference=str(tiny_gguf("base")))
    decoder = kad.Decoder.from_pretrained(**models, tokenizer=str(tmp_path / "tokenizer"), n_ctx=48)
    assert {role: engine.n_ctx for role, engine in decoder.engines.items()} == dict.fromkeys(models, 48)


@pytest.mark.parametrize(
    "models, n_ctx, message",
    [(("/nonexistent/b.gguf", "/nonexistent/a.gguf"), 0, "n_ctx must be in [1, 16777215], got 0"),
     (("/nonexistent/b", "/nonexistent/a"), 64, "n_ctx goes with the llama.cpp engine")],
)  # fmt: skip
def test_a_bad_or_unused_n_ctx_is_refused_before_loading(models, n_ctx, message):
    require_llama_cpp()
    with pytest.raises(ValueError, match=re.escape(message)):
        kad.Decoder.from_pretrained(*models, n_ctx=n_ctx)


def test_cli_generate_on_gguf_files(capsys, tmp_path):
    require_llama_cpp()
    TOKENIZER.save_pretrained(tmp_path / "tokenizer")
    code = cli.main([
        "generate", "--engine", "llama.cpp", "--base", str(tiny_gguf("base")), "--aligned", str(tiny_gguf("aligned")),
        "--tokenizer", str(tmp_path / "tokenizer"), "--prompt", "hello there", "--no-chat", "--temperature", "0",
        "--max-new-tokens", "6", "--mode", "kad-spec", "--n-ctx", "32",
    ])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    expected = kad.Decoder(MODELS["base"], MODELS["aligned"], TOKENIZER).generate(
        ["hello there"], "kad-spec", kk.Dual(0.4), temperature=0.0, max_new_tokens=6
    )
    assert expected.texts[0] in out


def test_the_tokenizer_read_from_a_gguf_file(tmp_path, monkeypatch):
    """transformers reads it (once, then from the cache), padding tokens dropped; it
    tokenizes text as the test tokenizer does, and the engine's check accepts it."""
    require_llama_cpp()
    monkeypatch.setenv("KAD_CACHE", str(tmp_path))
    engine, tokenizer = load_gguf(str(tiny_gguf("aligned")))
    assert [p.name.split("-")[0] for p in (tmp_path / "tokenizers").iterdir()] == ["aligned"]
    assert len(tokenizer) == V + 2  # the GGUF's <|endoftext|> and merged "a1" (tests/gguf_models.py)
    for prompt in PROMPTS:
        assert tokenizer(prompt, add_special_tokens=False).input_ids == TOKENIZER(prompt).input_ids
    assert engine.vocab_size == V + 2
