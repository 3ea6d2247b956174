"""The embedded manipulation suite: Meta-World v3 (MT10 by default, any MT50 task by name) with language.

What a policy sees each step (`MetaWorldEnv.observation()`):
    images       {camera: uint8 (S, S, 3)}, upright, one per camera, rendered headless with the fast recipe (no
                 shadows, reflections or multisampling: ~10x faster on Mesa's software renderer)
    state        float32 (4,)  proprioception: end-effector xyz and gripper opening
    env_state    float32 (39,) Meta-World's full observation (hand, gripper, object poses, previous frame, goal):
                 privileged, an "oracle" input no real robot has
    instruction  str           one of the task's paraphrases (common/envs/metaworld_instructions.py)
and it answers with a 4-D action in [-1, 1]: end-effector displacement xyz and gripper effort. What a robot has is
images + state + instruction; the default inputs of the manipulation methods are exactly those.

The scene differs from Meta-World's in one respect: every goal marker (a site named "*goal*") is drawn in one
colour. Meta-World colours them per task (reach red, push green, pick-place blue), so the marker's colour would name
the task and a policy could ignore its instruction; with one colour, tasks that share a scene (see LANGUAGE_GROUPS)
can only be told apart by the instruction.

Episodes are reproducible. Meta-World ignores `reset(seed=...)`; an episode's object and goal placement is a
"variation" drawn by `metaworld.MT1(task, seed)`, 50 per benchmark seed. Episode `e` of a run with seed `s` uses
variation `e % 50` of benchmark seed `s * 1000 + e // 50`. Demonstrations and evaluation use different seeds,
so a policy is evaluated on placements it never saw.

    collect_demos(...)  scripted-expert demonstrations over N worker processes, cached on disk by their parameters
    evaluate(policy)    closed-loop success rate per task with a 95% Wilson interval, episode lengths, videos
"""

from __future__ import annotations

import atexit
import fcntl
import hashlib
import json
import multiprocessing as mp
import os
import sys
import warnings
import zlib
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable

os.environ.setdefault("MUJOCO_GL", "egl")  # headless rendering; must precede the first mujoco import

# Mesa's software renderer (llvmpipe, behind EGL) and triton (imported lazily by torch.optim through torch._dynamo)
# each bring their own LLVM; if triton's is loaded second the process segfaults. Load torch's compiler stack first.
try:
    import torch._dynamo  # noqa: F401
except ImportError:  # torch is optional for the environment itself
    pass

import metaworld  # noqa: E402
import mujoco  # noqa: E402
import numpy as np  # noqa: E402
from metaworld.env_dict import ALL_V3_ENVIRONMENTS, MT10_V3  # noqa: E402
from metaworld.policies import ENV_POLICY_MAP  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from common.data import EpisodeDataset, EpisodeWriter, default_cache_dir, rename_features  # noqa: E402
from common.envs.metaworld_instructions import HELD_OUT_INSTRUCTIONS, INSTRUCTIONS  # noqa: E402
from common.metrics import wilson_interval  # noqa: E402

warnings.filterwarnings("ignore", message="Constant")  # metaworld policies warn that their gains exceed [-1, 1]

MT10 = tuple(MT10_V3)
MT50 = tuple(ALL_V3_ENVIRONMENTS)
IMAGE_KEY = "observation.images.{camera}"
STATE_DIM, ENV_STATE_DIM, ACTION_DIM = 4, 39, 4
# The entries of the 39-D observation no robot senses: object poses (4:18), their previous values (22:36), the goal.
PRIVILEGED_DIMS = (*range(4, 18), *range(22, 36), *range(36, 39))
GOAL_MARKER_RGBA = (0.0, 0.0, 0.8, 1.0)  # one colour for every goal marker (see the module docstring)
SCENE_VERSION = 2  # part of every demo cache key; bumped when the rendered scene changes (2: one goal colour)
# Tasks whose first frames cannot be told apart (one scene, one goal-marker colour): only the instruction says what to
# do. Measured by `benchmarks/language_groups.py` (benchmarks/results/language_groups.md): a CNN on the first frame
# (+ proprio) names the task of every other MT50 group sharing an MJCF file at 98-100% (a drawer starts open or shut,
# ...), and tells push from reach and pick-place (its goal lies on the table), but not reach from pick-place (their
# files differ only in the marker's colour).
LANGUAGE_GROUPS: tuple[tuple[str, ...], ...] = (("reach-v3", "pick-place-v3"),)
# Meta-World's corner cameras are mounted upside down; their images are flipped vertically to be upright.
_FLIPPED_CAMERAS = ("corner", "corner2", "corner3", "corner4")
_VARIATIONS_PER_SEED = 50  # metaworld._N_GOALS


