"""Speed of the embedded Meta-World suite: rendering recipe and demo collection, measured side by side in one run.

    python benchmarks/metaworld_speed.py            # writes results/metaworld_speed.{csv,md}
    python benchmarks/metaworld_speed.py --quick    # smaller smoke version

1. Time per frame of MetaWorldEnv.render() at 128 px with the fast recipe (no multisampling, shadows or
   reflections) against MuJoCo's default look, same scene, same process. Both environments stay open and the two
   recipes alternate in blocks of frames (which one goes first alternating too); a ratio fast / default is taken
   within each adjacent pair of blocks and the median reported, so the drifting speed of this shared machine
   moves both sides of every ratio alike (the two recipes used to be timed one after the other).
2. Wall time to collect 10 scripted demos per MT10 task at 128 px with 2 worker processes (fresh cache).
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

from _results import paired_ratios, stamp
from common.envs.metaworld import MT10, DemoSpec, MetaWorldEnv, collect_demos

RESULTS = Path(__file__).parent / "results"


CAMERA = "corner"


def render_ms(pairs: int, block: int) -> dict[str, float]:
    """Milliseconds per frame of the fast recipe and of the default look, blocks of `block` frames alternating;
    `paired_ratios` of them (fast / default, per adjacent pair of blocks)."""
    envs = {fast: MetaWorldEnv("drawer-close-v3", image_size=128, fast_render=fast) for fast in (True, False)}
    for env in envs.values():
        env.reset(seed=0, episode=0)
        env.render(CAMERA)  # warm-up

    def timed(fast: bool) -> float:
        start = time.perf_counter()
        for _ in range(block):
            envs[fast].render(CAMERA)
        return (time.perf_counter() - start) * 1e3 / block
    fast_ms, default_ms = [], []
    for i in range(pairs):
        if i % 2 == 0:
            fast_ms.append(timed(True))
            default_ms.append(timed(False))
        else:
            default_ms.append(timed(False))
            fast_ms.append(timed(True))
    for env in envs.values():
        env.close()
    return paired_ratios(fast_ms, default_ms)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer frames, 2 tasks x 2 demos")
    args = parser.parse_args()
    pairs, block = (6, 5) if args.quick else (20, 10)
    render = render_ms(pairs, block)
    tasks, per_task = (MT10[:2], 2) if args.quick else (MT10, 10)
    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        demos = collect_demos(DemoSpec(tasks=tasks, episodes_per_task=per_task), workers=2, cache_dir=cache)
        collect_s = time.perf_counter() - start
        info = demos.meta["info"]
    rows = [("render ms per frame, fast recipe (128 px, median)", f"{render['ours']:.1f}"),
            ("render ms per frame, default look (128 px, median)", f"{render['theirs']:.1f}"),
            (f"fast / default in time, median over {pairs} alternating pairs of {block}-frame blocks (lower is "
             f"better)", f"{render['ratio']:.3f}x (interquartile {render['q1']:.3f}-{render['q3']:.3f})"),
            (f"collect {per_task} demos x {len(tasks)} tasks, 2 workers (s)", f"{collect_s:.1f}"),
            ("frames collected", str(demos.num_frames)),
            ("scripted expert success", f"{info['expert_successes']}/{info['expert_attempts']}")]
    RESULTS.mkdir(exist_ok=True)
    name = "metaworld_speed_quick" if args.quick else "metaworld_speed"
    with open(RESULTS / f"{name}.csv", "w", newline="") as f:
        csv.writer(f).writerows([("metric", "value"), *rows])
    table = "\n".join([stamp(dict(vars(args), pairs=pairs, block=block, seed=0)), "", "| metric | value |", "|---|---|",
                       *(f"| {k} | {v} |" for k, v in rows)])
    (RESULTS / f"{name}.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
