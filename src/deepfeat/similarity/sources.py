"""Column sources: the HDF5 datasets whose columns the similarity engine reads, block by block.

A :class:`_Source` is a set of columns read together from one place (one deep layer of a deep-feature file,
:func:`dataset_source`; every feature of ``handcrafted.h5`` side by side, :func:`handcrafted_source`, names
and widths from :func:`deepfeat.formats.handcrafted.feature_index`), split into the segments (blocks) that are
compared.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from deepfeat.formats.handcrafted import feature_index


@dataclass
class _Source:
    """Columns read together from one place: ``read(i0, i1, c0, c1)`` -> rows [i0, i1), columns [c0, c1), as a new
    array (the engine modifies what it reads in place)."""

    name: str
    segments: dict  # segment -> width, in column order
    read: Callable[[int, int, int, int], np.ndarray]
    label: str  # for error messages (file:dataset)
    standardize: bool = False
    dset: object = None  # the one 2-D HDF5 dataset behind ``read``, when there is one (read_direct into buffers)
    # optional read_rows(i0, i1, sel, c0, c1, shift, inv) -> float64 rows i0 + sel, z-scored when shift is given
    read_rows: Callable | None = None

    def __post_init__(self):
        self.offsets = {}
        o = 0
        for s, w in self.segments.items():
            self.offsets[s] = (o, o + int(w))
            o += int(w)
        self.P = o
        self.shift = self.inv = None  # z-scoring (standardize=True), set by the engine
        self._np_shift = None  # (shift tensor, its numpy copy, inv numpy copy) for read_rows


def _runs(idx: np.ndarray) -> list[tuple[int, int]]:
    """[(start, stop)] of the maximal runs of consecutive integers in the sorted index array ``idx``."""
    if len(idx) == 0:
        return []
    cut = np.flatnonzero(np.diff(idx) != 1) + 1
    starts = np.concatenate([[0], cut])
    stops = np.concatenate([cut, [len(idx)]])
    return [(int(idx[a]), int(idx[b - 1]) + 1) for a, b in zip(starts, stops)]


def dataset_source(name, ds, n_clips, label) -> _Source:
    """The one 2-D (clips x d) HDF5 dataset ``ds`` as a source of one segment ``name``."""
    if ds.ndim != 2:
        raise ValueError(f"{label}: expected a 2-D (clips x features) dataset, got shape {ds.shape}")
    if ds.shape[0] != n_clips:
        raise ValueError(f"{label}: {ds.shape[0]} rows but the clip table of mel.h5 has {n_clips} clips")
    return _Source(name, {name: int(ds.shape[1])}, lambda i0, i1, c0, c1: ds[i0:i1, c0:c1], label, dset=ds)


def handcrafted_source(f, path, n_clips) -> tuple[_Source, dict]:
    """(source of every feature of an open ``handcrafted.h5``, z-scored by the engine; {segment: display name}).
    Segments are ``hc:<key>`` in file order."""
    dsets, names, segs = [], {}, {}
    for name, entry in feature_index(f, path, n_clips).items():
        seg = f"hc:{entry['key']}"
        segs[seg] = entry["d"]
        names[seg] = name
        dsets.append(f["features"][entry["key"]])
    offs = np.concatenate([[0], np.cumsum([d.shape[1] for d in dsets])])

    def read(i0, i1, c0, c1):
        out = np.empty((i1 - i0, c1 - c0))
        for j, d in enumerate(dsets):
            lo, hi = max(c0, offs[j]), min(c1, offs[j + 1])
            if lo < hi:
                out[:, lo - c0 : hi - c0] = d[i0:i1, lo - offs[j] : hi - offs[j]]
        return out

    def read_rows(i0, i1, sel, c0, c1, shift=None, inv=None):
        """Rows i0 + sel only, z-scored in float64 on the way (one write of the output instead of three)."""
        out = np.empty((len(sel), c1 - c0))
        run = sel[-1] - sel[0] + 1 == len(sel)
        for j, d in enumerate(dsets):
            lo, hi = max(c0, offs[j]), min(c1, offs[j + 1])
            if lo < hi:
                x = d[i0:i1, lo - offs[j] : hi - offs[j]]
                x = x[sel[0] : sel[-1] + 1] if run else x[sel]
                o = out[:, lo - c0 : hi - c0]
                if shift is None:
                    o[...] = x
                else:
                    np.subtract(x, shift[lo - c0 : hi - c0], out=o)
                    o *= inv[lo - c0 : hi - c0]
        return out

    return (_Source("handcrafted", segs, read, f"{path}:features", standardize=True, read_rows=read_rows), names)