def resolve_tasks(tasks: str | Iterable[str]) -> tuple[str, ...]:
    """'mt10' / 'mt50' / a comma-separated string / a list of task names (the '-v3' suffix is optional)."""
    if isinstance(tasks, str):
        if tasks.lower() in ("mt10", "mt50"):
            return MT10 if tasks.lower() == "mt10" else MT50
        tasks = tasks.split(",")
    names = tuple(t.strip() if t.strip().endswith("-v3") else f"{t.strip()}-v3" for t in tasks)
    for name in names:
        if name not in ALL_V3_ENVIRONMENTS:
            raise ValueError(f"unknown Meta-World task {name!r}; MT50 has: {', '.join(MT50)}")
    return names


@lru_cache(maxsize=64)
def _benchmark(task: str, benchmark_seed: int) -> "metaworld.MT1":
    return metaworld.MT1(task, seed=benchmark_seed)  # ~1 s: builds 50 variations, so cached per process


def variation(task: str, seed: int, episode: int) -> "metaworld.Task":
    """The reproducible object/goal placement of episode `episode` of a run seeded `seed`."""
    bench = _benchmark(task, seed * 1000 + episode // _VARIATIONS_PER_SEED)
    return bench.train_tasks[episode % _VARIATIONS_PER_SEED]


class MetaWorldEnv:
    """One Meta-World task with upright camera images, proprio state and a language instruction."""

    def __init__(self, task: str, image_size: int = 128, cameras: tuple[str, ...] = ("corner",),
                 fast_render: bool = True, max_steps: int = 200):
        (self.task,) = resolve_tasks([task])
        if not 0 < max_steps <= 500:
            raise ValueError(f"max_steps must be in (0, 500] (Meta-World's path limit), got {max_steps}")
        self.image_size, self.cameras, self.max_steps = image_size, tuple(cameras), max_steps
        self.env = ALL_V3_ENVIRONMENTS[self.task]()
        model = self.env.model
        names = [mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_CAMERA, i) for i in range(model.ncam)]
        for camera in self.cameras:
            if camera not in names:
                raise ValueError(f"unknown camera {camera!r}; Meta-World has {names}")
        if not self.cameras:
            raise ValueError("at least one camera is needed")
        for i in range(model.nsite):
            if "goal" in (mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_SITE, i) or "").lower():
                model.site_rgba[i] = GOAL_MARKER_RGBA
        if fast_render:
            model.vis.quality.offsamples = 0  # no multisampling; must be set before the GL context exists
        model.vis.global_.offwidth = max(model.vis.global_.offwidth, image_size)
        model.vis.global_.offheight = max(model.vis.global_.offheight, image_size)
        self.renderer = mujoco.Renderer(model, image_size, image_size)
        self.fast_render = fast_render
        self.instruction = INSTRUCTIONS[self.task][0]
        self._obs: np.ndarray | None = None
        self.steps = 0

    def reset(self, seed: int, episode: int, instruction: str | None = None) -> dict[str, Any]:
        """Start episode `episode` of a run seeded `seed` (see the module docstring)."""
        self.env.set_task(variation(self.task, seed, episode))
        self.env.seed(seed * 100_003 + episode)
        self._obs, _ = self.env.reset()
        self.instruction = instruction if instruction is not None else INSTRUCTIONS[self.task][0]
        self.steps = 0
        return self.observation()

    def step(self, action: np.ndarray, render: bool = True) -> tuple[dict[str, Any], float, bool, dict[str, Any]]:
        """Apply a 4-D action (clipped to [-1, 1]); `done` is success or the step limit. `render=False` leaves the
        images out of the observation (an action chunk executed open loop needs no image until its last step)."""
        if self._obs is None:
            raise RuntimeError("call reset() before step()")
        action = np.clip(np.asarray(action, dtype=np.float64).reshape(ACTION_DIM), -1.0, 1.0)
        self._obs, reward, _, _, info = self.env.step(action)
        self.steps += 1
        success = bool(info["success"])
        done = success or self.steps >= self.max_steps
        return self.observation(render), float(reward), done, dict(info, success=success)

    def render(self, camera: str) -> np.ndarray:
        self.renderer.update_scene(self.env.data, camera=camera)
        if self.fast_render:
            self.renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
            self.renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        image = self.renderer.render()
        return np.ascontiguousarray(image[::-1]) if camera in _FLIPPED_CAMERAS else image

    def observation(self, render: bool = True) -> dict[str, Any]:
        obs = self._obs.astype(np.float32)
        images = {camera: self.render(camera) for camera in self.cameras} if render else {}
        return dict(images=images, state=obs[:STATE_DIM].copy(), env_state=obs, instruction=self.instruction)

    def close(self) -> None:
        self.renderer.close()
        self.env.close()


