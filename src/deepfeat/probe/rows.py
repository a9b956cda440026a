"""The rows a probe reads: one feature's standardised float32 rows on one split, held in memory or computed on
demand, behind one interface (:class:`Rows`), so every solver runs unchanged on either.

* **Sources** give the RAW float32 rows of one feature for any sorted, distinct clip indices: a dataset of a
  stage file (:class:`DatasetSource`: a hand-crafted feature of handcrafted.h5), one layer of one weight state
  of a :class:`deepfeat.nets.features.ModelFeatures` (forward passes) or of a
  :class:`deepfeat.formats.deep.StoredFeatures` (:class:`LayerSource`), or the columns of several sources side
  by side (:class:`ConcatSource`: a concatenation, each column z-scored with its own training statistics, which
  is the same as standardising each block separately). ``cost`` estimates the multiply-adds of one clip's row.
* **Rows** of one split: :class:`ResidentRows` wraps a standardised matrix in memory (its one block is the whole
  matrix, so solvers compute exactly what they compute on an array); :class:`StreamedRows` standardises a
  source's rows with the training statistics of a streamed float64 pass (:func:`training_stats`) block by
  block. ``blocks`` yields row blocks, ``take`` arbitrary rows (SGD batches), ``column_groups`` column groups
  of the whole split (one pass over the source each), ``mean`` the float64 column means. ``passes`` counts the
  passes over the source (logged and tested).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from deepfeat.formats.files import read_rows
from deepfeat.probe.standardisation import GramAccumulator, RunningStats, rows_per_chunk, standardise_rows

FLOAT_COST = 1.0  # estimated multiply-adds per value read from a stage file (decompression, copies)


def _as_tensor(x, device) -> torch.Tensor:
    x = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
    return x.to(device=device, dtype=torch.float32)


class DatasetSource:
    """An (N x d) dataset of an open stage file (e.g. ``features/<key>`` of handcrafted.h5); ``what`` names it."""

    def __init__(self, ds, what: str, device):
        self.ds, self.label, self.device = ds, what, torch.device(device)
        self.n_clips, self.d = int(ds.shape[0]), int(ds.shape[1])
        self.cost = FLOAT_COST * self.d

    def raw(self, idx: np.ndarray) -> torch.Tensor:
        return _as_tensor(read_rows(self.ds, idx), self.device)


def forward_cost(feats, state: str, layer: str) -> float:
    """Estimated multiply-adds of one clip's row of ``layer``: the counted floating-point operations of a
    one-clip forward pass of a :class:`~deepfeat.nets.features.ModelFeatures` (half of them: multiply-adds),
    or the values read for a stored file (no ``nets``)."""
    if not hasattr(feats, "nets"):
        return FLOAT_COST * feats.widths[layer]
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        for _ in feats.batches(state, np.zeros(1, dtype=np.int64), [layer]):
            pass
    return max(float(counter.get_total_flops()) / 2, FLOAT_COST * feats.widths[layer])


class LayerSource:
    """One layer of one weight state of a ModelFeatures (computed batch by batch) or StoredFeatures."""

    def __init__(self, feats, state: str, layer: str, device, cost: float | None = None):
        self.feats, self.state, self.layer, self.device = feats, state, layer, torch.device(device)
        self.label = f"{feats.label}: {state}/{layer}"
        self.n_clips, self.d = int(feats.n_clips), int(feats.widths[layer])
        self.cost = forward_cost(feats, state, layer) if cost is None else float(cost)

    def raw(self, idx: np.ndarray) -> torch.Tensor:
        idx = np.asarray(idx, dtype=np.int64)
        out = torch.empty(len(idx), self.d, dtype=torch.float32, device=self.device)
        for pos, acts in self.feats.batches(self.state, idx, [self.layer]):
            out[pos] = _as_tensor(acts[self.layer], self.device)
        return out


class ConcatSource:
    """The columns of several sources side by side (same clips)."""

    def __init__(self, parts: list, label: str):
        self.parts, self.label = parts, label
        self.device = parts[0].device
        self.n_clips, self.d = parts[0].n_clips, sum(p.d for p in parts)
        self.cost = sum(p.cost for p in parts)

    def raw(self, idx: np.ndarray) -> torch.Tensor:
        return torch.cat([p.raw(idx) for p in self.parts], 1)


def training_stats(source, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) float64 of the source's rows ``idx`` (the training clips), streamed (:class:`RunningStats`)."""
    acc = RunningStats(source.d, source.label, source.device)
    step = rows_per_chunk(source.d)
    for a in range(0, len(idx), step):
        acc.add(source.raw(idx[a : a + step]))
    return acc.result()


