"""``clips.h5`` (kind ``clips``): the decoded 4 s clips of a dataset, with the clip table.

Layout: ``audio`` float32 (N x L), L = clip_seconds x sample_rate mono samples at the dataset's rate, one clip
per chunk; root attributes ``sample_rate``, ``clip_seconds``, ``dataset``, ``source_format``, ``source_root``,
``skipped`` (JSON list of {file, reason}), ``split`` (JSON of the split settings); plus the clip table
(:mod:`deepfeat.formats.cliptable`).
"""

from __future__ import annotations

import json

import h5py
import numpy as np

from deepfeat.formats.cliptable import write_clip_table
from deepfeat.formats.files import open_h5

KIND = "clips"


class AudioWriter:
    """Appends blocks of clips to the growing ``audio`` dataset of a new clips.h5 (bounded memory)."""

    def __init__(self, f: h5py.File, clip_samples: int):
        self.L = int(clip_samples)
        self.ds = f.create_dataset(
            "audio", shape=(0, self.L), maxshape=(None, self.L), dtype=np.float32, chunks=(1, self.L)
        )
        self.n = 0

    def append(self, block: np.ndarray) -> None:
        if not len(block):
            return
        self.ds.resize((self.n + block.shape[0], self.L))
        self.ds[self.n :] = block
        self.n += block.shape[0]


def finish_clips(f: h5py.File, meta, tasks: list[dict], main_task: str, attrs: dict) -> None:
    """The clip table and the root attributes (values that are not str/number are stored as JSON)."""
    write_clip_table(f, meta, tasks, main_task)
    for k, v in attrs.items():
        f.attrs[k] = v if isinstance(v, (str, int, float, np.number)) else json.dumps(v)


def open_clips(path) -> h5py.File:
    """Open a complete ``clips.h5``: an N x L ``audio`` dataset and a ``sample_rate`` attribute."""
    f = open_h5(path, KIND)
    if "audio" not in f or f["audio"].ndim != 2:
        f.close()
        raise ValueError(f"{path}: expected a dataset 'audio' of shape N x L (float32 clips)")
    if "sample_rate" not in f.attrs:
        f.close()
        raise ValueError(f"{path}: root attribute 'sample_rate' missing")
    return f
