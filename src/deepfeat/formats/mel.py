"""``mel.h5`` (kind ``mel``): the dB mel-spectrograms of every clip, with the clip table.

Layout: ``mel`` float32 (N x n_mels x T) dB, each clip in [-top_db, 0], chunked one clip per chunk and compressed
losslessly (:data:`deepfeat.formats.files.LOSSLESS`: the clipped silence at -top_db and the bytes of nearby dB
values compress well: measured on 2,000 NSynth-like notes, 42 % of the float32 size, ~2.6 ms per clip to write
and ~0.6 ms to read); its
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
from deepfeat.formats.files import LOSSLESS, open_h5

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


def create_mel(f: h5py.File, n_clips: int, n_mels: int, n_frames: int, params: dict) -> h5py.Dataset:
    """The pre-sized ``mel`` dataset of a new mel.h5, one clip per chunk, with the spectrogram parameters as
    attributes."""
    shape = (n_clips, n_mels, n_frames)
    d = f.create_dataset("mel", shape=shape, dtype=np.float32, chunks=(1, n_mels, n_frames), **LOSSLESS)
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
