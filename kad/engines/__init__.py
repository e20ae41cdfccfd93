"""Model runtimes behind one protocol (:class:`Engine`); see :mod:`kad.engines.base`.

=====================  ==============================================
engine                 runtime
=====================  ==============================================
:class:`HFEngine`      a transformers causal LM in this process
=====================  ==============================================
"""

from .base import Engine, EngineError, ServedEngine
from .huggingface import HFEngine

__all__ = ["Engine", "EngineError", "HFEngine", "ServedEngine"]