def to_features(obs: dict[str, Any]) -> dict[str, Any]:
    """An environment observation under the dataset's feature names, so a policy reads both the same way."""
    return {**{IMAGE_KEY.format(camera=c): image for c, image in obs["images"].items()},
            "observation.state": obs["state"], "observation.environment_state": obs["env_state"],
            "instruction": obs["instruction"]}


def instruction_for(task: str, seed: int, episode: int) -> str:
    """A paraphrase chosen reproducibly per (seed, episode), so demos cover every phrasing of a task."""
    phrasings = INSTRUCTIONS[task]
    return phrasings[np.random.default_rng([seed, episode, 7]).integers(len(phrasings))]


# ------------------------------------------------------------------------------------------------ demonstrations
@dataclass(frozen=True)
class DemoSpec:
    """Everything that determines a demonstration set; its hash names the cache directory."""
    tasks: tuple[str, ...] = MT10  # Meta-World v3 task names
    episodes_per_task: int = 10  # successful demonstrations kept per task
    image_size: int = 128  # square camera image side, pixels
    cameras: tuple[str, ...] = ("corner",)  # Meta-World cameras, one image feature each
    seed: int = 0  # demo placements use this run seed (evaluation uses another)
    max_steps: int = 200  # step limit of an expert episode
    max_attempts: int = 3  # tries per demo; a failed try moves on to a fresh placement

    def key(self) -> str:
        blob = json.dumps(dict(asdict(self), scene=SCENE_VERSION), sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:12]


def demo_spec(cfg: Any) -> DemoSpec:
    """The demonstrations a method's config asks for (its fields tasks, episodes_per_task, demo_image_size, cameras,
    demo_seed: the same names in every manipulation method)."""
    return DemoSpec(tasks=cfg.tasks, episodes_per_task=cfg.episodes_per_task, image_size=cfg.demo_image_size,
                    cameras=cfg.cameras, seed=cfg.demo_seed)


def training_demos(cfg: Any, keys: Iterable[str], workers: int = 2, progress: bool = True) -> EpisodeDataset:
    """What a manipulation method trains on: with `cfg.dataset` (a directory of ours or a LeRobot v3.0 dataset) its
    demos, `keys` and the action feature `cfg.action_key` (None: "action", LeRobot's name; read as "action") checked
    by `common.lerobot.open_dataset`; else the embedded demos of `demo_spec(cfg)`, collected once over `workers`
    processes and cached."""
    if cfg.dataset:
        from common.lerobot import open_dataset  # here: pyarrow and PyAV are needed for LeRobot datasets only
        action_key = cfg.action_key or "action"
        demos = open_dataset(cfg.dataset, [*keys, action_key])
        return demos if action_key == "action" else rename_features(demos, {action_key: "action"})
    return collect_demos(demo_spec(cfg), workers=workers, progress=progress)


def training_instructions(cfg: Any, demos: EpisodeDataset | None) -> list[str]:
    """The instructions a method's tokenizer is trained on: every paraphrase of `cfg.tasks`, or with `cfg.dataset`
    the dataset's own instructions (`demos`, read only then), one per episode."""
    if cfg.dataset:
        return [episode["instruction"] for episode in demos.episodes]
    return [text for task in cfg.tasks for text in INSTRUCTIONS[task]]


