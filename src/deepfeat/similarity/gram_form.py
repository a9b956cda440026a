"""The Gram form of the engine: pairs with a wide block, on the seeded Gram subset of m training clips.

When every block's centred Gram fits the memory budget at once, the pairs are compared in Gram space
(:mod:`deepfeat.similarity.gram_space`: O(m^2) per pair); otherwise block by block
(:mod:`deepfeat.similarity.gram_blocks`: the centred Grams of the blocks wider than m and the principal coordinates
of the others, built once each and held while they have pairs to do, within the budget). Quadratic (and, for the
eigendecompositions, cubic) in m, so capped by ``gram_max_clips``.
"""

from __future__ import annotations

import time

import numpy as np

from deepfeat.similarity.gram import _Factor, _factor_from_centred, _factor_from_gram, _GramAcc


class _GramForm:
    """The Gram-form path of :class:`~deepfeat.similarity.engine._Engine` (a mixin: it uses the engine's reader
    methods, settings and results)."""

    def _gram_path(self, pairs):
        """Pairs with a Gram-form block, on the seeded subset of m training clips: in Gram space when every block's
        centred Gram fits the memory budget at once (:meth:`_gram_space`), else block by block
        (:meth:`_gram_blocked`)."""
        pick = self._gram_subset()
        m = self.m
        if self.cache is not None and self.cache.factor and not np.array_equal(self.cache.sub_rows, self.rows[pick]):
            raise ValueError(
                f"{self.cache.label}: its Gram subset differs from this run's (gram_max_clips / seed "
                "changed?); rebuild it"
            )
        segs = list(dict.fromkeys(s for p in pairs for s in p))
        est = self._gram_space_bytes(pairs, segs, m)
        how = "Gram space" if est <= self.budget else "block by block"
        self.log.info(
            f"Gram form for {len(pairs)} pairs ({len(segs)} blocks) on {m} of {self.n} training clips"
            + (" (seeded subset)" if m < self.n else " (all)")
            + f": {how} (every Gram at once: ~{est / 1e6:.0f} MB; memory_mb {self.budget / 1e6:g})"
        )
        if est <= self.budget:  # the held-out measures never change the path: computed when they fit as well
            self._gram_space(pairs, segs, m, heldout=self._gram_space_bytes(pairs, segs, m, True) <= self.budget)
        else:
            self._gram_blocked(pairs, segs)

    def _make_factor(self, seg) -> _Factor:
        """Principal coordinates of block ``seg`` on the m Gram rows (its covariance form when p <= m)."""
        t0 = time.perf_counter()
        src = self.seg_src[seg]
        c0, c1 = src.offsets[seg]
        p, m = c1 - c0, self.m
        if p <= m:
            X = self._read_sub(src, c0, c1)
            X -= X.mean(0)
            f = _factor_from_centred(X, self.cfg, self.boot, need_eig=self.need_eig)
            del X
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
