"""Column sources: the columns the similarity engine compares, read or computed block by block.

A :class:`_Source` is a set of columns read together, split into the segments (blocks) that are compared:

- :func:`feature_sources`: the deep features of one model, one source per weight state with every layer as a
  segment (``{prefix}{state}/{layer}``), over a features object (:class:`deepfeat.nets.features.ModelFeatures`:
  computed from the model file batch by batch; :class:`deepfeat.formats.deep.StoredFeatures`: read from an
  exported deep-feature file). :class:`_Columns` computes the rows a chunk or the Gram subset needs once, all layers
  of the weight state in one pass, and serves every column range asked of those rows from that window.
- :func:`handcrafted_source`: every feature of ``handcrafted.h5`` side by side (names and widths from
  :func:`deepfeat.formats.handcrafted.feature_index`), z-scored by the engine.

Memory of a features source: its window, at most ``rows x columns x 4`` bytes, shared with the other feature
sources of the engine through one :class:`_Pool` (least recently used windows are dropped first), so that the
engine bounds it by its memory budget.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from deepfeat.formats.handcrafted import feature_index


@dataclass
class _Source:
    """Columns read together. ``read(i0, i1, c0, c1)`` -> rows [i0, i1), columns [c0, c1), as a new array (the
    engine modifies what it reads in place); or ``take(idx, c0, c1)`` -> the float32 rows ``idx`` (sorted clip
    indices), columns [c0, c1), a view the caller only reads (features sources: only the asked rows are computed)."""

    name: str
    segments: dict  # segment -> width, in column order
    read: Callable[[int, int, int, int], np.ndarray] | None
    label: str  # for error messages (file:dataset)
    standardize: bool = False
    # optional read_rows(i0, i1, sel, c0, c1, shift, inv) -> float64 rows i0 + sel, z-scored when shift is given
    read_rows: Callable | None = None
    take: Callable | None = None
    columns: object = None  # the _Columns behind ``take``

    def __post_init__(self):
        self.offsets = {}
        o = 0
        for s, w in self.segments.items():
            self.offsets[s] = (o, o + int(w))
            o += int(w)
        self.P = o
        self.shift = self.inv = None  # z-scoring (standardize=True), set by the engine
        self._np_shift = None  # (shift tensor, its numpy copy, inv numpy copy) for read_rows


class _Pool:
    """The windows of every features source of one engine, at most ``limit`` bytes together: a new window drops the
    least recently used ones of other sources first. Counts the forward passes (windows computed) per purpose."""

    def __init__(self, limit: float, log=None):
        self.limit, self.log = float(limit), log
        self.live: OrderedDict = OrderedDict()  # _Columns -> bytes
        self.passes = {"resident": 0, "chunk": 0, "subset": 0}
        self.seconds = 0.0

    def make_room(self, owner, nbytes: int) -> None:
        self.live.pop(owner, None)
        while self.live and sum(self.live.values()) + nbytes > self.limit:
            victim, _ = self.live.popitem(last=False)
            victim.clear(pool=False, force=True)

    def used(self, owner, nbytes: int) -> None:
        self.live[owner] = nbytes
        self.live.move_to_end(owner)

    def dropped(self, owner) -> None:
        self.live.pop(owner, None)

    def clear(self) -> None:
        """Drop every window (resident columns stay until :meth:`release`)."""
        for c in list(self.live):
            c.clear()

    def release(self) -> None:
        for c in list(self.live):
            c.release()


class _Columns:
    """The columns of one weight state of a features object, all its layers side by side, for the rows last asked.

    :meth:`take` returns the asked rows and columns from the current window when it holds them; otherwise it runs
    the features object once over those rows (one forward pass for every layer that overlaps the new window) and
    keeps the window: all columns when they fit the pool's limit (a chunk of the streamed passes, whose rows the
    engine bounds so), else the columns from the asked one on, as many as fit (the Gram subset, read segment by
    segment in column order)."""

    def __init__(self, feats, state: str, layers, pool: _Pool):
        self.feats, self.state, self.layers, self.pool = feats, state, list(layers), pool
        self.offsets, o = {}, 0
        for a in self.layers:
            w = int(feats.widths[a])
            self.offsets[a] = (o, o + w)
            o += w
        self.P = o
        self.purpose = "chunk"
        self._back = None  # reused flat float32 storage of the window
        self.resident = None  # sorted clip rows kept computed once all (see :meth:`keep`)
        self._idx, self._w, self._buf = None, (0, 0), None

    def keep(self, rows: np.ndarray) -> None:
        """Compute every column of ``rows`` (the training clips) at the first ask and keep them: each later ask of
        rows among them is served without a forward pass (the engine does so when they fit the pool)."""
        self.resident = np.asarray(rows, np.int64)

    def clear(self, pool: bool = True, force: bool = False) -> None:
        """Drop the window (``pool``: tell the pool), but not resident columns unless ``force``."""
        if not force and self._buf is not None and self._idx is self.resident:
            return
        self._idx, self._w, self._buf = None, (0, 0), None
        if pool:
            self.pool.dropped(self)
        self._back = None

    def release(self) -> None:
        """Drop the window, resident or not, and stop keeping resident columns."""
        self.resident = None
        self.clear(force=True)

    def covers(self, rows: int, c0: int, c1: int) -> bool:
        """Whether the window holds columns [c0, c1) of ``rows`` rows (taking them costs no computation)."""
        return self._buf is not None and self._w[0] <= c0 and c1 <= self._w[1] and len(self._idx) == rows

    def _window(self, rows: int, c0: int, c1: int) -> tuple[int, int]:
        if rows * self.P * 4 <= self.pool.limit:
            return 0, self.P
        w = max(c1 - c0, int(self.pool.limit // (4 * max(rows, 1))))
        return c0, min(self.P, c0 + w)

    def take(self, idx: np.ndarray, c0: int, c1: int) -> np.ndarray:
        """float32 (len(idx), c1 - c0): columns [c0, c1) of the sorted, distinct clip rows ``idx`` (a view of the
        window: read it, do not modify it; valid until the next :meth:`take` of other rows or columns)."""
        if self.resident is not None:
            pos = np.searchsorted(self.resident, idx)
            if len(idx) and pos[-1] < len(self.resident) and np.array_equal(self.resident[pos], idx):
                full = self._buf if self._idx is self.resident else self._compute(self.resident, 0, self.P)
                self.pool.used(self, full.nbytes)
                if pos[-1] - pos[0] + 1 == len(pos):
                    return full[pos[0] : pos[-1] + 1, c0:c1]
                return full[pos, c0:c1]
        w0, w1 = self._w
        hit = self._buf is not None and w0 <= c0 and c1 <= w1 and len(self._idx) == len(idx)
        if hit and np.array_equal(self._idx, idx):
            self.pool.used(self, self._buf.nbytes)
            return self._buf[:, c0 - w0 : c1 - w0]
        w0, w1 = self._window(len(idx), c0, c1)
        return self._compute(idx, w0, w1)[:, c0 - w0 : c1 - w0]

    def _compute(self, idx: np.ndarray, w0: int, w1: int) -> np.ndarray:
        """Run the features object over the rows ``idx`` for the columns [w0, w1) and keep them as the window."""
        nbytes = 4 * len(idx) * (w1 - w0)
        self._buf = None
        self.pool.make_room(self, nbytes)
        if self._back is None or self._back.size < len(idx) * (w1 - w0):
            self._back = None
            self._back = torch.empty(len(idx) * (w1 - w0), dtype=torch.float32).numpy()
        buf = self._back[: len(idx) * (w1 - w0)].reshape(len(idx), w1 - w0)
        layers = [a for a in self.layers if self.offsets[a][0] < w1 and self.offsets[a][1] > w0]
        t0 = time.perf_counter()
        for pos, acts in self.feats.batches(self.state, np.asarray(idx, np.int64), layers):
            for a in layers:
                o0, o1 = self.offsets[a]
                lo, hi = max(w0, o0), min(w1, o1)
                v = acts[a][:, lo - o0 : hi - o0]
                buf[pos, lo - w0 : hi - w0] = v.cpu().numpy() if isinstance(v, torch.Tensor) else v
        el = time.perf_counter() - t0
        self.pool.seconds += el
        kind = "resident" if idx is self.resident else self.purpose
        self.pool.passes[kind] += 1
        if el > 10 and self.pool.log is not None:
            self.pool.log.info(
                f"  {self.feats.label} ({self.state}): columns {w0}:{w1} of {len(idx)} clips ({kind}) in {el:.0f} s"
            )
        self._idx = idx if idx is self.resident else np.array(idx, np.int64)
        self._w, self._buf = (w0, w1), buf
        self.pool.used(self, nbytes)
        return buf


def feature_sources(feats, pool: _Pool, prefix: str = "", layers=None) -> list[_Source]:
    """One source per weight state of the features object ``feats`` (segments ``{prefix}{state}/{layer}`` of its
    ``layers``, or the given subset, in that order), its columns computed or read on demand through ``pool``."""
    layers = list(feats.layers if layers is None else layers)
    out = []
    for state in feats.states:
        cols = _Columns(feats, state, layers, pool)
        segs = {f"{prefix}{state}/{a}": int(feats.widths[a]) for a in layers}
        out.append(_Source(f"{prefix}{state}", segs, None, f"{feats.label}:{state}", take=cols.take, columns=cols))
    return out


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
