"""The embedded humanoid benchmark (common/envs/humanoid.py): the G1 scene read from the `playground` wheel, standing,
the per-task success checks, the IK expert, reproducibility, the demo cache, DAgger relabelling and the probes."""

import functools
import xml.etree.ElementTree as ET

import imageio.v3 as iio
import mujoco
import numpy as np
import pytest

from common.envs import humanoid as H
from common.envs.humanoid import (BALL_RADIUS, BODY_PARTS, EPISODE_STEPS, GAINS, LOW_HAND_HEIGHT, N_JOINTS,
                                  RAISE_HEIGHT, REACH_DISTANCE, STAND_HEIGHT, STATE_DIM, TASK_NAMES, WAVE_RANGE,
                                  DemoSpec, EvalConfig, Expert, Goal, HumanoidEnv, collect_demos, evaluate,
                                  goal_reached, rollout)


@pytest.fixture(scope="module", autouse=True)
def _close_cached_renderers():
    """evaluate / collect_demos keep one rendering env per image size: free their GL contexts while EGL is up."""
    yield
    H._close_envs()


@pytest.fixture(scope="module")
def env():
    env = HumanoidEnv(render_images=False)
    yield env
    env.close()


@pytest.fixture
def black_images(monkeypatch):
    """Skip the ~11 ms software render per step where neither the policy nor the check looks at the pixels (the
    demo, probe and first-render tests render for real)."""
    monkeypatch.setattr(HumanoidEnv, "render", lambda self: np.zeros((self.image_size, self.image_size, 3), np.uint8))


@functools.lru_cache(maxsize=None)
def _model() -> mujoco.MjModel:
    return mujoco.MjModel.from_xml_string(H.scene_xml())


def home_ctrl():
    return _model().key("home").ctrl.copy()


def hold_home(obs):
    return home_ctrl()


# ------------------------------------------------------------------------------------------------ the scene
def test_scene_is_built_from_the_playground_wheel():
    root = ET.fromstring(H.scene_xml())
    assert list(root.iter("mesh")) == []  # the wheel has no mesh files: every mesh asset went
    assert not [g for g in root.iter("geom") if g.get("type") == "mesh" or "mesh" in g.attrib]
    m = _model()
    assert m.nmesh == 0 and m.nu == N_JOINTS == 29
    actuators = [m.actuator(i).name for i in range(m.nu)]
    joints = [m.joint(m.actuator_trnid[i, 0]).name for i in range(m.nu)]
    assert actuators == joints and len(set(joints)) == 29
    assert m.body_subtreemass[m.body("pelvis").id] == pytest.approx(33.3, abs=0.1)  # kg, the G1's mass
    for part, names in (("legs", ("hip", "knee", "ankle")), ("waist", ("waist",)),
                        ("arms", ("shoulder", "elbow", "wrist"))):
        idx = list(BODY_PARTS[part])
        assert all(any(n in joints[i] for n in names) for i in idx), part
        kp, kv = GAINS[part]
        np.testing.assert_array_equal(m.actuator_gainprm[idx, 0], kp)
        np.testing.assert_array_equal(m.actuator_biasprm[idx, 1], -kp)  # a position actuator: -kp * q - kv * qdot
        np.testing.assert_array_equal(m.actuator_biasprm[idx, 2], -kv)
    assert sorted(i for p in BODY_PARTS.values() for i in p) == list(range(29))
    assert m.opt.timestep == 0.002 and m.opt.integrator == mujoco.mjtIntegrator.mjINT_IMPLICITFAST
    assert {m.body("red_ball").mocapid[0], m.body("blue_ball").mocapid[0]} == {0, 1}
    assert "Apache License" in H.licence_notice()


def test_missing_wheel_names_setup_sh(monkeypatch):
    assert (H.g1_xml_dir() / "g1_mjx_feetonly.xml").exists()
    monkeypatch.setattr(H.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="setup.sh"):
        H.g1_xml_dir()


# ------------------------------------------------------------------------------------------------ standing
def test_home_posture_stands_for_ten_seconds(env):
    env.reset("squat", 0, 0)
    ctrl = env.model.key("home").ctrl
    heights = []
    for _ in range(500):  # 10 s at 50 Hz
        env.step(ctrl)
        assert not env.has_fallen() and not env.fallen
        heights.append(env.pelvis_height())
    assert np.abs(np.array(heights) - STAND_HEIGHT).max() < 0.03


