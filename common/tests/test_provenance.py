"""The commit stamp every table's result files carry: HEAD's hash, and "dirty" only for changed tracked Python files."""

import subprocess

from common.provenance import checkout, commit_label


def git(repo, *args):
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


def test_checkout_reads_head_and_only_tracked_python_changes(tmp_path):
    git(tmp_path, "init", "-q")
    (tmp_path / "train.py").write_text("steps = 3000\n")
    git(tmp_path, "add", "train.py")
    git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "one")
    head = git(tmp_path, "rev-parse", "--short", "HEAD")
    assert checkout(tmp_path) == dict(commit=head, dirty=False) and commit_label(tmp_path) == head

    (tmp_path / "notes.md").write_text("a result\n")  # untracked, not Python: the code is still HEAD's
    (tmp_path / "scratch.py").write_text("x = 1\n")  # untracked Python is not part of the checkout's code either
    assert checkout(tmp_path)["dirty"] is False

    (tmp_path / "train.py").write_text("steps = 9000\n")  # a tracked Python file changed: the code is not HEAD's
    assert checkout(tmp_path) == dict(commit=head, dirty=True) and commit_label(tmp_path) == f"{head}+changes"


def test_outside_a_checkout_the_commit_is_empty(tmp_path):
    assert checkout(tmp_path) == dict(commit="", dirty=False)
