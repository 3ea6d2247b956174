"""The embedded humanoid suite: a Unitree G1 (29 joints) that follows a language instruction while keeping its balance.

The robot description is Unitree's G1 MJCF as shipped (Apache-2.0) in the `playground` 0.2.0 wheel of MuJoCo
Playground, installed by `setup.sh` with `--no-deps` (we read its XML files, never import it). That XML references
mesh files the wheel does not contain, so `scene_xml()` removes every mesh, gives each link a capsule visual, and builds
a scene around the robot: a floor, a front camera, two target balls. Nothing is committed by hand.

Control: 29 absolute joint-position targets at 50 Hz (10 physics steps of 2 ms), through position actuators with
stiffer gains than the hardware's (kp 400 legs and waist, 100 arms, kv 10 everywhere; the release's gains topple the
robot within ~2 s) and the hardware's torque limits, integrated with `implicitfast` and 50 solver iterations.

What a policy sees each step (`HumanoidEnv.observation()`):
    images       {"front": uint8 (S, S, 3)}  a fixed camera in front of the robot, fast render recipe
    state        float32 (64,)  proprioception: joint positions (29), joint velocities (29), gravity in the pelvis
                 frame (3), pelvis gyro (3) -- what a real G1 senses
    instruction  str            one of the task's paraphrases
and it answers with 29 joint targets in radians (clipped to the joint ranges), ordered as `JOINTS`.

Tasks (`TASKS`), each a 3 s episode scored over its last 0.5 s, and always requiring the robot to stay upright (a
fall anywhere fails the episode and is counted): raise the left / right / both hands above the head, squat, turn
the torso left / right, wave the left / right hand, reach the red ball with both hands, and -- with a red and a blue
ball on either side, their sides drawn per episode -- reach the red / the blue ball. Mirrored tasks and the two
coloured balls make the instruction necessary; the ball tasks make the image necessary (the proprioception does not
contain the balls).

Episode `e` of a run seeded `s` draws its initial posture (small joint offsets) and ball placement from
`np.random.default_rng([s, task index, e])`: demonstrations and evaluation use different seeds.

    Expert               whole-body differential inverse kinematics (mink): feet pinned, centre of mass over the
                         feet, pelvis and torso orientation, hand targets, a posture cost, joint limits; it reads the
                         simulator state, so it also relabels a learner's states (DAgger)
    collect_demos(...)   expert demonstrations over N worker processes, cached on disk by their parameters
    evaluate(policy)     closed-loop success per task with a 95% Wilson interval, falls counted, videos
"""

from __future__ import annotations

import atexit
import fcntl
import hashlib
import importlib.util
import json
import multiprocessing as mp
import os
import sys
import xml.etree.ElementTree as ET
import zlib
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("MUJOCO_GL", "egl")  # headless rendering; must precede the first mujoco import

try:  # load torch's LLVM before Mesa's (see common/envs/metaworld.py)
    import torch._dynamo  # noqa: F401
except ImportError:
    pass

import mujoco  # noqa: E402
import numpy as np  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from common.data import EpisodeDataset, EpisodeWriter, default_cache_dir  # noqa: E402
from common.metrics import wilson_interval  # noqa: E402

SCENE_VERSION = 2  # part of every demo cache key; bumped when the scene, the gains or the expert change (2: the
#                   first frame of a new renderer is thrown away)
IMAGE_KEY = "observation.images.front"
CONTROL_HZ, PHYSICS_DT = 50, 0.002
SUBSTEPS = round(1 / (CONTROL_HZ * PHYSICS_DT))
EPISODE_SECONDS, SCORED_SECONDS = 3.0, 0.5
EPISODE_STEPS, SCORED_STEPS = round(EPISODE_SECONDS * CONTROL_HZ), round(SCORED_SECONDS * CONTROL_HZ)
N_JOINTS = 29
STATE_DIM = 2 * N_JOINTS + 6
# Proprioception split by body part (indices into the 29 joints), for per-part tokens.
BODY_PARTS = {"legs": tuple(range(0, 12)), "waist": tuple(range(12, 15)), "arms": tuple(range(15, 29))}
GAINS = {"legs": (400.0, 10.0), "waist": (400.0, 10.0), "arms": (100.0, 10.0)}  # (kp, kv) per body part
STAND_HEIGHT = 0.785  # m: the pelvis' height in the home posture
FALL_PELVIS_HEIGHT = 0.5  # m: below this the robot has fallen (standing 0.79, the deepest squat ~0.6)
FALL_UP_Z = 0.7  # the pelvis' up axis below 45 degrees from vertical: fallen
BALL_RADIUS = 0.05
RED, BLUE = (0.85, 0.1, 0.1, 1.0), (0.1, 0.25, 0.85, 1.0)