# ------------------------------------------------------------------------------------------------ success checks
STAND = STAND_HEIGHT
REST_L, REST_R = np.array([0.0, 0.23, 0.64]), np.array([0.0, -0.23, 0.64])  # palms hanging by the sides
UP_L, UP_R = np.array([0.05, 0.22, 1.45]), np.array([0.05, -0.22, 1.45])  # palms above the head
BALL_L, BALL_R = np.array([0.33, 0.24, 0.9]), np.array([0.33, -0.24, 0.9])  # balls left and right of the robot
BALL_AHEAD = np.array([0.36, 0.0, 0.9])
TOUCH = np.array([-0.04, 0.0, 0.0])  # a palm just in front of a ball's centre


def sweep(hand, centre, amplitude):
    """25 steps of palm history with palm `hand` (0 left, 1 right) sweeping sideways by +-amplitude about `centre`."""
    recent = np.tile(np.stack([REST_L, REST_R]), (25, 1, 1))
    recent[:, hand] = centre
    recent[:, hand, 1] += amplitude * np.sin(np.linspace(0, 2 * np.pi, 25))
    return recent


WAVE_L, WAVE_R = np.array([0.18, 0.32, 1.25]), np.array([0.18, -0.32, 1.25])

# task -> (goal balls, a passing state, failing states); a state is (palms, pelvis height, torso yaw, recent palms)
CHECKS = {
    "raise_left_hand": ({}, ((UP_L, REST_R), STAND, 0.0, None), [
        ((REST_L, UP_R), STAND, 0.0, None),  # the other hand
        ((UP_L, UP_R), STAND, 0.0, None),  # both hands
        ((UP_L, REST_R), STAND - 0.1, 0.0, None)]),  # not standing
    "raise_right_hand": ({}, ((REST_L, UP_R), STAND, 0.0, None), [
        ((UP_L, REST_R), STAND, 0.0, None),
        ((UP_L, UP_R), STAND, 0.0, None),
        ((REST_L, UP_R - [0, 0, 0.25]), STAND, 0.0, None)]),  # palm at 1.2 m: not above the head
    "raise_both_hands": ({}, ((UP_L, UP_R), STAND, 0.0, None), [
        ((UP_L, REST_R), STAND, 0.0, None),
        ((UP_L, UP_R), STAND - 0.1, 0.0, None)]),
    "squat": ({}, ((REST_L, REST_R), STAND - 0.15, 0.0, None), [
        ((REST_L, REST_R), STAND, 0.0, None),
        ((REST_L, REST_R), STAND - 0.1, 0.0, None)]),  # not low enough
    "turn_torso_left": ({}, ((REST_L, REST_R), STAND, 0.6, None), [
        ((REST_L, REST_R), STAND, -0.6, None),  # the wrong way
        ((REST_L, REST_R), STAND, 0.4, None),  # not far enough
        ((REST_L, REST_R), STAND - 0.1, 0.6, None)]),
    "turn_torso_right": ({}, ((REST_L, REST_R), STAND, -0.6, None), [
        ((REST_L, REST_R), STAND, 0.6, None),
        ((REST_L, REST_R), STAND, -0.4, None)]),
    "wave_left_hand": ({}, ((WAVE_L, REST_R), STAND, 0.0, sweep(0, WAVE_L, 0.06)), [
        ((WAVE_L, REST_R), STAND, 0.0, sweep(0, WAVE_L, 0.0)),  # a still hand
        ((WAVE_L, REST_R), STAND, 0.0, sweep(0, WAVE_L, WAVE_RANGE / 2 * 0.9)),  # a sweep just under WAVE_RANGE
        ((WAVE_L, REST_R), STAND, 0.0, None),  # no history
        ((REST_L, WAVE_R), STAND, 0.0, sweep(1, WAVE_R, 0.06)),  # the other hand waves
        ((WAVE_L - [0, 0, 0.2], REST_R), STAND, 0.0, sweep(0, WAVE_L - [0, 0, 0.2], 0.06))]),  # below the shoulder
    "wave_right_hand": ({}, ((REST_L, WAVE_R), STAND, 0.0, sweep(1, WAVE_R, 0.06)), [
        ((REST_L, WAVE_R), STAND, 0.0, sweep(1, WAVE_R, 0.0)),
        ((WAVE_L, REST_R), STAND, 0.0, sweep(0, WAVE_L, 0.06)),
        ((WAVE_L, WAVE_R), STAND, 0.0, sweep(1, WAVE_R, 0.06))]),  # the other hand up too
    "reach_ball_both_hands": (dict(red_ball=BALL_AHEAD),
                              ((BALL_AHEAD + [-0.03, 0.06, 0], BALL_AHEAD + [-0.03, -0.06, 0]), STAND, 0.0, None), [
        ((BALL_AHEAD + [-0.03, 0.06, 0], REST_R), STAND, 0.0, None),  # one hand only
        ((BALL_AHEAD + [-0.03, 0.2, 0], BALL_AHEAD + [-0.03, -0.2, 0]), STAND, 0.0, None)]),  # beside it
    "reach_red_ball": (dict(red_ball=BALL_L, blue_ball=BALL_R), ((BALL_L + TOUCH, REST_R), STAND, 0.0, None), [
        ((REST_L, BALL_R + TOUCH), STAND, 0.0, None),  # touches the distractor
        ((BALL_L + TOUCH, BALL_R + TOUCH), STAND, 0.0, None),  # touches both
        ((REST_L, REST_R), STAND, 0.0, None)]),
    "reach_blue_ball": (dict(red_ball=BALL_L, blue_ball=BALL_R), ((REST_L, BALL_R + TOUCH), STAND, 0.0, None), [
        ((BALL_L + TOUCH, REST_R), STAND, 0.0, None),  # touches the red distractor
        ((BALL_L + TOUCH, BALL_R + TOUCH), STAND, 0.0, None)]),
}


