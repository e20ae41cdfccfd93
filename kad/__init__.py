"""kad: KAD decoding over model engines (docs/design.md §5), built on ``kad_kernels``.

:class:`Decoder` runs a base model and an aligned model (and, for the implicit
reward baseline, a reference model) in one batched loop, drawing every token
with ``kad_kernels.sample`` or verifying drafts with ``kad_kernels.verify``::

    import kad, kad_kernels as kk
    decoder = kad.Decoder.from_pretrained("Qwen/Qwen2.5-1.5B", "Qwen/Qwen2.5-0.5B-Instruct")
    out = decoder.generate(["What is 17 * 3?"], mode="kad-spec", rule=kk.Dual(0.4), gamma=4, chat=True)
    print(out.texts[0]); print(out.stats.summary())

``Decoder.from_pretrained()`` without model names loads the default pair
(:mod:`kad.default_pair`).  The command line is ``kad`` (:mod:`kad.cli`):
``demo``, ``generate``, ``eval`` (:mod:`kad.evaluate`), ``summary``, ``plot``.
"""

import importlib as _importlib
import importlib.util as _importlib_util
import pkgutil as _pkgutil
import sys as _sys
from types import ModuleType as _ModuleType
from typing import TYPE_CHECKING as _TYPE_CHECKING
from typing import Any as _Any

# The decoding extra's packages kad's modules import (matplotlib only in `kad plot`), checked
# on load: without one, `kad` would end in a bare ModuleNotFoundError from deep inside an import.
_NEEDS = ("transformers", "safetensors", "tqdm", "httpx")


def _is_missing(name: str) -> bool:
    if name in _sys.modules:  # imported already (None: blocked), where find_spec may raise
        return _sys.modules[name] is None
    return _importlib_util.find_spec(name) is None


_MISSING = [name for name in _NEEDS if _is_missing(name)]
if _MISSING:
    raise ModuleNotFoundError(
        f"kad needs {', '.join(_MISSING)}, from the decoding extra: pip install 'kad-kernels[decoding]'",
        name=_MISSING[0],
    )

# The public names, each imported from its module when first read: the modules that run
# models load torch and transformers (seconds), which `kad --help` and `kad summary` never
# need, nor a program importing kad.choices or kad.report.
_HOMES = {
    "ContextLengthWarning": "kad.errors",
    "Decoder": "kad.decoding",
    "Engine": "kad.engines",
    "Generation": "kad.decoding",
    "GenerationStats": "kad.stats",
    "HFEngine": "kad.engines",
    "MODES": "kad.choices",
    "Mode": "kad.choices",
    "SYSTEM_PROMPT": "kad.choices",
    "Settings": "kad.settings",
    "check_same_vocabulary": "kad.engines.vocabulary",
    "decode": "kad.loop",
    "__version__": "kad_kernels",  # one version for the distribution (pyproject.toml reads it there)
}
__all__ = [  # the keys of _HOMES (tests/test_cli_start.py)
    "ContextLengthWarning",
    "Decoder",
    "Engine",
    "Generation",
    "GenerationStats",
    "HFEngine",
    "MODES",
    "Mode",
    "SYSTEM_PROMPT",
    "Settings",
    "check_same_vocabulary",
    "decode",
    "__version__",
]


# The submodules, imported when first read as attributes too (``import kad; kad.engines.RemoteEngine``).
_SUBMODULES = frozenset(module.name for module in _pkgutil.iter_modules(__path__))


def __getattr__(name: str) -> _Any:
    if name in _SUBMODULES:
        return _imported(f"{__name__}.{name}")  # sets the attribute
    if name not in _HOMES:
        raise AttributeError(f"module 'kad' has no attribute {name!r}")
    value = getattr(_imported(_HOMES[name]), name)
    globals()[name] = value  # read once
    return value


def _imported(module: str) -> _ModuleType:
    """``module``, imported; an AttributeError raised inside its import (a package of another
    version) as an ImportError: from ``__getattr__`` it would read as a name kad lacks."""
    try:
        return _importlib.import_module(module)
    except AttributeError as error:
        raise ImportError(f"importing {module} failed: {error}", name=module) from error


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES, *_SUBMODULES})


if _TYPE_CHECKING:  # the names as type checkers and editors see them
    from kad_kernels import __version__

    from .choices import MODES, SYSTEM_PROMPT, Mode
    from .decoding import Decoder, Generation
    from .engines import Engine, HFEngine
    from .engines.vocabulary import check_same_vocabulary
    from .errors import ContextLengthWarning
    from .loop import decode
    from .settings import Settings
    from .stats import GenerationStats
