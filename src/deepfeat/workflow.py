"""Helpers the Snakefile uses to expand the grid and to make package code changes trigger reruns.

Kept here (not in the .smk files) so that they are unit-tested without Snakemake.
"""
from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def task_names(ds: dict) -> list[str]:
    return [t["name"] for t in ds["tasks"]]


def check_dataset(name: str, ds: dict, root: Path) -> None:
    """Semantic checks the JSON schema cannot express; raise ValueError naming the key."""
    names = task_names(ds)
    if len(set(names)) != len(names):
        raise ValueError(f"datasets.{name}.tasks: task names must be unique, got {names}")
    if ds["main_task"] not in names:
        raise ValueError(f"datasets.{name}.main_task: '{ds['main_task']}' is not one of the tasks {names}")
    main = next(t for t in ds["tasks"] if t["name"] == ds["main_task"])
    if main["type"] != "classification":
        raise ValueError(f"datasets.{name}.main_task: the main task must be a classification task")
    if "render" not in ds:
        if "path" not in ds:
            raise ValueError(f"datasets.{name}: give either 'path' (your data) or 'render' (built-in demo data)")
        p = Path(ds["path"])
        p = p if p.is_absolute() else root / p
        if not p.is_dir():
            raise ValueError(f"datasets.{name}.path: folder '{ds['path']}' does not exist")
        marker = p / ("examples.json" if ds["format"] == "nsynth" else ds.get("recordings", {}).get("metadata", "metadata.csv"))
        if not marker.is_file():
            raise ValueError(f"datasets.{name}.path: '{marker}' not found (format '{ds['format']}' needs it)")
    else:
        want = {"notes": "nsynth", "scores": "recordings", "ensembles": "recordings"}[ds["render"]["kind"]]
        if ds["format"] != want:
            raise ValueError(f"datasets.{name}.format: render kind '{ds['render']['kind']}' produces '{want}' data")


def train_tasks(ds: dict, models: dict) -> list[str]:
    """Tasks the networks are trained on: 'main', 'all', or an explicit list (validated)."""
    sel = models.get("train_tasks", "main")
    names = task_names(ds)
    if sel == "main":
        return [ds["main_task"]]
    if sel == "all":
        return names
    bad = [t for t in sel if t not in names]
    if bad:
        raise ValueError(f"models.train_tasks: {bad} not among the tasks {names}")
    return list(sel)


@lru_cache(maxsize=None)
def code_hash(*modules: str) -> str:
    """SHA-256 (first 16 hex) of the named package modules (plus io.py, which every stage uses).

    Passed to rules as ``params.code`` so that editing the code a rule runs (and only that code) reruns it:
    Snakemake reruns a job whose params changed, while for ``script:`` rules it only looks at the script.
    """
    h = hashlib.sha256()
    for m in sorted(set(modules) | {"io"}):
        p = PACKAGE_DIR / (m.replace(".", "/") + ".py")
        h.update(m.encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def export_pythonpath(src: str) -> None:
    """Put ``src`` first on PYTHONPATH so every job (local, conda env, SLURM job step) imports this checkout."""
    parts = [src] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != src]
    os.environ["PYTHONPATH"] = os.pathsep.join(parts)