# ------------------------------------------------------------------------------------------------ tasks
# Instructions: the first paraphrase of each task is its canonical one; the others train robustness to wording.
TASKS: dict[str, tuple[str, ...]] = {
    "raise_left_hand": ("raise your left hand", "put your left hand up", "lift the left arm above your head"),
    "raise_right_hand": ("raise your right hand", "put your right hand up", "lift the right arm above your head"),
    "raise_both_hands": ("raise both hands", "put both hands up", "lift both arms above your head"),
    "squat": ("squat down", "crouch", "bend your knees and lower your body"),
    "turn_torso_left": ("turn your torso to the left", "twist your upper body left", "rotate your chest to the left"),
    "turn_torso_right": ("turn your torso to the right", "twist your upper body right",
                         "rotate your chest to the right"),
    "wave_right_hand": ("wave with your right hand", "wave hello with the right hand", "give a right-handed wave"),
    "wave_left_hand": ("wave with your left hand", "wave hello with the left hand", "give a left-handed wave"),
    "reach_ball_both_hands": ("reach the red ball with both hands", "touch the red ball with both hands",
                              "put both hands on the red ball"),
    "reach_red_ball": ("reach the red ball", "touch the red ball", "put a hand on the red ball"),
    "reach_blue_ball": ("reach the blue ball", "touch the blue ball", "put a hand on the blue ball"),
}
TASK_NAMES = tuple(TASKS)
RAISE_HEIGHT = 1.25  # m: a palm above this is at head height or higher (the head's centre; its top is at 1.33 m)
LOW_HAND_HEIGHT = 1.0  # m: the other palm stays below the shoulders (~1.05 m) in one-hand tasks
WAVE_HEIGHT, WAVE_RANGE = 1.1, 0.08  # m: a waving palm stays above the shoulder and sweeps this far sideways
SQUAT_DROP = 0.12  # m: the pelvis lowered this much below standing
TURN_ANGLE = 0.5  # rad: torso yaw relative to the pelvis
REACH_DISTANCE, AVOID_DISTANCE = 0.08, 0.15  # m: a palm touching a ball; keeping away from the other one


def resolve_tasks(tasks: str | tuple[str, ...]) -> tuple[str, ...]:
    names = tuple(t.strip() for t in tasks.split(",")) if isinstance(tasks, str) else tuple(tasks)
    unknown = [t for t in names if t not in TASKS]
    if unknown or not names:
        raise ValueError(f"unknown humanoid task(s) {unknown or names}; choose from {list(TASKS)}")
    return names


# ------------------------------------------------------------------------------------------------ the scene
def g1_xml_dir() -> Path:
    """Where the `playground` wheel put the G1 description (it is installed by setup.sh, read, never imported)."""
    spec = importlib.util.find_spec("mujoco_playground")
    path = Path(spec.submodule_search_locations[0]) / "_src" / "locomotion" / "g1" / "xmls" if spec else None
    if path is None or not (path / "g1_mjx_feetonly.xml").exists():
        raise FileNotFoundError(
            "the Unitree G1 description is missing: it comes from MuJoCo Playground's wheel, installed by "
            "`bash setup.sh` (pip install --no-deps playground==0.2.0)")
    return path


@lru_cache(maxsize=None)
def scene_xml() -> str:
    """The MJCF of the scene: the G1 of `g1_xml_dir()` without meshes, with capsule visuals, our gains and solver
    settings, plus a floor, a front camera and two mocap balls."""
    root = ET.parse(g1_xml_dir() / "g1_mjx_feetonly.xml").getroot()
    option = root.find("option")
    option.attrib = dict(timestep=str(PHYSICS_DT), integrator="implicitfast", iterations="50", ls_iterations="20")
    for child in list(option):
        option.remove(child)
    asset = root.find("asset")
    for mesh in asset.findall("mesh"):
        asset.remove(mesh)
    for parent in root.iter():  # every mesh geom goes (the wheel has no mesh files)
        for geom in [g for g in parent.findall("geom") if "mesh" in g.attrib]:
            parent.remove(geom)
    for cls in root.iter("default"):  # the class defaults name meshes too
        for geom in cls.findall("geom"):
            geom.attrib.pop("type", None) if geom.get("type") == "mesh" else None
    worldbody = root.find("worldbody")
    _add_link_visuals(worldbody.find("body"))
    for actuator in root.find("actuator"):
        part = _body_part(actuator.get("joint"))
        kp, kv = GAINS[part]
        actuator.set("kp", str(kp))
        actuator.set("kv", str(kv))
    ET.SubElement(asset, "texture", name="grid", type="2d", builtin="checker", rgb1=".55 .55 .5", rgb2=".45 .45 .4",
                  width="256", height="256")
    ET.SubElement(asset, "material", name="grid", texture="grid", texrepeat="6 6", texuniform="true")
    ET.SubElement(worldbody, "light", name="top", pos="0 0 4", dir="0 0 -1", diffuse=".7 .7 .7")
    ET.SubElement(worldbody, "geom", name="floor", type="plane", size="0 0 0.05", material="grid")
    # Front camera: 1.35 m ahead of the robot (which faces +x), 1.1 m high, looking back and slightly down.
    ET.SubElement(worldbody, "camera", name="front", pos="1.35 0 1.1", xyaxes="0 1 0 -0.3 0 1", fovy="55")
    visual = ET.SubElement(root, "visual")
    ET.SubElement(visual, "headlight", ambient=".35 .35 .35", diffuse=".6 .6 .6", specular=".1 .1 .1")
    for name, rgba in (("red_ball", RED), ("blue_ball", BLUE)):
        ball = ET.SubElement(worldbody, "body", name=name, mocap="true", pos="0 0 -1")
        ET.SubElement(ball, "geom", type="sphere", size=str(BALL_RADIUS), rgba=" ".join(map(str, rgba)),
                      contype="0", conaffinity="0", density="0")
    key = ET.parse(g1_xml_dir() / "scene_mjx_feetonly_flat_terrain.xml").getroot().find("keyframe/key[@name='home']")
    keyframe = ET.SubElement(root, "keyframe")
    ET.SubElement(keyframe, "key", name="home", qpos=key.get("qpos"), ctrl=key.get("ctrl"),
                  mpos="0 0 -1 0 0 -1")
    return ET.tostring(root, encoding="unicode")


