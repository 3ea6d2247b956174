"""A safety shield for manipulation policies that command end-effector displacements (Meta-World, and the many real
arms driven by Cartesian delta actions): it sits between any closed-loop policy and the robot, checks every action
against a few rules, clips or stops what breaks one, and counts each intervention by rule.

The shield tracks the end-effector *target* it has commanded (the mocap target in Meta-World, the controller's
set-point on a robot): it starts at the hand position of the episode's first observation and moves by each action
it lets through, `metres_per_unit` per action unit per step, clipped to the box the controller itself clips its
set-point to (`controller_low/high`; Meta-World's mocap bounds), so it stays the robot's set-point when a policy
pushes against that box (the scripted experts press down on the table and reach to the far edge). The rules, applied
in this order to each step's displacement d (metres) from the current target p, with the previous step's commanded
velocity v_prev:

    speed       |d| / dt <= max_speed                       scale d down to the limit
    accel       |d / dt - v_prev| / dt <= max_accel          move d / dt toward v_prev until the limit holds
    keep-out    |p + d - c| >= radius for each sphere (c, r) stop: drop the component of d toward c
    workspace   low <= clip(p + d) <= high                  clip p + d into the box (never violated after the
                                                            shield; the other rules yield to it)

(clip: to the controller's box.)

The gripper entry passes through unchanged (clipped to [-1, 1] like every entry). `ShieldConfig`'s defaults are the
envelope of Meta-World's scripted experts: commanded speed at most 1.39 m/s (Meta-World's own limit: 0.8 m/s per
axis) and acceleration at most 144 m/s^2 (99th percentile 91) on the 500 MT10 demos; commanded targets within
x [-0.20, 0.33], y [0.40, 1.00], z [0.05, 0.44] m on 5 episodes per MT10 task (the experts press the target into the
controller's box: button-press-topdown's to y = 1.0 m, where the hand stops at 0.89; so y and the bottom of the
workspace are the controller's own bounds, and x and the top leave a margin). common/tests/test_shield.py checks
that the expert on every MT10 task never triggers a rule, and that a policy that jerks or leaves the workspace does.
On a real arm the limits come from its datasheet and its cell.

    shield = Shield(ShieldConfig())
    policy = Shielded(closed_loop_policy, shield)    # the evaluator's interface: obs -> (k, 4) actions
    ...; shield.interventions                         # {"speed": 0, "accel": 12, "keep-out": 0, "workspace": 3}
    Shield(cfg, enforce=False)                        # a monitor: counts the violations, changes nothing

(The driving shield in driving_vla/model.py acts on controls, acceleration and steering, and brakes on time to
collision; the two share no maths beyond clipping, so they stay apart.)
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

log = logging.getLogger(__name__)

RULES = ("speed", "accel", "keep-out", "workspace")


@dataclass(frozen=True)
class ShieldConfig:
    max_speed: float = 1.4  # m/s, commanded end-effector speed (Meta-World's actions reach 1.39 m/s at most)
    max_accel: float = 150.0  # m/s^2, change of commanded velocity per step / dt (the demos' maximum: 144)
    workspace_low: tuple[float, float, float] = (-0.45, 0.4, 0.05)  # m, lowest target x, y, z (z: the table)
    workspace_high: tuple[float, float, float] = (0.45, 1.0, 0.47)  # m, highest target x, y, z
    controller_low: tuple[float, float, float] = (-0.5, 0.4, 0.05)  # m, the controller clips its set-point to
    controller_high: tuple[float, float, float] = (0.5, 1.0, 0.5)  # [low, high] (Meta-World's mocap_low/high)
    keep_out: tuple[tuple[float, float, float, float], ...] = ()  # spheres (x, y, z, radius) in m the target avoids
    metres_per_unit: float = 0.01  # target displacement per action unit per step (Meta-World's action_scale)
    dt: float = 0.0125  # seconds per step (Meta-World: frame_skip 5 x 2.5 ms)

    def __post_init__(self):
        if self.max_speed <= 0 or self.max_accel <= 0 or self.dt <= 0 or self.metres_per_unit <= 0:
            raise ValueError(f"limits, dt and metres_per_unit must be positive: {self}")
        if any(lo >= hi for lo, hi in zip(self.workspace_low, self.workspace_high)):
            raise ValueError(f"empty workspace: low {self.workspace_low} >= high {self.workspace_high}")
        if any(lo >= hi for lo, hi in zip(self.controller_low, self.controller_high)):
            raise ValueError(f"empty controller box: low {self.controller_low} >= high {self.controller_high}")
        if any(len(s) != 4 or s[3] <= 0 for s in self.keep_out):
            raise ValueError(f"keep_out spheres are (x, y, z, radius > 0): {self.keep_out}")


class Shield:
    """Checks and corrects end-effector displacement actions, one step at a time (see the module docstring).

    `enforce=False` makes it a monitor: it counts what would break a rule and returns the actions unchanged, while
    tracking the target they command."""

    def __init__(self, cfg: ShieldConfig = ShieldConfig(), enforce: bool = True):
        self.cfg, self.enforce = cfg, enforce
        self.low, self.high = np.asarray(cfg.workspace_low), np.asarray(cfg.workspace_high)
        self.reach = np.asarray(cfg.controller_low), np.asarray(cfg.controller_high)
        self.interventions: Counter = Counter({rule: 0 for rule in RULES})
        self.steps = 0
        self.target: np.ndarray | None = None
        self.velocity = np.zeros(3)

    def reset(self, hand: np.ndarray | None = None) -> None:
        """A new episode: forget the target (taken from the next observation, or `hand`) and the velocity."""
        self.target = None if hand is None else np.asarray(hand, dtype=np.float64)[:3].copy()
        self.velocity = np.zeros(3)

    def _flag(self, rule: str, broken: bool) -> bool:
        if broken:
            self.interventions[rule] += 1
            log.debug("shield: %s rule at step %d", rule, self.steps)
        return broken and self.enforce

    def step(self, action: np.ndarray) -> np.ndarray:
        """One action (4,) -> the action to execute; the target moves by it."""
        if self.target is None:
            raise RuntimeError("Shield.step before the target is known: call reset(hand) or go through Shielded")
        cfg = self.cfg
        action = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        d = action[:3] * cfg.metres_per_unit
        rel, tol = 1 + 1e-6, 1e-6  # slack (relative; metres) so an action at a limit, sent as float32, keeps it

        speed = np.linalg.norm(d) / cfg.dt
        if self._flag("speed", speed > cfg.max_speed * rel):
            d = d * cfg.max_speed / speed
        dv = d / cfg.dt - self.velocity
        if self._flag("accel", np.linalg.norm(dv) / cfg.dt > cfg.max_accel * rel):
            d = (self.velocity + dv * cfg.max_accel * cfg.dt / np.linalg.norm(dv)) * cfg.dt
        for *centre, radius in cfg.keep_out:
            offset = self.target + d - np.asarray(centre)
            inside = np.linalg.norm(offset) < radius - tol
            towards = np.asarray(centre) - self.target
            if self._flag("keep-out", inside) and np.linalg.norm(towards) > 0:
                u = towards / np.linalg.norm(towards)
                d = d - max(float(d @ u), 0.0) * u  # stop the motion toward the sphere, keep the rest
        nxt = np.clip(self.target + d, *self.reach)  # where the controller will put its set-point
        if self._flag("workspace", bool(np.any(nxt < self.low - tol) or np.any(nxt > self.high + tol))):
            d = np.clip(nxt, self.low, self.high) - self.target
            nxt = np.clip(self.target + d, *self.reach)

        self.target = nxt
        self.velocity = d / cfg.dt
        self.steps += 1
        if not self.enforce:
            return action
        return np.concatenate([d / cfg.metres_per_unit, action[3:]])

    def __call__(self, actions: np.ndarray, hand: np.ndarray) -> np.ndarray:
        """A chunk (k, A) or one action (A,), executed from now on; `hand` is the observed end-effector position,
        which starts the target on an episode's first call."""
        if self.target is None:
            self.reset(hand)
        actions = np.asarray(actions, dtype=np.float64)
        out = np.stack([self.step(a) for a in actions.reshape(-1, actions.shape[-1])])
        return out.reshape(actions.shape).astype(np.float32)

    def summary(self) -> dict[str, Any]:
        return dict(steps=self.steps, interventions=dict(self.interventions), enforced=self.enforce)


class Shielded:
    """A closed-loop policy (obs dict -> action or (k, A) chunk, the interface of `common.envs.metaworld.evaluate`)
    whose actions pass through `shield`. The hand position is the first three entries of `obs[state_key]`."""

    def __init__(self, policy: Callable[[dict], np.ndarray], shield: Shield, state_key: str = "state"):
        self.policy, self.shield, self.state_key = policy, shield, state_key

    def reset(self) -> None:
        self.shield.reset()
        if hasattr(self.policy, "reset"):
            self.policy.reset()

    def __call__(self, obs: dict[str, Any]) -> np.ndarray:
        return self.shield(self.policy(obs), np.asarray(obs[self.state_key])[:3])
