"""KAD (Knapsack Approximation Deferral) decoding as a Hub ``custom_generate`` recipe.

transformers loads this file for ``model.generate(..., custom_generate=<this repo
or folder>, trust_remote_code=True)`` and calls :func:`generate` with every
argument of that call.  It hands them back to transformers' own ``generate``
with kad's decoding method, so the generation config is prepared exactly as for
``custom_generate=kad.hf.generate``; the code lives in the ``kad-kernels``
package (``kad/hf/generate.py``), pinned in ``requirements.txt``.
"""

from typing import Any

import kad.hf
from transformers import GenerationMixin


def generate(model: Any, *args: Any, **kwargs: Any) -> Any:
    """``model.generate(*args, **kwargs)`` decoded by :func:`kad.hf.generate`
    (needs ``aligned_model=`` and ``rule=``; see README.md)."""
    return GenerationMixin.generate(model, *args, custom_generate=kad.hf.generate, **kwargs)
