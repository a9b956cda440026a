"""File helpers shared by every stage: atomic writes, validated HDF5 reading, clip tables, devices, logging.

Every output is written to a temporary file beside its target and renamed into place only when complete,
so a killed job never leaves a file that looks finished. HDF5 outputs additionally carry the root attribute
``deepfeat_complete = True`` (set last) and ``deepfeat_kind``; :func:`open_h5` refuses files without it.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np
import pandas as pd

COMPLETE_ATTR = "deepfeat_complete"
KIND_ATTR = "deepfeat_kind"
STR = h5py.string_dtype("utf-8")


class CorruptOutputError(RuntimeError):
    """An input file exists but is incomplete, truncated or of the wrong kind."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it to ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or ".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def write_h5(path: str | os.PathLike, kind: str) -> Iterator[h5py.File]:
    """Open a new HDF5 file for writing atomically; marks it complete (and of ``kind``) on success."""
    with atomic_path(path, suffix=".h5") as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs[KIND_ATTR] = kind
            f.attrs["deepfeat_version"] = _version()
            yield f
            f.attrs[COMPLETE_ATTR] = True


def open_h5(path: str | os.PathLike, kind: str | None = None) -> h5py.File:
    """Open a deepfeat HDF5 output for reading, refusing truncated, unfinished or foreign files."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        f = h5py.File(path, "r")
    except OSError as e:  # truncated or not HDF5 at all
        raise CorruptOutputError(f"{path}: not a readable HDF5 file ({e}); delete it and rerun") from e
    if not f.attrs.get(COMPLETE_ATTR, False):
        f.close()
        raise CorruptOutputError(f"{path}: incomplete (written by a job that did not finish); delete it and rerun")
    if kind is not None and f.attrs.get(KIND_ATTR) != kind:
        got = f.attrs.get(KIND_ATTR)
        f.close()
        raise CorruptOutputError(f"{path}: expected a deepfeat '{kind}' file, found '{got}'")
    return f


def write_csv(df: pd.DataFrame, path: str | os.PathLike, **kw) -> None:
    """Write a table atomically (CSV, or Markdown when the path ends in .md)."""
    path = Path(path)
    with atomic_path(path, suffix=path.suffix) as tmp:
        if path.suffix == ".md":
            tmp.write_text(df.to_markdown(index=False, **kw) + "\n")
        else:
            df.to_csv(tmp, index=False, **kw)


def write_json(obj, path: str | os.PathLike) -> None:
    with atomic_path(path, suffix=".json") as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def _version() -> str:
    from deepfeat import __version__

    return __version__


# ----------------------------------------------------------------------------------------------------------
# Clip tables: the per-clip metadata that travels with clips.h5 and mel.h5
# ----------------------------------------------------------------------------------------------------------
TRAIN, TEST = 0, 1


def write_clip_table(f: h5py.File, meta: pd.DataFrame, tasks: list[dict], main_task: str) -> None:
    """Store per-clip metadata and labels.

    ``meta`` has columns clip_id, recording, offset, split (0 train, 1 test) and one column per task
    (strings/ints for classification, numbers for regression). Layout:
    ``meta/{clip_id,recording,offset,split}``, ``labels/{task}`` (int64 class codes with attr ``classes``,
    or float64 values), attrs ``labels.tasks`` (JSON list of {name,type,label}) and ``labels.main_task``.
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
            classes = sorted(pd.unique(col.astype(str)), key=_natural_key)
            lut = {c: i for i, c in enumerate(classes)}
            d = lg.create_dataset(t["name"], data=col.astype(str).map(lut).to_numpy(dtype=np.int64))
            d.attrs["classes"] = json.dumps(classes)
        else:
            d = lg.create_dataset(t["name"], data=col.to_numpy(dtype=np.float64))
        d.attrs["type"] = t["type"]
    lg.attrs["tasks"] = json.dumps([{k: t[k] for k in ("name", "type", "label") if k in t} for t in tasks])
    lg.attrs["main_task"] = main_task


def copy_clip_table(src: h5py.File, dst: h5py.File) -> None:
    src.copy(src["meta"], dst, "meta")
    src.copy(src["labels"], dst, "labels")


def read_clip_table(f: h5py.File) -> tuple[pd.DataFrame, list[dict], str]:
    """Inverse of :func:`write_clip_table`: (DataFrame with decoded labels and ``<task>_code`` columns, tasks, main)."""
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
    return df, tasks, str(f["labels"].attrs["main_task"])


def task_targets(f: h5py.File, task: str) -> tuple[np.ndarray, dict]:
    """(targets, task dict) for one task: int64 codes or float64 values."""
    d = f["labels"][task]
    info = {"name": task, "type": d.attrs["type"]}
    if info["type"] == "classification":
        info["classes"] = json.loads(d.attrs["classes"])
    return d[:], info


def _natural_key(s: str):
    try:
        return (0, float(s), s)
    except ValueError:
        return (1, 0.0, s)


# ----------------------------------------------------------------------------------------------------------
# Devices and logging
# ----------------------------------------------------------------------------------------------------------
def pick_device(name: str = "auto"):
    """'auto' -> CUDA when available, else CPU. 'cuda' without a GPU is an error, not a silent fallback."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but torch sees no CUDA device")
    return torch.device(name)


def get_logger(log_path: str | os.PathLike | None = None, name: str = "deepfeat") -> logging.Logger:
    """A logger writing to the rule's log file (and stderr), one line per event with a timestamp."""
    logger = logging.getLogger(name)
    logger.setLevel(logging.INFO)
    logger.handlers.clear()
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_path, mode="w"))
    for h in handlers:
        h.setFormatter(fmt)
        logger.addHandler(h)
    logger.propagate = False
    return logger


@contextlib.contextmanager
def rule_log(smk) -> Iterator[logging.Logger]:
    """The logger of a Snakemake script (``smk`` = its ``snakemake`` object): the rule's log file and stderr.

    An exception raised inside the block is written to the log file with its traceback, then re-raised, so a
    failed job's log says why (Snakemake shows the log path)."""
    log = get_logger(smk.log[0] if len(smk.log) else None)
    try:
        yield log
    except Exception:
        log.exception(f"rule {getattr(smk, 'rule', '?')} failed")
        raise