def check(goal, state):
    palms, pelvis, yaw, recent = state
    return goal_reached(goal, np.array(palms, dtype=float), pelvis, yaw, recent)


@pytest.mark.parametrize("task", TASK_NAMES)
def test_goal_reached_on_hand_made_states(task):
    balls, passing, failing = CHECKS[task]
    goal = Goal(task, **balls)
    assert check(goal, passing)
    for i, state in enumerate(failing):
        assert not check(goal, state), (task, i)

def test_goal_reached_thresholds():
    still = sweep(0, WAVE_L, 0.0)
    assert np.ptp(sweep(0, WAVE_L, 0.06)[:, 0, 1]) > WAVE_RANGE > np.ptp(still[:, 0, 1])
    wave = Goal("wave_left_hand")
    assert not goal_reached(wave, np.stack([WAVE_L, REST_R]), STAND, 0.0, still[:0])  # an empty history
    red = Goal("reach_red_ball", red_ball=BALL_L, blue_ball=BALL_R)
    near, far = REACH_DISTANCE + BALL_RADIUS - 0.005, REACH_DISTANCE + BALL_RADIUS + 0.005
    assert goal_reached(red, np.stack([BALL_L - [near, 0, 0], REST_R]), STAND, 0.0)
    assert not goal_reached(red, np.stack([BALL_L - [far, 0, 0], REST_R]), STAND, 0.0)
    assert Goal("reach_blue_ball", red_ball=BALL_L, blue_ball=BALL_R).target_ball is BALL_R
    assert red.target_ball is BALL_L
    left = Goal("raise_left_hand")
    assert goal_reached(left, np.stack([UP_L, REST_R + [0, 0, 0.35]]), STAND, 0.0)  # the other palm at 0.99 m: low
    assert not goal_reached(left, np.stack([UP_L, REST_R + [0, 0, LOW_HAND_HEIGHT - 0.64 + 0.01]]), STAND, 0.0)
    assert not goal_reached(left, np.stack([UP_L - [0, 0, 1.45 - RAISE_HEIGHT + 0.01], REST_R]), STAND, 0.0)
    with pytest.raises(ValueError, match="dance"):
        goal_reached(Goal("dance"), np.stack([REST_L, REST_R]), STAND, 0.0)


# ------------------------------------------------------------------------------------------------ the expert
@pytest.mark.parametrize("task", TASK_NAMES)
def test_expert_succeeds_without_falling(env, task):
    expert = Expert(env)
    outcomes = []
    for e in range(3):
        env.reset(task, 0, e)
        expert.reset()
        done, steps = False, 0
        while not done:
            _, done, info = env.step(expert())
            steps += 1
        assert steps == EPISODE_STEPS
        outcomes.append((info["success"], info["fallen"]))
    assert outcomes == [(True, False)] * 3


