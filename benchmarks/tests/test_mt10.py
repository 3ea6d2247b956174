"""`benchmarks/mt10.py --quick` end to end: every manipulation method trains, is evaluated on every split and probe,
writes a stamped run file; a second call reuses the finished runs; the table, per-task table and figure are written."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import mt10

SCRIPT = Path(mt10.__file__)


def run(*args, out):
    return subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(out), *args], capture_output=True,
                          text=True, check=True).stdout


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "mt10"
    first = run("--oracle_seeds", "", "--jobs", "2", out=out)
    return out, first


def test_every_method_runs_every_split_and_probe(quick):
    out, first = quick
    assert "0 of 7 runs already done" in first
    for method in mt10.METHODS:
        record = json.loads((out / f"{method}-robot-s0.json").read_text())
        assert (record["method"], record["inputs"], record["seed"]) == (method, "robot", 0)
        assert record["provenance"]["commit"] and record["provenance"]["config"]["seed"] == 0
        assert record["provenance"]["config"]["state_key"] == "observation.state"
        assert record["code_version"] == mt10.code_version(mt10.METHODS[method].folder)
        assert set(record["results"]) == {"standard", "seed 2000", "novel phrasing", "blank image",
                                          "other instruction"}  # no privileged state to remove
        for split in record["results"].values():
            assert set(split) == {"reach-v3", "push-v3"} and all(r["episodes"] == 1 for r in split.values())
        assert record["train_seconds"] > 0 and record["eval_seconds"] > 0 and record["resumed_from_step"] == 0


def test_finished_runs_are_reused_and_oracle_rows_added(quick):
    out, _ = quick
    before = (out / "bc-robot-s0.json").stat().st_mtime_ns
    (out / mt10.FINGERPRINTS).write_text(json.dumps({"bc": {"0123456789ab": "ba9876543210"}}))  # not a run file
    second = run("--methods", "bc", "--oracle_seeds", "0", out=out)
    assert "1 of 2 runs already done" in second
    assert (out / "bc-robot-s0.json").stat().st_mtime_ns == before
    oracle = json.loads((out / "bc-oracle-s0.json").read_text())
    assert oracle["provenance"]["config"]["state_key"] == "observation.environment_state"
    assert "no privileged" in oracle["results"]
    table = (out.parent / "mt10.md").read_text()
    assert "| bc (oracle) | 0 |" in table and "| pi0 (robot) | 0 |" in table and "language, other instruction" in table
    for name in ("mt10.csv", "mt10.png", "mt10_tasks.md", "mt10_tasks.csv"):
        assert (out.parent / name).stat().st_size > 0


def test_report_needs_run_files(tmp_path):
    with pytest.raises(subprocess.CalledProcessError):
        run("--report", out=tmp_path / "mt10")


def test_code_version_hashes_what_the_run_imports(tmp_path, monkeypatch):
    """The run key covers the method's modules and the repository files they import, transitively (absolute,
    relative and `from package import module`), and nothing else; docstrings do not count."""
    files = {"m/__init__.py": "", "m/config.py": "X = 1\n", "m/train.py": "from m.config import X\n",
             "m/eval.py": "from .helper import g\n", "m/helper.py": "def g():\n    return 1\n",
             "m/model.py": "import common.used\n", "m/rl.py": "from common import used\n",
             "common/__init__.py": "", "common/used.py": '"""Doc."""\nfrom common import deep\n',
             "common/deep.py": "Y = 2\n", "common/unused.py": "Z = 3\n"}
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(text)
    monkeypatch.setattr(mt10, "REPO", tmp_path)
    before = mt10.code_version("m")
    for name, text in {"common/unused.py": "Z = 4\n", "m/rl.py": "W = 0\n", "common/new.py": "V = 5\n",
                       "common/used.py": '"""Another doc."""\nfrom common import deep\n'}.items():
        (tmp_path / name).write_text(text)
        assert mt10.code_version("m") == before, name
    for name, text in {"common/deep.py": "Y = 3\n", "m/helper.py": "def g():\n    return 2\n",
                       "common/__init__.py": "A = 1\n"}.items():
        (tmp_path / name).write_text(text)
        assert mt10.code_version("m") != before, name
        before = mt10.code_version("m")


def test_a_run_of_older_code_is_reused_only_when_it_computes_the_same(tmp_path, monkeypatch):
    shared = mt10.settings(quick=True)
    record = dict(code_version="old", settings=json.loads(json.dumps(shared)))
    (tmp_path / "bc-robot-s0.json").write_text(json.dumps(record))
    (tmp_path / mt10.FINGERPRINTS).write_text(json.dumps({"bc": {"old": "f1"}}))
    monkeypatch.setattr(mt10, "code_version", lambda folder: "new")
    today = {"bc": "f1"}
    monkeypatch.setattr(mt10, "fingerprint", lambda method, out: today[method])
    path = tmp_path / "bc-robot-s0.json"
    assert mt10.is_done(path, "bc", shared)  # changed code, same computation: reused
    today["bc"] = "f2"
    assert not mt10.is_done(path, "bc", shared)  # it computes something else: run again
    (tmp_path / mt10.FINGERPRINTS).write_text(json.dumps({"bc": {"older": "f2"}}))
    assert not mt10.is_done(path, "bc", shared)  # no fingerprint recorded for the run's code: run again
    monkeypatch.setattr(mt10, "code_version", lambda folder: "old")
    assert mt10.is_done(path, "bc", shared)
    assert not mt10.is_done(path, "bc", dict(shared, steps=5))  # other settings: run again
    assert not mt10.is_done(path, "bc", shared, ("--color_jitter",))  # other method flags: run again


def test_behaviour_is_reproducible_and_sees_config_training_and_evaluation(tmp_path, monkeypatch):
    """The fingerprint of one method twice is the same; another training seed, a changed preset of the tiny run, a
    changed optimisation and a changed action at evaluation each change it."""
    import dataclasses

    import torch

    from bc import config, model, train
    from common.tests import demo_cache
    with demo_cache.private_cache(tmp_path / "cache"):
        first = mt10.behaviour("bc")
        assert mt10.behaviour("bc") == first
        assert mt10.behaviour("bc", seed=1) != first
        with monkeypatch.context() as m:
            m.setitem(config.PRESETS, "tiny", dataclasses.replace(config.PRESETS["tiny"], lr=1e-3))
            assert mt10.behaviour("bc") != first
        with monkeypatch.context() as m:
            adamw = torch.optim.AdamW
            m.setattr(train.torch.optim, "AdamW", lambda params, lr, **kw: adamw(params, lr=2 * lr, **kw))
            assert mt10.behaviour("bc") != first
        with monkeypatch.context() as m:
            act = model.ClosedLoopPolicy.__call__
            m.setattr(model.ClosedLoopPolicy, "__call__", lambda self, obs: act(self, obs) * 0.999)
            assert mt10.behaviour("bc") != first


def test_every_committed_run_has_its_code_versions_fingerprint():
    """A committed run stays reusable after a code change only if its code version's fingerprint is recorded
    (`python benchmarks/mt10.py --fingerprint` before changing a method's code)."""
    out = mt10.RESULTS / "mt10"
    recorded = mt10.read_fingerprints(out)
    for path in sorted(out.glob("*-s*.json")):
        record = json.loads(path.read_text())
        assert record["code_version"] in recorded.get(record["method"], {}), path.name
