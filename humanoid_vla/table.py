"""The README's table: the IK expert, plain BC, BC + DAgger (the default run) and the MLP-head baseline on the embedded
G1 benchmark, several training seeds each; per-task success on held-out episodes (mean ± sample std over seeds),
falls per episode, and two probes of what a policy uses (black images; another task's instruction).

    python humanoid_vla/table.py                          # every run without a result file, then results/table.md
    python humanoid_vla/table.py --rows vla --seeds 0 1 2 --jobs 2
    python humanoid_vla/table.py --report                 # only rewrite results/table.md from the result files

Each run trains in its own process (`train.py` with the row's flags, the seed and a run directory under
results/runs/, not committed), is evaluated on the standard split and the probes, and writes results/<row>-s<seed>.json: the commit,
the full config, the seed, wall clock and per-task successes and falls. A run whose file exists is not run again; a
run whose training was interrupted resumes from its last checkpoint, and one whose training finished is only
evaluated.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

from common.provenance import commit_label

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
# row -> train.py flags (None: the expert, which is evaluated, not trained)
ROWS = {"expert": None, "bc": ["--dagger_rounds", "0"], "vla": [], "mlp": ["--head", "mlp"]}
LABELS = {"expert": "IK expert (privileged)", "bc": "VLA, BC only", "vla": "VLA, BC + DAgger (default)",
          "mlp": "MLP head, BC + DAgger"}
PROBES = {"standard": {}, "blank image": dict(blank_images=True), "other instruction": dict(other_instruction=True)}


def result_path(row: str, seed: int, out: Path = RESULTS) -> Path:
    return out / f"{row}-s{seed}.json"


def run(row: str, seed: int, extra: list[str], out: Path = RESULTS) -> None:
    """Train (unless the expert) and evaluate one (row, seed); write its result file. Runs in its own process."""
    import torch

    from common.config import parse_config, to_dict
    from common.envs.humanoid import ExpertPolicy, evaluate
    from common.train import last_checkpoint

    from humanoid_vla.config import PRESETS
    from humanoid_vla.eval import load_policy
    from humanoid_vla.model import ClosedLoopPolicy
    from humanoid_vla.train import eval_config, phase_ends, train

    torch.set_num_threads(1)
    code = commit_label()  # the code this process runs: read now, as HEAD may move while it trains
    changed = [*(ROWS[row] or []), *extra]  # what the row and the table's --extra set (not the seed or run_dir)
    flags = [*changed, "--seed", str(seed), "--run_dir", str(out / "runs" / f"{row}-s{seed}")]
    cfg = parse_config(PRESETS, flags)
    start = time.time()
    if ROWS[row] is None:
        policy, probes = ExpertPolicy(cfg.demo_image_size), {"standard": {}}
    else:
        done = last_checkpoint(cfg.run_dir)
        if done is None or int(done.name) < phase_ends(cfg)[-1]:  # an interrupted run continues where it stopped
            train(replace(cfg, eval_episodes=0, resume=done is not None))  # evaluated below, on every probe
        policy, probes = ClosedLoopPolicy(load_policy(cfg.run_dir)[0]), PROBES
    trained = time.time() - start
    evals = {}
    for name, overrides in probes.items():
        results = evaluate(policy, eval_config(cfg, **overrides))
        evals[name] = {task: dict(successes=r.successes, falls=r.falls, episodes=r.episodes)
                       for task, r in results.items()}
    out.mkdir(parents=True, exist_ok=True)
    result_path(row, seed, out).write_text(json.dumps(dict(
        row=row, seed=seed, commit=code, command=" ".join(["python humanoid_vla/train.py", *flags]),
        flags=changed,
        config=to_dict(cfg), train_seconds=trained, eval_seconds=time.time() - start - trained, evals=evals),
        indent=1))


def report(rows: list[str], out: Path = RESULTS) -> str:
    """results/table.md from every result file: per-task success (mean ± sample std over seeds), falls, probes."""
    files = {row: [json.loads(p.read_text()) for p in sorted(out.glob(f"{row}-s*.json"))] for row in rows}
    files = {row: runs for row, runs in files.items() if runs}
    if not files:
        raise SystemExit(f"no result files in {out}")
    tasks = list(next(iter(files.values()))[0]["evals"]["standard"])

    def rate(run: dict, probe: str, task: str | None = None) -> float | None:
        per_task = run["evals"].get(probe)
        if per_task is None:
            return None
        chosen = [per_task[task]] if task else list(per_task.values())
        return statistics.mean(r["successes"] / r["episodes"] for r in chosen)

    def cell(values: list[float | None]) -> str:
        values = [v for v in values if v is not None]
        if not values:
            return "—"
        if len(values) == 1:
            return f"{values[0]:.0%}"
        return f"{statistics.mean(values):.0%} ± {statistics.stdev(values):.0%}"

    header = ["row", "seeds", "mean success", "falls / episode", "black images", "other instruction", *tasks]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row, runs in files.items():
        falls = [sum(r["falls"] for r in run["evals"]["standard"].values()) /
                 sum(r["episodes"] for r in run["evals"]["standard"].values()) for run in runs]
        lines.append("| " + " | ".join([
            LABELS[row], ",".join(str(run["seed"]) for run in runs),
            f"**{cell([rate(run, 'standard') for run in runs])}**", f"{statistics.mean(falls):.2f}",
            cell([rate(run, "blank image") for run in runs]), cell([rate(run, "other instruction") for run in runs]),
            *(cell([rate(run, "standard", task) for run in runs]) for task in tasks)]) + " |")
    episodes = next(iter(files.values()))[0]["evals"]["standard"][tasks[0]]["episodes"]
    commits = sorted({run["commit"] for runs in files.values() for run in runs})
    where = out.resolve().relative_to(REPO) if out.resolve().is_relative_to(REPO) else out
    source = f"`{where}/*.json` (commits {', '.join(commits)})"
    if out.resolve() != RESULTS.resolve():  # an ablation: say what its runs changed
        flags = sorted({" ".join(run["flags"]) for runs in files.values() for run in runs})
        if any(flags):
            source += f", trained with `{'`; `'.join(flags)}`"
    table = (f"Success on held-out episodes (evaluation seed 1000, {episodes} per task), mean ± sample std over "
             f"training seeds; from {source}.\n\n"
             + "\n".join(lines))
    (out / "table.md").write_text(table + "\n")
    print(table)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, from {list(ROWS)}")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=1, help="runs side by side (each at one thread)")
    parser.add_argument("--report", action="store_true", help="only rewrite results/table.md")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where result files, run dirs and table.md go")
    parser.add_argument("--run", nargs=2, metavar=("ROW", "SEED"), help=argparse.SUPPRESS)  # one run, in this process
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="flags passed to every train.py")
    args = parser.parse_args()
    rows = args.rows.split(",")
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        raise SystemExit(f"unknown row(s) {unknown}; choose from {list(ROWS)}")
    if args.run:
        return run(args.run[0], int(args.run[1]), args.extra, args.out)
    if not args.report:
        todo = [(row, seed) for row in rows for seed in (args.seeds if ROWS[row] is not None else [0])
                if not result_path(row, seed, args.out).exists()]
        print(f"{len(todo)} runs to do, {args.jobs} at a time: {todo}")

        def one(job):
            row, seed = job
            subprocess.run([sys.executable, __file__, "--run", row, str(seed), "--out", str(args.out),
                            "--extra", *args.extra], check=True, cwd=REPO)

        with ThreadPoolExecutor(args.jobs) as pool:
            list(pool.map(one, todo))
    report(list(ROWS), args.out)  # every row with result files, not only the ones just run


if __name__ == "__main__":
    main()
