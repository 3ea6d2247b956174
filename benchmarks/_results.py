"""What the side-by-side benchmark scripts share: summarising alternating pairs of timings, and writing a result
table as Markdown (for the READMEs) and CSV (for plots) under benchmarks/results/."""

from __future__ import annotations

import csv
import datetime
import json
import platform
import statistics
from pathlib import Path
from typing import Any, Mapping, Sequence

from common.provenance import checkout

RESULTS = Path(__file__).parent / "results"
REPO = Path(__file__).resolve().parents[1]


def provenance(config: Mapping[str, Any]) -> dict[str, Any]:
    """What produced a result: the commit (and whether its Python files had uncommitted changes), the date, the
    versions and the full config."""
    import torch
    return dict(**checkout(), date=datetime.date.today().isoformat(), python=platform.python_version(),
                torch=torch.__version__, config=dict(config))


def stamp(config: Mapping[str, Any]) -> str:
    """`provenance` as one line for a table's header."""
    p = provenance(config)
    return (f"Produced at commit {p['commit']}{' (with uncommitted changes)' if p['dirty'] else ''} on {p['date']}, "
            f"torch {p['torch']}; config: `{json.dumps(p['config'], default=str)}`")


def paired_ratios(ours: Sequence[float], theirs: Sequence[float]) -> dict[str, float]:
    """Medians of each side and of the per-pair ratios ours/theirs, with the ratios' quartiles and range.

    A ratio is taken within each adjacent pair, so a drift in the machine's speed moves both sides of it alike."""
    ratios = sorted(a / b for a, b in zip(ours, theirs, strict=True))
    return dict(ours=statistics.median(ours), theirs=statistics.median(theirs), ratio=statistics.median(ratios),
                q1=ratios[len(ratios) // 4], q3=ratios[(3 * len(ratios)) // 4], lo=ratios[0], hi=ratios[-1])


def save_table(stem: str, header: str, columns: Sequence[str], rows: Sequence[Sequence[str]],
               csv_columns: Sequence[str], csv_rows: Sequence[Sequence], directory: Path = RESULTS) -> str:
    """Print and write `header` and a Markdown table to <directory>/<stem>.md, and `csv_rows` to <stem>.csv."""
    lines = [header, "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    table = "\n".join(lines)
    print(table)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{stem}.md").write_text(table + "\n")
    with open(directory / f"{stem}.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(csv_columns)
        writer.writerows(csv_rows)
    return table