def _body_part(joint: str) -> str:
    if "waist" in joint:
        return "waist"
    return "legs" if any(k in joint for k in ("hip", "knee", "ankle")) else "arms"


_VISUAL = dict(contype="0", conaffinity="0", density="0", group="1", rgba=".75 .75 .78 1")


def _add_link_visuals(body: ET.Element) -> None:
    """A capsule from each body to each of its children (the link's bone), a box for the torso, a sphere head,
    and a small box per foot: only what the camera needs to see the posture."""
    for child in body.findall("body"):
        offset = np.array([float(v) for v in child.get("pos", "0 0 0").split()])
        if np.linalg.norm(offset) > 0.02:
            ET.SubElement(body, "geom", type="capsule", size="0.03", fromto="0 0 0 " + " ".join(map(str, offset)),
                          **_VISUAL)
        _add_link_visuals(child)
    name = body.get("name")
    if name == "torso_link":
        ET.SubElement(body, "geom", type="box", size="0.07 0.11 0.13", pos="0 0 0.2", **_VISUAL)
        ET.SubElement(body, "geom", type="sphere", size="0.08", pos="0.01 0 0.42", **dict(_VISUAL, rgba=".2 .2 .22 1"))
    elif name == "pelvis":
        ET.SubElement(body, "geom", type="box", size="0.06 0.1 0.05", pos="0 0 -0.05", **_VISUAL)
    elif name.endswith("ankle_roll_link"):
        ET.SubElement(body, "geom", type="box", size="0.09 0.035 0.012", pos="0.04 0 -0.025",
                      **dict(_VISUAL, rgba=".2 .2 .22 1"))
    elif name.endswith("wrist_yaw_link"):
        ET.SubElement(body, "geom", type="sphere", size="0.035", pos="0.08 0 0", **dict(_VISUAL, rgba=".95 .8 .6 1"))


def licence_notice() -> str:
    """The Apache-2.0 licence the G1 description is distributed under (from the wheel's metadata)."""
    from importlib.metadata import distribution
    return distribution("playground").read_text("licenses/LICENSE") or ""


# ------------------------------------------------------------------------------------------------ the environment
@dataclass
class Goal:
    """What one episode asks for, drawn at reset: the task, the balls' places, the wave's phase."""
    task: str
    red_ball: np.ndarray | None = None  # world xyz, or None when the ball is not in the scene
    blue_ball: np.ndarray | None = None
    wave_phase: float = 0.0

    @property
    def target_ball(self) -> np.ndarray | None:
        return self.blue_ball if self.task == "reach_blue_ball" else self.red_ball


