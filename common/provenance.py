"""Where a result came from: the commit of the checkout that produced it, and whether its Python files differed from
that commit. Every result file of a table (benchmarks/, humanoid_vla/table.py, offline_rl/table.py) records it, so a
number can be traced to the code that made it."""

from __future__ import annotations

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def checkout(repo: Path = REPO) -> dict[str, str | bool]:
    """{"commit": HEAD's short hash, "dirty": whether tracked Python files have uncommitted changes}; the commit is
    "" outside a git checkout (a copied folder)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True).stdout.strip()
    return dict(commit=git("rev-parse", "--short", "HEAD"),
                dirty=bool(git("status", "--porcelain", "--untracked-files=no", "--", "*.py")))


def commit_label(repo: Path = REPO) -> str:
    """The checkout's commit as one string, marked "+changes" when its Python files differ from it."""
    state = checkout(repo)
    return f"{state['commit']}{'+changes' if state['dirty'] else ''}"
