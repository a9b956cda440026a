"""Chance levels of the similarity measures: what a measure gives for unrelated sets at this n and these widths.

``chance`` (column of every similarity table):

- ``cka``: the exact expectation of linear CKA when the rows of one side are permuted uniformly,
  E[CKA] = tr(K_x) tr(K_y) / ((n - 1) ||K_x||_F ||K_y||_F) (K the centred Grams of the n rows the value was
  computed on; tr K = sum of the covariance eigenvalues, ||K||_F^2 = the sum of their squares), so it needs only
  the two blocks' spectra (:func:`cka_chance`). It grows with the widths relative to n: read CKA against it.
- ``cka_debiased``: 0 (the unbiased HSIC has expectation exactly 0 under a uniform permutation of one side).
- ``r2_lr``, ``r2_cca``, ``r2_svcca``: exact too. Under a uniform permutation of the rows of one side the
  projection P onto that side's centred column space (rank r) has E[P] = r / (n - 1) (I - 11'/n), so
  E[||Q_a'Q_b||_F^2] = r_a r_b / (n - 1): E[r2_lr] = r_b / (n - 1) (b the regressor), E[r2_cca] =
  max(r_a, r_b) / (n - 1) (normalised by min(r_a, r_b)), E[r2_svcca] = max(d_a, d_b) / (n - 1) over the SVCCA
  dimensions (:func:`eig_chance`).
- the other measures (mean canonical correlations, Procrustes, the held-out twins): NaN (no formula, and their
  permutation null is not computed).

``null_lo`` / ``null_hi``: the ``stats.level`` band of the permutation null of CKA and debiased CKA: on a seeded
subset of at most ``stats.chance_max_clips`` training clips (:data:`CHANCE_STREAM`; fewer when every block's Gram
on the subset would not fit half of ``memory_mb``), the clips of side a are permuted ``stats.chance_permutations``
times at the recording level (:func:`permutation_rows`) and the measure is recomputed from the subset's centred
Grams. The band is that of the SUBSET SIZE (narrower for more clips); it is not rescaled to n. Cost: the Grams of
every block on the subset (O(m_c^2 p) each) and O(T m_c^2) per pair, m_c <= ``chance_max_clips``.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from deepfeat.formats.cliptable import seeded_subset
from deepfeat.similarity.gram import _GramAcc
from deepfeat.similarity.measures import F64, _hsic1, _Spec
from deepfeat.stats import permute_by_recording, recording_codes

CHANCE_STREAM = 5  # random stream of the chance subset: seeded_subset(n, m_c, stats.seed, CHANCE_STREAM)
PERMUTATION_STREAM = 1000  # permutation t uses stream PERMUTATION_STREAM + t of permute_by_recording


def cka_chance(sx: _Spec, sy: _Spec, n: int) -> float:
    """E[CKA] under a uniform permutation of the rows of one side: tr K_x tr K_y / ((n - 1) ||K_x|| ||K_y||)."""
    den = math.sqrt(sx.fro2 * sy.fro2)
    return sx.trace * sy.trace / ((n - 1) * den) if den > 0 and n > 1 else float("nan")


def eig_chance(sx: _Spec, sy: _Spec, n: int, measure: str) -> float:
    """E[measure] under a uniform permutation of the rows of one side, for r2_lr (b the regressor: r_b / (n - 1)),
    r2_cca (max(r_a, r_b) / (n - 1)) and r2_svcca (max(d_a, d_b) / (n - 1)); NaN for any other measure or when
    the ranks are unknown."""
    if n < 2:
        return float("nan")
    if measure == "r2_lr":
        k = sy.rank
    elif measure == "r2_cca":
        k = max(sx.rank, sy.rank) if min(sx.rank, sy.rank) > 0 else -1
    elif measure == "r2_svcca":
        k = max(sx.d, sy.d) if min(sx.d, sy.d) > 0 else -1
    else:
        return float("nan")
    return k / (n - 1) if k > 0 else float("nan")


def permutation_rows(recordings, seed: int, t: int) -> np.ndarray:
    """Row map of recording-level permutation t of clips with these recordings: recording r goes where
    :func:`deepfeat.stats.permute_by_recording` (stream :data:`PERMUTATION_STREAM` + t) sends it, clip j (in row
    order) of r taking the row of clip j mod c of that recording (c its clips): a permutation of the rows when
    every recording has the same number of clips (e.g. one each), rows repeated or left out otherwise."""
    codes, R = recording_codes(recordings)
    target = permute_by_recording(codes, recordings, seed, PERMUTATION_STREAM + t)
    order = np.argsort(codes, kind="stable")
    starts = np.searchsorted(codes[order], np.arange(R))
    sizes = np.bincount(codes, minlength=R)
    pos = np.empty(len(codes), np.int64)
    pos[order] = np.arange(len(codes)) - starts[codes[order]]
    return order[starts[target] + pos % sizes[target]]


def null_band(Ka: torch.Tensor, Kbs: torch.Tensor, maps, level: float, measures, cols=None, parts=None) -> dict:
    """{measure: (lo (nb,), hi (nb,), values (T, nb))} of the permutation null of CKA / debiased CKA between the
    centred Gram ``Ka`` (m x m) of side a and the centred Grams ``Kbs[cols]`` ((nb, m, m); all of them when ``cols``
    is None): side a's rows permuted by each row map of ``maps`` (re-centred when a map repeats rows), the ``level``
    band over the maps. ``parts``: :func:`gram_parts` of ``Kbs`` (computed when not given)."""
    m = Ka.shape[0]
    T = len(maps)
    Kt = torch.empty(T, m, m, dtype=F64, device=Ka.device)
    fa = torch.empty(T, dtype=F64, device=Ka.device)
    fro_a = None
    for t, g in enumerate(maps):
        gi = torch.as_tensor(g, device=Ka.device)
        P = Kt[t]
        torch.index_select(torch.index_select(Ka, 0, gi), 1, gi, out=P)
        if len(np.unique(g)) < m:
            mu = P.mean(0)
            P.sub_(mu[None, :]).sub_(mu[:, None]).add_(mu.mean())
            fa[t] = (P * P).sum()
        else:  # a permutation: the same Gram up to the order of its rows, still centred, with the same norm
            fro_a = (Ka * Ka).sum() if fro_a is None else fro_a
            fa[t] = fro_a
    sel = slice(None) if cols is None else torch.as_tensor(cols, device=Ka.device)
    fb_all, ab_all = parts if parts is not None else gram_parts(Kbs)
    F = (Kt.reshape(T, -1) @ Kbs.reshape(len(Kbs), -1).T)[:, sel]  # (T, nb), no copy of the partners' Grams
    at = Kt.diagonal(dim1=1, dim2=2)  # (T, m)
    ab, fb = ab_all[sel], fb_all[sel]  # (nb, m), (nb,)
    del Kt
    ta, tb = at.sum(1), ab.sum(1)
    out = {}
    lo_q, hi_q = (1 - level) / 2, 1 - (1 - level) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        F_, fa_, fb_ = F.cpu().numpy(), fa.cpu().numpy(), fb.cpu().numpy()
        vals = {}
        if "cka" in measures:
            vals["cka"] = F_ / np.sqrt(fa_[:, None] * fb_[None, :])
        if "cka_debiased" in measures and m >= 4:
            ta_, tb_ = ta.cpu().numpy(), tb.cpu().numpy()
            aa = (at * at).sum(1).cpu().numpy()
            bb = (ab * ab).sum(1).cpu().numpy()
            axb = (at @ ab.T).cpu().numpy()
            hxy = _hsic1(F_, axb, ta_[:, None], tb_[None, :], m)
            hxx = _hsic1(fa_, aa, ta_, ta_, m)
            hyy = _hsic1(fb_, bb, tb_, tb_, m)
            den = np.sqrt(np.clip(hxx[:, None] * hyy[None, :], 0, None))
            vals["cka_debiased"] = np.where(den > 0, hxy / np.where(den > 0, den, 1.0), np.nan)
        for k, v in vals.items():
            lo, hi = np.quantile(v, [lo_q, hi_q], axis=0)
            out[k] = (lo, hi, v)
    return out


def gram_parts(K: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(||K_b||_F^2 (nb,), diag K_b (nb, m)) of a stack of Grams (nb, m, m)."""
    return torch.stack([(Kb * Kb).sum() for Kb in K]), K.diagonal(dim1=1, dim2=2)


