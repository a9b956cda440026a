"""``mel.h5`` (kind ``mel``): the dB mel-spectrograms of every clip, with the clip table.

Layout: ``mel`` float32 (N x n_mels x T) dB, each clip in [-top_db, 0], chunked one clip per chunk; its
attributes record every spectrogram parameter (:data:`PARAM_ATTRS`). Root attributes ``sample_rate``,
``train_mean`` / ``train_std`` (scalar mean and population std of every dB value of the training split: the
CNN input standardisation), ``n_train``, ``dataset``, ``clip_seconds``, ``mel_params`` (JSON of the same
parameters); plus the clip table (:mod:`deepfeat.formats.cliptable`).
"""

from __future__ import annotations

import json
import math

import h5py
import numpy as np

from deepfeat.formats.cliptable import copy_clip_table
from deepfeat.formats.files import open_h5

KIND = "mel"


def open_mel(path) -> h5py.File:
    """Open a complete ``mel.h5`` for reading; its ``mel`` dataset must be N x n_mels x T."""
    f = open_h5(path, KIND)
    if "mel" not in f or f["mel"].ndim != 3 or min(f["mel"].shape) < 1:
        shape = f["mel"].shape if "mel" in f else None
        f.close()
        raise ValueError(f"{path}: expected a dataset 'mel' of N x n_mels x T dB spectrograms, found {shape}")
    return f


def standardisation(f: h5py.File) -> tuple[float, float]:
    """(train_mean, train_std) of an open mel.h5, checked finite with std > 0."""
    for key in ("train_mean", "train_std"):
        if key not in f.attrs:
            raise ValueError(f"{f.filename}: root attribute '{key}' missing (scalar training statistics of mel)")
    mean, std = float(f.attrs["train_mean"]), float(f.attrs["train_std"])
    if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
        raise ValueError(f"{f.filename}: train_mean={mean}, train_std={std}: need finite values and std > 0")
    return mean, std


def read_rows(ds: h5py.Dataset, rows: np.ndarray, block: int = 1024) -> np.ndarray:
    """The spectrograms of the sorted clip indices ``rows`` as one float32 array, read ``block`` clips at a time."""
    rows = np.asarray(rows, dtype=np.int64)
    out = np.empty((len(rows), *ds.shape[1:]), np.float32)
    pos = 0
    for i0 in range(0, ds.shape[0], block):
        sel = rows[(rows >= i0) & (rows < i0 + block)] - i0
        if len(sel):
            out[pos : pos + len(sel)] = ds[i0 : min(i0 + block, ds.shape[0])][sel]
            pos += len(sel)
    return out


def create_mel(f: h5py.File, n_clips: int, n_mels: int, n_frames: int, params: dict) -> h5py.Dataset:
    """The pre-sized ``mel`` dataset of a new mel.h5, one clip per chunk, with the spectrogram parameters as
    attributes."""
    d = f.create_dataset("mel", shape=(n_clips, n_mels, n_frames), dtype=np.float32, chunks=(1, n_mels, n_frames))
    for k, v in params.items():
        d.attrs[k] = v
    f.attrs["mel_params"] = json.dumps(params)
    return d


def finish_mel(
    f: h5py.File, src: h5py.File, sample_rate: int, train_mean: float, train_std: float, n_train: int
) -> None:
    """The root attributes and the clip table of a new mel.h5 (``src``: the open clips.h5)."""
    f.attrs["sample_rate"] = int(sample_rate)
    f.attrs["train_mean"] = float(train_mean)
    f.attrs["train_std"] = float(train_std)
    f.attrs["n_train"] = int(n_train)
    for k in ("dataset", "clip_seconds"):
        if k in src.attrs:
            f.attrs[k] = src.attrs[k]
    copy_clip_table(src, f)
