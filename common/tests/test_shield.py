"""The manipulation safety shield: each rule on hand-made actions, then in closed loop on Meta-World (an unsafe
policy's violations before and none after; the scripted expert untouched)."""

import numpy as np
import pytest

from common.envs.metaworld import MT10
from common.shield import Shield, ShieldConfig, Shielded

CFG = ShieldConfig(max_speed=1.0, max_accel=100.0, workspace_low=(-0.4, 0.45, 0.1), workspace_high=(0.4, 0.9, 0.4))


def velocity(action, cfg=CFG):
    return np.asarray(action[:3]) * cfg.metres_per_unit / cfg.dt


def test_speed_is_scaled_to_its_limit():
    shield = Shield(ShieldConfig(max_speed=1.0, max_accel=1e6))
    shield.reset(np.zeros(3) + [0, 0.7, 0.2])
    out = shield.step(np.array([1.0, 1.0, 1.0, 0.3]))  # 1.39 m/s
    assert np.linalg.norm(velocity(out)) == pytest.approx(1.0)
    assert np.allclose(out[:3] / out[0], 1.0) and out[3] == pytest.approx(0.3)  # direction and gripper kept
    assert shield.interventions["speed"] == 1 and sum(shield.interventions.values()) == 1
    slow = shield.step(np.array([0.5, 0.0, 0.0, 0.0]))  # 0.4 m/s: allowed as it is
    assert np.allclose(slow, [0.5, 0, 0, 0]) and shield.interventions["speed"] == 1


def test_acceleration_moves_toward_the_previous_velocity_by_the_limit():
    cfg = ShieldConfig(max_speed=10.0, max_accel=10.0)
    shield = Shield(cfg)
    shield.reset(np.array([0.0, 0.7, 0.2]))
    out = shield.step(np.array([1.0, 0.0, 0.0, 0.0]))  # from rest to 0.8 m/s in one 12.5 ms step: 64 m/s^2
    assert velocity(out, cfg)[0] == pytest.approx(10.0 * cfg.dt)  # 0.125 m/s
    assert shield.interventions["accel"] == 1
    for _ in range(10):  # a steady push ramps up at the limit, never faster
        before = shield.velocity.copy()
        shield.step(np.array([1.0, 0.0, 0.0, 0.0]))
        assert np.linalg.norm(shield.velocity - before) / cfg.dt <= 10.0 + 1e-6


def test_workspace_holds_exactly():
    shield = Shield(CFG)
    shield.reset(np.array([0.395, 0.7, 0.2]))  # a cell inside the controller's box (x up to 0.5)
    out = shield.step(np.array([1.0, 0.0, 0.0, 0.0]))
    assert shield.target[0] == pytest.approx(0.4) and out[0] == pytest.approx(0.5)
    assert shield.interventions["workspace"] == 1
    for _ in range(5):
        shield.step(np.array([1.0, 0.0, -1.0, 0.0]))
    assert np.all(shield.target <= np.asarray(CFG.workspace_high) + 1e-12)


def test_the_target_is_clipped_like_the_controllers_set_point():
    # pressing into the table: the controller holds its set-point at z = 0.05, so the shield's target does too, and
    # lifting off moves the hand up at once (a target that had drifted below would first have to climb back)
    shield = Shield(ShieldConfig(max_speed=10, max_accel=1e6))
    shield.reset(np.array([0.0, 0.7, 0.06]))
    for _ in range(5):
        out = shield.step(np.array([0.0, 0.0, -1.0, 0.0]))
    assert shield.target[2] == pytest.approx(0.05) and out[2] == pytest.approx(-1.0)
    assert sum(shield.interventions.values()) == 0  # the controller's clip is not a violation
    shield.step(np.array([0.0, 0.0, 1.0, 0.0]))
    assert shield.target[2] == pytest.approx(0.06)


def test_keep_out_stops_the_motion_toward_the_sphere_only():
    cfg = ShieldConfig(keep_out=((0.1, 0.7, 0.2, 0.095),), max_speed=10, max_accel=1e6)
    shield = Shield(cfg)
    shield.reset(np.array([0.0, 0.7, 0.2]))  # 0.1 m from the centre, 5 mm outside the sphere
    out = shield.step(np.array([1.0, 1.0, 0.0, 0.0]))  # +x (toward it) and +y (tangential)
    assert out[0] == pytest.approx(0.0) and out[1] == pytest.approx(1.0)
    assert shield.interventions["keep-out"] == 1
    away = shield.step(np.array([-1.0, 0.0, 0.0, 0.0]))  # moving away is never stopped
    assert away[0] == pytest.approx(-1.0) and shield.interventions["keep-out"] == 1


