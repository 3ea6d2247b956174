"""The README's before → after table: each row fine-tunes one method's default imitation run with one algorithm, for
several RL seeds, and reports success on held-out placements before and after (Wilson intervals of the pooled
episodes), the watched tasks it was not trained on, and curves of the rollouts' success against environment steps.

    python online_rl/table.py                            # every run without a result file, then results/table.*
    python online_rl/table.py --rows pi0-ppo --seeds 0 1 2 --jobs 2
    python online_rl/table.py --report                   # only rewrite results/table.{md,csv,png} from result files
    python online_rl/table.py --rows bc-ppo --seeds 0 --out /tmp/quick --extra --iterations 2 --eval_episodes 2

Protocol. A row's start is its method's default run (`cd <folder> && python train.py <flags>`), trained once into
results/starts/ (not committed) and shared by the row's seeds: the seeds differ in the RL run alone (rollout
sampling, minibatch order, the RL heads' initialisation), as RLinf and πRL fine-tune one SFT checkpoint. Each RL run
is `train.py <algorithm>` with the row's flags, in its own process at one thread, into results/runs/ (not committed);
an interrupted run resumes exactly from its last checkpoint. Its result file results/<row>-s<seed>.json holds the
commit, the command, the full config, the start, the evaluations before and after (per task: successes / episodes;
driving: arrival, the PDM-style score, collisions) and the per-iteration curve (environment steps, rollout success,
KL to the start). A run whose file exists is not run again.

"Before" is the same deterministic evaluation of the same checkpoint for every seed (the report checks that it is);
it counts once in the intervals, "after" pools the seeds' episodes.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from common.metrics import wilson_interval
from common.provenance import commit_label

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results" / "table"
EVAL_EPISODES = "50"  # evaluation episodes per task (Meta-World) or scenario (driving), before and after


@dataclass(frozen=True)
class Row:
    label: str  # the table's name of the row
    folder: str  # the method folder whose default run is the start
    train_flags: tuple[str, ...]  # that run's train.py flags (beyond --run_dir / --threads): () = the default run
    algorithm: str  # online_rl/train.py's subcommand: "ppo" or "grpo"
    flags: tuple[str, ...] = ()  # the RL run's flags beyond the algorithm's defaults

    @property
    def start(self) -> str:
        """The start's name under results/starts/ (rows with the same method run share it)."""
        return "-".join([self.folder, *(f.lstrip("-") for f in self.train_flags)])


ROWS = {
    "pi0-ppo": Row("π0 + PPO (Flow-SDE)", "pi0", (), "ppo"),
    "bc-ppo": Row("BC + PPO", "bc", (), "ppo"),
    "oft-grpo": Row("OpenVLA-OFT + GRPO", "openvla", ("--variant", "oft"), "grpo"),
    # the settings of online_rl/results/ppo_driving (README: "Driving VLA + PPO")
    "driving-ppo": Row("driving VLA + PPO", "driving_vla", (), "ppo",
                       ("--env", "driving", "--tasks", "highway", "merge", "--reward", "score", "--envs_per_task", "8",
                        "--iterations", "30", "--lr", "1e-4")),
}


def result_path(row: str, seed: int, out: Path) -> Path:
    return out / f"{row}-s{seed}.json"


def start_dir(row: Row, out: Path) -> Path:
    return out / "starts" / row.start


def ensure_start(row: Row, out: Path, threads: int) -> None:
    """Train the row's start (the method's default run) unless a marker says it finished; an interrupted one
    resumes. The marker `<start>.json` stamps it (commit, command, minutes)."""
    run_dir = start_dir(row, out)
    marker = run_dir.with_suffix(".json")
    if marker.exists():
        return
    command = [sys.executable, "train.py", *row.train_flags, "--run_dir", str(run_dir.resolve()),
               "--threads", str(threads)]
    if (run_dir / "checkpoints" / "last").exists():
        command.append("--resume")
    print(f"training the start of {row.label}: cd {row.folder} && python {' '.join(command[1:])}", flush=True)
    code, begun = commit_label(), time.time()
    subprocess.run(command, cwd=REPO / row.folder, check=True)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(dict(commit=code, command=f"cd {row.folder} && python {' '.join(command[1:])}",
                                      minutes=(time.time() - begun) / 60), indent=1))


def rl_flags(name: str, seed: int, extra: list[str], out: Path) -> list[str]:
    """The RL run's flags: the row's, the table's, then `extra` (which override: argparse keeps the last)."""
    row = ROWS[name]
    return [*row.flags, "--policy", str(start_dir(row, out).resolve()),
            "--run_dir", str((out / "runs" / f"{name}-s{seed}").resolve()), "--seed", str(seed),
            "--eval_episodes", EVAL_EPISODES, "--threads", "1", "--workers", "1", *extra]


