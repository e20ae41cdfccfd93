"""What kad's options may be, and their defaults: the modes and their families, the rule
names, the engines, the dtypes, the paper's γ, λ and system message.

A leaf importing the standard library alone, so that ``kad`` parses its command line
(``kad --help``, a misspelt option, ``kad summary``) without loading torch and transformers,
which take seconds.  :mod:`kad.settings`, :mod:`kad.decoding` and :mod:`kad.models` read
these names here; they are importable from those modules too.
"""

from __future__ import annotations

from typing import Literal, get_args

# --- modes (described in kad.loop) ---------------------------------------------------------

Mode = Literal[
    "base", "aligned", "kad", "kad-spec", "nudging", "nudging-spec", "implicit-reward", "implicit-reward-spec"
]
MODES: tuple[str, ...] = get_args(Mode)

# Drafts per speculative round where none is asked for: the paper's γ.
GAMMA = 4
# The rule parameter where none is asked for (kad --lam, kad demo): the paper's dual λ.
LAM = 0.4

# The families (a mode less its "-spec") that run one model: no rule, no mixture.
ONE_MODEL_FAMILIES = ("base", "aligned")


def mode_family(mode: str) -> str:
    """What ``mode`` samples from, drafting or not: the mode less its ``-spec``."""
    return mode.removesuffix("-spec")


def is_speculative(mode: str) -> bool:
    """Whether ``mode`` drafts with the aligned model and verifies (the ``-spec`` modes)."""
    return mode.endswith("-spec")


# --- rules by name (kad --rule; kad.decoding.build_rule makes them) ------------------------

# The keys of kad_kernels.rules.AUTHOR_RULES (the rule each names is there), written out so
# that naming them loads no torch; tests/test_cli_start.py holds the two equal.
AUTHOR_RULE_NAMES = (
    "token_wise", "max", "max_q_minus", "max_q_plus", "max_p_plus", "minus_max_p_plus", "token_v2", "token_max",
    "budget_lr",
)

# The paper's rules, then the rule names of the authors' code.
RULES = ("dual", "primal", "nudging", "implicit-reward", *AUTHOR_RULE_NAMES)

# Rules with no parameter: kad generate|eval refuses --lam for them (and records none).
PARAMETERLESS_RULES = ("implicit-reward", "token_max")
# Rules whose parameter is a primal budget, not a λ (kad plot draws them on their own axis);
# tests/test_cli_start.py holds them to the rules build_rule makes.
PRIMAL_RULES = ("primal", "budget_lr")


def rule_name(mode: str, name: str | None) -> str | None:
    """The name of the rule ``mode`` runs: none for one model, fixed by the baseline
    modes (``name`` must be absent or that one), else ``name`` (default ``dual``)."""
    family = mode_family(mode)
    if family in ("base", "aligned", "nudging", "implicit-reward") and name not in (None, family):
        raise ValueError(f"mode {mode!r} fixes its rule: drop --rule {name}")
    if family in ONE_MODEL_FAMILIES:
        return None
    return family if family in ("nudging", "implicit-reward") else name or "dual"


# --- models --------------------------------------------------------------------------------

# The runtimes that load models by name (kad --engine); "auto" picks one (kad.models.resolve_engine).
EngineKind = Literal["auto", "torch", "llama.cpp"]
ENGINES: tuple[EngineKind, ...] = get_args(EngineKind)
# The dtypes a transformers model may be loaded in, by name ("auto": the checkpoint's own).
DTYPES = ("float32", "bfloat16", "float16")

# The system message the paper prompts every model with (in the aligned model's chat template).
SYSTEM_PROMPT = "Answer the question by walking through the reasoning step by step."
