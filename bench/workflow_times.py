"""Where the time of a workflow run went: per-rule job counts and seconds from Snakemake's benchmark files.

Every rule writes ``benchmarks/<dataset>/<rule>[/...].tsv`` (Snakemake's ``benchmark:`` directive: wall seconds,
peak RSS, ...). This sums them per rule, largest first, and estimates the wall time on ``--cores`` cores when the
jobs pack perfectly (the real wall time is printed by Snakemake at the end of its log: "Elapsed time").

    .venv/bin/python bench/workflow_times.py                  # ./benchmarks of the last run
    .venv/bin/python bench/workflow_times.py path/to/benchmarks --cores 2
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd


def collect(root: Path) -> pd.DataFrame:
    """One row per benchmark file: dataset, rule, seconds, max_rss (MB)."""
    rows = []
    for f in sorted(root.rglob("*.tsv")):
        parts = f.relative_to(root).parts
        dataset, rule = (parts[0], parts[1].removesuffix(".tsv")) if len(parts) > 1 else ("", parts[0][:-4])
        t = pd.read_csv(f, sep="\t")
        if len(t):
            rss = pd.to_numeric(t["max_rss"], errors="coerce").iloc[-1] if "max_rss" in t else float("nan")
            rows.append({"dataset": dataset, "rule": rule, "seconds": float(t["s"].iloc[-1]), "max_rss_mb": rss})
    return pd.DataFrame(rows, columns=["dataset", "rule", "seconds", "max_rss_mb"])


def summarise(df: pd.DataFrame) -> pd.DataFrame:
    g = df.groupby("rule")
    out = pd.DataFrame(
        {
            "jobs": g.size(),
            "total_s": g["seconds"].sum(),
            "mean_s": g["seconds"].mean(),
            "max_s": g["seconds"].max(),
            "peak_rss_mb": g["max_rss_mb"].max(),
        }
    )
    return out.sort_values("total_s", ascending=False).round(1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("benchmarks", nargs="?", default="benchmarks", help="the run's benchmarks folder")
    ap.add_argument("--cores", type=int, default=2, help="cores of the run, for the packed-wall-time estimate")
    a = ap.parse_args(argv)
    root = Path(a.benchmarks)
    df = collect(root) if root.is_dir() else pd.DataFrame()
    if df.empty:
        print(f"no benchmark files under {root}: run the workflow first", file=sys.stderr)
        return 1
    s = summarise(df)
    print(s.to_string())
    total = s["total_s"].sum()
    print(
        f"\n{int(s['jobs'].sum())} jobs, {total:.0f} job-seconds = {total / 60:.1f} min; on {a.cores} cores at best "
        f"{total / a.cores / 60:.1f} min of wall time"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