def run(name: str, seed: int, extra: list[str], out: Path) -> None:
    """One (row, seed) RL run, resumed if it was interrupted, and its result file. Runs in its own process."""
    import tyro

    from common.config import to_dict
    from common.train import last_checkpoint, read_metrics

    from online_rl import grpo, ppo

    row = ROWS[name]
    module = {"ppo": ppo, "grpo": grpo}[row.algorithm]
    code = commit_label()  # the code this process runs: read now, as HEAD may move while it trains
    flags = rl_flags(name, seed, extra, out)
    cfg = tyro.cli(module.PPOConfig if module is ppo else module.GRPOConfig, args=flags)
    if last_checkpoint(cfg.run_dir) is not None:
        cfg = tyro.cli(type(cfg), args=[*flags, "--resume"])
    begun = time.time()
    after = module.train(cfg)
    run_dir = Path(cfg.run_dir)
    before = json.loads((run_dir / "eval_before" / "summary.json").read_text())
    curve = [dict(iteration=m["step"], env_steps=m["env_steps"], success=m["success"], kl_start=m["kl_start"],
                  episode_return=m["episode_return"]) for m in read_metrics(run_dir)]
    marker = start_dir(row, out).with_suffix(".json")
    out.mkdir(parents=True, exist_ok=True)
    result_path(name, seed, out).write_text(json.dumps(dict(
        row=name, seed=seed, commit=code, command=" ".join(["python online_rl/train.py", row.algorithm, *flags]),
        algorithm=row.algorithm, config=to_dict(cfg),
        start=json.loads(marker.read_text()) if marker.exists() else dict(command="(given)"),
        minutes=(time.time() - begun) / 60, before=before, after=after, curve=curve), indent=1, default=float))


# ---------------------------------------------------------------------------------------------------- the report
def pooled(summaries: list[dict], tasks: list[str]) -> tuple[int, int]:
    """(successes, episodes) over `tasks` of every summary."""
    return (sum(round(s[t]["success_rate"] * s[t]["episodes"]) for s in summaries for t in tasks),
            sum(s[t]["episodes"] for s in summaries for t in tasks))


def rate(counts: tuple[int, int]) -> float:
    return counts[0] / counts[1]


def rate_cell(successes: int, episodes: int) -> str:
    low, high = wilson_interval(successes, episodes)
    return f"{successes / episodes:.0%} [{low:.2f}, {high:.2f}]"


def disjoint(a: tuple[int, int], b: tuple[int, int]) -> bool:
    (la, ha), (lb, hb) = wilson_interval(*a), wilson_interval(*b)
    return ha < lb or hb < la


