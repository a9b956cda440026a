"""The clip table: per-clip metadata, task labels and the train/test split, stored in ``clips.h5`` and copied
unchanged into every later HDF5 file that has one row per clip (``mel.h5``, ``handcrafted.h5``, ...).

Layout: ``meta/{clip_id,recording,offset,split}`` (split 0 train, 1 test) and ``labels/<task>`` (int64 class
codes with attribute ``classes``, a JSON list in :func:`natural_key` order, or float64 values), with attributes
``labels.tasks`` (JSON list of {name, type, label}) and ``labels.main_task``.
"""

from __future__ import annotations

import json
import re

import h5py
import numpy as np
import pandas as pd

from deepfeat.formats.files import STR, decode, open_h5

TRAIN, TEST = 0, 1


def natural_key(s) -> tuple:
    """Sort key of labels and display values: numbers by value ("2.5" < "10"), other strings with their digit
    runs compared as numbers ("class2" < "class10")."""
    s = str(s)
    try:
        return (0, float(s), ())
    except ValueError:
        parts = re.split(r"(\d+)", s)
        return (1, 0.0, tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts))


def write_clip_table(f: h5py.File, meta: pd.DataFrame, tasks: list[dict], main_task: str) -> None:
    """Store per-clip metadata and labels.

    ``meta`` has columns clip_id, recording, offset, split (0 train, 1 test) and one column per task
    (strings/ints for classification, numbers for regression).
    """
    g = f.create_group("meta")
    g.create_dataset("clip_id", data=meta["clip_id"].astype(str).to_numpy(dtype=object), dtype=STR)
    g.create_dataset("recording", data=meta["recording"].astype(str).to_numpy(dtype=object), dtype=STR)
    g.create_dataset("offset", data=meta["offset"].to_numpy(dtype=np.float64))
    g.create_dataset("split", data=meta["split"].to_numpy(dtype=np.uint8))
    lg = f.create_group("labels")
    for t in tasks:
        col = meta[t["name"]]
        if t["type"] == "classification":
            classes = sorted(pd.unique(col.astype(str)), key=natural_key)
            lut = {c: i for i, c in enumerate(classes)}
            d = lg.create_dataset(t["name"], data=col.astype(str).map(lut).to_numpy(dtype=np.int64))
            d.attrs["classes"] = json.dumps(classes)
        else:
            d = lg.create_dataset(t["name"], data=col.to_numpy(dtype=np.float64))
        d.attrs["type"] = t["type"]
    lg.attrs["tasks"] = json.dumps([{k: t[k] for k in ("name", "type", "label") if k in t} for t in tasks])
    lg.attrs["main_task"] = main_task


def copy_clip_table(src: h5py.File, dst: h5py.File) -> None:
    """Copy the clip table of one open file into another."""
    src.copy(src["meta"], dst, "meta")
    src.copy(src["labels"], dst, "labels")


def read_clip_table(f: h5py.File) -> tuple[pd.DataFrame, list[dict], str]:
    """Inverse of :func:`write_clip_table`: (DataFrame with decoded labels and ``<task>_code`` columns, tasks
    (each with ``classes`` for classification), main task)."""
    m = f["meta"]
    df = pd.DataFrame(
        {
            "clip_id": m["clip_id"].asstr()[:],
            "recording": m["recording"].asstr()[:],
            "offset": m["offset"][:],
            "split": m["split"][:],
        }
    )
    tasks = json.loads(f["labels"].attrs["tasks"])
    for t in tasks:
        d = f["labels"][t["name"]]
        if t["type"] == "classification":
            classes = json.loads(d.attrs["classes"])
            codes = d[:]
            df[t["name"] + "_code"] = codes
            df[t["name"]] = np.asarray(classes, dtype=object)[codes]
            t["classes"] = classes
        else:
            df[t["name"]] = d[:]
    return df, tasks, decode(f["labels"].attrs["main_task"])


def task_targets(f: h5py.File, task: str) -> tuple[np.ndarray, dict]:
    """(targets, task dict) for one task: int64 codes or float64 values."""
    d = f["labels"][task]
    info = {"name": task, "type": decode(d.attrs["type"])}
    if info["type"] == "classification":
        info["classes"] = json.loads(d.attrs["classes"])
    return d[:], info


def class_lists(f: h5py.File) -> dict[str, list[str]]:
    """{task: class names} of the classification tasks of an open file's clip table."""
    return {name: json.loads(d.attrs["classes"]) for name, d in f["labels"].items() if "classes" in d.attrs}


def read_labels(path) -> tuple[np.ndarray, list[dict], str]:
    """(split (N,) uint8, tasks each with ``y`` (codes or values) and ``classes``, main task) of the clip table of
    ``mel.h5``, checked: both splits present, finite regression targets."""
    with open_h5(path, "mel") as f:
        df, tasks, main = read_clip_table(f)
    split = df["split"].to_numpy()
    bad = ~np.isin(split, (TRAIN, TEST))
    if bad.any():
        raise ValueError(f"{path}: meta/split must be 0 (train) or 1 (test); found {sorted(set(split[bad]))}")
    if not (split == TRAIN).any() or not (split == TEST).any():
        raise ValueError(
            f"{path}: the split needs both train and test clips "
            f"({int((split == TRAIN).sum())} train, {int((split == TEST).sum())} test)"
        )
    for t in tasks:
        if t["type"] == "classification":
            t["y"] = df[t["name"] + "_code"].to_numpy(dtype=np.int64)
        elif t["type"] == "regression":
            t["y"] = df[t["name"]].to_numpy(dtype=np.float64)
            if not np.isfinite(t["y"]).all():
                raise ValueError(f"{path}: labels/{t['name']} has NaN or infinite values")
        else:
            raise ValueError(f"{path}: labels/{t['name']} has unknown type {t['type']!r}")
    return split, tasks, main


def train_mask(path, minimum: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(training-row mask, clip ids) of the clip table of ``mel.h5``; at least ``minimum`` training clips."""
    with open_h5(path, "mel") as f:
        ids = f["meta"]["clip_id"].asstr()[:]
        split = f["meta"]["split"][:]
    train = split == TRAIN
    if train.sum() < minimum:
        raise ValueError(f"{path}: only {int(train.sum())} training clips (split 0); at least {minimum} are needed")
    return train, ids


def check_clip_ids(f: h5py.File, path, clip_ids: np.ndarray, reference) -> None:
    """A file that carries a copy of the clip table must list the clips of ``reference`` in the same order."""
    if "meta" in f and "clip_id" in f["meta"]:
        ids = f["meta"]["clip_id"].asstr()[:]
        if len(ids) != len(clip_ids) or not np.array_equal(ids, clip_ids):
            raise ValueError(
                f"{path}: its clip table does not match {reference} (different clips or order); "
                "rebuild it from that file"
            )


def seeded_subset(n: int, m: int, seed: int, stream: int | None = None) -> np.ndarray:
    """Sorted positions of ``m`` of ``n`` items drawn without replacement (all of them when m >= n), from
    ``numpy.random.default_rng(seed)`` or, with a ``stream`` number, ``default_rng([seed, stream])`` (so that
    subsets drawn for different purposes from one seed are independent)."""
    if m >= n:
        return np.arange(n)
    rng = np.random.default_rng(int(seed) if stream is None else [int(seed), int(stream)])
    return np.sort(rng.choice(n, size=m, replace=False))
