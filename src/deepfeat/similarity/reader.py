"""Reading the training rows of column sources: chunks, row selection, z-scoring, the Gram subset.

Scaling. Hand-crafted features come in arbitrary units; every hand-crafted column is z-scored with the mean and
standard deviation (ddof 0) of the training clips before anything is computed (constant columns, std <= 1e-6 |mean|
or 0, become 0; this rule is the engine's own, the probes' standardisation treats constant columns differently).
CKA is invariant to isotropic scaling but not to per-column scaling: z-scoring gives every hand-crafted dimension
the same weight, as in the reference's StandardScaler-based pipelines. Deep features are compared as they are
(raw activations; the comparisons between layers/seeds/architectures then weigh directions by their activation
variance, as CKA intends).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import numpy as np
import torch

from deepfeat.formats.cliptable import seeded_subset
from deepfeat.formats.files import index_runs
from deepfeat.similarity.gram import GRAM_STREAM
from deepfeat.similarity.sources import _Pool, _Source

_CONST_RTOL = 1e-6  # a hand-crafted column with std <= this x |mean| is constant (float32 rounding, not signal)
WINDOW_SHARE = 0.25  # share of memory_mb the windows of the features sources may hold together


def window_pool(cfg: dict, log=None) -> _Pool:
    """The window pool of an engine's features sources: :data:`WINDOW_SHARE` of ``memory_mb``."""
    return _Pool(WINDOW_SHARE * cfg["memory_mb"] * 1e6, log)


