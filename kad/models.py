"""Loading models by hub id, local path or GGUF file, and the device check.

:func:`load_models` loads what :meth:`kad.Decoder.from_pretrained` is asked for
(:class:`ModelChoice`): every argument and path checked first, then the models in
llama.cpp or in torch (the base model possibly on a server).  Loading fails with
one line naming what was asked for (:class:`ModelLoadError`, a ``ValueError``),
not transformers' chain of tracebacks: a path that does not exist, a hub id that
is neither cached nor reachable, a device this machine does not have.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

import torch
from safetensors import SafetensorError
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from . import default_pair
from .choices import DTYPES, ENGINES, EngineKind
from .engines import Engine, RemoteEngine
from .engines.llamacpp import INSTALL_HINT, LlamaCppEngine, check_n_ctx
from .engines.vocabulary import check_same_vocabulary  # noqa: F401  (its home before engines.vocabulary)


class ModelLoadError(ValueError):
    """A model or device that cannot be had, said in one line."""


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device`` as a ``torch.device`` this machine has (default: CUDA if available, else
    CPU); :class:`ModelLoadError` for a malformed or absent device."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ModelLoadError(f"device {device!r} is not a device: {error}") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            build = "this torch is a CPU build" if torch.version.cuda is None else "no CUDA device is visible"
            raise ModelLoadError(f"device {str(device)!r} is not available: {build} (torch {torch.__version__})")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ModelLoadError(f"device {str(device)!r} is not available: {torch.cuda.device_count()} CUDA device(s)")
    elif resolved.type == "mps":
        if not torch.backends.mps.is_available():
            raise ModelLoadError(f"device {str(device)!r} is not available on this machine")
    elif resolved.type != "cpu":  # xpu, hpu, ...: torch's module of that name says; meta holds no data
        is_available = getattr(getattr(torch, resolved.type, None), "is_available", None)
        if resolved.type == "meta" or is_available is None or not is_available():
            raise ModelLoadError(f"device {str(device)!r} is not available on this machine (torch {torch.__version__})")
    return resolved


def resolve_dtype(dtype: str | torch.dtype) -> str | torch.dtype:
    """``"auto"`` or the ``torch.dtype`` of ``dtype`` (one of :data:`DTYPES`, by name or as
    that dtype); ``ValueError`` naming it otherwise."""
    if dtype == "auto":
        return dtype
    if dtype in DTYPES:
        return getattr(torch, dtype)
    if dtype not in [getattr(torch, d) for d in DTYPES]:
        raise ValueError(f"dtype must be 'auto', {', '.join(map(repr, DTYPES))} or that torch dtype, got {dtype!r}")
    return dtype


def _first_line(error: Exception) -> str:
    """What a loader's exception says, in one line (its type when it says nothing)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _looks_like_path(name_or_path: str) -> bool:
    """Whether ``name_or_path`` can only be a local path: absolute, relative to ``.`` or ``~``, or
    with more parts than a hub id's ``owner/name``.  (``models/qwen`` could be either: transformers
    takes it as a directory if there is one, else asks the hub.)"""
    return (
        os.path.isabs(name_or_path)
        or name_or_path.startswith((".", "~"))
        or name_or_path.strip(os.sep).count(os.sep) >= 2
    )


def check_model_path(name_or_path: str) -> None:
    """:class:`ModelLoadError` naming a transformers model given by a local path that is not a
    directory: checked for every model before any loads (loading one takes minutes)."""
    path = os.path.expanduser(name_or_path)
    if _looks_like_path(name_or_path) and not os.path.isdir(path):
        what = "not a directory (a transformers model is one)" if os.path.exists(path) else "no such directory"
        raise ModelLoadError(f"model {name_or_path!r}: {what}")


def check_gguf_path(model: str) -> Path:
    """The GGUF file ``model``; :class:`ModelLoadError` naming it when there is no such file."""
    path = Path(model).expanduser()
    if not path.is_file():
        raise ModelLoadError(f"GGUF model {model!r}: no such file")
    return path


