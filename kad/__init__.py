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

import importlib.util as _importlib_util
import sys as _sys

from kad_kernels import __version__  # one version for the distribution (pyproject.toml reads it there)

# The decoding extra's packages kad imports on load (matplotlib only in `kad plot`): without
# them `kad` would end in a bare ModuleNotFoundError from deep inside an import.
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

from .decoding import SYSTEM_PROMPT, Decoder, Generation
from .engines import Engine, HFEngine
from .engines.base import ContextLengthWarning
from .engines.vocabulary import check_same_vocabulary
from .loop import decode
from .settings import MODES, Mode, Settings
from .stats import GenerationStats

__all__ = [
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
