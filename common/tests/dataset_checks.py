"""The check every manipulation method's `train.py --dataset` must pass, shared by the folders' tests: the embedded
smoke demos exported to LeRobot v3.0 (PNG, lossless) train a policy that records the dataset, normalises by the
dataset's statistics, reloads from its checkpoint and acts; a camera the dataset lacks is an error that names it.
(That the batches equal the native path's is `common/tests/test_lerobot.py`.)"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from common.envs.metaworld import collect_demos, demo_spec
from common.lerobot import MissingKeyError, export_lerobot
from common.train import last_checkpoint, read_config


def check_trains_from_a_lerobot_dataset(smoke: Any, train: Callable, load_policy: Callable, closed_loop: type,
                                        tmp_path: Path) -> dict:
    """`smoke`: the method's smoke config (its demos already in the test's cache); `load_policy(run_dir)` -> (policy,
    config); `closed_loop(policy)(obs)` -> actions. Returns the checkpoint's config.json."""
    demos = collect_demos(demo_spec(smoke))
    export_lerobot(demos, tmp_path / "lerobot", video=False)
    cfg = dataclasses.replace(smoke, dataset=str(tmp_path / "lerobot"), eval_episodes=0, run_dir=str(tmp_path / "run"))
    train(cfg)
    written = read_config(last_checkpoint(cfg.run_dir))
    assert written["config"]["dataset"] == cfg.dataset
    assert written["stats"] == demos.stats  # the same frames: the same normalisation
    policy, _ = load_policy(cfg.run_dir)
    first = {key: np.array(frames[0]) for key, frames in demos.episode(0).items()}
    obs = {"images": {c: first[f"observation.images.{c}"] for c in cfg.cameras}, "state": first["observation.state"],
           "env_state": first["observation.environment_state"], "instruction": demos.episodes[0]["instruction"]}
    actions = np.asarray(closed_loop(policy)(obs))
    assert actions.shape[-1] == 4 and np.isfinite(actions).all()
    missing = dataclasses.replace(cfg, cameras=(*cfg.cameras, "behind"), run_dir=str(tmp_path / "missing"))
    with pytest.raises(MissingKeyError, match="no feature observation.images.behind"):
        train(missing)
    return written
