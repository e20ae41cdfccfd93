"""The code a user copies first runs as shown: README's kernel usage block and
``examples/quickstart.py`` (the README points to it as runnable on CPU).

The blocks that load hub models (``Decoder.from_pretrained``, ``kad.hf``) are left
out: tests read no hub (conftest.py); the same calls run on tiny models in
test_decoding.py and test_hf_*.py.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def readme_block_after(heading: str) -> str:
    """The first ```python block of README.md under ``heading``."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index(heading) :]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match, f"no python block under {heading!r} in README.md"
    return match.group(1)


def test_readme_usage_block_runs_with_the_shapes_its_comments_state():
    namespace: dict = {}
    exec(compile(readme_block_after("## Usage"), "README.md (Usage)", "exec"), namespace)
    B, V, gamma = namespace["B"], namespace["V"], namespace["gamma"]
    mix, tokens, out = namespace["mix"], namespace["tokens"], namespace["out"]
    assert mix.probs.shape == (B, V) and mix.alpha.shape == (B,)
    assert torch.allclose(mix.probs.sum(-1), torch.ones(B), atol=1e-4)
    assert tokens.dtype == torch.int64 and tokens.shape == (B,)
    assert out.tokens.dtype == torch.int64 and out.tokens.shape == (B, gamma + 1)
    assert out.num_accepted.shape == (B,)
    for row, accepted in zip(out.tokens.tolist(), out.num_accepted.tolist()):
        emitted = accepted + 1  # accepted drafts, then the correction or bonus token, then -1
        assert all(t >= 0 for t in row[:emitted]) and all(t == -1 for t in row[emitted:])


def test_quickstart_example_runs():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "quickstart.py")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert "num_accepted" in done.stdout and "backends available here" in done.stdout
