"""What a benchmark's figures were measured on and with: the CPU, the commit of kad."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def cpu_name() -> str:
    """The CPU's model name (as lscpu reports it), else the architecture."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.machine()


def git(*args: str) -> str:
    """``git args`` in this checkout, whatever the working directory; "?" without git or a checkout."""
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


def kad_commit() -> str:
    """The short commit measured, and whether the code under it has uncommitted changes."""
    commit = git("rev-parse", "--short", "HEAD")
    if commit != "?" and git("status", "--porcelain", "--", "kad", "kad_kernels", "csrc") not in ("", "?"):
        commit += " (+ uncommitted changes under kad/, kad_kernels/ or csrc/)"
    return commit