def test_a_monitor_counts_without_changing_anything():
    monitor = Shield(CFG, enforce=False)
    actions = np.array([[1.0, 1.0, 1.0, 0.0], [-1.0, -1.0, -1.0, 0.0]])
    out = monitor(actions, hand=np.array([0.0, 0.7, 0.2]))
    assert np.allclose(out, actions)
    assert monitor.interventions["speed"] == 2 and monitor.interventions["accel"] == 2


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="empty workspace"):
        ShieldConfig(workspace_low=(0.5, 0.4, 0.05), workspace_high=(0.5, 1.0, 0.5))
    with pytest.raises(ValueError, match="positive"):
        ShieldConfig(max_speed=0)
    with pytest.raises(ValueError, match="keep_out"):
        ShieldConfig(keep_out=((0.0, 0.0, 0.0),))
    with pytest.raises(RuntimeError, match="reset"):
        Shield().step(np.zeros(4))


# ----------------------------------------------------------------------------------------------- closed loop
def run(task, episodes, policy, max_steps=150):
    """Episodes of `policy` (obs -> (k, 4)); successes, and the largest excursion of Meta-World's own mocap target
    (the commanded hand position) outside the default workspace."""
    from common.envs.metaworld import MetaWorldEnv
    env = MetaWorldEnv(task, image_size=16, cameras=("corner",), max_steps=max_steps)
    low, high = np.asarray(ShieldConfig.workspace_low), np.asarray(ShieldConfig.workspace_high)
    successes, outside = 0, 0.0
    for e in range(episodes):
        obs, done = env.reset(1000, e), False
        policy.reset()
        while not done:
            for action in policy(obs):
                obs, _, done, info = env.step(action, render=False)
                target = env.env.unwrapped.data.mocap_pos[0]
                outside = max(outside, float(np.max(np.maximum(low - target, target - high))))
                if done:
                    break
        successes += info["success"]
    env.close()
    return successes, outside


class Expert:
    """Meta-World's scripted expert for `task`, plus Gaussian noise of std `noise` on its actions."""

    def __init__(self, task, noise=0.0, seed=0):
        from metaworld.policies import ENV_POLICY_MAP
        self.expert, self.noise, self.rng = ENV_POLICY_MAP[task](), noise, np.random.default_rng(seed)

    def reset(self):
        pass

    def __call__(self, obs):
        action = np.clip(self.expert.get_action(obs["env_state"].astype(np.float64)), -1, 1)
        return (action + self.noise * self.rng.standard_normal(4))[None]


class Chain:
    """policy -> shield -> monitor: what leaves the shield, checked by a second, non-enforcing one."""

    def __init__(self, policy, shield, monitor):
        self.inner, self.monitor = Shielded(policy, shield), monitor

    def reset(self):
        self.inner.reset()
        self.monitor.reset()

    def __call__(self, obs):
        return self.monitor(self.inner(obs), np.asarray(obs["state"])[:3])


@pytest.mark.parametrize("task", MT10)
def test_closed_loop_the_expert_is_untouched(task):
    """The default limits are the scripted experts' envelope: the shield never acts, success is the same."""
    plain, _ = run(task, 2, Expert(task))
    watched = Shield()
    shielded, _ = run(task, 2, Shielded(Expert(task), watched))
    assert shielded == plain and sum(watched.interventions.values()) == 0, watched.interventions


@pytest.mark.parametrize("task", ["button-press-topdown-v3", "reach-v3"])
def test_closed_loop_unsafe_before_safe_after(task):
    """A noisy policy breaks the rules (a monitor counts them), and nothing that leaves the shield does."""
    before = Shield(enforce=False)
    run(task, 2, Shielded(Expert(task, noise=1.0), before))
    assert before.interventions["accel"] > 0
    shield, after = Shield(), Shield(enforce=False)
    _, outside = run(task, 2, Chain(Expert(task, noise=1.0), shield, after))
    assert sum(shield.interventions.values()) > 0
    assert sum(after.interventions.values()) == 0, after.interventions
    # Meta-World's own commanded position stayed in the workspace, up to where the shield starts it: the observed
    # hand, a few millimetres from the mocap target after a reset
    assert outside <= 0.01
