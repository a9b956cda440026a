"""Prove that a change left every result as it was: run one config in two checkouts and compare every output.

    python bench/compare_runs.py --before HEAD~1                # a git revision of this repository ...
    python bench/compare_runs.py --before /path/to/results_a --after /path/to/results_b   # ... or two results folders

A revision is checked out into a temporary git worktree and run there (``snakemake --configfile CONFIG``); the
working tree (tracked and untracked files, as ``git ls-files -co --exclude-standard`` lists them) is the default
``--after``. Then every CSV under both ``results/`` folders is compared cell by cell (same files, same columns,
same row order; strings equal, numbers equal up to ``--rtol``/``--atol``, NaN equal to NaN; the wall-clock column
``clips_per_s`` of training histories is left out), and so is every
numeric HDF5 dataset. It prints one line per file with the largest differences and exits 1 when anything differs.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def checkout(rev: str | None, dest: Path) -> Path:
    """A copy of this repository at ``rev`` (a git revision) or of the working tree (None) in ``dest``."""
    if rev is not None:
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(dest), rev], cwd=ROOT, check=True, capture_output=True
        )
        return dest
    files = (
        subprocess.run(
            ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True, check=True
        )
        .stdout.decode()
        .split("\0")
    )
    for rel in filter(None, files):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


def run(work: Path, config: str, cores: int) -> Path:
    snakemake = str(Path(sys.executable).parent / "snakemake")
    cmd = [snakemake, "--configfile", config, "--cores", str(cores), "--quiet", "rules"]
    print(f"running {' '.join(cmd[1:])} in {work}", flush=True)
    subprocess.run(cmd, cwd=work, check=True)
    return work / "results"


TIMING_COLUMNS = ("clips_per_s",)  # wall-clock measurements: they differ from run to run


def compare_csv(a: Path, b: Path, rtol: float, atol: float) -> str | None:
    """None when equal, else a description of the first difference and the largest numeric deviation."""
    da, db = pd.read_csv(a, keep_default_na=False), pd.read_csv(b, keep_default_na=False)
    da = da.drop(columns=[c for c in TIMING_COLUMNS if c in da.columns])
    db = db.drop(columns=[c for c in TIMING_COLUMNS if c in db.columns])
    if list(da.columns) != list(db.columns):
        return f"columns differ: {list(da.columns)} vs {list(db.columns)}"
    if len(da) != len(db):
        return f"{len(da)} rows vs {len(db)}"
    worst = 0.0
    for c in da.columns:
        x = pd.to_numeric(da[c].replace("", np.nan), errors="coerce")
        y = pd.to_numeric(db[c].replace("", np.nan), errors="coerce")
        numeric = (x.notna() | (da[c] == "")).all() and (y.notna() | (db[c] == "")).all()
        if numeric:
            x, y = x.to_numpy(np.float64), y.to_numpy(np.float64)
            same = (np.isnan(x) & np.isnan(y)) | np.isclose(x, y, rtol=rtol, atol=atol)
            fin = np.isfinite(x) & np.isfinite(y)
            if fin.any():
                worst = max(worst, float(np.max(np.abs(x[fin] - y[fin]))))
            if not same.all():
                i = int(np.flatnonzero(~same)[0])
                return f"column {c}, row {i}: {x[i]!r} vs {y[i]!r} ({int((~same).sum())} cells differ)"
        elif not (da[c].astype(str) == db[c].astype(str)).all():
            i = int(np.flatnonzero((da[c].astype(str) != db[c].astype(str)).to_numpy())[0])
            return f"column {c}, row {i}: {da[c].iloc[i]!r} vs {db[c].iloc[i]!r}"
    return None if worst == 0.0 else f"equal within tolerance (largest |difference| {worst:.3g})"


def compare_h5(a: Path, b: Path, rtol: float, atol: float) -> str | None:
    out = []

    def visit(name, obj):
        if not isinstance(obj, h5py.Dataset) or obj.dtype.kind not in "fiub":
            return
        if name not in fb:
            out.append(f"{name} missing")
            return
        x, y = obj[()], fb[name][()]
        if x.shape != y.shape:
            out.append(f"{name}: shape {x.shape} vs {y.shape}")
        elif not np.allclose(x, y, rtol=rtol, atol=atol, equal_nan=True):
            out.append(f"{name}: max |difference| {np.nanmax(np.abs(x.astype(float) - y.astype(float))):.3g}")

    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        fa.visititems(visit)
    return "; ".join(out) or None


def compare(before: Path, after: Path, rtol: float, atol: float) -> int:
    n_bad = 0
    for pattern, fn in (("*.csv", compare_csv), ("*.h5", compare_h5)):
        fa = {p.relative_to(before) for p in before.rglob(pattern)}
        fb = {p.relative_to(after) for p in after.rglob(pattern)}
        for rel in sorted(fa ^ fb):
            print(f"ONLY IN {'before' if rel in fa else 'after'}: {rel}")
            n_bad += 1
        for rel in sorted(fa & fb):
            msg = fn(before / rel, after / rel, rtol, atol)
            if msg is not None and not msg.startswith("equal"):
                n_bad += 1
                print(f"DIFFERS {rel}: {msg}")
            else:
                print(f"same    {rel}" + (f": {msg}" if msg else ""))
        print(f"{len(fa & fb)} {pattern} files compared")
    print("RESULT:", "identical" if n_bad == 0 else f"{n_bad} file(s) differ")
    return 1 if n_bad else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", required=True, help="git revision, or a results folder")
    ap.add_argument("--after", default=None, help="git revision or results folder (default: the working tree)")
    ap.add_argument("--config", default="configs/ci.yaml")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--rtol", type=float, default=1e-6, help="relative tolerance (float32 rounding)")
    ap.add_argument("--atol", type=float, default=1e-9)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="deepfeat-compare-") as tmp:
        tmp = Path(tmp)
        sides = []
        for name, spec in (("before", args.before), ("after", args.after)):
            if spec is not None and Path(spec).is_dir():
                sides.append(Path(spec))
                continue
            work = checkout(spec, tmp / name)
            try:
                sides.append(run(work, args.config, args.cores))
            except subprocess.CalledProcessError:
                print(f"the {name} run failed")
                return 2
        try:
            return compare(*sides, args.rtol, args.atol)
        finally:
            for name in ("before", "after"):
                if (tmp / name / ".git").is_file():  # a worktree: unregister it
                    subprocess.run(
                        ["git", "worktree", "remove", "--force", str(tmp / name)], cwd=ROOT, capture_output=True
                    )


if __name__ == "__main__":
    sys.exit(main())
