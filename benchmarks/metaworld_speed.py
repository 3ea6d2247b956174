"""Speed of the embedded Meta-World suite: rendering recipe and demo collection, measured side by side in one run.

    python benchmarks/metaworld_speed.py            # writes results/metaworld_speed.{csv,md}
    python benchmarks/metaworld_speed.py --quick    # smaller smoke version

1. Frames per second of MetaWorldEnv.render() at 128 px with the fast recipe (no multisampling, shadows or
   reflections) against MuJoCo's default look, same scene, same process; the ratio is printed.
2. Wall time to collect 10 scripted demos per MT10 task at 128 px with 2 worker processes (fresh cache).
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

from common.envs.metaworld import MT10, DemoSpec, MetaWorldEnv, collect_demos

RESULTS = Path(__file__).parent / "results"


def render_fps(fast: bool, frames: int) -> float:
    env = MetaWorldEnv("drawer-close-v3", image_size=128, fast_render=fast)
    env.reset(seed=0, episode=0)
    env.render()  # warm-up
    start = time.perf_counter()
    for _ in range(frames):
        env.render()
    fps = frames / (time.perf_counter() - start)
    env.close()
    return fps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer frames, 2 tasks x 2 demos")
    args = parser.parse_args()
    frames = 30 if args.quick else 200
    fast, default = render_fps(True, frames), render_fps(False, frames)
    tasks, per_task = (MT10[:2], 2) if args.quick else (MT10, 10)
    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        demos = collect_demos(DemoSpec(tasks=tasks, episodes_per_task=per_task), workers=2, cache_dir=cache)
        collect_s = time.perf_counter() - start
        info = demos.meta["info"]
    rows = [("render fps, fast recipe (128 px)", f"{fast:.1f}"), ("render fps, default look (128 px)", f"{default:.1f}"),
            ("fast / default", f"{fast / default:.1f}x"),
            (f"collect {per_task} demos x {len(tasks)} tasks, 2 workers (s)", f"{collect_s:.1f}"),
            ("frames collected", str(demos.num_frames)),
            ("scripted expert success", f"{info['expert_successes']}/{info['expert_attempts']}")]
    RESULTS.mkdir(exist_ok=True)
    name = "metaworld_speed_quick" if args.quick else "metaworld_speed"
    with open(RESULTS / f"{name}.csv", "w", newline="") as f:
        csv.writer(f).writerows([("metric", "value"), *rows])
    table = "\n".join(["| metric | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)])
    (RESULTS / f"{name}.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
