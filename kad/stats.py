"""Statistics of one :meth:`kad.Decoder.generate` call."""

from __future__ import annotations

import math
from dataclasses import dataclass


# GenerationStats field <- the ServedEngine property that counts it (kad.engines.base).
SERVED_COUNTERS = {
    "requests": "requests",
    "server_wait_s": "wait_s",
    "partial_positions": "partial_positions",
    "inexact_positions": "inexact_positions",
}


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else math.nan


@dataclass
class GenerationStats:
    """Counters of one generation (all rows together) and the rates derived from them.

    A *round* is one iteration of the decoding loop: one token per row in the
    sequential modes, one draft-and-verify cycle in the speculative ones.  Rates
    with nothing to count (acceptance in a sequential mode, α when not tracked)
    are NaN.  Verification is counted whole, before a row's stop token or budget
    cuts what it emits (as vLLM counts accepted tokens): the acceptance measures
    how well the drafts fit π, not where rows stop.  A served model's counters
    (``requests`` … ``inexact_positions``) are the generation's: one request
    serves every row, so per-row statistics leave them 0."""

    new_tokens: int = 0  # emitted tokens, stop tokens included
    wall_time_s: float = 0.0  # prefill and decoding loop, not tokenization
    rounds: int = 0
    drafts_proposed: int = 0
    drafts_accepted: int = 0
    verified_rows: int = 0  # (row, round) pairs that went through verification
    alpha_sum: float = 0.0  # Σ α over the emitted tokens whose α was tracked
    alpha_count: int = 0
    deferring_steps: int = 0  # emitted tokens whose mixture deferred some mass (α > 0)
    requests: int = 0  # HTTP requests to a served base model
    server_wait_s: float = 0.0  # of wall_time_s, waiting for those answers (server, network, JSON)
    partial_positions: int = 0  # positions a served model scored from top-k log-probabilities
    inexact_positions: int = 0  # of those, positions where π was only approximated (opt-in)

    @property
    def tokens_per_s(self) -> float:
        return _ratio(self.new_tokens, self.wall_time_s)

    @property
    def acceptance_rate(self) -> float:
        """Accepted drafts / proposed drafts."""
        return _ratio(self.drafts_accepted, self.drafts_proposed)

    @property
    def mean_accepted_length(self) -> float:
        """Tokens a verification yields per row: accepted drafts + the correction or bonus token
        (before a stop token or the budget cuts them)."""
        return _ratio(self.drafts_accepted + self.verified_rows, self.verified_rows)

    @property
    def mean_alpha(self) -> float:
        """Mean deferred mass α of the mixtures the emitted tokens were drawn from."""
        return _ratio(self.alpha_sum, self.alpha_count)

    @property
    def deferral_fraction(self) -> float:
        """Fraction of the emitted tokens whose mixture deferred any mass (α > 0)."""
        return _ratio(self.deferring_steps, self.alpha_count)

    def summary(self) -> str:
        """One line per statistic, aligned, for printing; the rates with nothing to
        count (acceptance without verification, α when not tracked) are left out."""
        rows = [
            ("new tokens", f"{self.new_tokens}"),
            ("wall time", f"{self.wall_time_s:.3f} s"),
            ("tokens/s", f"{self.tokens_per_s:.1f}"),
            ("rounds", f"{self.rounds}"),
        ]
        if self.verified_rows:
            rows += [
                ("acceptance rate", f"{self.acceptance_rate:.3f} ({self.drafts_accepted}/{self.drafts_proposed} drafts)"),
                ("mean accepted length", f"{self.mean_accepted_length:.2f} tokens per row and round"),
            ]
        if self.alpha_count:
            rows += [("mean alpha", f"{self.mean_alpha:.3f}"), ("steps deferring", f"{self.deferral_fraction:.3f}")]
        if self.requests:
            exact = self.partial_positions - self.inexact_positions
            rows += [
                ("requests per token", f"{self.requests / max(self.new_tokens, 1):.2f} ({self.requests} requests)"),
                ("waiting on server", f"{self.server_wait_s:.3f} s of {self.wall_time_s:.3f} s"),
                ("exact positions", f"{exact}/{self.partial_positions} scored from top-k log-probabilities"),
            ]
        return "\n".join(f"{name:<21} {value}" for name, value in rows)
