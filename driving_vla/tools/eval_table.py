"""Regenerate `results/eval_tiny.md`, the README's driving table, from the per-episode rows in `results/eval_tiny.json`.

    python driving_vla/tools/eval_table.py            # rewrites results/eval_tiny.md
    python driving_vla/tools/eval_table.py --check    # exits 1 if the committed table differs from its rows

`eval_tiny.json` maps each method's row name to the per-episode results of its evaluation (each run's `eval.json`,
written by `train.py` / `eval.py`, with the expert's episodes under "expert"); every number in the table is computed
here from those rows (mean ± population std over the episodes, like `eval.py`'s own `eval.md`), so the table cannot
drift from them. `tests/test_driving_vla.py` holds the committed table equal to `render` of its rows.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for `common` and `driving_vla`

from common.envs import highway as hw  # noqa: E402
from driving_vla.rollouts import cell, table as per_scenario_table  # noqa: E402

RESULTS = Path(__file__).resolve().parents[1] / "results"
SHORT = {"intersection-left": "int. left", "intersection-straight": "int. straight",
         "intersection-right": "int. right"}
PIVOTS = (("score", "PDM-style score"), ("collision", "Collision rate"), ("ep", "EP"))  # one table per metric
OVERALL = (("collision", "collision"), ("score", "PDM-style score"), ("ep", "EP"), ("progress", "progress [m]"),
           ("drivable", "DAC"), ("ttc", "TTC ok"), ("comfort", "comfort"), ("arrived", "arrived"))


def render(results: dict[str, list[dict]]) -> str:
    scenarios = list(dict.fromkeys(r["scenario"] for rows in results.values() for r in rows))
    aggregates = {method: hw.aggregate(rows) for method, rows in results.items()}
    episodes = {len(rows) for rows in results.values()}
    per_scenario = {len([r for r in rows if r["scenario"] == scenarios[0]]) for rows in results.values()}
    if len(episodes) != 1 or len(per_scenario) != 1:
        raise ValueError(f"every method needs the same episodes; got {episodes} in all, {per_scenario} per scenario")
    n = per_scenario.pop()
    lines = [f"# driving_vla tiny preset, {n} held-out seeds per scenario (generated from the runs' eval*.json)"]
    for metric, title in PIVOTS:
        lines += ["", f"## {title}", "",
                  "| method | " + " | ".join(SHORT.get(s, s) for s in scenarios) + " | **all** |",
                  "|---|" + "---|" * (len(scenarios) + 1)]
        for method, agg in aggregates.items():
            cells = [cell(metric, agg[s][metric]) for s in scenarios]
            lines.append(f"| {method} | " + " | ".join(cells) + f" | **{cell(metric, agg['all'][metric])}** |")
    lines += ["", "## All metrics", "",
              f"| method (all {episodes.pop()} episodes) | " + " | ".join(name for _, name in OVERALL) + " |",
              "|---|" + "---|" * len(OVERALL)]
    for method, agg in aggregates.items():
        lines.append(f"| {method} | " + " | ".join(cell(k, agg["all"][k]) for k, _ in OVERALL) + " |")
    lines += ["", "## Per scenario, every metric", "", per_scenario_table(results, scenarios)]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=Path, default=RESULTS / "eval_tiny.json")
    parser.add_argument("--out", type=Path, default=RESULTS / "eval_tiny.md")
    parser.add_argument("--check", action="store_true", help="compare with --out instead of writing it")
    args = parser.parse_args()
    text = render(json.loads(args.rows.read_text()))
    if args.check:
        if not args.out.exists() or args.out.read_text() != text:
            raise SystemExit(f"{args.out} differs from the table of {args.rows}: run {Path(__file__).name}")
        print(f"{args.out} is the table of {args.rows}")
        return
    args.out.write_text(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
