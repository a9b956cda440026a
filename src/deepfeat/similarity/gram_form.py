"""The Gram form of the engine: pairs with a wide block, on the seeded Gram subset of m training clips.

When every block's centred Gram fits the memory budget at once, the pairs are compared in Gram space
(:mod:`deepfeat.similarity.gram_space`: O(m^2) per pair); otherwise pair by pair in principal coordinates
(:func:`~deepfeat.similarity.gram._factor_pair`) with an LRU cache of factors.
"""

from __future__ import annotations

import time
from collections import OrderedDict

import numpy as np

from deepfeat.similarity.gram import _Factor, _factor_from_centred, _factor_from_gram, _factor_pair, _GramAcc


class _GramForm:
    """The Gram-form path of :class:`~deepfeat.similarity.engine._Engine` (a mixin: it uses the engine's reader
    methods, settings and results)."""

    def _gram_path(self, pairs):
        """Pairs with a Gram-form block, on the seeded subset of m training clips. When every block's centred
        Gram fits the memory budget at once, they are compared in Gram space (:meth:`_gram_space`: O(m^2) per
        pair); otherwise pair by pair in principal coordinates with an LRU cache of factors."""
        pick = self._gram_subset()
        m = self.m
        if self.cache is not None and self.cache.factor and not np.array_equal(self.cache.sub_rows, self.rows[pick]):
            raise ValueError(
                f"{self.cache.label}: its Gram subset differs from this run's (gram_max_clips / seed "
                "changed?); rebuild it"
            )
        segs = list(dict.fromkeys(s for p in pairs for s in p))
        est = self._gram_space_bytes(pairs, segs, m)
        how = "Gram space" if est <= self.budget else "principal coordinates, pair by pair"
        self.log.info(
            f"Gram form for {len(pairs)} pairs ({len(segs)} blocks) on {m} of {self.n} training clips"
            + (" (seeded subset)" if m < self.n else " (all)")
            + f": {how} (~{est / 1e6:.0f} MB)"
        )
        if est <= self.budget:
            self._gram_space(pairs, segs, m)
        else:
            self._gram_pairs(pairs, m)

    def _gram_pairs(self, pairs, m):
        """Pair by pair from the principal coordinates of both blocks (factors kept in an LRU cache)."""
        lru: OrderedDict[str, _Factor] = OrderedDict()
        size = {"bytes": 0}
        t0, nxt = time.perf_counter(), 30.0
        for k, (a, b) in enumerate(pairs, 1):
            fa = self._get_factor(a, lru, size, pinned=())
            fb = fa if b == a else self._get_factor(b, lru, size, pinned=(a,))
            vals, flags, psi = _factor_pair(fa, fb, self.ms, self.boot)
            self._result((a, b), vals, flags, m, "gram")
            if psi is not None:
                self.psi[(a, b)] = ("gram", psi)
            el = time.perf_counter() - t0
            if el >= nxt or k == len(pairs):
                self.log.info(f"  Gram form: {k}/{len(pairs)} pairs, {el:.0f} s")
                nxt = el + 30.0

    def _get_factor(self, seg, lru, size, pinned) -> _Factor:
        if self.cache is not None and seg in self.cache.factor:
            return self.cache.factor[seg]
        if seg in lru:
            lru.move_to_end(seg)
            return lru[seg]
        f = self._make_factor(seg)
        nb = f.nbytes()
        while lru and size["bytes"] + nb > self.budget:
            victim = next((s for s in lru if s not in pinned), None)
            if victim is None:
                break
            size["bytes"] -= lru.pop(victim).nbytes()
        lru[seg] = f
        size["bytes"] += nb
        return f

    def _make_factor(self, seg) -> _Factor:
        t0 = time.perf_counter()
        src = self.seg_src[seg]
        c0, c1 = src.offsets[seg]
        p, m = c1 - c0, self.m
        if p <= m:
            X = self._read_sub(src, c0, c1)
            f = _factor_from_centred(X - X.mean(0), self.cfg, self.boot, need_eig=self.need_eig)
            how = "covariance"
        else:
            K = _GramAcc(m, self.device)
            for X in self._sub_blocks(src, c0, c1):
                K.add(X)
            f = _factor_from_gram(K.full(), p, self.cfg, self.boot)
            how = "Gram"
        el = time.perf_counter() - t0
        if el > 2:
            self.log.info(f"  {seg}: {p} columns, {how} eigendecomposition on {m} clips in {el:.1f} s")
        return f