def collect_demos(spec: DemoSpec = DemoSpec(), workers: int = 2, cache_dir: str | Path | None = None,
                  progress: bool = True) -> EpisodeDataset:
    """Scripted-expert demonstrations of `spec`, collected once over `workers` processes and cached on disk.

    A second call with the same spec returns the cached dataset at once, and so does a cached set that differs only
    in having more cameras (a policy reads the image features it needs). A failed expert try (the scripted policies
    succeed ~99% of the time) is discarded and retried on a fresh placement; the success counts are kept in the
    dataset's `meta.json` (info.expert_attempts / info.expert_successes).
    """
    cache = Path(cache_dir or default_cache_dir())
    found = _cached_demos(cache, spec)
    if found is not None:
        return found
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / f".metaworld-{spec.key()}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process collecting the same demos: wait for it, then reuse them
        found = _cached_demos(cache, spec)
        if found is not None:
            return found
        jobs = [(spec, task, e) for task in spec.tasks for e in range(spec.episodes_per_task)]
        features = {IMAGE_KEY.format(camera=c): ((spec.image_size, spec.image_size, 3), "uint8") for c in spec.cameras}
        features.update({"observation.state": ((STATE_DIM,), "float32"),
                         "observation.environment_state": ((ENV_STATE_DIM,), "float32"),
                         "action": ((ACTION_DIM,), "float32"), "reward": ((), "float32")})
        attempts, successes = 0, 0
        root = cache / f"metaworld-{spec.key()}"
        writer = EpisodeWriter(root, features, fps=80,  # Meta-World steps at 1 / (5 x 2.5 ms)
                               info=dict(spec=asdict(spec), scene=SCENE_VERSION, source="metaworld scripted policies"))
        with writer, _pool(workers) as pool:
            results = pool.imap(_demo_job, jobs) if pool else map(_demo_job, jobs)
            for (_, task, e), (episode, tries) in tqdm(zip(jobs, results), total=len(jobs), desc="expert demos",
                                                       disable=not progress):
                attempts += tries
                if episode is None:
                    raise RuntimeError(f"the scripted expert failed {tries} times on {task} episode {e}")
                successes += 1
                frames, instruction = episode
                writer.add_episode(frames, task=task, instruction=instruction, success=True)
            writer.info.update(expert_attempts=attempts, expert_successes=successes)
    return EpisodeDataset(root)


def _cached_demos(cache: Path, spec: DemoSpec) -> EpisodeDataset | None:
    """The cached demos of `spec`, or of a spec that differs only in having more cameras; None if there are none."""
    if (cache / f"metaworld-{spec.key()}" / "meta.json").exists():
        return EpisodeDataset(cache / f"metaworld-{spec.key()}")
    for meta in sorted(cache.glob("metaworld-*/meta.json")):
        info = json.loads(meta.read_text())["info"]
        cached = dict(info["spec"], tasks=tuple(info["spec"]["tasks"]), cameras=tuple(info["spec"]["cameras"]))
        if info.get("scene") == SCENE_VERSION and set(spec.cameras) <= set(cached["cameras"]) and \
                DemoSpec(**dict(cached, cameras=spec.cameras)) == spec:
            return EpisodeDataset(meta.parent)
    return None


def _pool(workers: int, policy: "Policy | None" = None):
    """A spawn-context process pool (fork would copy GL contexts), or a null context for workers <= 1. `policy` is
    pickled once to each worker (for evaluation)."""
    if workers <= 1:
        return nullcontext(None)
    return mp.get_context("spawn").Pool(workers, initializer=_init_worker, initargs=(policy,))


_worker_policy: "Policy | None" = None


def _init_worker(policy: "Policy | None") -> None:
    global _worker_policy
    _worker_policy = policy
    try:
        import torch
        torch.set_num_threads(1)  # one process per core
    except ImportError:
        pass


_ENVS: dict[tuple, MetaWorldEnv] = {}