def load(
    name_or_path: str, device: torch.device, dtype: str | torch.dtype = "auto"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A causal LM (in eval mode, on ``device``) and its tokenizer, by hub id or local path;
    :class:`ModelLoadError` naming ``name_or_path`` when it cannot be loaded.

    A local directory holding a PEFT adapter (``adapter_config.json``, no ``config.json``)
    loads as its base model with the adapter applied (transformers' PEFT integration; needs
    ``peft``); its tokenizer is the adapter's own if saved with it, else the base model's.

    Attention is SDPA: the decoding loop masks columns in the middle of a sequence
    (see :mod:`kad.batch`), which SDPA and eager attention honour exactly."""
    tokenizer = model_tokenizer(name_or_path)
    return load_weights(name_or_path, device, dtype), tokenizer


def load_weights(name_or_path: str, device: torch.device, dtype: str | torch.dtype = "auto") -> PreTrainedModel:
    """The model of :func:`load` without its tokenizer (``name_or_path`` checked by
    :func:`model_tokenizer` first); :class:`ModelLoadError` naming it when it cannot be loaded."""
    try:
        model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype, attn_implementation="sdpa")
    # Damaged files: a Git LFS pointer or a cut-off safetensors file (SafetensorError),
    # weights of other shapes than config.json says (RuntimeError).
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as error:
        raise ModelLoadError(f"cannot load the model {name_or_path!r}: {_first_line(error)}") from None
    return model.to(device).eval()  # type: ignore[arg-type]  # transformers' wrapper hides Module.to's signature


def model_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    """The tokenizer :func:`load` gives with the model ``name_or_path``, without loading the
    weights (seconds, not minutes); :class:`ModelLoadError` naming it when it cannot be had."""
    check_model_path(name_or_path)
    path = os.path.expanduser(name_or_path)
    tokenizer_source = name_or_path
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "config.json")):
        tokenizer_source = _adapter_tokenizer_source(name_or_path, path)
    try:
        return AutoTokenizer.from_pretrained(tokenizer_source)
    except (OSError, ValueError, KeyError) as error:
        raise ModelLoadError(f"cannot load the model {name_or_path!r}: {_first_line(error)}") from None


def _adapter_tokenizer_source(name_or_path: str, path: str) -> str:
    """Where the tokenizer of the model directory ``path`` without a ``config.json`` lies, if it
    is a PEFT adapter (the adapter's own files, else its base model); ModelLoadError otherwise."""
    adapter_config = os.path.join(path, "adapter_config.json")
    if not os.path.isfile(adapter_config):
        raise ModelLoadError(f"model {name_or_path!r}: no config.json, so not a transformers model directory")
    if importlib.util.find_spec("peft") is None:
        raise ModelLoadError(f"model {name_or_path!r} is a PEFT adapter (adapter_config.json): pip install peft to load it")
    if os.path.isfile(os.path.join(path, "tokenizer_config.json")):
        return name_or_path
    try:
        base = json.loads(Path(adapter_config).read_text()).get("base_model_name_or_path")
    except (OSError, ValueError, AttributeError) as error:
        raise ModelLoadError(f"model {name_or_path!r}: unreadable adapter_config.json: {_first_line(error)}") from None
    if not isinstance(base, str) or not base:
        raise ModelLoadError(
            f"model {name_or_path!r}: a PEFT adapter with no tokenizer files and no base_model_name_or_path "
            "in adapter_config.json, so no tokenizer to load"
        )
    return base


def llama_cpp_installed() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def resolve_engine(
    engine: EngineKind, device: torch.device | None, models: Sequence[str]
) -> Literal["torch", "llama.cpp"]:
    """The runtime for ``models`` (the names given; none: the default pair) on ``device``
    (``None``: not chosen).  ``auto``: llama.cpp for ``.gguf`` files, and for the default
    pair when it is installed and the device is the CPU (or not chosen on a machine
    without CUDA); else torch.  :class:`ModelLoadError` for a choice that cannot work:
    GGUF files and transformers models mixed, GGUF files on another device than the CPU
    or without llama-cpp-python, a GGUF file under torch, a directory under llama.cpp."""
    if engine not in ENGINES:
        raise ModelLoadError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    gguf = [m for m in models if str(m).lower().endswith(".gguf")]  # MODEL.GGUF too
    cpu = device.type == "cpu" if device is not None else not torch.cuda.is_available()
    if engine == "auto":
        if 0 < len(gguf) < len(models):
            other = next(m for m in models if m not in gguf)
            raise ModelLoadError(f"{gguf[0]!r} is a GGUF file and {other!r} is not: give every model as GGUF "
                                 "files (llama.cpp) or every one as a transformers model (torch)")  # fmt: skip
        if gguf:  # GGUF files run in llama.cpp, whose own checks then name what is missing
            return resolve_engine("llama.cpp", device, models)
        return "llama.cpp" if not models and cpu and llama_cpp_installed() else "torch"
    if engine == "llama.cpp":
        if device is not None and device.type != "cpu":
            raise ModelLoadError(f"the llama.cpp engine runs on the CPU, not {str(device)!r}: drop --device")
        if not llama_cpp_installed():
            raise ModelLoadError(f"the llama.cpp engine needs llama-cpp-python: {INSTALL_HINT}")
        not_gguf = [m for m in models if m not in gguf]
        if not_gguf:
            raise ModelLoadError(f"the llama.cpp engine runs GGUF files; {not_gguf[0]!r} is not one (a .gguf file)")
    elif gguf:
        raise ModelLoadError(f"{gguf[0]!r} is a GGUF file: run it with --engine llama.cpp")
    return engine


def load_gguf(
    model: str | default_pair.PackagedGGUF,
    tokenizer: PreTrainedTokenizerBase | None = None,
    n_ctx: int | None = None,
) -> tuple[LlamaCppEngine, PreTrainedTokenizerBase]:
    """A GGUF model in llama.cpp and the tokenizer it is checked against: ``tokenizer``
    if given, else its own (read from the GGUF once, :func:`kad.default_pair.gguf_tokenizer_path`).
    ``model``: a ``.gguf`` path or a default-pair model (its GGUF, assembled once);
    ``n_ctx``: the engine's positions per row (``None``: its default)."""
    if isinstance(model, default_pair.PackagedGGUF):
        path = default_pair.gguf_path(model)
        tokenizer_dir = None if tokenizer is not None else default_pair.tokenizer_path(model)
    else:
        path = check_gguf_path(model)
        tokenizer_dir = None
    # transformers' GGUF reader fails on a damaged file in many exception types (struct.error,
    # ValueError from numpy, KeyError, ...): each is this file's fault, so each is named as such.
    try:
        if tokenizer is None:
            tokenizer_dir = tokenizer_dir or default_pair.gguf_tokenizer_path(path)
            tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
            tokenizer.name_or_path = str(path)  # messages name the GGUF it came from, not the cache
    except Exception as error:
        raise ModelLoadError(f"cannot read the tokenizer of the GGUF model {str(path)!r}: {_first_line(error)}") from None
    return LlamaCppEngine(path, tokenizer, n_ctx=n_ctx), tokenizer


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    """A tokenizer by hub id or directory; :class:`ModelLoadError` naming it otherwise."""
    if _looks_like_path(name_or_path) and not os.path.isdir(os.path.expanduser(name_or_path)):
        raise ModelLoadError(f"tokenizer {name_or_path!r}: no such directory")
    try:
        return AutoTokenizer.from_pretrained(os.path.expanduser(name_or_path))
    except (OSError, ValueError, KeyError) as error:
        raise ModelLoadError(f"cannot load the tokenizer {name_or_path!r}: {_first_line(error)}") from None


@dataclass(frozen=True)
class ModelChoice:
    """The models :meth:`kad.Decoder.from_pretrained` is asked for: its arguments, described there."""

    base: str | None = None
    aligned: str | None = None
    reference: str | None = None
    device: str | torch.device | None = None
    dtype: str | torch.dtype = "auto"
    engine: EngineKind = "auto"
    tokenizer: str | None = None
    n_ctx: int | None = None
    base_url: str | None = None
    base_model: str | None = None
    api_key: str | None = None
    approximate: bool = False


class LoadedModels(NamedTuple):
    """:class:`kad.Decoder`'s arguments: the models and the aligned ``tokenizer``, with the
    base and reference models' own tokenizers where they have one to check against it."""

    base: PreTrainedModel | Engine
    aligned: PreTrainedModel | Engine
    tokenizer: PreTrainedTokenizerBase
    reference: PreTrainedModel | Engine | None
    base_tokenizer: PreTrainedTokenizerBase | None
    reference_tokenizer: PreTrainedTokenizerBase | None


class _Plan(NamedTuple):
    """How a checked :class:`ModelChoice` loads."""

    engine: Literal["torch", "llama.cpp"]
    device: torch.device
    dtype: str | torch.dtype


def load_models(choice: ModelChoice) -> LoadedModels:
    """The models of ``choice``, each argument and path checked before any model loads
    (loading one takes minutes); a missing base or aligned model is the default pair's."""
    plan = _checked(choice)
    return _in_llama_cpp(choice, plan) if plan.engine == "llama.cpp" else _in_torch(choice, plan)


def _checked(choice: ModelChoice) -> _Plan:
    """``ValueError`` naming the argument for one that does not go with the others, or a
    path that is not there; else the engine, device and dtype they resolve to."""
    if choice.base is not None and choice.base_url is not None:
        raise ValueError("give the base model either by name (base) or by server (base_url), not both")
    if choice.base_url is None and (choice.base_model is not None or choice.api_key is not None or choice.approximate):
        raise ValueError("base_model, api_key and approximate go with base_url (a served base model)")
    dtype = resolve_dtype(choice.dtype)
    if choice.base_url is not None:
        RemoteEngine.checked_url(choice.base_url)  # before the aligned model loads
    requested = None if choice.device is None else resolve_device(choice.device)
    names = [m for m in (choice.base, choice.aligned, choice.reference) if m is not None]
    engine = resolve_engine(choice.engine, requested, names)
    device = requested or (torch.device("cpu") if engine == "llama.cpp" else resolve_device(None))
    if choice.tokenizer is not None and engine != "llama.cpp":
        raise ValueError("tokenizer goes with the llama.cpp engine (transformers models bring their own)")
    if choice.n_ctx is not None and engine != "llama.cpp":
        raise ValueError("n_ctx goes with the llama.cpp engine (a transformers model's context is its config's)")
    check_n_ctx(choice.n_ctx)
    if dtype != "auto" and engine == "llama.cpp":
        name = str(dtype).removeprefix("torch.")
        raise ValueError(f"dtype {name} goes with the torch engine (llama.cpp runs the GGUF files' own types)")
    check_path = check_gguf_path if engine == "llama.cpp" else check_model_path
    for name in names:
        check_path(name)
    return _Plan(engine, device, dtype)


def _served(
    choice: ModelChoice, base_url: str, tokenizer: PreTrainedTokenizerBase, device: torch.device
) -> RemoteEngine:
    """The served base model (``choice.base_url``), its vocabulary checked against the aligned ``tokenizer``."""
    return RemoteEngine(base_url, choice.base_model, tokenizer, api_key=choice.api_key,
                        approximate=choice.approximate, device=device)  # fmt: skip


def _in_llama_cpp(choice: ModelChoice, plan: _Plan) -> LoadedModels:
    """GGUF files (or the default pair's) in llama.cpp, each tokenizer checked against the aligned one."""
    if choice.base is None and choice.base_url is None:  # the base first: a missing pair names its packages first
        default_pair.gguf_path(default_pair.BASE)
    given = load_tokenizer(choice.tokenizer) if choice.tokenizer is not None else None
    aligned, tokenizer = load_gguf(choice.aligned or default_pair.ALIGNED, given, choice.n_ctx)
    base: Engine
    if choice.base_url is not None:
        base = _served(choice, choice.base_url, tokenizer, plan.device)
    else:
        base = load_gguf(choice.base or default_pair.BASE, tokenizer, choice.n_ctx)[0]
    reference = load_gguf(choice.reference, tokenizer, choice.n_ctx)[0] if choice.reference else None
    return LoadedModels(base, aligned, tokenizer, reference, None, None)


def _in_torch(choice: ModelChoice, plan: _Plan) -> LoadedModels:
    """transformers models (or the default pair's), the base model possibly served."""
    base: PreTrainedModel | Engine
    base_tokenizer: PreTrainedTokenizerBase | None
    if choice.base_url is None:  # the base first, as in llama.cpp
        base, base_tokenizer = load(choice.base or str(default_pair.local_path(default_pair.BASE)), plan.device, plan.dtype)
    aligned_name = choice.aligned or str(default_pair.local_path(default_pair.ALIGNED))
    if choice.base_url is None:
        aligned, tokenizer = load(aligned_name, plan.device, plan.dtype)
    else:  # the server asked before the aligned weights load: a failing server fails in seconds
        tokenizer = model_tokenizer(aligned_name)
        base, base_tokenizer = _served(choice, choice.base_url, tokenizer, plan.device), None
        aligned = load_weights(aligned_name, plan.device, plan.dtype)
    reference, reference_tokenizer = load(choice.reference, plan.device, plan.dtype) if choice.reference else (None, None)
    return LoadedModels(base, aligned, tokenizer, reference, base_tokenizer, reference_tokenizer)
