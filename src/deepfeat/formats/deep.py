"""``deep/{task}/{arch}/seed{seed}.h5`` (kind ``deep``): frozen activations of one model, trained and untrained.

Layout: groups ``trained/`` and ``untrained/``, each with one float32 (N x d) dataset per layer (``conv1``,
``pool1``, ...; rows aligned with the clip table of mel.h5, which is copied in), attributes ``shape`` (JSON
per-clip shape: ``[H, W]`` when averaged over channels, else ``[C, H, W]``; a row reshapes to it in C order),
``averaged_channels`` (bool) and ``point`` (raw|activated). Root attributes ``arch``, ``seed``, ``task``,
``layers`` (JSON list), ``point``, ``average_channels`` (JSON list), ``model`` (file name), ``n_clips``.

Written by :func:`write_deep` (streamed: pre-sized chunked datasets filled batch by batch), read by
:func:`deep_info` / :func:`read_deep`.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from deepfeat.formats.cliptable import copy_clip_table
from deepfeat.formats.files import OpenFile, decode, open_h5, read_rows, write_h5

KIND = "deep"
STATES = ("trained", "untrained")
CHUNK_BYTES = 1 << 20  # target HDF5 chunk size (1 MiB, what the default chunk cache holds)


@dataclass(frozen=True)
class DeepInfo:
    """What a deep-feature file holds."""

    path: str
    arch: str
    seed: int
    task: str
    layers: tuple[str, ...]
    point: str
    widths: dict  # layer -> d (the same for both weight states)


def deep_info(f: h5py.File, path, n_clips: int | None = None) -> DeepInfo:
    """Read and check the description of an open deep-feature file: root attributes present, the seed in the
    file name (``seed<s>.h5``) equal to the ``seed`` attribute, both weight states holding every listed layer as
    a 2-D dataset of one width (and ``n_clips`` rows, when given)."""
    try:
        arch, seed, task = decode(f.attrs["arch"]), int(f.attrs["seed"]), decode(f.attrs["task"])
        layers = f.attrs["layers"]
    except KeyError as e:
        raise ValueError(f"{path}: missing root attribute {e} (expected arch, seed, task, layers)") from None
    layers = json.loads(layers) if isinstance(layers, (str, bytes)) else [decode(x) for x in layers]
    m = re.fullmatch(r"seed(\d+)\.h5", Path(path).name)
    if m and int(m.group(1)) != seed:
        raise ValueError(f"{path}: root attr seed={seed} contradicts the file name (seed {m.group(1)})")
    widths = {}
    for state in STATES:
        if state not in f:
            raise ValueError(f"{path}: group '{state}/' missing")
        missing = [a for a in layers if a not in f[state]]
        if missing:
            raise ValueError(f"{path}: {state}/ lacks layer(s) {missing} listed in the 'layers' attribute {layers}")
        for a in layers:
            ds = f[state][a]
            if ds.ndim != 2 or (n_clips is not None and ds.shape[0] != n_clips):
                want = f"({n_clips}, d)" if n_clips is not None else "(clips, d)"
                raise ValueError(f"{path}: {state}/{a} has shape {ds.shape}; expected {want}")
            if widths.setdefault(a, int(ds.shape[1])) != ds.shape[1]:
                raise ValueError(f"{path}: {a} is {widths[a]} wide in trained/ but {ds.shape[1]} in {state}/")
    point = decode(f.attrs.get("point", "raw"))
    return DeepInfo(str(path), arch, seed, task, tuple(layers), point, widths)


def read_deep(path, layer: str, which: str = "trained") -> tuple[np.ndarray, dict]:
    """(N x d float32 array, attrs with decoded ``shape``) of one layer of a deep-feature file."""
    with open_h5(path, KIND) as f:
        if which not in f or layer not in f[which]:
            have = list(f[which]) if which in f else []
            raise KeyError(f"{path}: no '{which}/{layer}' (available in {which}: {have})")
        d = f[which][layer]
        attrs = dict(d.attrs)
        attrs["shape"] = json.loads(attrs["shape"])
        return d[:], attrs


class StoredFeatures(OpenFile):
    """The deep features of an exported deep-feature file, with the interface of
    :class:`deepfeat.nets.features.ModelFeatures` (``rows``, ``batches``, ``widths``, ``shapes``, ...), so that every
    consumer can read exported activations instead of computing them. Use as a context manager."""

    def __init__(self, path, n_clips: int | None = None, batch_size: int = 256):
        self._f = open_h5(path, KIND)
        try:
            info = deep_info(self._f, path, n_clips)
        except Exception:
            self._f.close()
            raise
        self.info, self.label, self.batch_size = info, str(path), int(batch_size)
        self.arch, self.seed, self.task, self.layers, self.point = (
            info.arch,
            info.seed,
            info.task,
            info.layers,
            info.point,
        )
        self.states, self.widths = STATES, dict(info.widths)
        self.shapes = {a: json.loads(self._f[STATES[0]][a].attrs["shape"]) for a in self.layers}
        self.n_clips = int(self._f[STATES[0]][self.layers[0]].shape[0])

    def rows(self, state: str, idx: np.ndarray, layers=None) -> dict[str, np.ndarray]:
        """{layer: float32 array (len(idx), d)} of the sorted, distinct clip indices ``idx``."""
        return {a: read_rows(self._f[state][a], idx) for a in (self.layers if layers is None else layers)}

    def batches(self, state: str, idx: np.ndarray, layers=None):
        """Yield (positions in ``idx``, {layer: float32 array (b, d)}) ``batch_size`` rows at a time."""
        for b0 in range(0, len(idx), self.batch_size):
            yield (
                slice(b0, min(b0 + self.batch_size, len(idx))),
                self.rows(state, idx[b0 : b0 + self.batch_size], layers),
            )


def chunk_rows(d: int, batch: int, n: int) -> int:
    """Rows per chunk: the largest divisor of the batch size whose chunk holds <= CHUNK_BYTES (at least 1 row).

    Every batch then writes whole chunks, so no chunk cache is needed (see :func:`_no_cache`).
    """
    target = max(1, CHUNK_BYTES // (4 * d))
    rows = max(r for r in range(1, min(target, batch) + 1) if batch % r == 0)
    return max(1, min(rows, n))


def _no_cache():
    """Dataset access list without chunk cache: writes go straight to the file. With HDF5's default 1 MiB cache
    per dataset, RSS was measured to creep up by ~50 MB per 100 MB written (allocator churn of evicted chunks)."""
    dapl = h5py.h5p.create(h5py.h5p.DATASET_ACCESS)
    nslots, _, w0 = dapl.get_chunk_cache()
    dapl.set_chunk_cache(nslots, 0, w0)
    return dapl


@contextlib.contextmanager
def write_deep(
    path,
    clips: h5py.File,
    n_clips: int,
    *,
    arch: str,
    seed: int,
    task: str,
    layers: list[str],
    point: str,
    averaged: set,
    model: str,
    shapes: dict,
    batch_size: int,
) -> Iterator[dict]:
    """Create the deep-feature file ``path`` (atomically, complete only when the block succeeds) and yield its
    empty datasets ``{(state, layer): (n_clips x d) float32}``, to be filled in batches of ``batch_size`` rows.

    ``clips``: the open mel.h5 whose clip table is copied; ``shapes``: per-clip shape of each layer as stored
    (``d`` = its product); ``averaged``: the layers stored as the mean over channels; ``model``: the model file
    name. Chunks hold whole batches' rows (:func:`chunk_rows`) and the datasets have no chunk cache, so memory
    does not grow with the number of clips.
    """
    dims = {a: int(np.prod(s)) for a, s in shapes.items()}
    with write_h5(path, KIND) as g:
        g.attrs.update(
            arch=arch,
            seed=int(seed),
            task=task,
            layers=json.dumps(layers),
            point=point,
            average_channels=json.dumps(sorted(averaged & set(layers))),
            model=model,
            n_clips=n_clips,
        )
        copy_clip_table(clips, g)
        dsets = {}
        for w in STATES:
            grp = g.create_group(w)
            for a in layers:
                d = grp.create_dataset(
                    a,
                    shape=(n_clips, dims[a]),
                    dtype=np.float32,
                    chunks=(chunk_rows(dims[a], batch_size, n_clips), dims[a]),
                    dapl=_no_cache(),
                )
                d.attrs.update(shape=json.dumps(shapes[a]), averaged_channels=a in averaged, point=point)
                dsets[w, a] = d
        yield dsets