def _env(task: str, image_size: int, cameras: tuple[str, ...], max_steps: int) -> MetaWorldEnv:
    """One environment per (task, image size, cameras, step limit) per process, reused across episodes."""
    key = (task, image_size, tuple(cameras), max_steps)
    if key not in _ENVS:
        first = not _ENVS
        _ENVS[key] = MetaWorldEnv(task, image_size=image_size, cameras=cameras, max_steps=max_steps)
        if first:  # registered after mujoco.egl's own exit hook (imported by the first renderer), so it runs first
            atexit.register(_close_envs)
    return _ENVS[key]


def _close_envs() -> None:  # free GL contexts before interpreter teardown (else EGL complains at exit)
    while _ENVS:
        _ENVS.popitem()[1].close()


def _demo_job(job: tuple[DemoSpec, str, int]):
    """Roll the scripted expert on demo `e` of `task`; returns ((frames, instruction) | None, tries)."""
    spec, task, e = job
    env = _env(task, spec.image_size, spec.cameras, spec.max_steps)
    expert = ENV_POLICY_MAP[task]()
    instruction = instruction_for(task, spec.seed, e)
    for attempt in range(spec.max_attempts):
        episode = e + attempt * 1_000_000  # a retry uses a placement no other demo uses
        obs = env.reset(spec.seed, episode, instruction)
        frames = []
        done, info = False, {"success": False}
        while not done:
            action = np.clip(expert.get_action(obs["env_state"].astype(np.float64)), -1, 1).astype(np.float32)
            frame = to_features(obs)
            del frame["instruction"]
            obs, reward, done, info = env.step(action)
            frames.append(dict(frame, action=action, reward=np.float32(reward)))
        if info["success"]:
            return ({k: np.stack([f[k] for f in frames]) for k in frames[0]}, instruction), attempt + 1
    return None, spec.max_attempts


# ------------------------------------------------------------------------------------------------ evaluation
Policy = Callable[[dict[str, Any]], np.ndarray]


@dataclass
class EvalConfig:
    tasks: tuple[str, ...] = MT10  # tasks to evaluate
    episodes_per_task: int = 10  # closed-loop episodes per task
    seed: int = 1000  # evaluation placements (differs from the demos' seed 0: held-out placements)
    image_size: int = 128  # must match what the policy was trained on
    cameras: tuple[str, ...] = ("corner",)  # Meta-World cameras, as in the demos
    max_steps: int = 200  # step limit per episode (Meta-World's own limit is 500)
    # --- what the policy is told and shown (the standard evaluation and the probes of what a policy uses)
    instruction: str = "canonical"  # "canonical": the task's first paraphrase (seen in training); "held_out": a
    #                                 paraphrase absent from training (HELD_OUT_INSTRUCTIONS); "other_task": another
    #                                 task's canonical instruction (see `other_task`); "empty": no instruction
    blank_images: bool = False  # probe: every camera image replaced by black
    privileged_fill: tuple[float, ...] | None = None  # probe: the privileged entries of the 39-D state
    #                                 (PRIVILEGED_DIMS) replaced by these values' (39 numbers, e.g. the demos' mean)
    video_dir: str | None = None  # write rollout videos here (None: no videos)
    video_episodes: int = 1  # videos for the first k episodes of each task
    video_format: str = "mp4"  # "mp4" or "gif"
    workers: int = 1  # evaluation processes (the policy is pickled to each)

    def __post_init__(self):
        if self.instruction not in INSTRUCTION_MODES:
            raise ValueError(f"instruction must be one of {INSTRUCTION_MODES}, got {self.instruction!r}")
        if self.privileged_fill is not None and len(self.privileged_fill) != ENV_STATE_DIM:
            raise ValueError(f"privileged_fill needs {ENV_STATE_DIM} values, got {len(self.privileged_fill)}")


INSTRUCTION_MODES = ("canonical", "held_out", "other_task", "empty")


