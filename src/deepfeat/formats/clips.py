"""``clips.h5`` (kind ``clips``): the decoded 4 s clips of a dataset, with the clip table.

Layout: ``audio`` (N x L), L = clip_seconds x sample_rate mono samples at the dataset's rate, one clip per chunk,
stored either as float32 full-scale samples or, when every clip is exact 16-bit PCM (mono 16-bit files at the
dataset's rate: no resampling, no channel mixing), as int16 with the attribute ``scale`` = 1/32768 (sample =
int16 value x scale, exactly the float32 the decoder gave: half the size, the same spectrograms bit for bit);
both compressed losslessly (:data:`deepfeat.formats.files.LOSSLESS`: on the ci demo data 46 % smaller for the
notes, 13-16 % for the rendered scores (int16), ~2 ms per 4 s clip to write and under 1 ms to read).
Root attributes ``sample_rate``, ``clip_seconds``, ``dataset``, ``source_format``, ``source_root``, ``skipped``
(JSON list of {file, reason}), ``split`` (JSON of the split settings); plus the clip table
(:mod:`deepfeat.formats.cliptable`). Read the samples through :func:`clip_audio`, which hides the storage.
"""

from __future__ import annotations

import json

import h5py
import numpy as np

from deepfeat.formats.cliptable import write_clip_table
from deepfeat.formats.files import LOSSLESS, open_h5

KIND = "clips"
PCM16_SCALE = 1.0 / 32768  # full scale of 16-bit PCM, as libsndfile decodes it (exact in float32)
STORAGE = {"float32": np.float32, "int16": np.int16}


class AudioWriter:
    """Appends blocks of float32 clips to the growing ``audio`` dataset of a new clips.h5 (bounded memory).

    ``storage`` "float32" keeps the samples as they are; "int16" stores ``round(x * 32768)`` with ``scale`` =
    1/32768 and raises ValueError for a block that is not exact 16-bit PCM (so nothing is ever rounded).
    """

    def __init__(self, f: h5py.File, clip_samples: int, storage: str = "float32"):
        if storage not in STORAGE:
            raise ValueError(f"AudioWriter: storage must be one of {list(STORAGE)}, got {storage!r}")
        self.L, self.storage = int(clip_samples), storage
        self.ds = f.create_dataset(
            "audio", shape=(0, self.L), maxshape=(None, self.L), dtype=STORAGE[storage], chunks=(1, self.L), **LOSSLESS
        )
        if storage == "int16":
            self.ds.attrs["scale"] = PCM16_SCALE
        self.n = 0

    def append(self, block: np.ndarray) -> None:
        if not len(block):
            return
        if self.storage == "int16":
            block = to_pcm16(block)
        self.ds.resize((self.n + block.shape[0], self.L))
        self.ds[self.n :] = block
        self.n += block.shape[0]


def to_pcm16(block: np.ndarray) -> np.ndarray:
    """float32 samples that are exact 16-bit PCM values / 32768 as int16; ValueError for any other sample."""
    q = np.asarray(block, dtype=np.float32) * np.float32(32768)  # exact: a power of two
    if not (np.array_equal(np.rint(q), q) and q.min(initial=0) >= -32768 and q.max(initial=0) <= 32767):
        raise ValueError("clips.h5: samples are not exact 16-bit PCM; store them as float32")
    return q.astype(np.int16)


class ClipAudio:
    """The ``audio`` dataset of an open clips.h5, read as full-scale samples whatever its storage.

    ``audio[a:b]`` (any h5py selection) returns the stored floats as they are (float32 in every file ingest
    writes), or float32 for int16 storage, scaled by its ``scale`` attribute (exact in float32); ``shape``,
    ``len`` and ``storage`` ("int16" or the float dtype's name) as the dataset.
    """

    def __init__(self, ds: h5py.Dataset):
        self.ds = ds
        self.shape = ds.shape
        self.storage = "int16" if ds.dtype == np.int16 else str(ds.dtype)
        self.scale = None
        if self.storage == "int16":
            if "scale" not in ds.attrs:
                raise ValueError(f"{ds.file.filename}: int16 'audio' without its 'scale' attribute")
            self.scale = np.float32(ds.attrs["scale"])

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key) -> np.ndarray:
        x = self.ds[key]
        return x if self.scale is None else x.astype(np.float32) * self.scale


def clip_audio(f: h5py.File) -> ClipAudio:
    """The clips of an open clips.h5 (:func:`open_clips`) as float32 samples (:class:`ClipAudio`)."""
    return ClipAudio(f["audio"])


def finish_clips(f: h5py.File, meta, tasks: list[dict], main_task: str, attrs: dict) -> None:
    """The clip table and the root attributes (values that are not str/number are stored as JSON)."""
    write_clip_table(f, meta, tasks, main_task)
    for k, v in attrs.items():
        f.attrs[k] = v if isinstance(v, (str, int, float, np.number)) else json.dumps(v)


def open_clips(path) -> h5py.File:
    """Open a complete ``clips.h5``: an N x L ``audio`` dataset (float32, or int16 with ``scale``) and a
    ``sample_rate`` attribute."""
    f = open_h5(path, KIND)
    if "audio" not in f or f["audio"].ndim != 2 or not (f["audio"].dtype.kind == "f" or f["audio"].dtype == np.int16):
        f.close()
        raise ValueError(f"{path}: expected a dataset 'audio' of shape N x L (float32, or int16 with a scale)")
    if "sample_rate" not in f.attrs:
        f.close()
        raise ValueError(f"{path}: root attribute 'sample_rate' missing")
    return f
