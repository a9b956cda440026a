"""Reading the probes' features into memory: (N x d) datasets of the stage files (:func:`load_split`) or layers
computed by a network (:func:`fill_layers`), split into train and test rows and standardised in place
(:func:`deepfeat.probe.standardisation.standardise`), into reused float32 slabs; and the grouping of equal-width
features into batched models."""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from deepfeat.formats.cliptable import TEST, TRAIN
from deepfeat.probe.standardisation import rows_per_chunk, standardise

GROUP_BYTES = 256 * 2**20  # features of equal width are stacked into one batched model up to this size


class SlabPool:
    """Float32 slabs reused group after group within one job. A fresh array of hundreds of MB costs a page
    fault per page on first touch (and, with transparent huge pages, compaction stalls: ~2-3 s per deep-probe
    job measured), for every layer; a slab is allocated once (grown when a wider feature comes) and reused."""

    def __init__(self):
        self.slabs: dict = {}

    def array(self, key, shape: tuple[int, int]) -> np.ndarray:
        size = int(np.prod(shape))
        slab = self.slabs.get(key)
        if slab is None or slab.size < size:
            self.slabs[key] = None  # free the old slab before allocating the larger one
            slab = self.slabs[key] = np.empty(size, dtype=np.float32)
        return slab[:size].reshape(shape)

    def pair(self, i: int, n_tr: int, n_te: int, d: int) -> tuple[np.ndarray, np.ndarray]:
        """(train, test) destinations of the i-th feature of a group."""
        return self.array((i, TRAIN), (n_tr, d)), self.array((i, TEST), (n_te, d))

    def release(self, key) -> None:
        """Hand the slab over to the caller (e.g. conv3 kept for the concatenations): never reused again."""
        self.slabs.pop(key, None)


def load_split(
    ds, split: np.ndarray, what: str, out: tuple[np.ndarray, np.ndarray] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Read an (N x d) dataset in row chunks straight into float32 (train, test) arrays (``out``, e.g. pooled
    slabs or column blocks of a concatenation, else new arrays), then standardise them in place: peak memory
    is the feature itself plus one reused chunk buffer."""
    n, d = ds.shape
    tr = split == TRAIN
    n_tr = int(tr.sum())
    if out is None:
        out = np.empty((n_tr, d), dtype=np.float32), np.empty((n - n_tr, d), dtype=np.float32)
    Xtr, Xte = out
    if Xtr.shape != (n_tr, d) or Xte.shape != (n - n_tr, d):
        raise ValueError(f"{what}: destination shapes {Xtr.shape}, {Xte.shape} do not fit ({n_tr} + {n - n_tr}, {d})")
    step = min(n, rows_per_chunk(d))
    buf = np.empty((step, d), dtype=np.float32)
    i_tr = i_te = 0
    for i in range(0, n, step):
        k = min(step, n - i)
        ds.read_direct(buf, np.s_[i : i + k], np.s_[0:k])
        m = tr[i : i + k]
        a = int(m.sum())
        np.compress(m, buf[:k], axis=0, out=Xtr[i_tr : i_tr + a])
        np.compress(~m, buf[:k], axis=0, out=Xte[i_te : i_te + k - a])
        i_tr, i_te = i_tr + a, i_te + k - a
    return standardise(Xtr, Xte, name=what, inplace=True)


def fill_layers(feats, state: str, layers: list[str], split: np.ndarray, outs: dict) -> None:
    """Fill the (train, test) destinations ``outs[layer]`` with the raw rows of ``layers`` of one weight state
    of a ModelFeatures / StoredFeatures, in one pass over every clip (file order, batch by batch: every layer
    from the same forward pass), then standardise each in place (:func:`load_split` for computed rows)."""
    n = int(feats.n_clips)
    tr = split == TRAIN
    at = {a: [0, 0] for a in layers}
    for pos, acts in feats.batches(state, np.arange(n), layers):
        m = tr[pos]
        k = int(m.sum())
        for a in layers:
            v = acts[a]
            v = v.cpu().numpy() if hasattr(v, "cpu") else np.asarray(v)
            Xtr, Xte = outs[a]
            i, j = at[a]
            np.compress(m, v, axis=0, out=Xtr[i : i + k])
            np.compress(~m, v, axis=0, out=Xte[j : j + len(v) - k])
            at[a] = [i + k, j + len(v) - k]
    for a in layers:
        standardise(*outs[a], name=f"{feats.label}: {state}/{a}", inplace=True)


def groups(items: list[dict], n: int) -> list[list[dict]]:
    """Split items (each with width ``d``) into batches of equal width whose stacked size fits GROUP_BYTES."""
    by_d: dict[int, list[dict]] = defaultdict(list)
    for it in items:
        by_d[it["d"]].append(it)
    out = []
    for d, its in by_d.items():
        per = max(1, GROUP_BYTES // max(1, 4 * n * d))
        out += [its[i : i + per] for i in range(0, len(its), per)]
    return out