class HumanoidEnv:
    """The G1 scene with one task per episode: images, proprioception and an instruction in; joint targets out."""

    def __init__(self, image_size: int = 96, fast_render: bool = True, render_images: bool = True):
        self.model = mujoco.MjModel.from_xml_string(scene_xml())  # its own: the render settings below are per env
        self.data = mujoco.MjData(self.model)
        self.image_size, self.fast_render = image_size, fast_render
        self.renderer = None
        if render_images:
            if fast_render:
                self.model.vis.quality.offsamples = 0  # before the GL context exists
            self.renderer = mujoco.Renderer(self.model, image_size, image_size)
            # A new context's first frame of the textured floor differs by a few levels from every later frame of
            # the same state (MuJoCo 3.3 on Mesa's EGL); one throwaway frame makes every episode's images the same
            # whichever process and whichever episode renders first.
            mujoco.mj_forward(self.model, self.data)
            self.renderer.update_scene(self.data, camera="front")
            self.renderer.render()
        m = self.model
        self.ctrl_range = m.actuator_ctrlrange.copy()
        self.joint_qpos = np.array([m.jnt_qposadr[m.actuator_trnid[i, 0]] for i in range(m.nu)])
        self.joint_dof = np.array([m.jnt_dofadr[m.actuator_trnid[i, 0]] for i in range(m.nu)])
        self.site = {s: m.site(s).id for s in ("left_palm", "right_palm")}
        self.gyro = m.sensor("gyro_pelvis")
        self.goal: Goal | None = None
        self.instruction = ""
        self.steps = 0
        self.fallen = False
        self._scored: list[bool] = []
        self._palm_history: list[np.ndarray] = []

    # -- episode
    def reset(self, task: str, seed: int, episode: int, instruction: str | None = None) -> dict[str, Any]:
        """Start episode `episode` of `task` in a run seeded `seed` (reproducible: see the module docstring)."""
        (task,) = resolve_tasks((task,))
        rng = np.random.default_rng([seed, TASK_NAMES.index(task), episode])
        m, d = self.model, self.data
        mujoco.mj_resetDataKeyframe(m, d, m.key("home").id)
        # A slightly different initial posture per episode: arm and waist joints offset by up to 0.1 rad.
        upper = self.joint_qpos[12:]
        d.qpos[upper] = np.clip(d.qpos[upper] + rng.uniform(-0.1, 0.1, len(upper)),
                                self.ctrl_range[12:, 0], self.ctrl_range[12:, 1])
        d.ctrl[:] = d.qpos[self.joint_qpos]
        self.goal = _draw_goal(task, rng)
        d.mocap_pos[m.body("red_ball").mocapid[0]] = self.goal.red_ball if self.goal.red_ball is not None else (0, 0, -1)
        d.mocap_pos[m.body("blue_ball").mocapid[0]] = \
            self.goal.blue_ball if self.goal.blue_ball is not None else (0, 0, -1)
        mujoco.mj_forward(m, d)
        self.instruction = instruction if instruction is not None else TASKS[task][0]
        self.steps, self.fallen = 0, False
        self._scored, self._palm_history = [], []
        return self.observation()

    def step(self, action: np.ndarray, render: bool = True) -> tuple[dict[str, Any], bool, dict[str, Any]]:
        """Hold 29 joint targets (clipped to the joint ranges) for one 20 ms control step. `done` comes at the
        episode's end (3 s) or at a fall; `info["success"]` is the episode's outcome once it is done."""
        if self.goal is None:
            raise RuntimeError("call reset() before step()")
        action = np.asarray(action, dtype=np.float64).reshape(-1)
        if action.shape != (N_JOINTS,):
            raise ValueError(f"a humanoid action is {N_JOINTS} joint targets, got shape {action.shape}")
        self.data.ctrl[:] = np.clip(action, self.ctrl_range[:, 0], self.ctrl_range[:, 1])
        mujoco.mj_step(self.model, self.data, nstep=SUBSTEPS)
        self.steps += 1
        self.fallen = self.fallen or bool(self.has_fallen())
        self._palm_history.append(self.palms().copy())
        self._scored.append(self.goal_reached())
        done = self.fallen or self.steps >= EPISODE_STEPS
        success = done and not self.fallen and self.steps >= SCORED_STEPS and all(self._scored[-SCORED_STEPS:])
        return self.observation(render), done, dict(success=success, fallen=self.fallen)

    # -- what the robot senses
    def observation(self, render: bool = True) -> dict[str, Any]:
        images = {"front": self.render()} if render and self.renderer is not None else {}
        return dict(images=images, state=self.proprio(), instruction=self.instruction)

    def proprio(self) -> np.ndarray:
        d = self.data
        pelvis = d.xmat[self.model.body("pelvis").id].reshape(3, 3)
        gravity = pelvis.T @ np.array([0.0, 0.0, -1.0])
        gyro = d.sensordata[self.gyro.adr[0]: self.gyro.adr[0] + 3]
        return np.concatenate([d.qpos[self.joint_qpos], d.qvel[self.joint_dof], gravity, gyro]).astype(np.float32)

    def render(self) -> np.ndarray:
        self.renderer.update_scene(self.data, camera="front")
        if self.fast_render:
            self.renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
            self.renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
            self.renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SKYBOX] = 0
        return self.renderer.render().copy()

    # -- success checks (on the simulator's state: privileged, for scoring only)
    def palms(self) -> np.ndarray:
        """World positions of the left and right palms, (2, 3)."""
        return self.data.site_xpos[[self.site["left_palm"], self.site["right_palm"]]]

    def pelvis_height(self) -> float:
        return float(self.data.qpos[2])

    def has_fallen(self) -> bool:
        up_z = self.data.xmat[self.model.body("pelvis").id][8]  # z component of the pelvis' up axis
        return bool(self.pelvis_height() < FALL_PELVIS_HEIGHT or up_z < FALL_UP_Z)

    def torso_yaw(self) -> float:
        """Yaw of the torso relative to the pelvis (rad, positive = turned left)."""
        def yaw(body: str) -> float:
            x_axis = self.data.xmat[self.model.body(body).id].reshape(3, 3)[:, 0]
            return float(np.arctan2(x_axis[1], x_axis[0]))
        return float(np.angle(np.exp(1j * (yaw("torso_link") - yaw("pelvis")))))

    def goal_reached(self) -> bool:
        """Whether this instant satisfies the task (the episode succeeds if every instant of its last 0.5 s does)."""
        return goal_reached(self.goal, self.palms(), self.pelvis_height(), self.torso_yaw(),
                            np.array(self._palm_history[-SCORED_STEPS:]))

    def close(self) -> None:
        if self.renderer is not None:
            self.renderer.close()
            self.renderer = None


def goal_reached(goal: Goal, palms: np.ndarray, pelvis_height: float, torso_yaw: float,
                 recent_palms: np.ndarray | None = None) -> bool:
    """The task's check on one instant. `palms` (2, 3) are the left and right palms' world positions;
    `recent_palms` (T, 2, 3) their last positions (the wave's sweep is measured over them)."""
    left, right = palms
    task = goal.task
    standing = pelvis_height > STAND_HEIGHT - SQUAT_DROP / 2
    if task == "raise_left_hand":
        return left[2] > RAISE_HEIGHT and right[2] < LOW_HAND_HEIGHT and standing
    if task == "raise_right_hand":
        return right[2] > RAISE_HEIGHT and left[2] < LOW_HAND_HEIGHT and standing
    if task == "raise_both_hands":
        return min(left[2], right[2]) > RAISE_HEIGHT and standing
    if task == "squat":
        return pelvis_height < STAND_HEIGHT - SQUAT_DROP
    if task in ("turn_torso_left", "turn_torso_right"):
        sign = 1 if task == "turn_torso_left" else -1
        return sign * torso_yaw > TURN_ANGLE and standing
    if task in ("wave_left_hand", "wave_right_hand"):
        hand, other = (0, 1) if task == "wave_left_hand" else (1, 0)
        if recent_palms is None or len(recent_palms) == 0:
            return False
        sweep = np.ptp(recent_palms[:, hand, 1])
        return palms[hand][2] > WAVE_HEIGHT and palms[other][2] < LOW_HAND_HEIGHT and sweep > WAVE_RANGE
    if task == "reach_ball_both_hands":
        return bool(np.all(np.linalg.norm(palms - goal.red_ball, axis=1) < REACH_DISTANCE + BALL_RADIUS))
    if task in ("reach_red_ball", "reach_blue_ball"):
        other = goal.red_ball if task == "reach_blue_ball" else goal.blue_ball
        near = np.linalg.norm(palms - goal.target_ball, axis=1).min() < REACH_DISTANCE + BALL_RADIUS
        return bool(near and np.linalg.norm(palms - other, axis=1).min() > AVOID_DISTANCE)
    raise ValueError(f"unknown task {task!r}")