class _Reader:
    """The training rows (``train`` mask over the N clips of mel.h5) of a set of sources, read in chunks of
    ``chunk_size`` clips as float64 tensors on ``device``, within the memory budget ``memory_mb``.

    Features sources (:func:`~deepfeat.similarity.sources.feature_sources`) share one window pool of
    :data:`WINDOW_SHARE` x ``memory_mb``: a streamed pass reads chunks of at most that many bytes of their float32
    columns (rows x the total width of the features sources the pass reads x 4 bytes, :meth:`_chunk_rows`), and
    the Gram-subset readers compute only the subset rows, in windows of columns of that size."""

    def __init__(self, sources: Sequence[_Source], train: np.ndarray, cfg: dict, device, log, pool=None):
        self.src = {s.name: s for s in sources}
        self.seg_src = {}
        for s in sources:
            for seg in s.segments:
                if seg in self.seg_src:
                    raise ValueError(f"similarity: segment name '{seg}' appears in two sources")
                self.seg_src[seg] = s
        self.train = np.asarray(train, bool)
        self.N = len(self.train)
        self.rows = np.flatnonzero(self.train)
        self.n = len(self.rows)
        self.cfg, self.device, self.log = cfg, device, log
        self.budget = cfg["memory_mb"] * 1e6
        self.chunk = cfg["chunk_size"]
        self.pool = pool
        cols = [s.columns for s in sources if s.take is not None]
        if cols and pool is None:
            raise ValueError("similarity: features sources need the window pool they were made with")
        self.resident = bool(cols) and 4 * self.n * sum(c.P for c in cols) <= pool.limit
        if self.resident:  # every training row of every layer fits the pool: computed once, read by every pass
            for c in cols:
                c.keep(self.rows)

    def _gram_subset(self) -> np.ndarray:
        """Choose the seeded Gram subset of m = min(n, gram_max_clips) training rows (sets ``sub_mask`` over the N
        clips and ``m``); returns its sorted positions within the n training rows."""
        m = min(self.n, self.cfg["gram_max_clips"])
        pick = seeded_subset(self.n, m, self.cfg["seed"], GRAM_STREAM)
        self.sub_mask = np.zeros(self.N, bool)
        self.sub_mask[self.rows[pick]] = True
        self.m = m
        return pick

    def _chunks(self, mask: np.ndarray, size: int | None = None):
        size = size or self.chunk
        for i0 in range(0, self.N, size):
            i1 = min(i0 + size, self.N)
            sel = np.flatnonzero(mask[i0:i1])
            if len(sel):
                yield i0, i1, sel

    def _read(self, src: _Source, i0, i1, sel, c0, c1) -> torch.Tensor:
        if src.take is not None:  # features source: only the selected rows are computed, all views from one window
            x = torch.from_numpy(src.take(i0 + sel, c0, c1).astype(np.float64)).to(self.device)
            self._check_finite(x, src, i0, i1, sel, c0, c1)
            return x
        if src.read_rows is not None:  # selection and z-scoring fused into the read
            z = src.shift is not None
            if z and (src._np_shift is None or src._np_shift[0] is not src.shift):
                src._np_shift = (src.shift, src.shift.cpu().numpy(), src.inv.cpu().numpy())
            x = src.read_rows(
                i0, i1, sel, c0, c1, src._np_shift[1][c0:c1] if z else None, src._np_shift[2][c0:c1] if z else None
            )
            x = torch.from_numpy(x).to(self.device)
            self._check_finite(x, src, i0, i1, sel, c0, c1)
            return x
        x = np.asarray(src.read(i0, i1, c0, c1))
        if x.ndim != 2 or x.shape != (i1 - i0, c1 - c0):
            raise ValueError(f"{src.label}: expected rows {i0}:{i1} x columns {c0}:{c1}, read shape {x.shape}")
        if len(sel) < i1 - i0:
            if sel[-1] - sel[0] + 1 == len(sel):
                x = x[sel[0] : sel[-1] + 1]
            else:  # copy the runs of selected rows (faster than fancy indexing), casting on the way
                y = np.empty((len(sel), x.shape[1]), np.float64)
                o = 0
                for a, b in index_runs(sel):
                    y[o : o + b - a] = x[a:b]
                    o += b - a
                x = y
        # ``read`` returns a new array (never a view of someone else's data), so no defensive copy is needed
        x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64)).to(self.device)
        self._check_finite(x, src, i0, i1, sel, c0, c1)
        if src.shift is not None:
            x.sub_(src.shift[c0:c1]).mul_(src.inv[c0:c1])
        return x

    @staticmethod
    def _check_finite(x, src, i0, i1, sel, c0, c1):
        if not math.isfinite(float(x.sum())):  # one reduction; locate the culprit only when there is one
            fin = torch.isfinite(x).all(1).cpu().numpy()
            if not fin.all():
                bad = int(np.flatnonzero(~fin)[0])
                raise ValueError(f"{src.label}: non-finite value in clip row {i0 + int(sel[bad])} (columns {c0}:{c1})")
            raise ValueError(f"{src.label}: values too large (their sum overflows float64) in rows {i0}:{i1}")

    def _progress(self, what: str, t0: float, i1: int, state: dict):
        el = time.perf_counter() - t0
        if el >= state.get("next", 30.0) or i1 == self.N:
            self.log.info(f"  {what}: {i1}/{self.N} clips read ({100 * i1 / self.N:.0f}%), {el:.0f} s")
            state["next"] = el + 30.0

    def _standardize(self, src: _Source):
        """Column mean and std (ddof 0) over the training rows, in float64 with a pilot shift."""
        t0 = time.perf_counter()
        shift = S = SS = None
        for i0, i1, sel in self._chunks(self.train):
            x = self._read(src, i0, i1, sel, 0, src.P)
            if shift is None:
                shift = x.mean(0)
                S = torch.zeros_like(shift)
                SS = torch.zeros_like(shift)
            z = x - shift
            S += z.sum(0)
            SS += (z * z).sum(0)
        m = S / self.n
        mean = shift + m
        std = (SS / self.n - m * m).clamp_min(0).sqrt()
        const = (std <= _CONST_RTOL * mean.abs()) | (std == 0)
        src.shift = mean
        src.inv = torch.where(const, torch.zeros_like(std), 1.0 / torch.where(const, torch.ones_like(std), std))
        self.log.info(
            f"z-scored {src.P} columns of {src.label} with training statistics "
            f"({int(const.sum())} constant columns set to 0) in {time.perf_counter() - t0:.1f} s"
        )

    def _view_groups(self, views):
        """Moments groups of views: view = (tag, source name, segments); segment names become 'tag|seg'."""
        return {tag: {f"{tag}|{s}": self.src[src].segments[s] for s in segs} for tag, src, segs in views}

    def _read_view(self, view, i0, i1, sel) -> torch.Tensor:
        """Rows of a view's segments side by side, in the view's order; one read per run of adjacent columns
        (columns of segments the view does not hold are never read)."""
        tag, src_name, segs = view
        src = self.src[src_name]
        runs = []
        for s in segs:
            c0, c1 = src.offsets[s]
            if runs and runs[-1][1] == c0:
                runs[-1][1] = c1
            else:
                runs.append([c0, c1])
        parts = [self._read(src, i0, i1, sel, c0, c1) for c0, c1 in runs]
        return parts[0] if len(parts) == 1 else torch.cat(parts, 1)

    def _chunk_rows(self, views) -> int:
        """Clips per chunk of a pass over ``views``: ``chunk_size``, fewer when the float32 columns of the features
        sources the pass reads (all layers of each, computed together) would exceed the window pool."""
        width = sum(self.src[n].P for n in dict.fromkeys(v[1] for v in views) if self.src[n].take is not None)
        if not width:
            return self.chunk
        return max(1, min(self.chunk, int(self.pool.limit // (4 * width))))

    def _stream(self, views, what: str, mask: np.ndarray | None = None):
        """Chunks ({view: rows}, i0, i1, sel) of the training rows (or of the rows of ``mask``)."""
        t0, state = time.perf_counter(), {}
        rows = self._chunk_rows(views)
        for i0, i1, sel in self._chunks(self.train if mask is None else mask, rows):
            yield {v[0]: self._read_view(v, i0, i1, sel) for v in views}, i0, i1, sel
            self._progress(what, t0, i1, state)
        if self.pool is not None:
            self.pool.clear()  # the next pass reads other rows first: free the last chunk's windows now

    def _sub_raw(self, src: _Source, c0: int, c1: int) -> np.ndarray:
        """Columns [c0, c1) of a features source on the Gram-subset rows: a float32 (m x w) view of its window."""
        src.columns.purpose = "subset"
        try:
            return src.take(np.flatnonzero(self.sub_mask), c0, c1)
        finally:
            src.columns.purpose = "chunk"

    def _read_sub(self, src: _Source, c0, c1) -> torch.Tensor:
        if src.take is not None:
            x = torch.from_numpy(self._sub_raw(src, c0, c1).astype(np.float64)).to(self.device)
            self._check_finite(x, src, 0, self.N, np.flatnonzero(self.sub_mask), c0, c1)
            return x
        parts = [self._read(src, i0, i1, sel, c0, c1) for i0, i1, sel in self._chunks(self.sub_mask)]
        return torch.cat(parts, 0)

    def _buf(self, name: str, shape, dtype) -> np.ndarray:
        """A reused C-contiguous scratch array (grown on demand): large fresh allocations cost page faults."""
        size = int(np.prod(shape))
        bufs = self.__dict__.setdefault("_bufs", {})
        b = bufs.get(name)
        if b is None or b.dtype != np.dtype(dtype) or b.size < size:
            # torch's allocator hands out large blocks much faster (first touch) than numpy's here
            b = bufs[name] = torch.empty(size, dtype=getattr(torch, np.dtype(dtype).name)).numpy()
        return b[:size].reshape(shape)

    def _sub_blocks(self, src: _Source, c0: int, c1: int, step: int = 4096):
        """Columns [c0, c1) of ``src`` on the Gram-subset rows as centred float64 blocks (m x <= step columns),
        z-scored first for a standardized source. Rows are read once per column range (whole HDF5 chunk rows,
        straight into reused buffers; a features source computes only the subset rows); each yielded tensor views
        a buffer that the next block overwrites."""
        m = self.m
        wc = max(1, min(c1 - c0, int(self.budget / (16 * m))))
        sub_rows = np.flatnonzero(self.sub_mask)
        for r0 in range(c0, c1, wc):
            r1 = min(r0 + wc, c1)
            sub = self._sub_raw(src, r0, r1) if src.take is not None else self._sub_read(src, r0, r1)
            w = r1 - r0
            for j0 in range(0, w, step):
                j1 = min(j0 + step, w)
                raw = sub[:, j0:j1]
                o = self._buf("f64", (m, j1 - j0), np.float64)
                if src.shift is not None:  # z-score, then centre on the subset
                    o[...] = raw
                    o -= src.shift[r0 + j0 : r0 + j1].cpu().numpy()
                    o *= src.inv[r0 + j0 : r0 + j1].cpu().numpy()
                    mean = o.mean(0)
                else:
                    mean = raw.mean(0, dtype=np.float64)
                if not np.isfinite(mean).all():  # a NaN/inf anywhere in a column makes its mean non-finite
                    fin = np.isfinite(raw).all(1)
                    where = (
                        f"clip row {int(sub_rows[np.flatnonzero(~fin)[0]])}"
                        if not fin.all()
                        else "a column (values too large: their sum overflows float64)"
                    )
                    raise ValueError(f"{src.label}: non-finite value in {where} (columns {r0 + j0}:{r0 + j1})")
                np.subtract(o if src.shift is not None else raw, mean, out=o)
                yield torch.from_numpy(o).to(self.device)

    def _sub_read(self, src: _Source, r0: int, r1: int) -> np.ndarray:
        """Columns [r0, r1) of a file source on the Gram-subset rows (m x w, the file's dtype), in a reused buffer."""
        w, sub, pos = r1 - r0, None, 0
        for i0, i1, sel in self._chunks(self.sub_mask, max(1, int(64e6 / (4 * w)))):
            x = np.asarray(src.read(i0, i1, r0, r1))
            if x.shape != (i1 - i0, w):
                raise ValueError(f"{src.label}: expected rows {i0}:{i1} x columns {r0}:{r1}, read shape {x.shape}")
            if sub is None:
                sub = self._buf("sub", (self.m, w), x.dtype)
            for a, b in index_runs(sel):  # contiguous row runs: plain copies (np.take is ~4x slower here)
                sub[pos : pos + b - a] = x[a:b]
                pos += b - a
        return sub
