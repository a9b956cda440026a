"""``*.boot.h5`` (kind ``replicates``): the bootstrap replicates of the values of one job's table, kept so that any
two values (of this job or of another job of the dataset) can be compared by a paired interval.

Every job of a dataset draws the same recording-level resamples of the same clips (:mod:`deepfeat.stats`), so
replicate b of two values comes from one resample and their difference's replicates are simply the differences.

Layout: ``offsets`` int16 (rows x B) and ``scale`` float64 (rows): replicate b of row r is ``values[r] + scale[r] *
offsets[r, b]`` (the value described by row r of ``keys/``), with ``scale[r]`` = the largest |replicate - value| of
the row / 32767, so the stored replicates are within 1/65534 of the row's largest deviation of the exact ones (half
the bytes of float32, far finer than float16); -32768 marks a NaN replicate, and a row without replicates has scale
NaN. ``keys/<column>`` (one string dataset per key column, rows aligned); ``values`` float64 (rows): the values
themselves (computed on all clips). Root attributes ``resamples`` (B), ``seed``, ``stream`` (the resample stream of
:mod:`deepfeat.stats`), ``unit`` (what the clips are, e.g. "test clips"), ``columns`` (JSON list of the key columns
in order), ``clips`` (:func:`fingerprint` of the ids of the resampled clips, in order: two files are paired through
the same resamples only when their fingerprints, seeds and streams agree).
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd

from deepfeat.formats.files import LOSSLESS, STR, open_h5, write_h5

KIND = "replicates"


def fingerprint(clip_ids) -> str:
    """SHA-1 (hex) of the clip ids in order: names the clips a file's resamples were drawn over."""
    h = hashlib.sha1()
    for c in np.asarray(clip_ids).astype(str):
        h.update(c.encode())
        h.update(b"\0")
    return h.hexdigest()


def write_replicates(
    path, keys: pd.DataFrame, values, replicates, *, seed: int, stream: int, unit: str, clips: str = ""
) -> None:
    """Write the replicates file ``path`` atomically: ``keys`` (one row per value; its columns are stored as text),
    ``values`` (rows,), ``replicates`` (rows x B) and ``clips`` (the :func:`fingerprint` of the resampled clips)."""
    reps = np.asarray(replicates, np.float64)
    values = np.asarray(values, np.float64)
    if reps.ndim != 2 or len(reps) != len(keys) or len(values) != len(keys):
        raise ValueError(f"{path}: {len(keys)} keys, {len(values)} values and replicates of shape {reps.shape}")
    offsets, scale = _encode(reps, values)
    with write_h5(path, KIND) as f:
        f.attrs.update(
            resamples=int(reps.shape[1]),
            seed=int(seed),
            stream=int(stream),
            unit=str(unit),
            columns=json.dumps(list(keys.columns)),
            clips=str(clips),
        )
        g = f.create_group("keys")
        for c in keys.columns:
            g.create_dataset(c, data=keys[c].astype(str).to_numpy(dtype=object), dtype=STR)
        f.create_dataset("values", data=values)
        f.create_dataset("scale", data=scale)
        f.create_dataset(
            "offsets",
            data=offsets,
            **({"chunks": (max(1, min(len(reps), 256)), reps.shape[1]), **LOSSLESS} if reps.size else {}),
        )


def read_replicates(path) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, dict]:
    """(keys DataFrame of strings, values (rows,), replicates float64 (rows x B), attributes) of a replicates
    file."""
    with open_h5(path, KIND) as f:
        cols = json.loads(f.attrs["columns"])
        keys = pd.DataFrame({c: f["keys"][c].asstr()[:] for c in cols}, columns=cols)
        attrs = {k: (v.item() if hasattr(v, "item") else v) for k, v in f.attrs.items()}
        values = f["values"][:]
        return keys, values, _decode(f["offsets"][:], f["scale"][:], values), attrs


NAN_CODE = np.int16(-32768)


def _encode(reps: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(int16 offsets, float64 scale per row) of replicates around their values (see the module docstring)."""
    dev = reps - values[:, None]
    finite = np.isfinite(dev)
    with np.errstate(invalid="ignore"):
        big = np.where(finite, np.abs(dev), 0.0).max(axis=1, initial=0.0)
    scale = np.where(finite.any(axis=1) & np.isfinite(values), big / 32767.0, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        q = np.where(finite, np.rint(dev / np.where(scale > 0, scale, 1.0)[:, None]), 0.0)
    offsets = np.clip(q, -32767, 32767).astype(np.int16)
    offsets[~finite | ~np.isfinite(scale)[:, None]] = NAN_CODE
    return offsets, scale


def _decode(offsets: np.ndarray, scale: np.ndarray, values: np.ndarray) -> np.ndarray:
    """float64 replicates from int16 offsets, per-row scales and the values."""
    out = values[:, None] + scale[:, None] * offsets.astype(np.float64)
    out[offsets == NAN_CODE] = np.nan
    return out


def read_stacked(paths) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, dict]:
    """The rows of several replicates files stacked (keys, values, replicates, attributes of the first file), for
    files drawn over the same resamples: their ``resamples``, ``seed``, ``stream`` and ``clips`` must agree (a
    ValueError names the first file that differs). The key columns are the union, '' where a file lacks one.
    No paths give empty keys and a (0 x 0) array."""
    paths = [p for p in paths]
    if not paths:
        return pd.DataFrame(), np.zeros(0), np.zeros((0, 0)), {}
    keys, values, reps, first = [], [], [], None
    for p in paths:
        k, v, r, a = read_replicates(p)
        if first is None:
            first = (p, a)
        else:
            for attr in ("resamples", "seed", "stream", "clips"):
                if a.get(attr) != first[1].get(attr):
                    raise ValueError(
                        f"{p}: {attr} {a.get(attr)!r} differs from {first[1].get(attr)!r} of {first[0]}: the two "
                        "files were not drawn over the same resamples (rerun both with the same stats settings)"
                    )
        keys.append(k)
        values.append(v)
        reps.append(r)
    keys = pd.concat(keys, ignore_index=True).fillna("")
    return keys, np.concatenate(values), np.concatenate(reps), first[1]


__all__ = ["KIND", "fingerprint", "read_replicates", "read_stacked", "write_replicates"]