def _draw_goal(task: str, rng: np.random.Generator) -> Goal:
    if task == "reach_ball_both_hands":  # one ball ahead, at table height
        return Goal(task, red_ball=np.array([rng.uniform(0.32, 0.42), rng.uniform(-0.06, 0.06),
                                             rng.uniform(0.85, 1.0)]))
    if task in ("reach_red_ball", "reach_blue_ball"):  # one ball each side; which colour is where is drawn
        sides = [np.array([rng.uniform(0.28, 0.4), s * rng.uniform(0.2, 0.28), rng.uniform(0.8, 1.0)])
                 for s in (1, -1)]
        red_left = rng.random() < 0.5
        return Goal(task, red_ball=sides[0 if red_left else 1], blue_ball=sides[1 if red_left else 0])
    return Goal(task, wave_phase=float(rng.uniform(0, 2 * np.pi)))


# ------------------------------------------------------------------------------------------------ the expert
MOVE_START, MOVE_SECONDS = 0.1, 1.3  # s: the expert's targets move from the start posture to the goal over this span
RAISED_PALM = np.array([0.05, 0.22, 1.45])  # left palm above the head (mirror y for the right)
WAVE_CENTRE, WAVE_AMPLITUDE, WAVE_HZ = np.array([0.18, 0.32, 1.25]), 0.1, 1.5
SQUAT_PELVIS = STAND_HEIGHT - 0.17
TURN_YAW = 0.8  # rad


class Expert:
    """Whole-body differential inverse kinematics with mink (Zakka, 2024), one QP per 50 Hz step.

    Tasks, by cost: both feet pinned where the episode began (position and orientation); the centre of mass over
    the middle of the feet; the pelvis upright, at standing height or lowered for the squat; the torso upright,
    turned for the turn tasks; the palms on their targets (raised, waving, on a ball); a posture cost pulling every
    joint to the home posture; the joint limits as constraints. The targets move from the episode's start
    to the goal on a minimum-jerk profile. The solve starts from the simulator's state, so the expert answers from
    any state a learner reaches (DAgger relabelling), and the joint part of its solution is the action."""

    def __init__(self, env: HumanoidEnv, iterations: int = 2):
        import mink  # only the expert needs it
        self.mink, self.env, self.iterations = mink, env, iterations
        m = env.model
        self.configuration = mink.Configuration(m)
        self.feet = {s: mink.FrameTask(s, "site", position_cost=50.0, orientation_cost=20.0)
                     for s in ("left_foot", "right_foot")}
        self.pelvis = mink.FrameTask("pelvis", "body", position_cost=np.array([0.0, 0.0, 5.0]), orientation_cost=5.0)
        self.torso = mink.FrameTask("torso_link", "body", position_cost=0.0, orientation_cost=3.0)
        self.com = mink.ComTask(cost=np.array([20.0, 20.0, 0.0]))
        self.palms = {s: mink.FrameTask(s, "site", position_cost=5.0, orientation_cost=0.0)
                      for s in ("left_palm", "right_palm")}
        self.posture = mink.PostureTask(m, cost=0.3)
        self.posture.set_target(m.key("home").qpos)
        self.limits = [mink.ConfigurationLimit(m)]
        self._start: dict[str, Any] | None = None

    def reset(self) -> None:
        """Remember where this episode began (call after `env.reset`): the feet stay there."""
        self.configuration.update(self.env.data.qpos.copy())
        self._start = dict(feet={s: self.configuration.get_transform_frame_to_world(s, "site") for s in self.feet},
                           palms=self.env.palms().copy())
        for site, task in self.feet.items():
            task.set_target(self._start["feet"][site])

    def __call__(self, obs: dict[str, Any] | None = None) -> np.ndarray:
        """The joint targets for the env's current state (the observation is not needed: the expert is privileged)."""
        if self._start is None or self.env.steps == 0:
            self.reset()
        env, mink = self.env, self.mink
        t = (env.steps + 1) / CONTROL_HZ
        s = _min_jerk((t - MOVE_START) / MOVE_SECONDS)
        self.configuration.update(env.data.qpos.copy())
        goal, start = env.goal, self._start
        feet = np.array([start["feet"][f].translation() for f in self.feet])
        self.com.set_target(np.append(feet.mean(0)[:2] + np.array([0.02, 0.0]), 0.0))
        pelvis_z = STAND_HEIGHT + s * (SQUAT_PELVIS - STAND_HEIGHT) if goal.task == "squat" else STAND_HEIGHT
        self.pelvis.set_target(mink.SE3.from_rotation_and_translation(mink.SO3.identity(),
                                                                      np.array([0.0, 0.0, pelvis_z])))
        yaw = {"turn_torso_left": TURN_YAW, "turn_torso_right": -TURN_YAW}.get(goal.task, 0.0) * s
        self.torso.set_target(mink.SE3.from_rotation_and_translation(mink.SO3.from_rpy_radians(0.0, 0.0, yaw),
                                                                     np.zeros(3)))
        active = []
        for i, (site, task) in enumerate(self.palms.items()):
            target = _palm_target(goal, i, t)
            if target is None:
                continue
            task.set_target(mink.SE3.from_translation(start["palms"][i] + s * (target - start["palms"][i])))
            active.append(task)
        tasks = [*self.feet.values(), self.com, self.pelvis, self.torso, self.posture, *active]
        for _ in range(self.iterations):
            velocity = mink.solve_ik(self.configuration, tasks, 1 / CONTROL_HZ, "daqp", damping=1e-3,
                                     limits=self.limits)
            self.configuration.integrate_inplace(velocity, 1 / CONTROL_HZ)
        return self.configuration.q[env.joint_qpos].astype(np.float32)