def report(rows: list[str], out: Path = RESULTS) -> str:
    """results/table.{md,csv,png} from every result file of `rows`."""
    files = {name: [json.loads(p.read_text()) for p in sorted(out.glob(f"{name}-s*.json"))] for name in rows}
    files = {name: runs for name, runs in files.items() if runs}
    if not files:
        raise SystemExit(f"no result files in {out}")
    lines, csv_rows, notes = [], [], []
    header = ["row", "seeds", "trained tasks: before → after", "Δ (mean ± std over seeds)", "intervals disjoint",
              "watched tasks: before → after", "per task: before → after", "env steps per run", "minutes per run"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, runs in files.items():
        first = runs[0]
        trained, cfg = list(first["config"]["tasks"]), first["config"]
        watched = [t for t in first["before"] if t not in trained]
        if any(run["before"] != first["before"] for run in runs):
            notes.append(f"{ROWS[name].label}: the seeds' 'before' evaluations differ; seed {first['seed']}'s is shown")
        before = [first["before"]]
        afters = [run["after"] for run in runs]
        b, a = pooled(before, trained), pooled(afters, trained)
        deltas = [rate(pooled([run["after"]], trained)) - rate(b) for run in runs]
        per_task = "; ".join(f"{t.removesuffix('-v3')} {rate(pooled(before, [t])):.0%} → "
                             f"{rate(pooled(afters, [t])):.0%}" for t in trained + watched)
        watch_cell = "—"
        if watched:  # the bar: no watched task's success after leaves its interval before
            kept = all(wilson_interval(*pooled(before, [t]))[0] <= rate(pooled(afters, [t]))
                       <= wilson_interval(*pooled(before, [t]))[1] for t in watched)
            watch_cell = (f"{rate_cell(*pooled(before, watched))} → {rate_cell(*pooled(afters, watched))} "
                          f"({'each inside' if kept else 'not all inside'} its interval before)")
        if cfg["env"] == "driving":  # the benchmark's score beside the arrival rate
            score_after = statistics.mean(run["after"][t]["score"] for run in runs for t in trained)
            per_task += (f"; PDM-style score {statistics.mean(first['before'][t]['score'] for t in trained):.2f} → "
                         f"{score_after:.2f}")
        delta = f"{statistics.mean(deltas) * 100:+.0f}"
        if len(deltas) > 1:
            delta += f" ± {statistics.stdev(deltas) * 100:.0f}"
        lines.append("| " + " | ".join([
            ROWS[name].label, ",".join(str(run["seed"]) for run in runs), f"**{rate_cell(*b)} → {rate_cell(*a)}**",
            f"{delta} pts", "yes" if disjoint(b, a) else "no", watch_cell, per_task,
            f"{statistics.mean(sum(c['env_steps'] for c in run['curve']) for run in runs):,.0f}",
            f"{statistics.mean(run['minutes'] for run in runs):.0f}"]) + " |")
        for run in runs:
            for phase in ("before", "after"):
                for task, r in run[phase].items():
                    csv_rows.append(dict(row=name, seed=run["seed"], phase=phase, task=task,
                                         trained=task in trained, success_rate=r["success_rate"],
                                         episodes=r["episodes"], score=r.get("score", ""), commit=run["commit"]))
    commits = sorted({run["commit"] for runs in files.values() for run in runs})
    episodes = next(iter(files.values()))[0]["config"]["eval_episodes"]
    table = (f"Online RL from each method's default imitation run: success on held-out placements (Meta-World "
             f"evaluation seed 1000; driving: the benchmark's evaluation seeds, success = arrival), {episodes} episodes "
             f"per task, before → after, with the 95% Wilson interval (before: one evaluation, the same for every "
             f"seed; after: the seeds' episodes pooled). Δ: after − before per seed. Watched tasks are evaluated, never "
             f"trained on. From `{out.resolve().relative_to(REPO) if out.resolve().is_relative_to(REPO) else out}"
             f"/*.json` (commits {', '.join(commits)}); regenerate: `python online_rl/table.py`.\n\n"
             + "\n".join(lines) + "".join(f"\n\nNote: {note}" for note in notes))
    (out / "table.md").write_text(table + "\n")
    with open(out / "table.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(csv_rows[0]))
        writer.writeheader()
        writer.writerows(csv_rows)
    plot_curves(files, out / "table.png")
    print(table)
    return table


def plot_curves(files: dict[str, list[dict]], path: Path) -> None:
    """One panel per row: the rollouts' success per iteration against cumulative environment steps, a line per
    seed, the evaluation before (dashed) and after (dots, per seed) on the trained tasks."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(files), figsize=(4.2 * len(files), 3.2), squeeze=False)
    for ax, (name, runs) in zip(axes[0], files.items()):
        trained = list(runs[0]["config"]["tasks"])
        for run in runs:
            steps, total = [], 0
            for point in run["curve"]:
                total += point["env_steps"]
                steps.append(total)
            line, = ax.plot(steps, [p["success"] for p in run["curve"]], lw=1.2, label=f"seed {run['seed']}")
            s, n = pooled([run["after"]], trained)
            ax.plot([steps[-1]], [s / n], "o", color=line.get_color())
        s, n = pooled([runs[0]["before"]], trained)
        ax.axhline(s / n, ls="--", color="gray", lw=1, label="before (evaluation)")
        ax.set(title=ROWS[name].label, xlabel="environment steps", ylim=(-0.02, 1.02))
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("success (rollouts; dots: evaluation after)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, from {list(ROWS)}")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=1, help="runs side by side (each at one thread)")
    parser.add_argument("--report", action="store_true", help="only rewrite the table from the result files")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where result files, starts, runs and the table go")
    parser.add_argument("--run", nargs=2, metavar=("ROW", "SEED"), help=argparse.SUPPRESS)  # one run, in this process
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="flags passed to every RL train.py")
    args = parser.parse_args()
    rows = args.rows.split(",")
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        raise SystemExit(f"unknown row(s) {unknown}; choose from {list(ROWS)}")
    if args.run:
        return run(args.run[0], int(args.run[1]), args.extra, args.out)
    if not args.report:
        todo = [(name, seed) for name in rows for seed in args.seeds if not result_path(name, seed, args.out).exists()]
        starts = list({ROWS[name].start: ROWS[name] for name, _ in todo}.values())
        print(f"{len(starts)} starts to check, {len(todo)} runs to do, {args.jobs} at a time: {todo}", flush=True)
        with ThreadPoolExecutor(args.jobs) as pool:
            list(pool.map(lambda row: ensure_start(row, args.out, threads=1 if args.jobs > 1 else 2), starts))
            list(pool.map(lambda job: subprocess.run(
                [sys.executable, __file__, "--run", job[0], str(job[1]), "--out", str(args.out), "--extra",
                 *args.extra], check=True, cwd=REPO), todo))
    report(list(ROWS), args.out)  # every row with result files, not only the ones just run


if __name__ == "__main__":
    main()
