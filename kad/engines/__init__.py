"""Model runtimes behind one protocol (:class:`Engine`); see :mod:`kad.engines.base`.

=======================  ==============================================
engine                   runtime
=======================  ==============================================
:class:`HFEngine`        a transformers causal LM in this process
:class:`RemoteEngine`    a model behind an OpenAI-compatible completions
                         server (vLLM), scored from top-k log-probabilities
:class:`LlamaCppEngine`  a GGUF model in llama.cpp (llama-cpp-python),
                         one llama sequence per row
=======================  ==============================================
"""

from ..errors import EngineError
from .base import (
    Engine,
    ServedEngine,
    refuse_other_vocabularies,
    refuse_served_mixers,
    refuse_shared_engines,
)
from .huggingface import HFEngine
from .llamacpp import LlamaCppEngine
from .remote import RemoteEngine

__all__ = ["Engine", "EngineError", "HFEngine", "LlamaCppEngine", "RemoteEngine", "ServedEngine",
           "refuse_other_vocabularies", "refuse_served_mixers", "refuse_shared_engines"]