class ExpertPolicy:
    """The expert as a policy for `evaluate` (the table's expert row): it reads the simulator of the environment its
    process evaluates in (privileged), so it is built at the first episode, inside the evaluation process."""

    def __init__(self, image_size: int):
        self.image_size, self.expert = image_size, None

    def reset(self) -> None:
        if self.expert is None:
            self.expert = Expert(_env(self.image_size))
        self.expert.reset()

    def __call__(self, obs: dict[str, Any]) -> np.ndarray:
        return self.expert(obs)


def _min_jerk(x: float) -> float:
    x = min(max(x, 0.0), 1.0)
    return x ** 3 * (10 - 15 * x + 6 * x * x)


def _palm_target(goal: Goal, hand: int, t: float) -> np.ndarray | None:
    """Where palm `hand` (0 left, 1 right) should end up at time `t`; None leaves it to the posture cost."""
    side = 1 if hand == 0 else -1
    mirror = np.array([1.0, side, 1.0])
    task = goal.task
    if task == "raise_both_hands" or task == ("raise_left_hand", "raise_right_hand")[hand]:
        return RAISED_PALM * mirror
    if task == ("wave_left_hand", "wave_right_hand")[hand]:
        sweep = WAVE_AMPLITUDE * np.sin(2 * np.pi * WAVE_HZ * t + goal.wave_phase)
        return WAVE_CENTRE * mirror + np.array([0.0, sweep, 0.0])
    if task == "reach_ball_both_hands":
        return goal.red_ball + np.array([-0.03, side * 0.06, 0.0])
    if task in ("reach_red_ball", "reach_blue_ball"):
        ball = goal.target_ball
        if np.sign(ball[1]) == side:  # the hand on the ball's side reaches
            return ball + np.array([-0.04, 0.0, 0.0])
    return None


def instruction_for(task: str, seed: int, episode: int) -> str:
    """A paraphrase chosen reproducibly per (seed, episode), so demos cover every phrasing of a task."""
    phrasings = TASKS[task]
    return phrasings[np.random.default_rng([seed, episode, 7]).integers(len(phrasings))]


# ------------------------------------------------------------------------------------------------ demonstrations
@dataclass(frozen=True)
class DemoSpec:
    """Everything that determines a demonstration set; its hash names the cache directory."""
    tasks: tuple[str, ...] = TASK_NAMES  # humanoid task names
    episodes_per_task: int = 20  # successful demonstrations kept per task
    image_size: int = 96  # square front-camera image side, pixels
    seed: int = 0  # demo episodes use this run seed (evaluation uses another)
    max_attempts: int = 3  # tries per demo; a failed try moves on to a fresh episode

    def key(self) -> str:
        blob = json.dumps(dict(asdict(self), scene=SCENE_VERSION), sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:12]


def features(image_size: int) -> dict[str, tuple[tuple[int, ...], str]]:
    return {IMAGE_KEY: ((image_size, image_size, 3), "uint8"), "observation.state": ((STATE_DIM,), "float32"),
            "action": ((N_JOINTS,), "float32")}


def collect_demos(spec: DemoSpec = DemoSpec(), workers: int = 2, cache_dir: str | Path | None = None,
                  progress: bool = True) -> EpisodeDataset:
    """Expert demonstrations of `spec`, collected once over `workers` processes and cached on disk (a second call
    returns the cached dataset at once). A failed expert try is discarded and retried on a fresh episode; the counts
    are kept in the dataset's meta.json (info.expert_attempts / info.expert_successes)."""
    cache = Path(cache_dir or default_cache_dir())
    root = cache / f"humanoid-{spec.key()}"
    if (root / "meta.json").exists():
        return EpisodeDataset(root)
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / f".humanoid-{spec.key()}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process collecting the same demos: wait for it, then reuse them
        if (root / "meta.json").exists():
            return EpisodeDataset(root)
        jobs = [(spec, task, e) for task in spec.tasks for e in range(spec.episodes_per_task)]
        attempts = 0
        writer = EpisodeWriter(root, features(spec.image_size), fps=CONTROL_HZ,
                               info=dict(spec=asdict(spec), scene=SCENE_VERSION, source="mink whole-body IK expert"))
        with writer, _pool(workers) as pool:
            results = pool.imap(_demo_job, jobs) if pool else map(_demo_job, jobs)
            for (_, task, e), (episode, tries) in tqdm(zip(jobs, results), total=len(jobs), desc="humanoid demos",
                                                       disable=not progress):
                attempts += tries
                if episode is None:
                    raise RuntimeError(f"the IK expert failed {tries} times on {task} episode {e}")
                frames, instruction = episode
                writer.add_episode(frames, task=task, instruction=instruction, success=True)
            writer.info.update(expert_attempts=attempts, expert_successes=len(jobs))
    return EpisodeDataset(root)


