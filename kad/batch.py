"""The token layout a batch of sequences shares with every model's KV cache.

Rows of a batch hold different numbers of real tokens: prompts differ in length,
and in speculative decoding rows accept different numbers of drafts per round.
All caches nevertheless need one common length, so the batch is laid out in
**columns**: column ``j`` of every row is slot ``j`` of every cache, and a
mask says which columns of a row hold one of its real tokens.  Left padding and
rejected drafts are columns with mask 0 (padding in the middle): no later
token attends to them, and position ids count only the real tokens, so each
row sees exactly its own sequence, at its own positions, as a fresh forward
over that sequence would.

A speculative round appends γ draft columns to every row; after verification
the rejected drafts of each row are masked, and only the trailing columns that
no row accepted are cropped from the layout and the caches (for one row that
is the usual crop to the accepted length).  The masked columns stay in the
caches, costing memory (at most γ columns per round) but no re-computation.
The alternative, cropping every cache to the shortest accepted length and
re-feeding the longer rows' accepted tokens, would need the same padding in
the re-fed input and one more forward per round.

The last column is always the **pending** token: emitted but not yet fed to
any model.  A model's cache covers a prefix of the columns; :meth:`Engine.advance
<kad.engines.Engine.advance>` feeds it the columns it has not seen, so a model
reads the whole prompt in its first forward (no separate prefill), and a model
that skipped steps (the aligned model under a rule whose mask depends on p
alone, :mod:`kad.draw`) catches up in one forward.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

# Position id of the padding columns (never attended to; HF generate uses the same).
_PAD_POSITION = 1


class Batch:
    """Columns of tokens, mask and position ids, ``[B, W]`` each, on one device.

    ``lengths`` ``[B]`` counts each row's real tokens, so it is the position id of
    the row's next token."""

    def __init__(self, prompts: Sequence[Sequence[int]], device: torch.device):
        """Left-pad ``prompts`` (token ids, possibly empty) into columns on ``device``."""
        width = max(len(p) for p in prompts)
        self.tokens = torch.zeros(len(prompts), width, dtype=torch.long)
        self.mask = torch.zeros(len(prompts), width, dtype=torch.long)
        for row, prompt in enumerate(prompts):
            if prompt:  # an empty prompt is a row of padding only
                self.tokens[row, width - len(prompt) :] = torch.tensor(prompt)
                self.mask[row, width - len(prompt) :] = 1
        self.tokens, self.mask = self.tokens.to(device), self.mask.to(device)
        self.positions = (self.mask.cumsum(-1) - 1).masked_fill(self.mask == 0, _PAD_POSITION)
        self.lengths = self.mask.sum(-1)

    @property
    def width(self) -> int:
        return self.tokens.shape[1]

    def append(self, tokens: Tensor) -> None:
        """Append one column of real tokens, i64 ``[B]``."""
        self.tokens = torch.cat([self.tokens, tokens[:, None]], dim=1)
        self.mask = torch.cat([self.mask, torch.ones_like(tokens)[:, None]], dim=1)
        self.positions = torch.cat([self.positions, self.lengths[:, None]], dim=1)
        self.lengths = self.lengths + 1

    def reject(self, first: int, num_accepted: Tensor) -> None:
        """Mask the drafts a row rejected: the columns from ``first + num_accepted[b]``
        on, where ``first`` is the column of the first draft and ``num_accepted`` i64 ``[B]``."""
        column = torch.arange(self.width, device=self.tokens.device)
        rejected = column[None, :] >= first + num_accepted[:, None]
        self.mask = self.mask.masked_fill(rejected, 0)
        self.lengths = self.mask.sum(-1)

    def truncate(self, width: int) -> None:
        """Keep the first ``width`` columns (the others must be masked in every row)."""
        self.tokens, self.mask, self.positions = (x[:, :width] for x in (self.tokens, self.mask, self.positions))

    def select(self, rows: Tensor) -> None:
        """Keep the rows ``rows`` (i64 indices), in that order."""
        self.tokens, self.mask, self.positions, self.lengths = (
            x[rows] for x in (self.tokens, self.mask, self.positions, self.lengths)
        )