@dataclass
class EvalArgs:
    """The command line of every manipulation method's eval.py (re-evaluate a checkpoint, on a split or a probe)."""
    checkpoint: Path  # a checkpoint directory (model.safetensors + config.json), or a run directory (its last one)
    episodes: int | None = None  # episodes per task (default: the training config's eval_episodes)
    tasks: tuple[str, ...] | None = None  # a subset of the trained tasks (default: all)
    seed: int | None = None  # evaluation placements (default: the training config's eval_seed)
    instruction: str = "canonical"  # canonical | held_out | other_task | empty (see EvalConfig)
    blank_images: bool = False  # probe: black camera images
    video_dir: str | None = None  # save one rollout video per task here
    workers: int = 2  # evaluation processes
    out_dir: Path | None = None  # where eval.json / eval.md go (default: the checkpoint directory)

    def config(self, cfg: Any) -> Any:
        """The method's training config `cfg` with this evaluation's episodes, tasks, placements, videos, workers."""
        return replace(cfg, eval_episodes=self.episodes or cfg.eval_episodes, tasks=self.tasks or cfg.tasks,
                       eval_seed=cfg.eval_seed if self.seed is None else self.seed, video_dir=self.video_dir,
                       eval_workers=self.workers)

    def probes(self) -> dict[str, Any]:
        return dict(instruction=self.instruction, blank_images=self.blank_images)


def eval_config(cfg: Any, **overrides: Any) -> EvalConfig:
    """The standard closed-loop evaluation of a method's config (its fields tasks, eval_episodes, eval_seed,
    demo_image_size, cameras, eval_max_steps, video_dir, eval_workers), with `overrides` (a split or a probe)."""
    return EvalConfig(**{**dict(tasks=cfg.tasks, episodes_per_task=cfg.eval_episodes, seed=cfg.eval_seed,
                                image_size=cfg.demo_image_size, cameras=cfg.cameras, max_steps=cfg.eval_max_steps,
                                video_dir=cfg.video_dir, workers=cfg.eval_workers), **overrides})


def other_task(task: str, tasks: tuple[str, ...]) -> str:
    """The task whose instruction the "other_task" probe gives in `task`'s scene: the next task of its language group
    among `tasks` where it has one (same scene, so only the words differ), else the next of `tasks` (cyclically)."""
    group = next((g for g in LANGUAGE_GROUPS if task in g), ())
    candidates = [t for t in group if t in tasks] if sum(t in tasks for t in group) > 1 else list(tasks)
    if len(candidates) < 2:
        raise ValueError(f"the other_task probe needs at least two tasks, got {tasks}")
    return candidates[(candidates.index(task) + 1) % len(candidates)]


def eval_instruction(cfg: EvalConfig, task: str, episode: int) -> str:
    """What the policy is told in episode `episode` of `task` under `cfg.instruction`."""
    if cfg.instruction == "canonical":
        return INSTRUCTIONS[task][0]
    if cfg.instruction == "held_out":
        phrasings = HELD_OUT_INSTRUCTIONS[task]
        return phrasings[episode % len(phrasings)]
    if cfg.instruction == "other_task":
        return INSTRUCTIONS[other_task(task, cfg.tasks)][0]
    return ""


@dataclass
class TaskResult:
    task: str
    successes: int = 0
    lengths: list[int] = field(default_factory=list)  # one entry per finished episode

    @property
    def episodes(self) -> int:
        return len(self.lengths)

    @property
    def success_rate(self) -> float:
        return self.successes / self.episodes

    @property
    def ci95(self) -> tuple[float, float]:
        return wilson_interval(self.successes, self.episodes)

    @property
    def mean_length(self) -> float:
        return float(np.mean(self.lengths))

    def as_dict(self) -> dict[str, Any]:
        """JSON-able summary (what methods write to eval.json)."""
        return dict(success_rate=self.success_rate, successes=self.successes, episodes=self.episodes,
                    ci95=list(self.ci95), mean_length=self.mean_length)


def evaluate(policy: Policy, cfg: EvalConfig = EvalConfig(), progress: bool = True) -> dict[str, TaskResult]:
    """Run `policy` in closed loop on every task of `cfg`.

    `policy(obs) -> action` gets the observation dict of `MetaWorldEnv` and returns one action (4,) or an action
    chunk (k, 4) that is executed open loop before the policy is asked again. If the policy has a `reset()` method it
    is called at the start of every episode.
    """
    jobs = [(cfg, task, e) for task in cfg.tasks for e in range(cfg.episodes_per_task)]
    results = {task: TaskResult(task) for task in cfg.tasks}
    with _pool(cfg.workers, policy) as pool:
        outcomes = pool.imap(_eval_job, jobs) if pool else (_eval_job(job, policy) for job in jobs)
        bar = tqdm(zip(jobs, outcomes), total=len(jobs), desc="closed-loop eval", disable=not progress)
        for (_, task, _), (success, length) in bar:
            r = results[task]
            r.successes += success
            r.lengths.append(length)
            bar.set_postfix(success=f"{sum(x.successes for x in results.values())}/{bar.n + 1}")
    return results


