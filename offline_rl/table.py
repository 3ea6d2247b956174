"""The README's table: every algorithm × dataset × seed at each algorithm's `default` preset, in parallel processes;
D4RL-normalised scores (mean ± sample std over seeds) to results/table.{md,json}; each row records the commit and the
full config of its run.

    python offline_rl/table.py                                   # the default datasets, 3 seeds, 2 processes
    python offline_rl/table.py --datasets inverted_double_pendulum-medium-replay --seeds 0 1 2 3 4
    python offline_rl/table.py --algorithms iql td3_bc --extra --updates 1000   # flags passed to every run
    python offline_rl/table.py --report                          # only rewrite the table and figure from table.json

Besides results/table.md it draws results/table.png: a bar per algorithm and dataset (mean over seeds, the seeds
as dots) beside the dataset's own score (its mean episode return, normalised), the bar to clear. That score is read
from the dataset and recorded in results/data_scores.json, so `--report` redraws the whole table from the committed
results without the datasets on disk.
"""

from __future__ import annotations

import argparse
import importlib
import json
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from common.provenance import commit_label
from offline_rl.data import load_dataset
from offline_rl.runner import dataset_path

HERE = Path(__file__).parent
ALGORITHMS = ("bc", "td3_bc", "iql", "cql", "dt")
DATASETS_IN_TABLE = ("inverted_double_pendulum-medium", "inverted_double_pendulum-medium-replay",
                     "inverted_double_pendulum-medium-expert", "inverted_double_pendulum-expert")


def one(job: tuple[str, str, int, list[str]]) -> dict:
    algorithm, dataset, seed, extra = job
    module = importlib.import_module(f"offline_rl.{algorithm}")
    run_dir = HERE / "runs" / "table" / f"{algorithm}-{dataset}-s{seed}"
    results = module.main(["--dataset", dataset, "--seed", str(seed), "--run_dir", str(run_dir)] + extra)
    return dict(algorithm=algorithm, dataset=dataset, seed=seed, updates=results["config"]["updates"],
                score=results["final"]["score_mean"], seconds=results["seconds"], commit=commit_label(),
                config=results["config"])


def data_score(dataset: str) -> float | None:
    """The dataset's own normalised score (its mean episode return), or None without the file or its references."""
    try:
        ds = load_dataset(dataset_path(dataset))
        return float(ds.normalized_score(ds.episode_returns().mean()))
    except (FileNotFoundError, ValueError):
        return None


def data_scores(datasets: list[str], out: Path) -> dict[str, float | None]:
    """Each dataset's own score: read from the dataset where it is on disk (and recorded in <out>/data_scores.json),
    else the recorded one, else None."""
    path = out / "data_scores.json"
    recorded = json.loads(path.read_text()) if path.exists() else {}
    read = {d: data_score(d) for d in datasets}
    recorded.update({d: x for d, x in read.items() if x is not None})
    path.write_text(json.dumps(recorded, indent=1) + "\n")
    return {d: recorded.get(d) for d in datasets}


def report(rows: list[dict], out: Path) -> str:
    """results/table.md (mean ± sample std over seeds, the data's own score, the commits the rows came from) and
    results/table.png from the rows."""
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))  # the default ones first, in D4RL's order
    datasets.sort(key=lambda d: DATASETS_IN_TABLE.index(d) if d in DATASETS_IN_TABLE else len(DATASETS_IN_TABLE))
    algorithms = [a for a in ALGORITHMS if any(r["algorithm"] == a for r in rows)]
    scores = {(a, d): np.array([r["score"] for r in rows if r["algorithm"] == a and r["dataset"] == d])
              for a in algorithms for d in datasets}
    data = data_scores(datasets, out)
    lines = ["| algorithm | updates | " + " | ".join(datasets) + " |", "|---|---|" + "---|" * len(datasets)]
    for a in algorithms:
        cells = ["—" if len(x) == 0 else f"{x.mean():.1f} (1 seed)" if len(x) == 1 else
                 f"{x.mean():.1f} ± {x.std(ddof=1):.1f} ({len(x)} seeds)" for x in (scores[a, d] for d in datasets)]
        updates = next(r["updates"] for r in rows if r["algorithm"] == a)
        lines.append(f"| {a} | {updates:,} | " + " | ".join(cells) + " |")
    lines.append("| *the data* | | " + " | ".join("—" if data[d] is None else f"{data[d]:.1f}" for d in datasets)
                 + " |")
    commits = Counter(r.get("commit", "not recorded") for r in rows)
    lines += ["", "Commits of the runs: " + "; ".join(f"{c}: {n} runs" for c, n in commits.items())]
    table = "\n".join(lines)
    (out / "table.md").write_text(table + "\n")

    import matplotlib
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    width = 0.8 / len(algorithms)
    fig, ax = plt.subplots(figsize=(1.2 + 2.2 * len(datasets), 3.6))
    for i, a in enumerate(algorithms):
        xs = np.arange(len(datasets)) - 0.4 + (i + 0.5) * width
        means = [scores[a, d].mean() if len(scores[a, d]) else np.nan for d in datasets]
        ax.bar(xs, means, width, label=a, color=f"C{i}", alpha=0.8)
        for x, d in zip(xs, datasets):
            ax.plot([x] * len(scores[a, d]), scores[a, d], "k.", ms=3)
    for j, d in enumerate(datasets):
        if data[d] is not None:
            ax.hlines(data[d], j - 0.45, j + 0.45, colors="k", linestyles="--", lw=1,
                      label="the data" if j == 0 else None)
    ax.set_xticks(range(len(datasets)), [d.split("-", 1)[-1] if "-" in d else d for d in datasets])
    ax.set(ylabel="normalised score", title=f"{datasets[0].split('-')[0]}: mean over seeds (dots: seeds)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out / "table.png", dpi=120)
    plt.close(fig)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algorithms", nargs="+", default=list(ALGORITHMS))
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS_IN_TABLE))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--report", action="store_true", help="run nothing: rewrite the table and figure")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="flags passed to every run")
    args = parser.parse_args()
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    # merged with earlier rows (a re-run replaces the same algorithm, dataset and seed)
    rows = json.loads((out / "table.json").read_text()) if (out / "table.json").exists() else []
    if not args.report:
        jobs = [(a, d, s, args.extra) for a in args.algorithms for d in args.datasets for s in args.seeds]
        with ProcessPoolExecutor(args.workers) as pool:
            new = list(pool.map(one, jobs))
        done = {(r["algorithm"], r["dataset"], r["seed"]) for r in new}
        rows = [r for r in rows if (r["algorithm"], r["dataset"], r["seed"]) not in done] + new
        (out / "table.json").write_text(json.dumps(rows, indent=1))
    if not rows:
        raise SystemExit(f"no runs in {out / 'table.json'}: run table.py without --report first")
    print(report(rows, out))


if __name__ == "__main__":
    main()