def test_holding_the_home_posture_fails_every_task(black_images):
    results = evaluate(hold_home, EvalConfig(episodes_per_task=1, image_size=32), progress=False)
    assert list(results) == list(TASK_NAMES)
    assert [(r.successes, r.falls, r.episodes) for r in results.values()] == [(0, 0, 1)] * len(TASK_NAMES)


# ------------------------------------------------------------------------------------------------ episodes
def test_episodes_are_reproducible_and_differ(env):
    def draw(task, seed, episode):
        obs = env.reset(task, seed, episode)
        return obs["state"].copy(), env.goal

    state, goal = draw("reach_red_ball", 0, 3)
    assert state.shape == (STATE_DIM,) and state.dtype == np.float32
    again, goal_again = draw("reach_red_ball", 0, 3)
    np.testing.assert_array_equal(state, again)
    np.testing.assert_array_equal(goal.red_ball, goal_again.red_ball)
    np.testing.assert_array_equal(goal.blue_ball, goal_again.blue_ball)
    for other in (draw("reach_red_ball", 0, 4), draw("reach_red_ball", 1, 3)):  # another episode, another seed
        assert not np.allclose(state, other[0])
        assert not np.allclose(goal.red_ball, other[1].red_ball) and not np.allclose(goal.blue_ball,
                                                                                      other[1].blue_ball)
    # the balls sit where the goal says, on opposite sides
    np.testing.assert_allclose(env.data.mocap_pos[env.model.body("red_ball").mocapid[0]], env.goal.red_ball)
    assert np.sign(env.goal.red_ball[1]) == -np.sign(env.goal.blue_ball[1])
    sides = {np.sign(draw("reach_blue_ball", 0, e)[1].red_ball[1]) for e in range(12)}
    assert sides == {-1.0, 1.0}  # which colour is on which side is drawn per episode
    with pytest.raises(ValueError, match="unknown humanoid task"):
        env.reset("dance", 0, 0)
    env.reset("squat", 0, 0)
    with pytest.raises(ValueError, match="29"):
        env.step(np.zeros(28))
    with pytest.raises(ValueError):
        env.step(np.zeros((2, 29)))


def test_step_before_reset_raises():
    fresh = HumanoidEnv(render_images=False)
    with pytest.raises(RuntimeError, match="reset"):
        fresh.step(home_ctrl())
    fresh.close()


# ------------------------------------------------------------------------------------------------ demonstrations
def test_demos_are_deterministic_and_cached(tmp_path, monkeypatch):
    spec = DemoSpec(tasks=("squat", "reach_red_ball"), episodes_per_task=1, image_size=32)
    a = collect_demos(spec, workers=1, cache_dir=tmp_path / "a", progress=False)
    b = collect_demos(spec, workers=1, cache_dir=tmp_path / "b", progress=False)
    assert a.root != b.root and len(a.episodes) == len(b.episodes) == 2
    assert [e["task"] for e in a.episodes] == ["squat", "reach_red_ball"]
    assert a.meta["info"]["expert_successes"] == 2 and a.meta["info"]["expert_attempts"] >= 2
    for i in range(2):
        ea, eb = a.episode(i), b.episode(i)
        assert set(ea) == set(eb) == {H.IMAGE_KEY, "observation.state", "action"}
        for key in ea:
            np.testing.assert_array_equal(ea[key], eb[key], err_msg=f"episode {i} {key}")
        T = len(ea["action"])
        assert T == EPISODE_STEPS
        assert ea[H.IMAGE_KEY].shape == (T, 32, 32, 3) and ea[H.IMAGE_KEY].dtype == np.uint8
        assert ea["observation.state"].shape == (T, STATE_DIM) == (T, 64)
        assert ea["action"].shape == (T, 29) and ea["action"].dtype == np.float32
        assert ea[H.IMAGE_KEY].std() > 10  # a rendered scene, not a blank frame
        assert a.episodes[i]["success"] and a.episodes[i]["instruction"] in H.TASKS[a.episodes[i]["task"]]

    def boom(job):
        raise AssertionError("re-collected cached demos")

    monkeypatch.setattr(H, "_demo_job", boom)
    again = collect_demos(spec, workers=1, cache_dir=tmp_path / "a", progress=False)
    assert again.root == a.root and len(again.episodes) == 2
    with pytest.raises(AssertionError, match="re-collected"):  # the patch is live: a new spec does collect
        collect_demos(DemoSpec(tasks=("squat",), episodes_per_task=1, image_size=32), workers=1,
                      cache_dir=tmp_path / "a", progress=False)