class _Chance:
    """The permutation band of :class:`~deepfeat.similarity.engine._Engine` (a mixin: it uses the engine's reader
    methods, settings and results)."""

    def _chance_path(self, pairs) -> None:
        want = [m for m in ("cka", "cka_debiased") if m in self.ms]
        if not want or not pairs:
            return
        t0 = time.perf_counter()
        st = self.stats
        segs = list(dict.fromkeys(s for p in pairs for s in p))
        T = int(st["chance_permutations"])
        fit = int(math.sqrt(self.budget / 2 / (8 * (len(segs) + T + 2))))
        mc = max(4, min(self.n, int(st["chance_max_clips"]), fit))
        pick = seeded_subset(self.n, mc, st["seed"], CHANCE_STREAM)
        rec = self.recordings[self.rows[pick]]
        maps = [permutation_rows(rec, st["seed"], t) for t in range(T)]
        held = self.__dict__.pop("_chance_grams", None)
        if held is not None and mc == self.n and all(s in held[1] for s in segs):
            K, idx = held  # every training clip, all blocks in Gram space: the very Grams the values came from
            how = "the Gram-space Grams"
        else:
            del held
            K, idx = self._subset_grams(segs, pick, mc), {s: i for i, s in enumerate(segs)}
            how = f"{len(segs)} block Grams"
        by_left: dict[str, list] = {}
        for a, b in pairs:
            by_left.setdefault(a, []).append(b)
        parts = gram_parts(K)
        for a, bs in by_left.items():
            band = null_band(K[idx[a]], K, maps, st["level"], want, cols=[idx[b] for b in bs], parts=parts)
            for j, b in enumerate(bs):
                res = self.res[(a, b)]
                for mname, (lo, hi, _) in band.items():
                    if np.isfinite(res["values"].get(mname, np.nan)):
                        res["null"][mname] = (float(lo[j]), float(hi[j]))
        del K
        self.log.info(
            f"chance: {T} recording-level permutations of {mc} of {self.n} training clips for {len(pairs)} pairs "
            f"({how}) in {time.perf_counter() - t0:.1f} s"
        )

    def _subset_grams(self, segs, pick, mc) -> torch.Tensor:
        """(len(segs), mc, mc): the centred Gram of every block on the training rows ``pick`` (z-scored first for a
        standardized source; a features source computes only those rows)."""
        saved = (getattr(self, "sub_mask", None), getattr(self, "m", None))
        self.sub_mask = np.zeros(self.N, bool)
        self.sub_mask[self.rows[pick]] = True
        self.m = mc
        try:
            K = torch.empty(len(segs), mc, mc, dtype=F64, device=self.device)
            for i, s in enumerate(segs):
                src = self.seg_src[s]
                acc = _GramAcc(mc, self.device)
                for Xc in self._sub_blocks(src, *src.offsets[s]):
                    acc.add(Xc)
                acc.full(out=K[i])
            if self.pool is not None:
                self.pool.clear()
        finally:
            self.sub_mask, self.m = saved
        return K
