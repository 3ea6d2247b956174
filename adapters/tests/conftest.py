"""Fixtures of the adapter tests: tiny π0 and OpenVLA-OFT checkpoints with random weights (no demos, no training),
written the way the methods' train.py write theirs, so `common.policy.load_policy` rebuilds them by name; and a
small batch of Meta-World-like observations."""

import dataclasses

import pytest
import torch
from tensordict import NonTensorStack, TensorDict

from common.envs.metaworld_instructions import INSTRUCTIONS
from common.text import tokenizer_to_json, train_bpe_tokenizer
from common.train import checkpoint_meta, save_pretrained

torch.set_num_threads(1)

STATE_DIM = ACTION_DIM = 4  # Meta-World: hand xyz + gripper; Cartesian delta + gripper


def unit_stats(dim: int) -> dict[str, list[float]]:
    """Normalisation statistics of a feature spread over [-1, 1] (what a dataset's stats.json holds)."""
    return dict(mean=[0.0] * dim, std=[0.5] * dim, min=[-1.0] * dim, max=[1.0] * dim, q01=[-1.0] * dim,
                q99=[1.0] * dim)


def write_checkpoint(method: str, cfg, build, directory, prompt_tokens: int, state_dim: int = STATE_DIM,
                     action_dim: int = ACTION_DIM):
    """A random-weight checkpoint of `method` with config `cfg` in `directory`."""
    texts = [text for task in cfg.tasks for text in INSTRUCTIONS[task]]
    tokenizer = tokenizer_to_json(train_bpe_tokenizer(texts, vocab_size=cfg.tokenizer_vocab))
    cfg = dataclasses.replace(cfg, max_text_tokens=prompt_tokens)
    stats = {cfg.state_key: unit_stats(state_dim), "action": unit_stats(action_dim)}
    torch.manual_seed(0)
    policy = build(cfg, stats, tokenizer, state_dim, action_dim)
    save_pretrained(policy, checkpoint_meta(method, cfg, stats, tokenizer, state_dim, action_dim), directory)
    return directory


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    """{"pi0": dir, "oft": dir}: the smoke presets' sizes, random weights."""
    from openvla.config import PRESETS as OPENVLA_PRESETS, resolve
    from openvla.train import build_policy as build_openvla
    from pi0.config import PRESETS as PI0_PRESETS
    from pi0.train import build_policy as build_pi0
    root = tmp_path_factory.mktemp("checkpoints")
    return {"pi0": write_checkpoint("pi0", PI0_PRESETS["smoke"], build_pi0, root / "pi0", prompt_tokens=32),
            "oft": write_checkpoint("openvla", resolve(dataclasses.replace(OPENVLA_PRESETS["smoke"], variant="oft")),
                                    build_openvla, root / "oft", prompt_tokens=40)}


@pytest.fixture(scope="session")
def libero_checkpoints(tmp_path_factory):
    """{"pi0": dir, "oft": dir} at LIBERO's sizes: two cameras (agent view, wrist), 8-D state, 7-D actions."""
    from openvla.config import PRESETS as OPENVLA_PRESETS, resolve
    from openvla.train import build_policy as build_openvla
    from pi0.config import PRESETS as PI0_PRESETS
    from pi0.train import build_policy as build_pi0
    root, cameras = tmp_path_factory.mktemp("libero_checkpoints"), ("agentview", "robot0_eye_in_hand")
    pi0 = dataclasses.replace(PI0_PRESETS["smoke"], cameras=cameras, max_action_dim=7)
    oft = resolve(dataclasses.replace(OPENVLA_PRESETS["smoke"], variant="oft", cameras=cameras))
    return {"pi0": write_checkpoint("pi0", pi0, build_pi0, root / "pi0", 32, state_dim=8, action_dim=7),
            "oft": write_checkpoint("openvla", oft, build_openvla, root / "oft", 60, state_dim=8, action_dim=7)}


def observations(n: int, seed: int = 0, image_size: int = 32) -> TensorDict:
    """n observations as `common.policy` reads them: one 32 px camera, 4-D proprio, an instruction each."""
    g = torch.Generator().manual_seed(seed)
    texts = INSTRUCTIONS["reach-v3"] + INSTRUCTIONS["drawer-close-v3"]
    return TensorDict(rgb=torch.randint(0, 256, (n, 1, image_size, image_size, 3), dtype=torch.uint8, generator=g),
                      proprio=torch.rand(n, STATE_DIM, generator=g) * 2 - 1,
                      language=NonTensorStack(*(texts[i % len(texts)] for i in range(n))), batch_size=[n])
