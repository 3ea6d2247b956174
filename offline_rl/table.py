"""The README's table: every algorithm × dataset × seed at each algorithm's `default` preset, in parallel processes;
D4RL-normalised scores (mean ± std over seeds) to results/table.{md,json}.

    python offline_rl/table.py                                   # the default datasets, 3 seeds, 2 processes
    python offline_rl/table.py --datasets inverted_double_pendulum-medium-replay --seeds 0 1 2 3 4
    python offline_rl/table.py --algorithms iql td3_bc --extra --updates 1000   # flags passed to every run
"""

from __future__ import annotations

import argparse
import importlib
import json
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
ALGORITHMS = ("bc", "td3_bc", "iql", "cql", "dt")
DATASETS = ("inverted_double_pendulum-medium", "inverted_double_pendulum-medium-replay")


def one(job: tuple[str, str, int, list[str]]) -> dict:
    algorithm, dataset, seed, extra = job
    module = importlib.import_module(f"offline_rl.{algorithm}")
    run_dir = HERE / "runs" / "table" / f"{algorithm}-{dataset}-s{seed}"
    results = module.main(["--dataset", dataset, "--seed", str(seed), "--run_dir", str(run_dir)] + extra)
    return dict(algorithm=algorithm, dataset=dataset, seed=seed, updates=results["config"]["updates"],
                score=results["final"]["score_mean"], seconds=results["seconds"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algorithms", nargs="+", default=list(ALGORITHMS))
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="flags passed to every run")
    args = parser.parse_args()
    jobs = [(a, d, s, args.extra) for a in args.algorithms for d in args.datasets for s in args.seeds]
    with ProcessPoolExecutor(args.workers) as pool:
        new = list(pool.map(one, jobs))
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    # merged with earlier rows (a re-run replaces the same algorithm, dataset and seed)
    old = json.loads((out / "table.json").read_text()) if (out / "table.json").exists() else []
    done = {(r["algorithm"], r["dataset"], r["seed"]) for r in new}
    rows = [r for r in old if (r["algorithm"], r["dataset"], r["seed"]) not in done] + new
    (out / "table.json").write_text(json.dumps(rows, indent=1))
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    lines = ["| algorithm | updates | " + " | ".join(datasets) + " |", "|---|---|" + "---|" * len(datasets)]
    for a in [a for a in ALGORITHMS if any(r["algorithm"] == a for r in rows)]:
        cells = []
        for d in datasets:
            scores = np.array([r["score"] for r in rows if r["algorithm"] == a and r["dataset"] == d])
            cells.append(f"{scores.mean():.1f} ± {scores.std():.1f} ({len(scores)} seeds)" if len(scores) else "—")
        updates = next(r["updates"] for r in rows if r["algorithm"] == a)
        lines.append(f"| {a} | {updates:,} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    (out / "table.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