def _eval_job(job: tuple[EvalConfig, str, int], policy: Policy | None = None) -> tuple[bool, int]:
    cfg, task, e = job
    policy = policy or _worker_policy
    env = _env(task, cfg.image_size, cfg.cameras, cfg.max_steps)
    obs = env.reset(cfg.seed, e, eval_instruction(cfg, task, e))
    _seed_policy_randomness(cfg.seed, task, e)
    if hasattr(policy, "reset"):
        policy.reset()
    video = cfg.video_dir is not None and e < cfg.video_episodes
    frames = [_video_frame(obs)] if video else None
    done, info = False, {"success": False}
    while not done:
        actions = np.asarray(policy(_probed(obs, cfg)), dtype=np.float32).reshape(-1, ACTION_DIM)
        for i, action in enumerate(actions):
            # images are rendered only where they are used: for the policy's next call, or for the video
            obs, _, done, info = env.step(action, render=video or i == len(actions) - 1)
            if frames is not None:
                frames.append(_video_frame(obs))
            if done:
                break
    if frames is not None:
        outcome = "success" if info["success"] else "failure"
        save_video(frames, Path(cfg.video_dir) / f"{task}_ep{e:03d}_{outcome}.{cfg.video_format}")
    return bool(info["success"]), env.steps


def _seed_policy_randomness(seed: int, task: str, episode: int) -> None:
    """Seed the global NumPy and torch generators per episode, so a stochastic policy (flow matching's noise) draws
    the same numbers in every evaluation of that episode, whatever ran before it in the process and however many
    workers share the episodes. (Unseeded, one π0 checkpoint scored 38% and 32% in two evaluations.)"""
    number = (seed * 1_000_003 + zlib.crc32(task.encode()) * 1009 + episode) % 2**32
    np.random.seed(number)
    if "torch" in sys.modules:
        sys.modules["torch"].manual_seed(number)


def _probed(obs: dict[str, Any], cfg: EvalConfig) -> dict[str, Any]:
    """The observation as `cfg`'s probes show it to the policy (the environment itself is untouched)."""
    if cfg.blank_images:
        obs = dict(obs, images={c: np.zeros_like(image) for c, image in obs["images"].items()})
    if cfg.privileged_fill is not None:
        state = obs["env_state"].copy()
        state[list(PRIVILEGED_DIMS)] = np.asarray(cfg.privileged_fill, dtype=np.float32)[list(PRIVILEGED_DIMS)]
        obs = dict(obs, env_state=state)
    return obs


def _video_frame(obs: dict[str, Any]) -> np.ndarray:
    """Every camera's image side by side."""
    return np.concatenate(list(obs["images"].values()), axis=1)


def save_video(frames: list[np.ndarray], path: str | Path, fps: int = 20) -> Path:
    """Write frames (uint8 HxWx3) as an mp4 (H.264 through PyAV) or an animated gif, by the path's suffix."""
    import imageio.v3 as iio
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = np.stack(frames)
    if path.suffix == ".gif":
        iio.imwrite(path, frames, duration=1000 / fps, loop=0)
    else:  # H.264 wants even sides
        frames = frames[:, : frames.shape[1] // 2 * 2, : frames.shape[2] // 2 * 2]
        iio.imwrite(path, frames, plugin="pyav", codec="libx264", fps=fps)
    return path


def format_results(results: dict[str, TaskResult]) -> str:
    """A markdown table: success rate with its 95% interval and mean episode length per task, then the mean."""
    lines = ["| task | success | 95% CI | mean length |", "|---|---|---|---|"]
    for r in results.values():
        lo, hi = r.ci95
        lines.append(f"| {r.task} | {r.successes}/{r.episodes} ({r.success_rate:.0%}) | [{lo:.2f}, {hi:.2f}] "
                     f"| {r.mean_length:.0f} |")
    mean = float(np.mean([r.success_rate for r in results.values()]))
    lines.append(f"| **mean** | **{mean:.1%}** | | |")
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