def test_expert_relabels_the_learners_states(black_images):
    env = HumanoidEnv(image_size=32)
    home = home_ctrl()
    frames, info = rollout(env, hold_home, "raise_left_hand", 0, 0, "raise your left hand", expert=Expert(env))
    assert not info["success"] and not info["fallen"]
    labels, states = frames["action"], frames["observation.state"]
    assert labels.shape == (EPISODE_STEPS, 29)
    # the states are the ones the hold policy visited: the arms settled at home, the left palm never rose
    np.testing.assert_allclose(states[-1, 15:29], home[15:29], atol=0.05)
    assert env.palms()[0][2] < LOW_HAND_HEIGHT
    # ... while the labels are the expert's: far from the executed home targets, the left arm raising
    assert np.abs(labels[-1] - home).max() > 1.0
    pitch, roll = 15, 16  # left_shoulder_pitch_joint, left_shoulder_roll_joint
    assert labels[-1, pitch] < home[pitch] - 0.5 and labels[-1, roll] > home[roll] + 1.0
    # the right arm, which the task leaves alone, keeps (near) its home targets
    np.testing.assert_allclose(labels[-1, 22:29], home[22:29], atol=0.1)
    # posed at the last label, the robot's left palm would be above its head
    m, d = env.model, mujoco.MjData(env.model)
    d.qpos[:] = env.data.qpos
    d.qpos[env.joint_qpos] = labels[-1]
    mujoco.mj_kinematics(m, d)
    assert d.site_xpos[env.site["left_palm"]][2] > RAISE_HEIGHT
    env.close()


def test_first_render_matches_later_ones():
    """A new renderer's first frame of the textured floor differs from later ones (Mesa's EGL); the env throws it
    away, so the first episode a process renders equals the same episode rendered later."""
    env = HumanoidEnv(image_size=32)
    first = env.reset("squat", 0, 0)["images"]["front"]
    second = env.reset("squat", 0, 0)["images"]["front"]
    env.close()
    np.testing.assert_array_equal(first, second)


# ------------------------------------------------------------------------------------------------ probes and videos
class Recorder:
    """Holds the home posture and records the images it is shown."""

    def __init__(self):
        self.seen, self.resets = [], 0

    def reset(self):
        self.resets += 1

    def __call__(self, obs):
        self.seen.append(obs["images"]["front"])
        return home_ctrl()


def test_blank_image_probe_and_gif(tmp_path):
    policy = Recorder()
    cfg = EvalConfig(tasks=("squat",), episodes_per_task=1, image_size=32, blank_images=True, video_dir=str(tmp_path))
    result = evaluate(policy, cfg, progress=False)["squat"]
    assert (result.successes, result.falls, result.episodes, policy.resets) == (0, 0, 1, 1)
    assert len(policy.seen) == EPISODE_STEPS
    assert all(i.shape == (32, 32, 3) and i.dtype == np.uint8 and not i.any() for i in policy.seen)
    gifs = list(tmp_path.iterdir())
    assert [p.name for p in gifs] == ["squat_ep000_failure.gif"]
    video = iio.imread(gifs[0])
    # every second frame (75); the GIF writer merges identical consecutive frames of the robot standing still
    assert 10 < video.shape[0] <= EPISODE_STEPS // 2 and video.shape[1:3] == (32, 32)
    assert video.std() > 10  # the video shows the real camera, not the probe's black frames


def test_render_settings_are_per_env():
    fast, default = HumanoidEnv(image_size=32), HumanoidEnv(image_size=32, fast_render=False)
    assert fast.model is not default.model
    assert fast.model.vis.quality.offsamples == 0 and default.model.vis.quality.offsamples > 0
    fast.close()
    default.close()


def test_rollout_without_a_camera_is_a_clear_error():
    env = HumanoidEnv(render_images=False)
    with pytest.raises(ValueError, match="render_images=True"):
        H.rollout(env, hold_home, "squat", 0, 0, "squat down")
    env.close()