def _demo_job(job: tuple[DemoSpec, str, int]):
    """Roll the expert on demo `e` of `task`; returns ((frames, instruction) | None, tries)."""
    spec, task, e = job
    env = _env(spec.image_size)
    expert = Expert(env)
    instruction = instruction_for(task, spec.seed, e)
    for attempt in range(spec.max_attempts):
        frames, info = rollout(env, expert, task, spec.seed, e + attempt * 1_000_000, instruction)
        if info["success"]:
            return (frames, instruction), attempt + 1
    return None, spec.max_attempts


def rollout(env: HumanoidEnv, policy: Policy, task: str, seed: int, episode: int, instruction: str,
            expert: "Expert | None" = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """One episode of `policy` (an action (29,) or a chunk (k, 29) per call, executed open loop). Returns its frames
    (image, state, and the action taken -- or, given `expert`, the expert's action at each visited state: DAgger's
    relabelling) and the final info (success, fallen)."""
    if env.renderer is None:
        raise ValueError("rollout records the camera images: build the env with render_images=True")
    obs = env.reset(task, seed, episode, instruction)
    for p in (policy, expert):
        if hasattr(p, "reset"):
            p.reset()
    frames: dict[str, list] = {k: [] for k in features(env.image_size)}
    done, info = False, {}
    while not done:
        chunk = np.asarray(policy(obs), dtype=np.float32).reshape(-1, N_JOINTS)
        for action in chunk:
            label = expert(obs) if expert is not None else action
            frames[IMAGE_KEY].append(obs["images"]["front"])
            frames["observation.state"].append(obs["state"])
            frames["action"].append(np.asarray(label, dtype=np.float32))
            obs, done, info = env.step(action)
            if done:
                break
    return {k: np.stack(v) for k, v in frames.items()}, info


def collect_relabelled(policy: Policy, root: str | Path, tasks: tuple[str, ...], episodes_per_task: int, seed: int,
                       image_size: int, workers: int = 1, progress: bool = True) -> EpisodeDataset:
    """DAgger's data (Ross et al. 2011, Alg. 3.1): `policy` drives every episode and the expert labels each state it
    visits. Written to `root` as an episode dataset (returned at once if `root` is already complete); how the learner
    fared is kept in meta.json (info.learner_successes / info.learner_falls)."""
    root = Path(root)
    if (root / "meta.json").exists():
        return EpisodeDataset(root)
    jobs = [(task, seed, e, image_size) for task in tasks for e in range(episodes_per_task)]
    successes = falls = 0
    writer = EpisodeWriter(root, features(image_size), fps=CONTROL_HZ,
                           info=dict(seed=seed, scene=SCENE_VERSION, source="learner rollouts, IK expert labels"))
    with writer, _pool(workers, policy) as pool:
        results = pool.imap(_relabel_job, jobs) if pool else (_relabel_job(job, policy) for job in jobs)
        for (task, _, e, _), (frames, info) in tqdm(zip(jobs, results), total=len(jobs), desc="DAgger rollouts",
                                                    disable=not progress):
            successes += info["success"]
            falls += info["fallen"]
            writer.add_episode(frames, task=task, instruction=instruction_for(task, seed, e),
                               success=bool(info["success"]))
        writer.info.update(learner_successes=successes, learner_falls=falls, episodes=len(jobs))
    return EpisodeDataset(root)


def _relabel_job(job: tuple[str, int, int, int], policy: Policy | None = None):
    task, seed, e, image_size = job
    env = _env(image_size)
    _seed_policy_randomness(seed, task, e)
    return rollout(env, policy or _worker_policy, task, seed, e, instruction_for(task, seed, e), expert=Expert(env))


# ------------------------------------------------------------------------------------------------ evaluation
Policy = Callable[[dict[str, Any]], np.ndarray]


@dataclass(frozen=True)
class EvalConfig:
    tasks: tuple[str, ...] = TASK_NAMES  # tasks to evaluate
    episodes_per_task: int = 10  # closed-loop episodes per task
    seed: int = 1000  # evaluation run seed: episodes no demonstration used
    image_size: int = 96  # must match the policy's training images
    workers: int = 1  # evaluation processes (the policy is pickled to each)
    video_dir: str | None = None  # write a GIF of the first `video_episodes` episodes per task here
    video_episodes: int = 1
    blank_images: bool = False  # probe: every image black (does the policy use its camera?)
    other_instruction: bool = False  # probe: another task's instruction (does the policy follow language?)

    def __post_init__(self):
        resolve_tasks(self.tasks)
        if self.episodes_per_task < 1:
            raise ValueError(f"episodes_per_task must be >= 1, got {self.episodes_per_task}")


@dataclass
class TaskResult:
    task: str
    successes: int = 0
    falls: int = 0
    episodes: int = 0

    @property
    def success_rate(self) -> float:
        return self.successes / self.episodes

    @property
    def ci95(self) -> tuple[float, float]:
        return wilson_interval(self.successes, self.episodes)

    def as_dict(self) -> dict[str, Any]:
        return dict(success_rate=self.success_rate, successes=self.successes, episodes=self.episodes,
                    falls=self.falls, ci95=list(self.ci95))


def evaluate(policy: Policy, cfg: EvalConfig = EvalConfig(), progress: bool = True) -> dict[str, TaskResult]:
    """Run `policy` in closed loop on every task of `cfg`: success with a 95% Wilson interval, and falls."""
    jobs = [(cfg, task, e) for task in cfg.tasks for e in range(cfg.episodes_per_task)]
    results = {task: TaskResult(task) for task in cfg.tasks}
    with _pool(cfg.workers, policy) as pool:
        outcomes = pool.imap(_eval_job, jobs) if pool else (_eval_job(job, policy) for job in jobs)
        bar = tqdm(zip(jobs, outcomes), total=len(jobs), desc="humanoid eval", disable=not progress)
        for (_, task, _), (success, fallen) in bar:
            r = results[task]
            r.successes += success
            r.falls += fallen
            r.episodes += 1
            bar.set_postfix(success=f"{sum(x.successes for x in results.values())}/{bar.n + 1}")
    return results


def eval_instruction(cfg: EvalConfig, task: str, episode: int) -> str:
    """The instruction of an evaluation episode: the task's own paraphrase, or (probe) the next task's."""
    if cfg.other_instruction:
        task = TASK_NAMES[(TASK_NAMES.index(task) + 1) % len(TASK_NAMES)]
    return instruction_for(task, cfg.seed, episode)


def _eval_job(job: tuple[EvalConfig, str, int], policy: Policy | None = None) -> tuple[bool, bool]:
    cfg, task, e = job
    policy = policy or _worker_policy
    env = _env(cfg.image_size)
    _seed_policy_randomness(cfg.seed, task, e)
    if cfg.blank_images:
        policy = _BlankImages(policy)
    video = cfg.video_dir is not None and e < cfg.video_episodes
    frames, info = rollout(env, policy, task, cfg.seed, e, eval_instruction(cfg, task, e))
    if video:
        outcome = "fell" if info["fallen"] else "success" if info["success"] else "failure"
        save_gif(frames[IMAGE_KEY], Path(cfg.video_dir) / f"{task}_ep{e:03d}_{outcome}.gif")
    return bool(info["success"]), bool(info["fallen"])


class _BlankImages:
    """The probe that shows a policy black images (its `reset` passes through)."""

    def __init__(self, policy: Policy):
        self.policy = policy

    def reset(self) -> None:
        if hasattr(self.policy, "reset"):
            self.policy.reset()

    def __call__(self, obs: dict[str, Any]) -> np.ndarray:
        return self.policy(dict(obs, images={c: np.zeros_like(i) for c, i in obs["images"].items()}))


def _seed_policy_randomness(seed: int, task: str, episode: int) -> None:
    """Seed NumPy and torch per episode, so a stochastic policy draws the same numbers in every evaluation."""
    number = (seed * 1_000_003 + zlib.crc32(task.encode()) * 1009 + episode) % 2**32
    np.random.seed(number)
    if "torch" in sys.modules:
        sys.modules["torch"].manual_seed(number)


def save_gif(frames: np.ndarray, path: str | Path, fps: int = CONTROL_HZ // 2) -> Path:
    """An animated GIF of every second frame (25 fps)."""
    import imageio.v3 as iio
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, np.asarray(frames)[::2], duration=1000 / fps, loop=0)
    return path


def format_results(results: dict[str, TaskResult]) -> str:
    """A markdown table: success with its 95% interval and falls per task, then the mean."""
    lines = ["| task | success | 95% CI | falls |", "|---|---|---|---|"]
    for r in results.values():
        lo, hi = r.ci95
        lines.append(f"| {r.task} | {r.successes}/{r.episodes} ({r.success_rate:.0%}) | [{lo:.2f}, {hi:.2f}] "
                     f"| {r.falls} |")
    mean = float(np.mean([r.success_rate for r in results.values()]))
    falls = sum(r.falls for r in results.values()) / sum(r.episodes for r in results.values())
    lines.append(f"| **mean** | **{mean:.1%}** | | {falls:.2f} per episode |")
    return "\n".join(lines)


def save_results(results: dict[str, TaskResult], out_dir: str | Path) -> dict[str, dict[str, Any]]:
    """Print the results table and write it to `out_dir`/eval.md, with the per-task summary in eval.json."""
    table = format_results(results)
    print(table)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "eval.md").write_text(table + "\n")
    summary = {task: r.as_dict() for task, r in results.items()}
    (out_dir / "eval.json").write_text(json.dumps(summary, indent=1))
    return summary


# ------------------------------------------------------------------------------------------------ worker processes
def _pool(workers: int, policy: Policy | None = None):
    """A spawn-context process pool (fork would copy GL contexts), or a null context for workers <= 1."""
    if workers <= 1:
        return nullcontext(None)
    return mp.get_context("spawn").Pool(workers, initializer=_init_worker, initargs=(policy,))


_worker_policy: Policy | None = None


def _init_worker(policy: Policy | None) -> None:
    global _worker_policy
    _worker_policy = policy
    try:
        import torch
        torch.set_num_threads(1)  # one process per core
    except ImportError:
        pass


_ENVS: dict[int, HumanoidEnv] = {}


def _env(image_size: int) -> HumanoidEnv:
    """One environment per image size per process, reused across episodes."""
    if image_size not in _ENVS:
        first = not _ENVS
        _ENVS[image_size] = HumanoidEnv(image_size=image_size)
        if first:  # registered after mujoco.egl's own exit hook (imported by the first renderer), so it runs first
            atexit.register(_close_envs)
    return _ENVS[image_size]


def _close_envs() -> None:  # free GL contexts before interpreter teardown (else EGL complains at exit)
    while _ENVS:
        _ENVS.popitem()[1].close()
