"""Writing files so that a killed job never leaves one that looks finished, and reading them back safely.

Every output is written to a temporary file beside its target and renamed into place only when complete.
HDF5 outputs also carry the root attributes ``deepfeat_kind`` and ``deepfeat_complete = True`` (set last);
:func:`open_h5` refuses a file without them, so a truncated or unfinished input is reported, never read.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from deepfeat.runtime import UserError

COMPLETE_ATTR = "deepfeat_complete"
KIND_ATTR = "deepfeat_kind"
STR = h5py.string_dtype("utf-8")
#: the lossless compression of the large arrays (clips.h5 audio and mel.h5 spectrograms, one clip per chunk, so
#: that a subset of clips is read without decoding the others; handcrafted.h5 features; replicate offsets): gzip
#: level 1 with byte shuffling, readable by every HDF5 tool
LOSSLESS = {"compression": "gzip", "compression_opts": 1, "shuffle": True}


class CorruptOutputError(UserError, RuntimeError):
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


def remove_stale_temporaries(*paths, log=None) -> int:
    """Delete the temporary files :func:`atomic_path` left beside ``paths`` when a job was killed (named
    ``.<name>.<random><suffix>``). Only call it for outputs the calling job owns. Returns how many were removed."""
    n = 0
    for p in paths:
        if p is None:
            continue
        p = Path(p)
        for tmp in p.parent.glob(f".{p.name}.*") if p.parent.is_dir() else ():
            tmp.unlink(missing_ok=True)
            n += 1
            if log:
                log.info(f"removed {tmp} (temporary file of a killed job)")
    return n


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


def row_selection(idx) -> slice | np.ndarray:
    """How to read the sorted, distinct row indices ``idx`` from an HDF5 dataset: one slice when they are a
    contiguous run (one read), else the int64 indices themselves."""
    idx = np.asarray(idx, dtype=np.int64)
    if len(idx) and idx[-1] - idx[0] + 1 == len(idx):
        return np.s_[int(idx[0]) : int(idx[-1]) + 1]
    return idx


def index_runs(idx) -> list[tuple[int, int]]:
    """[(start, stop)] of the maximal runs of consecutive integers in the sorted index array ``idx``."""
    idx = np.asarray(idx, dtype=np.int64)
    if len(idx) == 0:
        return []
    cut = np.flatnonzero(np.diff(idx) != 1) + 1
    starts = np.concatenate([[0], cut])
    stops = np.concatenate([cut, [len(idx)]])
    return [(int(idx[a]), int(idx[b - 1]) + 1) for a, b in zip(starts, stops)]


def read_rows(ds: h5py.Dataset, idx) -> np.ndarray:
    """The rows of the sorted, distinct indices ``idx`` of an HDF5 dataset: each run of consecutive rows read as
    one slice straight into the output (h5py's point selection of scattered rows costs ~3 ms a row here; a slice
    per run reads just the chunks those rows are in)."""
    sel = row_selection(idx)
    if isinstance(sel, slice):
        return ds[sel]
    out = np.empty((len(sel), *ds.shape[1:]), dtype=ds.dtype)
    o = 0
    for a, b in index_runs(sel):
        ds.read_direct(out, np.s_[a:b], np.s_[o : o + b - a])
        o += b - a
    return out


class OpenFile:
    """Base of the readers that hold one open HDF5 file in ``self._f``: a context manager that closes it."""

    _f: h5py.File | None = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


def decode(value) -> str:
    """An HDF5 string attribute as ``str`` (h5py returns ``bytes`` for some writers)."""
    return value.decode() if isinstance(value, bytes) else str(value)


def write_csv(df: pd.DataFrame, path: str | os.PathLike, **kw) -> None:
    """Write a table atomically (CSV, or Markdown when the path ends in .md)."""
    path = Path(path)
    with atomic_path(path, suffix=path.suffix) as tmp:
        if path.suffix == ".md":
            tmp.write_text(df.to_markdown(index=False, **kw) + "\n")
        else:
            df.to_csv(tmp, index=False, **kw)


def write_text(text: str, path: str | os.PathLike) -> None:
    """Write a text file atomically."""
    path = Path(path)
    with atomic_path(path, suffix=path.suffix) as tmp:
        tmp.write_text(text)


def write_json(obj, path: str | os.PathLike) -> None:
    """Write ``obj`` as indented JSON atomically (numpy scalars and arrays and paths are converted)."""
    write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n", path)


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
