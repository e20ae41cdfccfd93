"""kad inside transformers' ``generate`` (docs/design.md §5.6).

Two entry points:

- :func:`generate`: a ``custom_generate`` decoding method.
  ``base.generate(**inputs, custom_generate=kad.hf.generate, aligned_model=aligned, rule=kk.Dual(0.4))``
  runs (speculative) KAD with the rest of the generation config honoured or refused.
- :class:`KADLogitsProcessor`: turns the base model's scores into ``log π`` inside
  transformers' own sampling or greedy search.

The folder :data:`RECIPE_DIR` holds the same :func:`generate` in the layout of a
Hub ``custom_generate`` repository (``custom_generate=str(RECIPE_DIR), trust_remote_code=True``).
"""

from .generate import RECIPE_DIR, KADGenerateOutput, generate
from .processor import KADLogitsProcessor

__all__ = ["RECIPE_DIR", "KADGenerateOutput", "KADLogitsProcessor", "generate"]