class Rows:
    """Standardised float32 rows of one feature on one split (``n`` x ``d``) on ``device``."""

    n: int
    d: int
    device: torch.device
    passes: int = 0

    def blocks(self, rows: int | None = None) -> Iterator[tuple[slice, torch.Tensor]]:
        raise NotImplementedError

    def take(self, pos: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def column_groups(self, width: int) -> Iterator[tuple[int, torch.Tensor]]:
        raise NotImplementedError

    def mean(self) -> torch.Tensor:
        """Float64 column means (cached)."""
        if getattr(self, "_mean", None) is None:
            mu = torch.zeros(self.d, dtype=torch.float64, device=self.device)
            for _, z in self.blocks():
                mu += z.double().sum(0)
            self._mean = mu / max(1, self.n)
        return self._mean


class ResidentRows(Rows):
    """A standardised matrix held in memory (float32, or float64 for :func:`~deepfeat.probe.linear.fit_linear`):
    ``blocks()`` without a size is the whole matrix, ``column_groups`` views."""

    resident = True

    def __init__(self, Z: torch.Tensor):
        self.Z = Z
        self.n, self.d = int(Z.shape[0]), int(Z.shape[1])
        self.device = Z.device
        self._mean = None

    def blocks(self, rows: int | None = None):
        if rows is None:
            yield slice(0, self.n), self.Z
            return
        for i in range(0, self.n, rows):
            yield slice(i, min(i + rows, self.n)), self.Z[i : i + rows]

    def take(self, pos: torch.Tensor) -> torch.Tensor:
        return self.Z.index_select(0, pos.to(self.device))

    def column_groups(self, width: int):
        for a in range(0, self.d, width):
            yield a, self.Z[:, a : a + width]


class StreamedRows(Rows):
    """The rows ``idx`` (sorted clip indices) of a source, standardised with ``stats`` (training mean, std) block
    by block: nothing proportional to clips x width is held."""

    resident = False

    def __init__(self, source, idx: np.ndarray, stats: tuple[torch.Tensor, torch.Tensor]):
        self.source, self.idx = source, np.asarray(idx, dtype=np.int64)
        self.mu, self.sd = stats
        self.n, self.d, self.device = len(self.idx), source.d, source.device
        self.step = rows_per_chunk(self.d)
        self.passes = 0
        self._mean = None

    def _rows(self, idx: np.ndarray) -> torch.Tensor:
        return standardise_rows(self.source.raw(idx), self.mu, self.sd)

    def blocks(self, rows: int | None = None):
        self.passes += 1
        step = rows or self.step
        for i in range(0, self.n, step):
            yield slice(i, min(i + step, self.n)), self._rows(self.idx[i : i + step])

    def take(self, pos: torch.Tensor) -> torch.Tensor:
        """Rows at positions ``pos`` (any order, repeats allowed), computed for the distinct clips only."""
        p = pos.cpu().numpy()
        uniq, inv = np.unique(p, return_inverse=True)
        z = self._rows(self.idx[uniq])
        return z.index_select(0, torch.from_numpy(inv.reshape(-1)).to(self.device))

    def column_groups(self, width: int):
        for a in range(0, self.d, width):
            out = torch.empty(self.n, min(width, self.d - a), dtype=torch.float32, device=self.device)
            for pos, z in self.blocks():
                out[pos] = z[:, a : a + width]
            yield a, out
            del out

    def subset(self, pos: np.ndarray) -> StreamedRows:
        """The rows at sorted positions ``pos`` of this split, with the same statistics."""
        return StreamedRows(self.source, self.idx[pos], (self.mu, self.sd))


__all__ = [
    "ConcatSource",
    "DatasetSource",
    "LayerSource",
    "ResidentRows",
    "Rows",
    "StreamedRows",
    "forward_cost",
    "gram_of",
    "training_stats",
]


def gram_of(rows: Rows, dtype: torch.dtype = torch.float64, width: int | None = None) -> torch.Tensor:
    """The uncentred training Gram matrix ``Z Z'`` of ``rows``, summed over column groups of ``width`` columns
    (all of them by default: for held rows exactly :func:`~deepfeat.probe.standardisation.gram_matrix`; one
    pass over the source per group when computed on demand)."""
    acc = GramAccumulator(rows.n, dtype, rows.device)
    for _, Zg in rows.column_groups(width or rows.d):
        acc.add(Zg)
    return acc.result()
