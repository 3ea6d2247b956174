"""Which Meta-World tasks share a starting scene, so that only the instruction says what to do?

For every group of MT50 tasks that load the same MJCF file (plus the families built from near-identical files:
reach / push / pick-place and their -wall versions, and every pair within those), this renders the first frame of many placements of each task,
as a policy sees it (the cameras, at the policies' 64 px, plus the 4-D proprio state), and trains a small CNN to
name the task from it. Trained on placements of one seed and tested on placements of another: where the test
accuracy stays at chance (its 95% Wilson interval holds 1/k), no policy can tell the tasks apart from what it sees
at the start, and a policy that ignores its instruction scores what one behaviour scores on all of them.

As a control of the classifier's power, each group is measured twice: in our scene (one goal-marker colour) and with
Meta-World's own per-task marker colours, where reach / push / pick-place are told apart by the colour alone.

    python benchmarks/language_groups.py                   # all candidate groups -> results/language_groups.{md,csv}
    python benchmarks/language_groups.py --groups reach,push,pick-place --placements 40
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from metaworld.env_dict import ALL_V3_ENVIRONMENTS  # noqa: E402
from torch import nn  # noqa: E402
from tqdm import tqdm  # noqa: E402

from benchmarks._results import save_table, stamp  # noqa: E402
from common.envs.metaworld import MT50, MetaWorldEnv, resolve_tasks  # noqa: E402
from common.metrics import wilson_interval  # noqa: E402

# Families whose MJCF files differ (one file each) but whose scenes are built alike (DESIGN.md).
NEAR_IDENTICAL = [("reach-v3", "push-v3", "pick-place-v3"), ("reach-wall-v3", "push-wall-v3", "pick-place-wall-v3")]


def candidate_groups() -> list[tuple[str, ...]]:
    """MT50 tasks grouped by the MJCF file they load, plus the near-identical families and each pair of them."""
    by_file = defaultdict(list)
    for task in MT50:
        env = ALL_V3_ENVIRONMENTS[task]()
        by_file[Path(env.model_name).name].append(task)
        env.close()
    pairs = [(a, b) for family in NEAR_IDENTICAL for i, a in enumerate(family) for b in family[i + 1:]]
    return [tuple(g) for g in by_file.values() if len(g) > 1] + NEAR_IDENTICAL + pairs


def first_frames(task: str, seed: int, placements: int, cameras: tuple[str, ...], size: int, task_colours: bool):
    """(N, 3·cameras, size, size) float images in [0, 1] and (N, 4) proprio states of the first frames."""
    env = MetaWorldEnv(task, image_size=2 * size, cameras=cameras)
    if task_colours:  # put back Meta-World's own per-task marker colours
        original = ALL_V3_ENVIRONMENTS[task]()
        env.env.model.site_rgba[:] = original.model.site_rgba
        original.close()
    images, states = [], []
    for e in range(placements):
        obs = env.reset(seed, e)
        frames = [torch.from_numpy(obs["images"][c]).permute(2, 0, 1).float() / 255 for c in cameras]
        images.append(F.avg_pool2d(torch.cat(frames), 2))  # the policies' 64 px
        states.append(torch.from_numpy(obs["state"]))
    env.close()
    return torch.stack(images), torch.stack(states)


class TaskClassifier(nn.Module):
    """Image(s) + proprio state -> task logits. Flattened (not pooled) features keep where things are."""

    def __init__(self, channels: int, size: int, n_tasks: int):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(channels, 32, 5, 2, 2), nn.ReLU(), nn.Conv2d(32, 32, 3, 2, 1), nn.ReLU(),
                                  nn.Conv2d(32, 32, 3, 2, 1), nn.ReLU(), nn.Flatten())
        self.head = nn.Sequential(nn.Linear(32 * (size // 8) ** 2 + 4, 128), nn.ReLU(), nn.Linear(128, n_tasks))

    def forward(self, images, states):
        return self.head(torch.cat([self.conv(images), states], dim=1))


def measure(group: tuple[str, ...], args, task_colours: bool) -> dict:
    """Train on `placements` first frames per task (seed 1000), test on as many from seed 2000."""
    data = {}
    for split, seed in (("train", 1000), ("test", 2000)):
        frames = [first_frames(t, seed, args.placements, args.cameras, args.size, task_colours) for t in group]
        images = torch.cat([f[0] for f in frames])
        states = torch.cat([f[1] for f in frames])
        labels = torch.arange(len(group)).repeat_interleave(args.placements)
        data[split] = images, states, labels
    mean, std = data["train"][1].mean(0), data["train"][1].std(0) + 1e-3
    torch.manual_seed(0)
    model = TaskClassifier(data["train"][0].shape[1], args.size, len(group))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
    images, states, labels = data["train"]
    for _ in range(args.steps):
        batch = torch.randint(0, len(labels), (64,))
        loss = F.cross_entropy(model(images[batch], (states[batch] - mean) / std), labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        predicted = {split: model(x, (s - mean) / std).argmax(1) for split, (x, s, _) in data.items()}
    correct = {split: int((predicted[split] == data[split][2]).sum()) for split in data}
    # confusion[i][j]: test frames of task i classified as task j
    confusion = torch.zeros(len(group), len(group), dtype=torch.long)
    confusion.index_put_((data["test"][2], predicted["test"]), torch.ones_like(predicted["test"]), accumulate=True)
    n = len(labels)
    lo, hi = wilson_interval(correct["test"], n)
    chance = 1 / len(group)
    return dict(group=" / ".join(t.removesuffix("-v3") for t in group), markers="task colours" if task_colours
                else "one colour", train=correct["train"] / n, test=correct["test"] / n, lo=lo, hi=hi, chance=chance,
                episodes=n, at_chance=lo <= chance <= hi, confusion=confusion.tolist())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--groups", nargs="*", help="comma-separated task groups (default: every candidate group)")
    parser.add_argument("--cameras", default="corner", help="comma-separated cameras, as the policies use them")
    parser.add_argument("--placements", type=int, default=50, help="first frames per task per split")
    parser.add_argument("--size", type=int, default=64, help="classifier input side, pixels (the policies' 64 px)")
    parser.add_argument("--steps", type=int, default=600, help="classifier training steps (batch 64)")
    args = parser.parse_args()
    args.cameras = tuple(args.cameras.split(","))
    torch.set_num_threads(1)
    groups = [resolve_tasks(g) for g in args.groups] if args.groups else candidate_groups()
    rows = []
    for group in tqdm(groups, desc="groups"):
        for task_colours in (False, True):
            rows.append(measure(group, args, task_colours))
            r = rows[-1]
            tqdm.write(f"{r['group']:45s} {r['markers']:12s} test {r['test']:.2f} [{r['lo']:.2f}, {r['hi']:.2f}] "
                       f"chance {r['chance']:.2f}")
    header = (f"Can a classifier tell the tasks of a group apart from their first frame? A CNN on the first frame "
              f"({'+'.join(args.cameras)}, {args.size} px, + 4-D proprio) of {args.placements} placements per task "
              f"(seed 1000), tested on {args.placements} others (seed 2000); {args.steps} steps. At chance = the 95% "
              f"Wilson interval of the test accuracy holds 1/k: only the instruction tells these tasks apart.\n\n"
              f"{stamp(vars(args))}")
    columns = ["group", "goal markers", "train acc.", "test acc. [95% CI]", "chance", "test confusion (row: task)",
               "language-necessary"]
    table = [[r["group"], r["markers"], f"{r['train']:.2f}", f"{r['test']:.2f} [{r['lo']:.2f}, {r['hi']:.2f}]",
              f"{r['chance']:.2f}", " · ".join(map(str, r["confusion"])), "**yes**" if r["at_chance"] else "no"]
             for r in rows]
    keys = ["group", "markers", "train", "test", "lo", "hi", "chance", "episodes", "at_chance", "confusion"]
    save_table("language_groups", header, columns, table, keys, [[r[k] for k in keys] for r in rows])


if __name__ == "__main__":
    main()
