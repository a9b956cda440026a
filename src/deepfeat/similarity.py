"""Representational similarity of deep and hand-crafted features (the method's Experiments 2 and 3).

Definitions. X (n x p1, representation "a") and Y (n x p2, representation "b") hold one row per training clip;
columns are centred. C_xy = X'Y, C_xx = X'X, C_yy = Y'Y (unnormalised sums; every measure is scale-free).

- ``cka``: linear CKA = ||C_xy||_F^2 / (||C_xx||_F ||C_yy||_F) (Kornblith et al. 2019), in [0, 1].
- ``cka_debiased``: HSIC_1(X,Y) / sqrt(HSIC_1(X,X) HSIC_1(Y,Y)) with HSIC_1 the unbiased estimator (Song et al.
  2012) for linear kernels: n(n-3) HSIC_1 = ||C_xy||^2 - n/(n-2) sum_i a_i b_i + tr(C_xx) tr(C_yy)/((n-1)(n-2)),
  a_i = ||x_i||^2, b_i = ||y_i||^2 the squared norms of the centred rows. ~0 for independent features at any
  p/n, where plain CKA is biased upwards (~ sqrt(p1 p2 / ((p1+n)(p2+n))) for independent noise).
- ``r2_lr``: ||Q_Y'X||_F^2 / ||X||_F^2 = tr(C_xy C_yy^+ C_yx) / tr(C_xx): the fraction of the variance of
  representation a explained by least-squares regression on b (deep layer on hand-crafted feature for
  ``deep_vs_handcrafted``; earlier layer on later layer for ``layer_vs_layer``).
- ``r2_cca`` / ``rho_cca``: mean squared / mean canonical correlation, sum_k s_k^2 / K and sum_k s_k / K with
  s the singular values of Q_X'Q_Y and K = min(rank X, rank Y) (= ||Q_Y'Q_X||_F^2 / p1, ||Q_Y'Q_X||_* / p1
  of method.md whenever p1 <= p2 and X has full column rank).
- ``r2_svcca`` / ``rho_svcca``: the same between U_X and U_Y, the leading left singular vectors of X and of Y
  that explain ``svcca_variance`` of their variance: d = min{k : sum_{i<=k} l_i / sum l >= 0.99} with l the
  squared singular values, i.e. the component whose cumulative share crosses the threshold is kept;
  normalised by min(d_X, d_Y).

Computation (design.md, "Similarity numerics"). All measures of a pair come from covariance blocks
accumulated in ONE streamed float64 pass over the training clips (:class:`Moments`): each block is shifted by a
pilot (the mean of its first chunk) so that the sums barely cancel, then C_xy = M_xy - S_x S_y'/n. The debiased
HSIC needs sum_i a_i b_i of the *centred* rows; it is recovered exactly from sums of the shifted rows
(sum alpha_i beta_i, sum alpha_i w_i, sum beta_i z_i with alpha, beta the shifted squared norms). Whitening for
LR/CCA/SVCCA uses eigh(C) with a relative rank cutoff: components with eigenvalue <= ``rank_rtol`` x the largest
are dropped. LR, CCA and SVCCA values are NaN with a ``flag`` when the rank (or the SVCCA dimension) reaches
n - 1: the centred data then span every direction and these measures are trivially 1.
Blocks with more than ``max_features`` columns, or at least as many columns as training clips, use the exact
Gram form instead: on a seeded subset of m = min(n, ``gram_max_clips``) training clips (all of them when n is
small enough, so the values equal the feature form), the centred Gram K = X_c X_c' (columns centred first,
never via H K H; one BLAS dsyrk per column chunk) is eigendecomposed, K = U L U' (a block with p <= m: its p x p
covariance instead, U = X_c V L^(-1/2)). Pairs are then evaluated in Gram space, all blocks' K held at once:
||C_xy||_F^2 = <K_x, K_y>, sum_i a_i b_i from the diagonals, LR = <K_x, P_y> / tr K_x with P_y = U_r U_r' the
projector on b's leading ``rank`` directions, CCA and SVCCA from the singular values of U_x'U_y over the rank / SVCCA
subspaces (one product per left block against all partners), the bootstrap's r_i = sum_j K_x,ij K_y,ij (one batched
product): O(m^2) per pair instead of O(m p_x p_y). When the Grams do not fit ``memory_mb``, pairs are evaluated one
by one from principal coordinates B = U L^(1/2) (R = B_x'B_y, an LRU cache of factors). ``method`` = gram, ``n`` = m.
Singular values come from the eigenvalues of the smaller Gram of the matrix when its condition allows (smallest
eigenvalue >= 1e-6 x the largest), else from an SVD.

Hand-crafted self terms (:class:`HandcraftedMoments`, rule ``handcrafted_moments``): everything the measures need
of a hand-crafted feature alone - its z-scoring, covariance spectrum (V, lam, trace, ||C_yy||_F^2, sum_i b_i^2) and
per-clip q_i on the training clips, and its Gram-subset factor - is computed once per dataset and cached; each
``similarity_deep`` job then computes only its deep blocks' self terms and the cross terms (per deep block, ONE
streamed pass for its cross-products with all feature-form hand-crafted features, one Gram-space product with all
Gram-form ones). The values equal the uncached computation (tested to 1e-10).

Chance level. LR, CCA and SVCCA grow with the dimensions relative to n even for unrelated data (the expected
r2_cca of independent Gaussian blocks is ~ p1/(n-1) for p1 <= p2); read them against the ``Random`` feature,
and prefer ``cka_debiased`` when p is not small compared with n.

Scaling. Hand-crafted features come in arbitrary units; every hand-crafted column is z-scored with the mean and
standard deviation (ddof 0) of the training clips before anything is computed (constant columns, std <= 1e-6 |mean|
or 0, become 0). CKA is invariant to isotropic scaling but not to per-column scaling: z-scoring gives every
hand-crafted dimension the same weight, as in the reference's StandardScaler-based pipelines. Deep features are
compared as they are (raw activations; the comparisons between layers/seeds/architectures then weigh directions
by their activation variance, as CKA intends).

Bootstrap (``ci_low``/``ci_high``, CKA only). B = ``bootstrap`` multinomial resamples of the clips (rows),
seeded with ``seed``. Each resample is evaluated with the first-order (influence-function) expansion of log CKA
computed from exact per-row contributions: CKA*_b = CKA exp((1/n) sum_i w_bi psi_i / CKA) with
psi_i = 2n r_i / (||C_xx|| ||C_yy||) - CKA n (q^x_i / ||C_xx||^2 + q^y_i / ||C_yy||^2), r_i = x_i'C_xy y_i,
q^x_i = x_i'C_xx x_i (a delta-method bootstrap; sum_i psi_i = 0 exactly). It needs one extra pass over the clips
instead of B passes and does not inherit the upward bias that duplicated rows cause in a naive resampling of
CKA (duplicates inflate the diagonal of the Gram matrices). The interval is the 2.5 and 97.5 percentiles,
clipped to [0, 1]. Rows that are not CKA have NaN intervals.

Entry points: :func:`handcrafted_moments` (+ :func:`write_handcrafted_moments` / :func:`read_handcrafted_moments`),
:func:`similarity_deep` (one model: every layer vs every hand-crafted feature, trained vs untrained per layer, layer
vs layer), :func:`similarity_channels` (channel vs channel CKA of conv1/pool1 on a seeded subset of at most
``channel_max_clips`` training clips),
:func:`similarity_cross` (seed vs seed and architecture vs architecture at the same layer). Output columns:
``COLUMNS`` (docs/formats.md); channels are written as layer ``conv1/ch3``.
"""
from __future__ import annotations

import json
import math
import time
from collections import OrderedDict
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from scipy.linalg.blas import dsyrk as _dsyrk

from deepfeat.io import STR, get_logger, open_h5, pick_device, read_clip_table, write_h5

MEASURES = ("cka", "cka_debiased", "r2_lr", "r2_cca", "rho_cca", "r2_svcca", "rho_svcca")
EIG_MEASURES = frozenset({"r2_lr", "r2_cca", "rho_cca", "r2_svcca", "rho_svcca"})
COLUMNS = [
    "dataset", "comparison", "task", "arch_a", "seed_a", "layer_a", "trained_a", "arch_b", "seed_b", "layer_b",
    "trained_b", "feature_b", "measure", "value", "ci_low", "ci_high", "n", "p_a", "p_b", "method", "flag",
]
STATES = ("trained", "untrained")
ARCH_ORDER = ("Regular", "Deformable", "Dilated", "1dF", "1dT", "FeedForward")
CHANNEL_LAYERS = ("conv1", "pool1")
DEFAULTS = {
    "measures": list(MEASURES),
    "svcca_variance": 0.99,
    "max_features": 12000,
    "gram_max_clips": 10000,
    "channel_max_clips": 512,
    "bootstrap": 0,
    "seed": 0,
    "device": "auto",
    "rank_rtol": 1e-10,
    "chunk_size": 1024,
    "memory_mb": 4000,
}
F64 = torch.float64
_CONST_RTOL = 1e-6  # a hand-crafted column with std <= this x |mean| is constant (float32 rounding, not signal)


def _config(params: Mapping | None) -> dict:
    """Defaults + the config section ``similarity``, checked; unknown keys are ignored (the schema owns them)."""
    cfg = {**DEFAULTS, **{k: v for k, v in dict(params or {}).items() if k in DEFAULTS}}
    bad = [m for m in cfg["measures"] if m not in MEASURES]
    if bad or not cfg["measures"]:
        raise ValueError(f"similarity.measures {cfg['measures']}: expected a non-empty subset of {list(MEASURES)}")
    cfg["measures"] = [m for m in MEASURES if m in set(cfg["measures"])]
    if not 0 < float(cfg["svcca_variance"]) <= 1:
        raise ValueError(f"similarity.svcca_variance must be in (0, 1], got {cfg['svcca_variance']}")
    for k, lo in (("max_features", 1), ("gram_max_clips", 4), ("channel_max_clips", 4), ("bootstrap", 0),
                  ("chunk_size", 1)):
        if int(cfg[k]) < lo:
            raise ValueError(f"similarity.{k} must be >= {lo}, got {cfg[k]}")
        cfg[k] = int(cfg[k])
    if not float(cfg["memory_mb"]) > 0:
        raise ValueError(f"similarity.memory_mb must be > 0, got {cfg['memory_mb']}")
    cfg["memory_mb"] = float(cfg["memory_mb"])
    if not 0 <= float(cfg["rank_rtol"]) < 1:
        raise ValueError(f"similarity.rank_rtol must be in [0, 1), got {cfg['rank_rtol']}")
    cfg["svcca_variance"], cfg["rank_rtol"] = float(cfg["svcca_variance"]), float(cfg["rank_rtol"])
    return cfg


def _t64(x, device) -> torch.Tensor:
    return torch.as_tensor(x).to(device=device, dtype=F64)


# ----------------------------------------------------------------------------------------------------------
# Streamed moments
# ----------------------------------------------------------------------------------------------------------
class Moments:
    """Streamed float64 first and second moments of column blocks, and cross-products of chosen block pairs.

    ``groups``: {group: {segment: width}} (or {group: width} for a one-segment group of the same name). A group
    is a set of columns delivered together to :meth:`update` as one (rows x total width) array; its segments
    are the blocks compared (e.g. group "handcrafted" with one segment per feature). ``cross``: pairs of groups
    whose full cross-product is accumulated (one matmul per chunk for all their segment pairs). ``self_cov``:
    True (all groups), False, or the groups whose per-segment self-covariance is accumulated.

    Per group, rows are shifted by a pilot (the mean of the first chunk) before anything is summed: S = sum z,
    per segment sum alpha, sum alpha^2, sum alpha z (alpha_i = ||z_i||^2 within the segment) and M = sum z z'.
    Per cross pair: M_xy = sum z w', sum alpha beta, sum alpha w, sum beta z. The accessors return exact
    centred quantities: :meth:`cov` (C = M - S S'/n), :meth:`cross_cov`, :meth:`trace`, :meth:`aa`
    (sum_i a_i^2) and :meth:`ab` (sum_i a_i b_i), a_i, b_i the squared norms of the centred rows.

    ``row_norms=False`` skips every sum of row norms (trace, aa, ab then raise): only CKA-type cross-products are
    wanted. ``centred``: groups whose columns already have mean ~0 (e.g. z-scored with the same rows' statistics);
    they get no pilot shift (one pass less over their rows).
    """

    def __init__(self, groups: Mapping, cross: Iterable[tuple[str, str]] = (), self_cov=True, device="cpu",
                 row_norms: bool = True, centred: Iterable[str] = ()):
        self.row_norms = bool(row_norms)
        self._centred = set(centred)
        self.device = torch.device(device)
        self._syrk = self.device.type == "cpu"
        self._full: dict[str, torch.Tensor] = {}
        self._g: dict[str, dict] = {}
        self._seg: dict[str, tuple[str, int, int, int]] = {}
        for g, segs in groups.items():
            if isinstance(segs, (int, np.integer)):
                segs = {g: int(segs)}
            names = list(segs)
            widths = [int(segs[s]) for s in names]
            if not names or min(widths) < 1:
                raise ValueError(f"Moments: group '{g}' needs segments of width >= 1, got {dict(segs)}")
            off = np.concatenate([[0], np.cumsum(widths)]).astype(np.int64)
            P, ns = int(off[-1]), len(names)
            z = lambda *s: torch.zeros(*s, dtype=F64, device=self.device)  # noqa: E731
            self._g[g] = dict(
                names=names, off=off, P=P,
                shift=None, S=z(P), sa=z(ns), saa=z(ns), saz=z(P), M={},
            )
            for i, s in enumerate(names):
                if s in self._seg:
                    raise ValueError(f"Moments: segment name '{s}' is used twice")
                self._seg[s] = (g, i, int(off[i]), int(off[i + 1]))
        if self_cov is True:
            self._self = set(self._g)
        else:
            self._self = set(self_cov or ())
        unknown = self._self - set(self._g)
        if unknown:
            raise ValueError(f"Moments: self_cov names unknown groups {sorted(unknown)}")
        for g in self._self:
            st = self._g[g]
            for i, s in enumerate(st["names"]):
                w = int(st["off"][i + 1] - st["off"][i])
                # on CPU the upper triangle only, updated by BLAS dsyrk (half the flops of a full product)
                st["M"][s] = (np.zeros((w, w), order="F") if self._syrk else
                              torch.zeros(w, w, dtype=F64, device=self.device))
        self._cross: dict[tuple[str, str], dict] = {}
        for a, b in cross:
            if a not in self._g or b not in self._g or a == b:
                raise ValueError(f"Moments: cross pair ({a}, {b}) must name two different groups of {list(self._g)}")
            if (a, b) in self._cross or (b, a) in self._cross:
                continue
            Pa, Pb = self._g[a]["P"], self._g[b]["P"]
            na, nb = len(self._g[a]["names"]), len(self._g[b]["names"])
            self._cross[(a, b)] = dict(
                M=torch.zeros(Pa, Pb, dtype=F64, device=self.device),
                AB=torch.zeros(na, nb, dtype=F64, device=self.device),
                AZ=torch.zeros(na, Pb, dtype=F64, device=self.device),
                ZB=torch.zeros(Pa, nb, dtype=F64, device=self.device),
            )
        self.n = 0

    # -- accumulation -------------------------------------------------------------------------------------
    def update(self, batch: Mapping[str, object]) -> None:
        """Add a chunk of rows: {group: (rows x width) array or tensor}, the same rows for every group."""
        rows = None
        z, al = {}, {}
        for g, st in self._g.items():
            if g not in batch:
                raise KeyError(f"Moments.update: no data for group '{g}'")
            x = _t64(batch[g], self.device)
            if x.ndim != 2 or x.shape[1] != st["P"]:
                raise ValueError(f"Moments.update: group '{g}' needs (rows x {st['P']}), got {tuple(x.shape)}")
            if rows is None:
                rows = x.shape[0]
            elif x.shape[0] != rows:
                raise ValueError(f"Moments.update: group '{g}' has {x.shape[0]} rows, others {rows}")
            z[g] = x
        if not rows:
            return
        self._full.clear()
        for g, st in self._g.items():
            if g in self._centred:
                if st["shift"] is None:
                    st["shift"] = torch.zeros(st["P"], dtype=F64, device=self.device)
                zz = z[g]
            else:
                if st["shift"] is None:
                    st["shift"] = z[g].mean(0)
                zz = z[g] - st["shift"]
            a = torch.empty(rows, len(st["names"]), dtype=F64, device=self.device) if self.row_norms else None
            for i, s in enumerate(st["names"]):
                o0, o1 = st["off"][i], st["off"][i + 1]
                zs = zz[:, o0:o1]
                if a is not None:
                    a[:, i] = torch.linalg.vecdot(zs, zs)
                    st["saz"][o0:o1].addmv_(zs.T, a[:, i])
                if g in self._self:
                    if self._syrk:
                        # (C-contiguous rows).T is Fortran-ordered: f2py then passes it without a slow copy
                        zf = np.ascontiguousarray(zs.numpy()).T
                        st["M"][s] = _dsyrk(1.0, zf, beta=1.0, c=st["M"][s], trans=0, lower=0, overwrite_c=1)
                    else:
                        st["M"][s].addmm_(zs.T, zs)
            st["S"] += zz.sum(0)
            if a is not None:
                st["sa"] += a.sum(0)
                st["saa"] += (a * a).sum(0)
            z[g], al[g] = zz, a
        for (ga, gb), c in self._cross.items():
            c["M"].addmm_(z[ga].T, z[gb])
            if self.row_norms:
                c["AB"].addmm_(al[ga].T, al[gb])
                c["AZ"].addmm_(al[ga].T, z[gb])
                c["ZB"].addmm_(z[ga].T, al[gb])
        self.n += rows

    # -- centred statistics -------------------------------------------------------------------------------
    def _selfM(self, g, seg) -> torch.Tensor:
        """The full symmetric sum of products of a segment (cached until the next update)."""
        if seg not in self._full:
            M = self._g[g]["M"][seg]
            if isinstance(M, np.ndarray):  # upper triangle (dsyrk): mirror it
                U = torch.from_numpy(M).triu()
                M = U + U.triu(1).T
            else:
                M = (M + M.T) / 2
            self._full[seg] = M
        return self._full[seg]

    def _loc(self, seg):
        if seg not in self._seg:
            raise KeyError(f"Moments: unknown segment '{seg}'")
        if self.n == 0:
            raise ValueError("Moments: no rows were added")
        return self._seg[seg]

    def _m(self, seg) -> torch.Tensor:
        g, _, o0, o1 = self._loc(seg)
        return self._g[g]["S"][o0:o1] / self.n

    def mean(self, seg) -> torch.Tensor:
        g, _, o0, o1 = self._loc(seg)
        st = self._g[g]
        return st["shift"][o0:o1] + st["S"][o0:o1] / self.n

    def _need_norms(self, what):
        if not self.row_norms:
            raise ValueError(f"Moments.{what}: row norms were not accumulated (row_norms=False)")

    def trace(self, seg) -> float:
        """tr C = sum_i a_i (sum of squares of the centred block)."""
        self._need_norms("trace")
        g, i, _, _ = self._loc(seg)
        m = self._m(seg)
        return float(self._g[g]["sa"][i] - self.n * (m @ m))

    def cov(self, seg) -> torch.Tensor:
        """Centred sum of squares and cross-products C = X_c'X_c of one segment (p x p, symmetric)."""
        g, _, o0, o1 = self._loc(seg)
        if g not in self._self:
            raise ValueError(f"Moments: segment '{seg}' has no self-covariance (group '{g}' not in self_cov)")
        S = self._g[g]["S"][o0:o1]
        return self._selfM(g, seg) - torch.outer(S, S) / self.n  # exactly symmetric

    def aa(self, seg) -> float:
        """sum_i a_i^2 with a_i the squared norm of the centred row i (needs the self-covariance)."""
        self._need_norms("aa")
        g, i, o0, o1 = self._loc(seg)
        st = self._g[g]
        if g not in self._self:
            raise ValueError(f"Moments: segment '{seg}' has no self-covariance (group '{g}' not in self_cov)")
        m, n = self._m(seg), self.n
        mm = m @ m
        return float(
            st["saa"][i] - 4 * (st["saz"][o0:o1] @ m) + 4 * (m @ self._selfM(g, seg) @ m) + 2 * mm * st["sa"][i]
            - 3 * n * mm * mm
        )

    def _cross_parts(self, sx, sy):
        """(sum z w', sum alpha beta, sum alpha_x w, sum beta_y z) of two segments of different groups."""
        gx, i, a0, a1 = self._loc(sx)
        gy, j, b0, b1 = self._loc(sy)
        if (gx, gy) in self._cross:
            c = self._cross[(gx, gy)]
            return c["M"][a0:a1, b0:b1], c["AB"][i, j], c["AZ"][i, b0:b1], c["ZB"][a0:a1, j]
        if (gy, gx) in self._cross:
            c = self._cross[(gy, gx)]
            return c["M"][b0:b1, a0:a1].T, c["AB"][j, i], c["ZB"][b0:b1, i], c["AZ"][j, a0:a1]
        raise ValueError(f"Moments: no cross-product accumulated between '{sx}' (group {gx}) and '{sy}' (group {gy})")

    def cross_cov(self, sx, sy) -> torch.Tensor:
        """C_xy = X_c'Y_c (p1 x p2) of two segments (the same segment gives :meth:`cov`)."""
        if sx == sy:
            return self.cov(sx)
        M = self._cross_parts(sx, sy)[0]
        gx, _, a0, a1 = self._loc(sx)
        gy, _, b0, b1 = self._loc(sy)
        return M - torch.outer(self._g[gx]["S"][a0:a1], self._g[gy]["S"][b0:b1]) / self.n

    def ab(self, sx, sy) -> float:
        """sum_i a_i b_i, a_i and b_i the squared norms of the centred rows of the two segments."""
        if sx == sy:
            return self.aa(sx)
        self._need_norms("ab")
        M, sab, axw, byz = self._cross_parts(sx, sy)
        gx, i, _, _ = self._loc(sx)
        gy, j, _, _ = self._loc(sy)
        mx, my, n = self._m(sx), self._m(sy), self.n
        mxx, myy = mx @ mx, my @ my
        return float(
            sab - 2 * (axw @ my) - 2 * (byz @ mx) + 4 * (mx @ M @ my) + myy * self._g[gx]["sa"][i]
            + mxx * self._g[gy]["sa"][j] - 3 * n * mxx * myy
        )


# ----------------------------------------------------------------------------------------------------------
# Spectra and the measures of one pair
# ----------------------------------------------------------------------------------------------------------
@dataclass
class _Spec:
    """What the measures need of one block on a fixed set of n rows (sums, not means)."""

    n: int
    p: int
    trace: float  # tr C = sum_i a_i
    fro2: float  # ||C||_F^2 = ||K||_F^2
    aa: float  # sum_i a_i^2
    lam: torch.Tensor | None = None  # eigenvalues of C (descending, clipped at 0)
    V: torch.Tensor | None = None  # eigenvectors (p x len(lam)); None: coordinates are already principal
    C: torch.Tensor | None = None  # the covariance, kept only when no eigendecomposition was made
    mean: torch.Tensor | None = None
    rank: int = -1
    d: int = -1  # SVCCA dimension

    def nbytes(self) -> int:
        return sum(int(t.numel()) * 8 for t in (self.lam, self.V, self.C, self.mean) if t is not None)


class _SpecLazyV(_Spec):
    """A cached spectrum whose eigenvectors V are read only when first used (CKA alone never needs them)."""

    def __init__(self, load_V: Callable, **kw):
        self._V, self._load_V = None, load_V
        super().__init__(**kw)

    @property
    def V(self):
        if self._V is None and self._load_V is not None:
            self._V, self._load_V = self._load_V(), None
        return self._V

    @V.setter
    def V(self, v):
        self._V = v


def _eigh_desc(A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    lam, V = torch.linalg.eigh(A)
    return lam.flip(0).clamp_min(0), V.flip(1)


def _rank(lam: torch.Tensor, rtol: float) -> int:
    if lam.numel() == 0 or float(lam[0]) <= 0:
        return 0
    return int((lam > rtol * lam[0]).sum())


def _svcca_dim(lam: torch.Tensor, variance: float, rank: int) -> int:
    """Smallest k whose leading k eigenvalues hold >= ``variance`` of the total (the crossing one is kept)."""
    total = float(lam.sum())
    if total <= 0 or rank == 0:
        return 0
    cum = torch.cumsum(lam, 0) / total
    k = int(torch.searchsorted(cum, torch.tensor([variance], dtype=cum.dtype, device=cum.device))[0]) + 1
    return max(1, min(k, rank))


def _spec_from_cov(C, n, aa, cfg, need_eig, mean=None) -> _Spec:
    s = _Spec(n=n, p=C.shape[0], trace=float(C.diagonal().sum().clamp_min(0)), fro2=float((C * C).sum()), aa=aa,
              mean=mean)
    if need_eig:
        s.lam, s.V = _eigh_desc(C)
        s.rank = _rank(s.lam, cfg["rank_rtol"])
        s.d = _svcca_dim(s.lam, cfg["svcca_variance"], s.rank)
    else:
        s.C = C
    return s


def _svals(W: torch.Tensor) -> torch.Tensor:
    """Singular values of W, descending: the square roots of the eigenvalues of the smaller Gram (W'W or WW'),
    about twice as fast as an SVD, when its smallest eigenvalue is >= 1e-6 x its largest: every singular value s is
    then >= 1e-3 s_max and off by at most ~k eps s_max^2 / (2 s) <= k eps / 2e-3 s_max (5e-11 s_max for k = 1000,
    far less in practice); otherwise the SVD."""
    r, c = W.shape
    if min(r, c) == 0:
        return W.new_zeros(0)
    lam = torch.linalg.eigvalsh(W.T @ W if r >= c else W @ W.T)
    if float(lam[-1]) > 0 and float(lam[0]) >= 1e-6 * float(lam[-1]):
        return lam.flip(0).sqrt()
    return torch.linalg.svdvals(W)


def _white_right(M: torch.Tensor, s: _Spec, k: int) -> torch.Tensor:
    """M W with W = V[:, :k] diag(lam[:k])^(-1/2) (the first k whitened principal axes of s)."""
    scale = s.lam[:k].rsqrt()
    if s.V is None:
        return M[:, :k] * scale
    return M @ (s.V[:, :k] * scale)


def _white_left(M: torch.Tensor, s: _Spec, k: int) -> torch.Tensor:
    """W'M, W as in :func:`_white_right`."""
    scale = s.lam[:k].rsqrt()
    if s.V is None:
        return M[:k] * scale[:, None]
    return (s.V[:, :k] * scale).T @ M


def _hsic1(F: float, ab: float, ta: float, tb: float, n: int) -> float:
    """n(n-3) x the unbiased HSIC of two linear kernels from ||C_xy||^2, sum a_i b_i and the traces."""
    return F - n / (n - 2) * ab + ta * tb / ((n - 1) * (n - 2))


def _measures(F: float, ab: float, sx: _Spec, sy: _Spec, measures, n: int, lr: Callable | None = None,
              cca_sv: Callable | None = None, svcca_sv: Callable | None = None):
    """({measure: value}, {measure: flag}) of one pair from its parts.

    F = ||C_xy||_F^2 (= <K_x, K_y>), ab = sum_i a_i b_i; the eigen-based parts are callables evaluated only when
    their measure is asked and defined: ``lr()`` = tr(C_xy C_yy^+ C_yx) with C_yy^+ the rank-truncated inverse
    (= <K_x, P_y>, P_y the projector onto b's leading ``rank`` directions), ``cca_sv()`` / ``svcca_sv()`` the
    singular values of U_x'U_y over the rank / SVCCA subspaces (the canonical correlations).
    """
    nan = float("nan")
    vals, flags = {}, {}
    zero = not (sx.fro2 > 0 and sy.fro2 > 0)
    zflag = "zero_variance_" + ("a" if not sx.fro2 > 0 else "b")

    def setnan(ms, flag):
        for m in ms:
            if m in measures:
                vals[m], flags[m] = nan, flag

    if "cka" in measures:
        if zero:
            setnan(["cka"], zflag)
        else:
            vals["cka"] = F / math.sqrt(sx.fro2 * sy.fro2)
    if "cka_debiased" in measures:
        if zero:
            setnan(["cka_debiased"], zflag)
        elif n < 4:
            setnan(["cka_debiased"], f"n={n}<4")
        else:
            hxy = _hsic1(F, ab, sx.trace, sy.trace, n)
            hxx = _hsic1(sx.fro2, sx.aa, sx.trace, sx.trace, n)
            hyy = _hsic1(sy.fro2, sy.aa, sy.trace, sy.trace, n)
            if hxx > 0 and hyy > 0:
                vals["cka_debiased"] = hxy / math.sqrt(hxx * hyy)
            else:
                setnan(["cka_debiased"], "hsic_self<=0")
    eig = [m for m in measures if m in EIG_MEASURES]
    if not eig:
        return vals, flags
    if zero:
        setnan(eig, zflag)
        return {m: vals[m] for m in measures}, {m: flags[m] for m in measures if m in flags}
    if "r2_lr" in measures:
        if sy.rank >= n - 1:
            setnan(["r2_lr"], f"rank_b={sy.rank}>=n-1={n - 1}")
        else:
            vals["r2_lr"] = float(lr()) / sx.trace
    # CCA over the full ranks, SVCCA over the 99 %-variance dimensions d: the same two numbers from singular values
    for (r2, rho), dim, label, svals in ((("r2_cca", "rho_cca"), "rank", "rank", cca_sv),
                                         (("r2_svcca", "rho_svcca"), "d", "svcca_dim", svcca_sv)):
        ms = [m for m in (r2, rho) if m in measures]
        if not ms:
            continue
        da, db = getattr(sx, dim), getattr(sy, dim)
        bad = [f"{label}_{k}={v}>=n-1={n - 1}" for k, v in (("a", da), ("b", db)) if v >= n - 1]
        if bad:
            setnan(ms, ";".join(bad))
        else:
            sv = svals()
            k = min(da, db)
            vals[r2], vals[rho] = float((sv * sv).sum()) / k, float(sv.sum()) / k
    return {m: vals[m] for m in measures}, {m: flags[m] for m in measures if m in flags}


def _pair_measures(cxy: torch.Tensor, sx: _Spec, sy: _Spec, ab: float, measures, n: int):
    """({measure: value}, {measure: flag}) from the cross-covariance ``cxy`` (in the coordinates of sx/sy)."""
    memo = {}

    def p1():  # C_xy W_y, p1 x rank_y
        if "p1" not in memo:
            memo["p1"] = _white_right(cxy, sy, sy.rank)
        return memo["p1"]

    return _measures(
        float((cxy * cxy).sum()), ab, sx, sy, measures, n,
        lr=lambda: float((p1() * p1()).sum()),
        cca_sv=lambda: _svals(_white_left(p1(), sx, sx.rank)),
        svcca_sv=lambda: _svals(_white_left(p1()[:, : sy.d], sx, sx.d)),
    )


def _cka_psi(r, qx, qy, sx: _Spec, sy: _Spec, cka_value: float, n: int):
    """Per-row influence values of CKA (their mean is 0): see the module docstring."""
    den = math.sqrt(sx.fro2 * sy.fro2)
    return 2 * n * r / den - cka_value * n * (qx / sx.fro2 + qy / sy.fro2)


def _bootstrap_ci(values: np.ndarray, psi: np.ndarray, B: int, seed: int, tag: int):
    """2.5/97.5 percentiles of CKA over B multinomial resamples of the rows, each evaluated by the first-order
    expansion of log CKA: CKA*_b = CKA exp((1/n) sum_i w_bi psi_i / CKA), clipped to [0, 1].

    values (P,), psi (n x P) per-row influence values of CKA. The same seeded resamples serve every pair of
    one row set. The log scale keeps the interval inside (0, 1] and skewed like CKA's own distribution.
    """
    n = psi.shape[0]
    rng = np.random.default_rng([int(seed), int(n), int(tag)])
    W = rng.multinomial(n, np.full(n, 1.0 / n), size=B).astype(np.float64)
    delta = (W @ psi) / n
    pos = values > 0
    boots = np.where(pos, values * np.exp(delta / np.where(pos, values, 1.0)), values + delta)
    lo, hi = np.quantile(np.clip(boots, 0.0, 1.0), [0.025, 0.975], axis=0)
    return lo, hi


# ----------------------------------------------------------------------------------------------------------
# Factors (Gram form and principal coordinates on a set of rows)
# ----------------------------------------------------------------------------------------------------------
@dataclass
class _Factor:
    """A block on m rows in principal coordinates: B (m x r) with B'B = diag(lam) and BB' = the centred Gram."""

    B: torch.Tensor
    spec: _Spec
    a: torch.Tensor  # squared norms of the centred rows (diag of the Gram)
    q: torch.Tensor | None  # per-row influence self terms x_i'C x_i = sum_j K_ij^2

    def nbytes(self) -> int:
        return int(self.B.numel() + self.a.numel() + (0 if self.q is None else self.q.numel())) * 8 + self.spec.nbytes()


class _LazyFactor(_Factor):
    """A cached factor whose B is read only when first used (Gram-space jobs with a cached Gram never need it)."""

    def __init__(self, load_B: Callable, spec: _Spec, a: torch.Tensor, q: torch.Tensor | None):
        self._load_B, self._B, self.spec, self.a, self.q = load_B, None, spec, a, q

    @property
    def B(self) -> torch.Tensor:
        if self._B is None:
            self._B = self._load_B()
        return self._B


def _factor_from_gram(K: torch.Tensor, p: int, cfg, need_q: bool) -> _Factor:
    m = K.shape[0]
    a = K.diagonal().clone()
    q = (K * K).sum(1) if need_q else None
    fro2 = float((K * K).sum())
    lam, U = _eigh_desc(K)
    del K
    B = U * lam.sqrt()
    del U
    spec = _Spec(n=m, p=p, trace=float(a.sum()), fro2=fro2, aa=float(a @ a), lam=lam, V=None)
    spec.rank = _rank(lam, cfg["rank_rtol"])
    spec.d = _svcca_dim(lam, cfg["svcca_variance"], spec.rank)
    return _Factor(B, spec, a, q)


def _factor_from_centred(X: torch.Tensor, cfg, need_q: bool, via: str = "auto", need_eig: bool = True) -> _Factor:
    """Principal coordinates of the centred block X (m x p): via its covariance (p <= m) or its Gram.

    Without ``need_eig`` (only CKA / debiased CKA asked) a block with p <= m keeps B = X itself (BB' is the
    Gram all the same) and skips the eigendecomposition.
    """
    m, p = X.shape
    if via == "gram" or (via == "auto" and p > m):
        return _factor_from_gram(X @ X.T, p, cfg, need_q)
    C = X.T @ X
    fro2 = float((C * C).sum())
    a = (X * X).sum(1)
    spec = _Spec(n=m, p=p, trace=float(a.sum()), fro2=fro2, aa=float(a @ a), V=None)
    if not need_eig:
        q = ((X @ C) * X).sum(1) if need_q else None
        return _Factor(X, spec, a, q)
    lam, V = _eigh_desc(C)
    del C
    B = X @ V
    q = (B * B) @ lam if need_q else None
    spec.lam = lam
    spec.rank = _rank(lam, cfg["rank_rtol"])
    spec.d = _svcca_dim(lam, cfg["svcca_variance"], spec.rank)
    return _Factor(B, spec, a, q)


class _GramAcc:
    """Accumulates the centred Gram K = sum over column chunks X X' (m x m, float64): BLAS dsyrk on the CPU (the
    upper triangle only, half the flops of a full product), a plain product on CUDA."""

    def __init__(self, m: int, device, buf: np.ndarray | None = None):
        self.device = torch.device(device)
        if self.device.type == "cpu":
            if buf is not None:  # a reused (m x m) scratch array: no fresh pages to fault in
                self.c = buf.reshape(m, m).T
                self.c.fill(0.0)
            else:
                self.c = np.zeros((m, m), order="F")
        else:
            self.c = torch.zeros(m, m, dtype=F64, device=self.device)

    def add(self, X: torch.Tensor) -> None:
        """K += X X' for X (m x k)."""
        if isinstance(self.c, np.ndarray):
            # a C-ordered (m x k) array's transpose is Fortran-ordered (k x m): dsyrk takes it without a copy
            a = np.ascontiguousarray(X.numpy()).T
            self.c = _dsyrk(1.0, a, beta=1.0, c=self.c, trans=1, lower=0, overwrite_c=1)
        else:
            self.c.addmm_(X, X.T)

    def full(self, out: torch.Tensor | None = None) -> torch.Tensor:
        """The exactly symmetric m x m Gram (written into ``out`` when given)."""
        if isinstance(self.c, np.ndarray):
            T = torch.from_numpy(self.c)  # upper triangle; dsyrk never writes the (zero) strict lower one
            K = torch.add(T, T.T, out=out)
            K.diagonal().sub_(T.diagonal())  # 2d - d = d exactly
            return K
        K = torch.add(self.c, self.c.T, out=out)
        return K.mul_(0.5)


def _crossprod(X: torch.Tensor) -> torch.Tensor:
    """X'X (p x p, exactly symmetric) of a float64 (rows x p) matrix: dsyrk on the CPU (half the flops)."""
    if X.device.type != "cpu":
        C = X.T @ X
        return (C + C.T) / 2
    # a C-ordered (rows x p) array's transpose is Fortran-ordered (p x rows): dsyrk (A A') takes it without a copy
    c = _dsyrk(1.0, np.ascontiguousarray(X.numpy()).T, trans=0, lower=0)
    T = torch.from_numpy(c)  # upper triangle, zero strict lower one
    C = T + T.T
    C.diagonal().sub_(T.diagonal())
    return C


@dataclass
class _GBlock:
    """A block on m rows in Gram space: K = X_c X_c' (m x m), a = diag K, q = row sums of K * K (bootstrap),
    U = leading eigenvectors of K (m x k, orthonormal; k from :meth:`_Engine._gblock_needs`)."""

    K: torch.Tensor
    spec: _Spec
    a: torch.Tensor
    q: torch.Tensor
    U: torch.Tensor | None


def _gram_subset(n: int, m: int, seed: int) -> np.ndarray:
    """Sorted positions (within the n training rows) of the seeded Gram subset of m rows (all when m = n)."""
    if m >= n:
        return np.arange(n)
    rng = np.random.default_rng([int(seed), 7919])
    return np.sort(rng.choice(n, size=m, replace=False))


def _factor_pair(fx: _Factor, fy: _Factor, measures, need_psi: bool):
    """Measures of two factors on the same rows; plus the CKA influence values when asked."""
    R = fx.B.T @ fy.B
    vals, flags = _pair_measures(R, fx.spec, fy.spec, float(fx.a @ fy.a), measures, fx.spec.n)
    psi = None
    if need_psi and np.isfinite(vals.get("cka", np.nan)):
        r = ((fx.B @ R) * fy.B).sum(1)
        psi = _cka_psi(r, fx.q, fy.q, fx.spec, fy.spec, vals["cka"], fx.spec.n).cpu().numpy()
    return vals, flags, psi


# ----------------------------------------------------------------------------------------------------------
# Public single-pair API (in-memory arrays)
# ----------------------------------------------------------------------------------------------------------
def _check_xy(X, Y, device):
    X, Y = _t64(X, device), _t64(Y, device)
    if X.ndim != 2 or Y.ndim != 2:
        raise ValueError(
            f"similarity: X and Y must be 2-D (clips x features), got {tuple(X.shape)} and {tuple(Y.shape)}"
        )
    if X.shape[0] != Y.shape[0]:
        raise ValueError(f"similarity: X has {X.shape[0]} rows but Y has {Y.shape[0]}; rows must be the same clips")
    if X.shape[0] < 2 or X.shape[1] < 1 or Y.shape[1] < 1:
        raise ValueError(f"similarity: need >= 2 rows and >= 1 column, got {tuple(X.shape)} and {tuple(Y.shape)}")
    if not (torch.isfinite(X).all() and torch.isfinite(Y).all()):
        raise ValueError("similarity: X or Y contains NaN or inf")
    return X, Y


def all_measures(X, Y, measures: Sequence[str] = MEASURES, method: str = "auto", svcca_variance: float = 0.99,
                 max_features: int = 12000, rank_rtol: float = 1e-10, device="cpu") -> dict:
    """Every requested measure between X (n x p1, representation a) and Y (n x p2, representation b).

    Columns are centred here (no other scaling). ``method``: "feature" (covariance blocks, one pass),
    "gram" (n x n Gram eigendecompositions of both blocks) or "auto" (gram when a block has more than
    ``max_features`` columns or at least n columns). Returns {measure: value, ..., "flags": {measure: reason
    of a NaN}, "method": method used, "n": rows}.
    """
    cfg = _config({"measures": list(measures), "svcca_variance": svcca_variance, "max_features": max_features,
                   "rank_rtol": rank_rtol})
    dev = torch.device(device)
    X, Y = _check_xy(X, Y, dev)
    n, p1, p2 = X.shape[0], X.shape[1], Y.shape[1]
    if method == "auto":
        method = "gram" if max(p1, p2) > max_features or max(p1, p2) >= n else "feature"
    ms = cfg["measures"]
    need_eig = bool(EIG_MEASURES & set(ms))
    if method == "feature":
        mom = Moments({"x": p1, "y": p2}, cross=[("x", "y")], device=dev)
        mom.update({"x": X, "y": Y})
        sx = _spec_from_cov(mom.cov("x"), n, mom.aa("x"), cfg, need_eig)
        sy = _spec_from_cov(mom.cov("y"), n, mom.aa("y"), cfg, need_eig)
        vals, flags = _pair_measures(mom.cross_cov("x", "y"), sx, sy, mom.ab("x", "y"), ms, n)
    elif method == "gram":
        fx = _factor_from_centred(X - X.mean(0), cfg, False, via="gram")
        fy = _factor_from_centred(Y - Y.mean(0), cfg, False, via="gram")
        vals, flags, _ = _factor_pair(fx, fy, ms, False)
    else:
        raise ValueError(f"all_measures: method must be auto, feature or gram, got '{method}'")
    return {**vals, "flags": flags, "method": method, "n": n}


def cka(X, Y, **kw) -> float:
    """Linear CKA = ||X_c'Y_c||_F^2 / (||X_c'X_c||_F ||Y_c'Y_c||_F)."""
    return all_measures(X, Y, measures=("cka",), **kw)["cka"]


def cka_debiased(X, Y, **kw) -> float:
    """Debiased linear CKA (unbiased HSIC estimator of Song et al. 2012 in every term)."""
    return all_measures(X, Y, measures=("cka_debiased",), **kw)["cka_debiased"]


def lr_r2(X, Y, **kw) -> float:
    """Fraction of the variance of X explained by least-squares regression on Y: ||Q_Y'X_c||^2 / ||X_c||^2."""
    return all_measures(X, Y, measures=("r2_lr",), **kw)["r2_lr"]


def cca(X, Y, **kw) -> tuple[float, float]:
    """(mean squared, mean) canonical correlation over min(rank X, rank Y) canonical pairs."""
    r = all_measures(X, Y, measures=("r2_cca", "rho_cca"), **kw)
    return r["r2_cca"], r["rho_cca"]


def svcca(X, Y, variance: float = 0.99, **kw) -> tuple[float, float]:
    """(mean squared, mean) canonical correlation between the leading singular subspaces (``variance`` rule)."""
    r = all_measures(X, Y, measures=("r2_svcca", "rho_svcca"), svcca_variance=variance, **kw)
    return r["r2_svcca"], r["rho_svcca"]


# ----------------------------------------------------------------------------------------------------------
# Streaming engine over HDF5-backed blocks
# ----------------------------------------------------------------------------------------------------------
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


class _Engine:
    """Computes the measures of many segment pairs over the training rows of HDF5 files (see module docstring)."""

    def __init__(self, sources: Sequence[_Source], train: np.ndarray, cfg: dict, device, log,
                 cache: "_EngineCache | None" = None):
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
        self.ms = cfg["measures"]
        self.need_eig = bool(EIG_MEASURES & set(self.ms))
        self.boot = cfg["bootstrap"] > 0 and "cka" in self.ms
        self.budget = cfg["memory_mb"] * 1e6
        self.chunk = cfg["chunk_size"]
        self.cache = cache
        if cache is not None:
            if cache.source not in self.src:
                raise ValueError(f"similarity: the cached self terms describe source '{cache.source}', not given")
            if not np.array_equal(cache.train_rows, self.rows):
                raise ValueError(f"{cache.label}: built on other training clips than {cache.source} has here "
                                 f"({len(cache.train_rows)} vs {self.n}); rebuild it")
            src = self.src[cache.source]
            missing = sorted(set(src.segments) - set(cache.spec) - set(cache.factor))
            if missing:
                raise ValueError(f"{cache.label}: no self terms for {missing[:5]}; rebuild it")
            src.shift, src.inv = cache.shift.to(device), cache.inv.to(device)

    # -- reading ------------------------------------------------------------------------------------------
    def _chunks(self, mask: np.ndarray, size: int | None = None):
        size = size or self.chunk
        for i0 in range(0, self.N, size):
            i1 = min(i0 + size, self.N)
            sel = np.flatnonzero(mask[i0:i1])
            if len(sel):
                yield i0, i1, sel

    def _read(self, src: _Source, i0, i1, sel, c0, c1) -> torch.Tensor:
        if src.read_rows is not None:  # selection and z-scoring fused into the read
            z = src.shift is not None
            if z and (src._np_shift is None or src._np_shift[0] is not src.shift):
                src._np_shift = (src.shift, src.shift.cpu().numpy(), src.inv.cpu().numpy())
            x = src.read_rows(i0, i1, sel, c0, c1, src._np_shift[1][c0:c1] if z else None,
                              src._np_shift[2][c0:c1] if z else None)
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
                for a, b in _runs(sel):
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
                raise ValueError(
                    f"{src.label}: non-finite value in clip row {i0 + int(sel[bad])} (columns {c0}:{c1})"
                )
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
        self.log.info(f"z-scored {src.P} columns of {src.label} with training statistics "
                      f"({int(const.sum())} constant columns set to 0) in {time.perf_counter() - t0:.1f} s")

    # -- main ---------------------------------------------------------------------------------------------
    def run(self, pairs: Sequence[tuple[str, str]]) -> dict:
        for a, b in pairs:
            for s in (a, b):
                if s not in self.seg_src:
                    raise KeyError(f"similarity: unknown block '{s}'")
        if self.n < 4:
            raise ValueError(f"similarity: only {self.n} training clips; at least 4 are needed")
        for s in self.src.values():
            if s.standardize and s.shift is None:
                self._standardize(s)
        width = {s: w for src in self.src.values() for s, w in src.segments.items()}
        mf = self.cfg["max_features"]
        self.form = {s: ("gram" if w > mf or w >= self.n else "feature") for s, w in width.items()}
        feat = [p for p in pairs if self.form[p[0]] == "feature" and self.form[p[1]] == "feature"]
        gram = [p for p in pairs if not (self.form[p[0]] == "feature" and self.form[p[1]] == "feature")]
        self.res: dict = {}
        self.psi: dict = {}
        if feat:
            self._feature_path(feat)
        if gram:
            self._gram_path(gram)
        if self.boot:
            self._bootstrap()
        return self.res

    def _result(self, pair, vals, flags, n, method):
        a, b = pair
        self.res[pair] = dict(values=vals, flags=flags, n=n, method=method, p_a=self.seg_src[a].segments[a],
                              p_b=self.seg_src[b].segments[b], ci=None)

    # -- feature form -------------------------------------------------------------------------------------
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

    def _stream(self, views, what: str):
        t0, state = time.perf_counter(), {}
        for i0, i1, sel in self._chunks(self.train):
            yield {v[0]: self._read_view(v, i0, i1, sel) for v in views}, i0, i1, sel
            self._progress(what, t0, i1, state)

    def _feature_path(self, pairs):
        """Covariance blocks in passes over the training clips: each pass accumulates the cross-products of
        its items (pairs of sources, split to fit the memory budget) and the self-covariances of the blocks
        seen for the first time; then spectra, measures and (bootstrap) a pass for the influence values."""
        self.spec: dict[str, _Spec] = {}
        self.q: dict[str, np.ndarray] = {}
        if self.cache is not None:  # hand-crafted self terms (covariance spectra, q_i) computed once per dataset
            self.spec.update(self.cache.spec)
            self.q.update(self.cache.q)
        seen, packed = set(self.spec), []
        for it in self._cross_items(pairs):
            new = [s for s in dict.fromkeys(s for p in it["pairs"] for s in p) if s not in seen]
            seen.update(new)
            it["new"] = new
            packed.append((it, None, it["bytes"] + sum(24 * self.seg_src[s].segments[s] ** 2 for s in new)))
        passes = _pack(packed, self.budget)
        for k, batch in enumerate(passes, 1):
            self._cross_pass([b[0] for b in batch], k, len(passes))

    def _cross_items(self, pairs):
        groups: dict[tuple[str, str], list] = OrderedDict()
        for a, b in pairs:
            groups.setdefault((self.seg_src[a].name, self.seg_src[b].name), []).append((a, b))
        items = []
        for (na, nb), prs in groups.items():
            A = list(dict.fromkeys(a for a, _ in prs))
            Bs = list(dict.fromkeys(b for _, b in prs))
            wa = {s: self.seg_src[s].segments[s] for s in A}
            wb = {s: self.seg_src[s].segments[s] for s in Bs}
            # split a then b so that every item's cross block (2 copies: sums and covariance) fits the budget
            lim_a = max(max(wa.values()), int(math.sqrt(self.budget / 16)))
            for ca in _split(A, wa, lim_a):
                Pa = sum(wa[s] for s in ca)
                lim_b = max(max(wb.values()), int(self.budget / (16 * Pa)))
                for cb in _split(Bs, wb, lim_b):
                    sub = [(a, b) for a, b in prs if a in set(ca) and b in set(cb)]
                    if sub:
                        Pb = sum(wb[s] for s in cb)
                        items.append(dict(a=(na, ca), b=(nb, cb), pairs=sub, bytes=16 * Pa * Pb))
        return items

    def _cross_pass(self, items, k, K):
        views, vid = [], {}

        def view(src_name, segs, fresh=False):
            key = (src_name, tuple(segs))
            if fresh or key not in vid:
                tag = f"v{len(views)}"
                views.append((tag, src_name, list(segs)))
                if not fresh:
                    vid[key] = tag
                return tag
            return vid[key]

        cross = []
        for it in items:
            it["va"] = view(*it["a"])
            it["vb"] = view(*it["b"], fresh=it["a"] == it["b"])  # same segments on both sides: b gets a copy
            cross.append((it["va"], it["vb"]))
        new = list(dict.fromkeys(s for it in items for s in it["new"]))
        home = {}  # new segment -> a view holding it
        for tag, _, segs in views:
            for s in segs:
                if s in new and s not in home:
                    home[s] = tag
        npairs = sum(len(it["pairs"]) for it in items)
        self.log.info(f"feature form, pass {k}/{K}: {npairs} pairs over "
                      + "; ".join(f"{it['a'][0]} x {it['b'][0]} ({len(it['pairs'])})" for it in items)
                      + (f"; self-covariance of {len(new)} blocks" if new else ""))
        debiased = "cka_debiased" in self.ms
        centred = {v[0] for v in views if self.src[v[1]].shift is not None}  # z-scored on these very rows
        mom = Moments(self._view_groups(views), cross=cross, self_cov=set(home.values()), device=self.device,
                      row_norms=debiased, centred=centred)
        # the bootstrap's influence pass needs the rows again: keep them when they are small, else re-read
        width = sum(self.src[v[1]].segments[sg] for v in views for sg in v[2])
        kept = [] if self.boot and 8 * self.n * width <= self.budget / 4 else None
        for chunk in self._stream(views, f"pass {k}"):
            mom.update(chunk[0])
            if kept is not None:
                kept.append(chunk)
        t0 = time.perf_counter()
        for s in new:
            key = f"{home[s]}|{s}"
            self.spec[s] = _spec_from_cov(mom.cov(key), self.n, mom.aa(key) if debiased else float("nan"),
                                          self.cfg, self.need_eig, mean=mom.mean(key))
        if self.need_eig and new:
            self.log.info(f"  eigendecompositions of {len(new)} blocks: {time.perf_counter() - t0:.1f} s")
        C = {}
        for it in items:
            for a, b in it["pairs"]:
                ka, kb = f"{it['va']}|{a}", f"{it['vb']}|{b}"
                cxy = mom.cross_cov(ka, kb)
                ab = mom.ab(ka, kb) if debiased else float("nan")
                vals, flags = _pair_measures(cxy, self.spec[a], self.spec[b], ab, self.ms, self.n)
                self._result((a, b), vals, flags, self.n, "feature")
                if self.boot and np.isfinite(vals["cka"]):
                    C[(a, b)] = cxy
        means = {v[0]: torch.cat([mom.mean(f"{v[0]}|{s}") for s in v[2]]) for v in views}
        del mom
        if C:
            self._influence_pass(items, views, means, C, k, K, kept)

    def _influence_pass(self, items, views, means, C, k, K, kept=None):
        """r_i = u_i'C_xy v_i for every pair with a CKA value, q_i = u_i'C_xx u_i for every block, per row."""
        t0 = time.perf_counter()
        r = {p: np.empty(self.n) for p in C}
        need_q = {s for it in items for p in it["pairs"] if p in C for s in p if s not in self.q}
        q = {s: np.empty(self.n) for s in need_q}
        cols = {}  # (view tag, segment) -> column slice within the view
        for tag, src_name, segs in views:
            o = 0
            for s in segs:
                w = self.src[src_name].segments[s]
                cols[(tag, s)] = slice(o, o + w)
                o += w
        pos = 0
        for data, _, _, sel in (kept if kept is not None else self._stream(views, f"influence pass {k}")):
            nb = len(sel)
            U = {tag: data[tag] - means[tag] for tag in data}
            done_q = set()
            for it in items:
                for a, b in it["pairs"]:
                    for tag, s in ((it["va"], a), (it["vb"], b)):
                        if s in need_q and s not in done_q:
                            qs = _self_influence(U[tag][:, cols[(tag, s)]], self.spec[s])
                            q[s][pos : pos + nb] = qs.cpu().numpy()
                            done_q.add(s)
                    if (a, b) in C:
                        ua = U[it["va"]][:, cols[(it["va"], a)]]
                        vb = U[it["vb"]][:, cols[(it["vb"], b)]]
                        r[(a, b)][pos : pos + nb] = ((ua @ C[(a, b)]) * vb).sum(1).cpu().numpy()
            pos += nb
        self.q.update(q)
        for (a, b), rv in r.items():
            cka_ab = self.res[(a, b)]["values"]["cka"]
            psi = _cka_psi(rv, self.q[a], self.q[b], self.spec[a], self.spec[b], cka_ab, self.n)
            self.psi[(a, b)] = ("feature", psi)
        self.log.info(f"  influence values for {len(C)} pairs (bootstrap) in {time.perf_counter() - t0:.1f} s")

    # -- Gram form ----------------------------------------------------------------------------------------
    def _gram_path(self, pairs):
        """Pairs with a Gram-form block, on the seeded subset of m training clips. When every block's centred
        Gram fits the memory budget at once, they are compared in Gram space (:meth:`_gram_space`: O(m^2) per
        pair); otherwise pair by pair in principal coordinates with an LRU cache of factors."""
        cfg = self.cfg
        m = min(self.n, cfg["gram_max_clips"])
        pick = _gram_subset(self.n, m, cfg["seed"])
        self.sub_mask = np.zeros(self.N, bool)
        self.sub_mask[self.rows[pick]] = True
        self.m = m
        if self.cache is not None and self.cache.factor and not np.array_equal(self.cache.sub_rows, self.rows[pick]):
            raise ValueError(f"{self.cache.label}: its Gram subset differs from this run's (gram_max_clips / seed "
                             "changed?); rebuild it")
        segs = list(dict.fromkeys(s for p in pairs for s in p))
        est = self._gram_space_bytes(pairs, segs, m)
        how = "Gram space" if est <= self.budget else "principal coordinates, pair by pair"
        self.log.info(f"Gram form for {len(pairs)} pairs ({len(segs)} blocks) on {m} of {self.n} training clips"
                      + (" (seeded subset)" if m < self.n else " (all)") + f": {how} (~{est / 1e6:.0f} MB)")
        if est <= self.budget:
            self._gram_space(pairs, segs, m)
            return
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

    def _read_sub(self, src: _Source, c0, c1) -> torch.Tensor:
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
        straight into reused buffers); each yielded tensor views a buffer that the next block overwrites."""
        m = self.m
        wc = max(1, min(c1 - c0, int(self.budget / (16 * m))))
        sub_rows = np.flatnonzero(self.sub_mask)
        for r0 in range(c0, c1, wc):
            r1 = min(r0 + wc, c1)
            w = r1 - r0
            sub = None
            pos = 0
            for i0, i1, sel in self._chunks(self.sub_mask, max(1, int(64e6 / (4 * w)))):
                if src.dset is not None:
                    x = self._buf("raw", (i1 - i0, w), src.dset.dtype)
                    src.dset.read_direct(x, np.s_[i0:i1, r0:r1])
                else:
                    x = np.asarray(src.read(i0, i1, r0, r1))
                    if x.shape != (i1 - i0, w):
                        raise ValueError(f"{src.label}: expected rows {i0}:{i1} x columns {r0}:{r1}, read shape "
                                         f"{x.shape}")
                if sub is None:
                    sub = self._buf("sub", (m, w), x.dtype)
                for a, b in _runs(sel):  # contiguous row runs: plain copies (np.take is ~4x slower here)
                    sub[pos : pos + b - a] = x[a:b]
                    pos += b - a
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
                    where = (f"clip row {int(sub_rows[np.flatnonzero(~fin)[0]])}" if not fin.all()
                             else "a column (values too large: their sum overflows float64)")
                    raise ValueError(f"{src.label}: non-finite value in {where} (columns {r0 + j0}:{r0 + j1})")
                np.subtract(o if src.shift is not None else raw, mean, out=o)
                yield torch.from_numpy(o).to(self.device)

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

    # -- Gram space ---------------------------------------------------------------------------------------
    def _gram_space_bytes(self, pairs, segs, m) -> int:
        """Upper bound of the memory :meth:`_gram_space` holds: the centred Grams, projectors and eigenvectors of
        every block (each <= m x m), the per-row products of the bootstrap and a few m x m temporaries."""
        nl = len({a for a, _ in pairs})
        lr = "r2_lr" in self.ms
        per = 1 + lr + (lr or bool({"r2_cca", "rho_cca", "r2_svcca", "rho_svcca"} & set(self.ms)))
        return 8 * (len(segs) * per * m * m + (m * nl * len(segs) if self.boot else 0) + 3 * m * m)

    def _gblock_needs(self, spec: _Spec, m: int) -> int:
        """Leading eigenvectors a block must keep: its SVCCA dimension, or its rank when CCA (or LR on it as
        the regressor) is asked and defined (rank < m - 1)."""
        k = 0
        if {"r2_svcca", "rho_svcca"} & set(self.ms) and spec.d < m - 1:
            k = max(k, spec.d)
        if {"r2_cca", "rho_cca", "r2_lr"} & set(self.ms) and spec.rank < m - 1:
            k = max(k, spec.rank)
        return k

    def _outer(self, B: torch.Tensor, out: torch.Tensor) -> None:
        """out = B B' (m x m) for B (m x r): one product when r is small (no symmetrising pass; only used in inner
        products, where its last-bit asymmetry is harmless), else dsyrk."""
        m, r = B.shape
        if 4 * r <= m or self.device.type != "cpu":
            torch.mm(B, B.T, out=out)
        else:
            acc = _GramAcc(m, self.device, self._buf("gram", (m, m), np.float64))
            acc.add(B.contiguous())
            acc.full(out=out)

    def _make_gblock(self, seg, Kout: torch.Tensor) -> "_GBlock":
        """The block ``seg`` on the m Gram rows in Gram space, its centred Gram written into ``Kout``."""
        m = self.m
        if self.cache is not None and seg in self.cache.factor:
            f = self.cache.factor[seg]
            if self.cache.gram_K is not None and seg in self.cache.gram_K:
                Kout.copy_(self.cache.gram_K[seg])
            else:
                self._outer(f.B, Kout)
            spec = f.spec
            k = self._gblock_needs(spec, m) if self.need_eig else 0
            U = f.B[:, :k] * spec.lam[:k].rsqrt() if k else None
            return _GBlock(Kout, spec, f.a, f.q if f.q is not None else (Kout * Kout).sum(1), U)
        src = self.seg_src[seg]
        c0, c1 = src.offsets[seg]
        p = c1 - c0
        acc = _GramAcc(m, self.device, self._buf("gram", (m, m), np.float64))
        X = None
        for Xc in self._sub_blocks(src, c0, c1, step=max(p, 1) if p <= m else 4096):
            acc.add(Xc)
            if p <= m:
                X = Xc.clone()
        acc.full(out=Kout)
        del acc
        a = Kout.diagonal().clone()
        q = (Kout * Kout).sum(1)
        spec = _Spec(n=m, p=p, trace=float(a.sum()), fro2=float(q.sum()), aa=float(a @ a))
        U = None
        if self.need_eig:
            if X is not None:  # p <= m: spectrum from the p x p covariance, eigenvectors of K = X V / sqrt(lam)
                lam, V = _eigh_desc(X.T @ X)
            else:
                lam, V = _eigh_desc(Kout)
            spec.lam = lam
            spec.rank = _rank(lam, self.cfg["rank_rtol"])
            spec.d = _svcca_dim(lam, self.cfg["svcca_variance"], spec.rank)
            k = self._gblock_needs(spec, m)
            if k:
                U = (X @ V[:, :k]) * lam[:k].rsqrt() if X is not None else V[:, :k].clone()
            del V
        return _GBlock(Kout, spec, a, q, U)

    def _gram_space(self, pairs, segs, m):
        """Every pair from the centred Grams K and projectors P of its blocks, all held at once:
        ||C_xy||^2 = <K_x, K_y>, LR = <K_x, P_y> / tr K_x, the bootstrap's r_i = sum_j K_x,ij K_y,ij (one batched
        product for all pairs), CCA/SVCCA from the singular values of U_x'U_y (one product per left block)."""
        ms = self.ms
        t0 = time.perf_counter()
        left = list(dict.fromkeys(a for a, _ in pairs))
        order = left + [s for s in segs if s not in set(left)]
        idx = {s: i for i, s in enumerate(order)}
        nb, nl = len(order), len(left)
        Kst = torch.empty(nb, m, m, dtype=F64, device=self.device)
        blk: dict[str, _GBlock] = {}
        nxt = 30.0
        for i, s in enumerate(order, 1):
            blk[s] = self._make_gblock(s, Kst[idx[s]])
            el = time.perf_counter() - t0
            if el >= nxt or i == nb:
                self.log.info(f"  Gram space: {i}/{nb} blocks built, {el:.0f} s")
                nxt = el + 30.0
        Kf = Kst.reshape(nb, m * m)
        # projectors of the regressors (b) for LR, when LR is defined (rank < m - 1)
        pidx: dict[str, int] = {}
        if "r2_lr" in ms:
            for _, b in pairs:
                sb = blk[b].spec
                if b not in pidx and sb.fro2 > 0 and sb.rank < m - 1:
                    pidx[b] = len(pidx)
        LR = None
        if pidx:
            Pst = torch.empty(len(pidx), m, m, dtype=F64, device=self.device)
            for b, j in pidx.items():
                self._outer(blk[b].U[:, : blk[b].spec.rank], Pst[j])
            LR = Kf[:nl] @ Pst.reshape(len(pidx), m * m).T  # (nl, nP): <K_a, P_b>
            del Pst
        if self.boot:  # r[i, a, b] = sum_j K_a,ij K_b,ij, and F = sum_i r_i
            r3 = torch.empty(m, nl, nb, dtype=F64, device=self.device)
            step = max(1, int(32e6 / (8 * m * (nl + nb))))
            for i0 in range(0, m, step):
                i1 = min(i0 + step, m)
                torch.bmm(Kst[:nl, i0:i1].permute(1, 0, 2), Kst[:, i0:i1].permute(1, 2, 0), out=r3[i0:i1])
            F = r3.sum(0)
        else:
            r3 = None
            F = Kf[:nl] @ Kf.T  # (nl, nb): <K_a, K_b>
        # CCA / SVCCA: U_a'U_b of every pair of a left block, one product per left block and subspace kind
        cca_ms = {"r2_cca", "rho_cca"} & set(ms)
        sv_ms = {"r2_svcca", "rho_svcca"} & set(ms)
        by_left: dict[str, list] = OrderedDict()
        for a, b in pairs:
            by_left.setdefault(a, []).append(b)
        T: dict = {}
        for kind, want, dim in (("cca", cca_ms, "rank"), ("svcca", sv_ms, "d")):
            if not (want and self.need_eig):
                continue
            # the subspaces of every block where the measure is defined, side by side (one copy for all pairs)
            dims = {b: getattr(blk[b].spec, dim) for b in order
                    if blk[b].spec.fro2 > 0 and 0 < getattr(blk[b].spec, dim) < m - 1}
            if not dims:
                continue
            col, o = {}, 0
            for b, kb in dims.items():
                col[b] = (o, o + kb)
                o += kb
            Ucat = torch.cat([blk[b].U[:, :kb] for b, kb in dims.items()], 1)
            for a, bs in by_left.items():
                if a not in dims:
                    continue
                ok = sorted((b for b in dict.fromkeys(bs) if b in dims), key=lambda b: col[b][0])
                Ua = blk[a].U[:, : dims[a]].T
                while ok:  # one product per run of partners whose columns are (nearly) adjacent
                    run = [ok.pop(0)]
                    while ok and col[ok[0]][0] - col[run[-1]][1] <= 64:
                        run.append(ok.pop(0))
                    lo, hi = col[run[0]][0], col[run[-1]][1]
                    W = Ua @ Ucat[:, lo:hi]
                    for b in run:
                        T[(kind, a, b)] = W[:, col[b][0] - lo : col[b][1] - lo]
            del Ucat
        for a, b in pairs:
            ga, gb = blk[a], blk[b]
            ia, ib = idx[a], idx[b]
            vals, flags = _measures(
                float(F[ia, ib]), float(ga.a @ gb.a), ga.spec, gb.spec, ms, m,
                lr=lambda ia=ia, b=b: float(LR[ia, pidx[b]]),
                cca_sv=lambda a=a, b=b: _svals(T[("cca", a, b)]),
                svcca_sv=lambda a=a, b=b: _svals(T[("svcca", a, b)]),
            )
            self._result((a, b), vals, flags, m, "gram")
            if r3 is not None and np.isfinite(vals.get("cka", np.nan)):
                psi = _cka_psi(r3[:, ia, ib], ga.q, gb.q, ga.spec, gb.spec, vals["cka"], m)
                self.psi[(a, b)] = ("gram", psi.cpu().numpy())
        self.log.info(f"  Gram space: {len(pairs)} pairs of {nb} blocks in {time.perf_counter() - t0:.1f} s")

    # -- bootstrap ----------------------------------------------------------------------------------------
    def _bootstrap(self):
        B, seed = self.cfg["bootstrap"], self.cfg["seed"]
        for tag, method in enumerate(("feature", "gram")):
            keys = [p for p, (mth, _) in self.psi.items() if mth == method]
            if not keys:
                continue
            values = np.array([self.res[p]["values"]["cka"] for p in keys])
            psi = np.stack([np.asarray(self.psi[p][1], np.float64) for p in keys], 1)
            lo, hi = _bootstrap_ci(values, psi, B, seed, tag)
            for p, l, h in zip(keys, lo, hi):
                self.res[p]["ci"] = (float(l), float(h))
        self.log.info(f"bootstrap: {B} resamples of the clips for {len(self.psi)} CKA values")


def _self_influence(u: torch.Tensor, s: _Spec) -> torch.Tensor:
    """q_i = u_i'C u_i for centred rows u."""
    if s.C is not None:
        return ((u @ s.C) * u).sum(1)
    t = u @ s.V
    return (t * t) @ s.lam


def _runs(idx: np.ndarray) -> list[tuple[int, int]]:
    """[(start, stop)] of the maximal runs of consecutive integers in the sorted index array ``idx``."""
    if len(idx) == 0:
        return []
    cut = np.flatnonzero(np.diff(idx) != 1) + 1
    starts = np.concatenate([[0], cut])
    stops = np.concatenate([cut, [len(idx)]])
    return [(int(idx[a]), int(idx[b - 1]) + 1) for a, b in zip(starts, stops)]


def _pack(items, budget):
    """Greedy consecutive packing of (key, payload, bytes) items into batches of total bytes <= budget."""
    out, cur, tot = [], [], 0
    for it in items:
        if cur and tot + it[2] > budget:
            out.append(cur)
            cur, tot = [], 0
        cur.append(it)
        tot += it[2]
    if cur:
        out.append(cur)
    return out


def _split(segs, width, limit):
    """Consecutive groups of segments with total width <= limit (a wider segment stays alone)."""
    out, cur, tot = [], [], 0
    for s in segs:
        if cur and tot + width[s] > limit:
            out.append(cur)
            cur, tot = [], 0
        cur.append(s)
        tot += width[s]
    if cur:
        out.append(cur)
    return out


# ----------------------------------------------------------------------------------------------------------
# File helpers
# ----------------------------------------------------------------------------------------------------------
def _train_mask(mel_h5) -> tuple[np.ndarray, np.ndarray]:
    """(training-row mask, clip ids) of the clip table of mel.h5."""
    with open_h5(mel_h5, "mel") as f:
        df, _, _ = read_clip_table(f)
    train = df["split"].to_numpy() == 0
    if train.sum() < 4:
        raise ValueError(f"{mel_h5}: only {int(train.sum())} training clips (split 0); similarity needs at least 4")
    return train, df["clip_id"].to_numpy()


def _check_clip_ids(f, path, clip_ids, mel_h5):
    """Files that carry a copy of the clip table must list the clips of mel.h5 in the same order."""
    if "meta" in f and "clip_id" in f["meta"]:
        ids = f["meta"]["clip_id"].asstr()[:]
        if len(ids) != len(clip_ids) or not np.array_equal(ids, clip_ids):
            raise ValueError(f"{path}: its clip table does not match {mel_h5} (different clips or order); "
                             "rebuild it from this mel.h5")


def _dataset_source(name, ds, n_clips, label) -> _Source:
    if ds.ndim != 2:
        raise ValueError(f"{label}: expected a 2-D (clips x features) dataset, got shape {ds.shape}")
    if ds.shape[0] != n_clips:
        raise ValueError(f"{label}: {ds.shape[0]} rows but the clip table of mel.h5 has {n_clips} clips")
    return _Source(name, {name: int(ds.shape[1])}, lambda i0, i1, c0, c1: ds[i0:i1, c0:c1], label, dset=ds)


def _handcrafted_source(f, path, n_clips) -> tuple[_Source, dict]:
    if "features" not in f or not len(f["features"]):
        raise ValueError(f"{path}: no datasets under 'features/'")
    dsets, names, segs = [], {}, {}
    for key in f["features"]:
        d = f["features"][key]
        label = f"{path}:features/{key}"
        if d.ndim != 2 or d.shape[0] != n_clips:
            raise ValueError(f"{label}: expected ({n_clips} clips x d), got shape {d.shape}")
        seg = f"hc:{key}"
        segs[seg] = int(d.shape[1])
        names[seg] = str(d.attrs.get("name", key))
        dsets.append(d)
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


def _deep_info(f, path) -> dict:
    try:
        info = dict(arch=str(f.attrs["arch"]), seed=int(f.attrs["seed"]), task=str(f.attrs["task"]),
                    layers=json.loads(f.attrs["layers"]))
    except KeyError as e:
        raise ValueError(f"{path}: deep-feature file lacks the root attribute {e}") from None
    states = [s for s in STATES if s in f]
    if not states:
        raise ValueError(f"{path}: neither 'trained/' nor 'untrained/' group found")
    info["states"] = states
    for s in states:
        missing = [a for a in info["layers"] if a not in f[s]]
        if missing:
            raise ValueError(f"{path}: group '{s}' lacks the layers {missing} listed in the 'layers' attribute")
    return info


def _row(dataset, comparison, task, a: dict, b: dict, measure, res) -> dict:
    v = res["values"][measure]
    ci = res["ci"] if measure == "cka" and res["ci"] is not None else (float("nan"), float("nan"))
    return dict(
        dataset=dataset, comparison=comparison, task=task, arch_a=a.get("arch", ""), seed_a=a.get("seed", ""),
        layer_a=a.get("layer", ""), trained_a=a.get("trained", ""), arch_b=b.get("arch", ""),
        seed_b=b.get("seed", ""), layer_b=b.get("layer", ""), trained_b=b.get("trained", ""),
        feature_b=b.get("feature", ""), measure=measure, value=v, ci_low=ci[0], ci_high=ci[1], n=res["n"],
        p_a=res["p_a"], p_b=res["p_b"], method=res["method"], flag=res["flags"].get(measure, ""),
    )


def _frame(rows) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=COLUMNS)


# ----------------------------------------------------------------------------------------------------------
# Hand-crafted self terms, computed once per dataset (rule handcrafted_moments)
# ----------------------------------------------------------------------------------------------------------
MOMENT_SETTINGS = ("max_features", "gram_max_clips", "seed")  # the similarity settings the cache depends on


class _Lazy(Mapping):
    """A read-only mapping whose values are computed (e.g. read from a file) on first access, then kept."""

    def __init__(self, keys, load: Callable):
        self._keys, self._load, self._got = list(keys), load, {}

    def __getitem__(self, k):
        if k not in self._got:
            if k not in self._keys:
                raise KeyError(k)
            self._got[k] = self._load(k)
        return self._got[k]

    def __iter__(self):
        return iter(self._keys)

    def __len__(self):
        return len(self._keys)

    def __contains__(self, k):
        return k in self._keys


@dataclass
class _EngineCache:
    """Self terms of one source's segments as the engine uses them (see :meth:`HandcraftedMoments.engine_cache`)."""

    source: str
    label: str
    shift: torch.Tensor
    inv: torch.Tensor
    spec: dict  # segment -> _Spec on the n training rows (feature form)
    q: dict  # segment -> q_i on the n training rows (feature form)
    factor: Mapping  # segment -> _Factor on the m Gram rows (loaded on first use)
    train_rows: np.ndarray
    sub_rows: np.ndarray
    gram_K: Mapping = None  # segment -> its centred m x m Gram, where cached (loaded on first use)


@dataclass
class HandcraftedMoments:
    """Everything the similarity measures need of each hand-crafted feature alone, on the training clips.

    Computed once per dataset (:func:`handcrafted_moments`, rule ``handcrafted_moments``) and read by every
    ``similarity_deep`` job, which then only computes its deep blocks' self terms and the cross terms.
    Per feature (key of ``handcrafted.h5``; y = the z-scored columns, centred over the rows used):

    - ``shift``, ``inv``: the z-scoring, y = (x - shift) * inv with the training mean and 1/std (ddof 0; 0 for
      constant columns).
    - ``feature`` (features in feature form, p <= max_features and p < n; on the n training clips): ``mean``
      (of y, ~0), ``lam`` and (``feature_V``) ``V``: the eigendecomposition of C_yy = y'y (descending),
      ``trace`` = tr C_yy,
      ``fro2`` = ||C_yy||_F^2, ``aa`` = sum_i b_i^2 (b_i = ||y_i||^2, the debiased-HSIC self piece), ``q`` =
      y_i'C_yy y_i per training clip (the bootstrap's influence self term).
    - ``gram`` (every feature; on the m Gram-subset clips, re-centred there) with ``gram_B``: principal
      coordinates ``B`` (m x r, B'B = diag(lam), BB' = the centred Gram K_y) and ``lam`` (from the p x p covariance when p <= m,
      else from the m x m Gram: the cheaper of the two forms), ``a`` = diag K_y, ``q`` = row sums of K_y * K_y,
      ``trace``, ``fro2`` = ||K_y||_F^2 = ||C_yy||_F^2, ``aa``; ``gram_K``: the centred m x m Gram K_y itself for
      features wider than m (no larger than their B), so that jobs comparing in Gram space need not rebuild it.
    Ranks and SVCCA dimensions are derived from ``lam`` by the reading job (they depend on rank_rtol and
    svcca_variance); the cache depends only on :data:`MOMENT_SETTINGS`.
    """

    clip_ids: np.ndarray
    train_rows: np.ndarray
    sub_rows: np.ndarray
    settings: dict
    keys: list
    names: dict
    widths: dict
    shift: dict
    inv: dict
    feature: dict
    gram: Mapping
    gram_K: Mapping = None
    gram_B: Mapping = None
    feature_V: Mapping = None
    n_const: int = 0
    seconds: float = 0.0

    @property
    def n(self) -> int:
        return len(self.train_rows)

    @property
    def m(self) -> int:
        return len(self.sub_rows)

    def engine_cache(self, hc: _Source, cfg: dict, device, label: str) -> _EngineCache:
        """The engine's view of the cache for the hand-crafted source ``hc`` (segments ``hc:<key>``), ranks and
        SVCCA dimensions from ``cfg``; checks that both describe the same features and settings."""
        bad = {k: (self.settings.get(k), cfg[k]) for k in MOMENT_SETTINGS if self.settings.get(k) != cfg[k]}
        if bad:
            raise ValueError(f"{label}: built with other similarity settings {bad} (cache, now); rebuild it")
        want = {f"hc:{k}": self.widths[k] for k in self.keys}
        if dict(hc.segments) != want:
            diff = sorted(set(want.items()) ^ set(hc.segments.items()))[:4]
            raise ValueError(f"{label}: its features differ from {hc.label} (e.g. {diff}); rebuild it")
        dev = torch.device(device)
        t = lambda x: torch.as_tensor(x).to(device=dev, dtype=F64)  # noqa: E731

        def spec(d, n, p, load_V=None, mean=None):
            lam = t(d["lam"])
            s = _SpecLazyV(load_V, n=n, p=p, trace=float(d["trace"]), fro2=float(d["fro2"]), aa=float(d["aa"]),
                           lam=lam, mean=None if mean is None else t(mean))
            s.rank = _rank(lam, cfg["rank_rtol"])
            s.d = _svcca_dim(lam, cfg["svcca_variance"], s.rank)
            return s

        specs, qs = {}, {}
        for k in self.keys:
            seg, p = f"hc:{k}", self.widths[k]
            if k in self.feature:
                d = self.feature[k]
                specs[seg] = spec(d, self.n, p, load_V=lambda k=k: t(self.feature_V[k]), mean=d["mean"])
                qs[seg] = np.asarray(d["q"], np.float64)

        def factor(seg):
            k = seg[3:]
            g = self.gram[k]
            return _LazyFactor(lambda: t(self.gram_B[k]), spec(g, self.m, self.widths[k]), t(g["a"]), t(g["q"]))

        factors = _Lazy([f"hc:{k}" for k in self.keys], factor)
        grams = _Lazy([f"hc:{k}" for k in (self.gram_K or {})], lambda seg: t(self.gram_K[seg[3:]]))
        shift = t(np.concatenate([self.shift[k] for k in self.keys]))
        inv = t(np.concatenate([self.inv[k] for k in self.keys]))
        return _EngineCache(hc.name, label, shift, inv, specs, qs, factors, self.train_rows, self.sub_rows, grams)


def handcrafted_moments(features_h5, mel_h5, params: Mapping, log=None) -> HandcraftedMoments:
    """Compute the :class:`HandcraftedMoments` of ``handcrafted.h5`` on the training clips of ``mel.h5``.

    ``params``: config section ``similarity`` (only :data:`MOMENT_SETTINGS`, ``device``, ``chunk_size`` and
    ``memory_mb`` are used). One pass for the z-scoring; per feature its Gram-subset factor (covariance form when
    p <= m, else Gram form); when the subset is a strict subset of the training clips, one more streamed float64
    pass for the feature-form covariances (dsyrk) and one for q.
    """
    log = log or get_logger()
    cfg = _config({**dict(params or {}), "measures": list(MEASURES), "bootstrap": 1})
    device = pick_device(cfg["device"])
    t0 = time.perf_counter()
    train, clip_ids = _train_mask(mel_h5)
    N = len(train)
    with open_h5(features_h5, "handcrafted") as fh:
        _check_clip_ids(fh, features_h5, clip_ids, mel_h5)
        hc, names = _handcrafted_source(fh, features_h5, N)
        eng = _Engine([hc], train, cfg, device, log)
        if eng.n < 4:
            raise ValueError(f"{mel_h5}: only {eng.n} training clips; similarity needs at least 4")
        eng._standardize(hc)
        n = eng.n
        m = min(n, cfg["gram_max_clips"])
        pick = _gram_subset(n, m, cfg["seed"])
        eng.sub_mask = np.zeros(N, bool)
        eng.sub_mask[eng.rows[pick]] = True
        eng.m = m
        mf = cfg["max_features"]
        feat = [s for s, w in hc.segments.items() if w <= mf and w < n]
        log.info(f"hand-crafted self terms: {len(hc.segments)} features ({hc.P} columns), {n} training clips; "
                 f"{len(feat)} in feature form; Gram-subset factors on {m} clips"
                 + (" (all)" if m == n else " (seeded subset)") + f", device {device}")
        feature, gram, gram_K = {}, {}, {}
        nxt = 30.0
        for i, seg in enumerate(hc.segments, 1):
            c0, c1 = hc.offsets[seg]
            p = c1 - c0
            if p <= m:
                X = eng._read_sub(hc, c0, c1)
                mean = X.mean(0)
                X -= mean
                C = _crossprod(X)
                lam, V = _eigh_desc(C)
                a = (X * X).sum(1)
                B = X @ V
                q = (B * B) @ lam
                parts = dict(trace=float(a.sum()), fro2=float((C * C).sum()), aa=float(a @ a))
                gram[seg] = dict(B=B, lam=lam, a=a, q=q, **parts)
                if m == n and seg in feat:  # the subset is every training clip: the same spectrum serves both
                    feature[seg] = dict(mean=mean, lam=lam, V=V, q=q, **parts)
                del X, C
            else:  # p > m: the m x m Gram (kept: the jobs compare in Gram space) and its eigendecomposition
                acc = _GramAcc(m, device)
                for Xc in eng._sub_blocks(hc, c0, c1):
                    acc.add(Xc)
                K = acc.full()
                f = _factor_from_gram(K, p, cfg, True)
                gram[seg] = dict(B=f.B, lam=f.spec.lam, a=f.a, q=f.q, trace=f.spec.trace, fro2=f.spec.fro2,
                                 aa=f.spec.aa)
                gram_K[seg] = K
                del acc
            el = time.perf_counter() - t0
            if el >= nxt or i == len(hc.segments):
                log.info(f"  Gram-subset factors: {i}/{len(hc.segments)} features, {el:.0f} s")
                nxt = el + 30.0
        rest = [s for s in feat if s not in feature]
        if rest:
            feature.update(_feature_moments(eng, hc, rest, cfg, log))
    out = HandcraftedMoments(
        clip_ids=np.asarray(clip_ids), train_rows=eng.rows.copy(), sub_rows=eng.rows[pick].copy(),
        settings={k: cfg[k] for k in MOMENT_SETTINGS}, keys=[s[3:] for s in hc.segments],
        names={s[3:]: names[s] for s in hc.segments}, widths={s[3:]: w for s, w in hc.segments.items()},
        shift={s[3:]: hc.shift[slice(*hc.offsets[s])].cpu().numpy() for s in hc.segments},
        inv={s[3:]: hc.inv[slice(*hc.offsets[s])].cpu().numpy() for s in hc.segments},
        feature={s[3:]: {k: _np(v) for k, v in d.items() if k != "V"} for s, d in feature.items()},
        feature_V={s[3:]: _np(d["V"]) for s, d in feature.items()},
        gram={s[3:]: {k: _np(v) for k, v in d.items() if k != "B"} for s, d in gram.items()},
        gram_K={s[3:]: _np(K) for s, K in gram_K.items()},
        gram_B={s[3:]: _np(d["B"]) for s, d in gram.items()},
        n_const=int((hc.inv == 0).sum()), seconds=time.perf_counter() - t0,
    )
    log.info(f"hand-crafted self terms in {out.seconds:.1f} s")
    return out


def _np(v):
    return v.cpu().numpy() if isinstance(v, torch.Tensor) else v


def _feature_moments(eng: _Engine, hc: _Source, segs: list, cfg: dict, log) -> dict:
    """Feature-form self terms of ``segs`` on all n training clips: streamed float64 covariances (dsyrk, passes
    split to fit the memory budget), eigendecompositions, then one pass for q_i = y_i'C y_i."""
    out = {}
    width = {s: hc.segments[s] for s in segs}
    groups = _split(segs, {s: 24 * w * w for s, w in width.items()}, eng.budget)
    for k, grp in enumerate(groups, 1):
        view = ("v", hc.name, grp)
        mom = Moments(eng._view_groups([view]), device=eng.device)
        for data, *_ in eng._stream([view], f"feature-form covariances {k}/{len(groups)}"):
            mom.update(data)
        specs = {s: _spec_from_cov(mom.cov(f"v|{s}"), eng.n, mom.aa(f"v|{s}"), cfg, True, mean=mom.mean(f"v|{s}"))
                 for s in grp}
        del mom
        q = {s: [] for s in grp}
        cols, o = {}, 0
        for s in grp:
            cols[s] = slice(o, o + width[s])
            o += width[s]
        for data, *_ in eng._stream([view], f"feature-form q {k}/{len(groups)}"):
            for s in grp:
                q[s].append(_self_influence(data["v"][:, cols[s]] - specs[s].mean, specs[s]))
        for s in grp:
            sp = specs[s]
            out[s] = dict(mean=sp.mean, lam=sp.lam, V=sp.V, q=torch.cat(q[s]), trace=sp.trace, fro2=sp.fro2, aa=sp.aa)
    return out


def _read_part(gp, skip=()) -> dict:
    return {**{a: float(v) for a, v in gp.attrs.items()}, **{d: gp[d][:] for d in gp if d not in skip}}


def write_handcrafted_moments(hm: HandcraftedMoments, path, features_h5=None) -> None:
    """Write ``handcrafted_moments.h5`` (kind ``handcrafted_moments``; layout in docs/formats.md), atomically."""
    with write_h5(path, "handcrafted_moments") as f:
        f.attrs.update(n_clips=len(hm.clip_ids), n_train=hm.n, m=hm.m, settings=json.dumps(hm.settings),
                       n_const=hm.n_const, seconds=hm.seconds,
                       features_file="" if features_h5 is None else Path(features_h5).name)
        f.create_group("meta").create_dataset("clip_id", data=np.asarray(hm.clip_ids, dtype=object), dtype=STR)
        f.create_dataset("train_rows", data=hm.train_rows.astype(np.int64))
        f.create_dataset("sub_rows", data=hm.sub_rows.astype(np.int64))
        g = f.create_group("features")
        g.attrs["order"] = json.dumps(hm.keys)
        for k in hm.keys:
            gk = g.create_group(k)
            gk.attrs.update(name=hm.names[k], p=hm.widths[k], form="feature" if k in hm.feature else "gram")
            gk.create_dataset("shift", data=hm.shift[k])
            gk.create_dataset("inv", data=hm.inv[k])
            for part, d in (("feature", hm.feature.get(k)), ("gram", hm.gram[k])):
                if d is None:
                    continue
                gp = gk.create_group(part)
                for name, v in d.items():
                    if np.ndim(v) == 0:
                        gp.attrs[name] = float(v)
                    else:
                        gp.create_dataset(name, data=np.asarray(v, np.float64))
                if part == "feature":
                    gp.create_dataset("V", data=np.asarray(hm.feature_V[k], np.float64))
                if part == "gram":
                    gp.create_dataset("B", data=np.asarray(hm.gram_B[k], np.float64))
                    if hm.gram_K and k in hm.gram_K:
                        gp.create_dataset("K", data=np.asarray(hm.gram_K[k], np.float64))


def read_handcrafted_moments(path) -> HandcraftedMoments:
    """Inverse of :func:`write_handcrafted_moments` (refuses unfinished or foreign files)."""
    with open_h5(path, "handcrafted_moments") as f:
        keys = json.loads(f["features"].attrs["order"])
        feature, shift, inv, names, widths = {}, {}, {}, {}, {}
        for k in keys:
            gk = f["features"][k]
            names[k], widths[k] = str(gk.attrs["name"]), int(gk.attrs["p"])
            shift[k], inv[k] = gk["shift"][:], gk["inv"][:]
            if "feature" in gk:
                feature[k] = _read_part(gk["feature"], skip=("V",))
            if "gram" not in gk:
                raise ValueError(f"{path}: features/{k} lacks its Gram-subset factor; rebuild the file")

        def gram_part(k):  # the Gram-subset parts are read only when a Gram-form pair needs them
            with open_h5(path, "handcrafted_moments") as g:
                return _read_part(g["features"][k]["gram"], skip=("B", "K"))

        def gram_big(name):
            def load(k):
                with open_h5(path, "handcrafted_moments") as g:
                    return g["features"][k]["gram"][name][:]
            return load

        def feature_v(k):
            with open_h5(path, "handcrafted_moments") as g:
                return g["features"][k]["feature"]["V"][:]

        gram = _Lazy(keys, gram_part)
        gram_B = _Lazy(keys, gram_big("B"))
        feature_V = _Lazy(list(feature), feature_v)
        gram_K = _Lazy([k for k in keys if "K" in f["features"][k]["gram"]], gram_big("K"))
        return HandcraftedMoments(
            clip_ids=f["meta"]["clip_id"].asstr()[:], train_rows=f["train_rows"][:], sub_rows=f["sub_rows"][:],
            settings=json.loads(f.attrs["settings"]), keys=keys, names=names, widths=widths, shift=shift, inv=inv,
            feature=feature, feature_V=feature_V, gram=gram, gram_K=gram_K, gram_B=gram_B,
            n_const=int(f.attrs["n_const"]),
            seconds=float(f.attrs["seconds"]),
        )


# ----------------------------------------------------------------------------------------------------------
# Entry points
# ----------------------------------------------------------------------------------------------------------
def similarity_deep(deep_h5, features_h5, mel_h5, params: Mapping, dataset: str, log=None,
                    moments_h5=None) -> pd.DataFrame:
    """Similarity table of one model (``deep/{task}/{arch}/seed{seed}.h5``) on the training clips.

    Rows: every layer (trained and untrained) vs every hand-crafted feature (``deep_vs_handcrafted``, z-scored
    features, incl. Random); trained vs untrained per layer (``trained_vs_untrained``, a = trained); every pair
    of layers of the same weights (``layer_vs_layer``, a = the earlier layer). ``params``: config section
    ``similarity``. ``moments_h5``: the dataset's ``handcrafted_moments.h5`` (:func:`write_handcrafted_moments`);
    with it the hand-crafted self terms (z-scoring, spectra, Gram factors) are read instead of computed, and
    the job computes only its deep blocks' self terms and the cross terms (same values). Columns: :data:`COLUMNS`.
    """
    log = log or get_logger()
    cfg = _config(params)
    device = pick_device(cfg["device"])
    t0 = time.perf_counter()
    train, clip_ids = _train_mask(mel_h5)
    N = len(train)
    with open_h5(deep_h5, "deep") as fd, open_h5(features_h5, "handcrafted") as fh:
        info = _deep_info(fd, deep_h5)
        _check_clip_ids(fd, deep_h5, clip_ids, mel_h5)
        _check_clip_ids(fh, features_h5, clip_ids, mel_h5)
        sources = [_dataset_source(f"{s}/{a}", fd[s][a], N, f"{deep_h5}:{s}/{a}")
                   for s in info["states"] for a in info["layers"]]
        hc, names = _handcrafted_source(fh, features_h5, N)
        cache = None
        if moments_h5 is not None:
            hm = read_handcrafted_moments(moments_h5)
            if len(hm.clip_ids) != N or not np.array_equal(hm.clip_ids, clip_ids):
                raise ValueError(f"{moments_h5}: built for other clips than {mel_h5}; rebuild it")
            cache = hm.engine_cache(hc, cfg, device, str(moments_h5))
            log.info(f"hand-crafted self terms read from {moments_h5} ({len(hm.feature)} feature-form spectra, "
                     f"{len(hm.gram)} Gram-subset factors on {hm.m} clips)")
        log.info(f"similarity of {info['arch']} seed {info['seed']} ({info['task']}): {len(sources)} deep blocks "
                 f"x {len(names)} hand-crafted features on {int(train.sum())} training clips, device {device}")
        pairs, keys = [], {}
        layers = info["layers"]
        for s in info["states"]:
            for a in layers:
                for seg in hc.segments:
                    p = (f"{s}/{a}", seg)
                    pairs.append(p)
                    keys[p] = ("deep_vs_handcrafted", dict(layer=a, trained=s), dict(feature=names[seg]))
        if set(STATES) <= set(info["states"]):
            for a in layers:
                p = (f"trained/{a}", f"untrained/{a}")
                pairs.append(p)
                keys[p] = ("trained_vs_untrained", dict(layer=a, trained="trained"), dict(layer=a, trained="untrained"))
        for s in info["states"]:
            for la, lb in combinations(layers, 2):
                p = (f"{s}/{la}", f"{s}/{lb}")
                pairs.append(p)
                keys[p] = ("layer_vs_layer", dict(layer=la, trained=s), dict(layer=lb, trained=s))
        res = _Engine(sources + [hc], train, cfg, device, log, cache=cache).run(pairs)
    rows = []
    model = dict(arch=info["arch"], seed=info["seed"])
    for p in pairs:
        comp, a, b = keys[p]
        a = {**model, **a}
        if comp != "deep_vs_handcrafted":
            b = {**model, **b}
        rows += [_row(dataset, comp, info["task"], a, b, m, res[p]) for m in cfg["measures"]]
    log.info(f"similarity_deep: {len(rows)} rows in {time.perf_counter() - t0:.1f} s")
    return _frame(rows)


def _arch_key(a):
    return (ARCH_ORDER.index(a) if a in ARCH_ORDER else len(ARCH_ORDER), a)


def similarity_cross(deep_files: Sequence, mel_h5, params: Mapping, dataset: str, log=None) -> pd.DataFrame:
    """Seed vs seed (same architecture and layer) and architecture vs architecture (same seed and layer),
    trained and untrained, over the deep-feature files of one training task. Columns: :data:`COLUMNS`."""
    log = log or get_logger()
    cfg = _config(params)
    device = pick_device(cfg["device"])
    t0 = time.perf_counter()
    train, clip_ids = _train_mask(mel_h5)
    N = len(train)
    files = [Path(p) for p in deep_files]
    if len(files) < 2:
        log.info(f"similarity_cross: {len(files)} deep-feature file(s), nothing to compare")
        return _frame([])
    handles = []
    try:
        infos = {}
        for path in files:
            f = open_h5(path, "deep")
            handles.append(f)
            info = _deep_info(f, path)
            _check_clip_ids(f, path, clip_ids, mel_h5)
            key = (info["arch"], info["seed"])
            if key in infos:
                raise ValueError(f"{path}: {info['arch']} seed {info['seed']} also in {infos[key]['path']}")
            info["path"], info["f"] = path, f
            infos[key] = info
        tasks = {i["task"] for i in infos.values()}
        if len(tasks) > 1:
            raise ValueError(f"similarity_cross: the deep-feature files mix training tasks {sorted(tasks)}")
        task = tasks.pop()
        sources, seg_of = [], {}
        for (arch, seed), info in infos.items():
            for s in info["states"]:
                for a in info["layers"]:
                    name = f"{arch}|{seed}|{s}|{a}"
                    sources.append(_dataset_source(name, info["f"][s][a], N, f"{info['path']}:{s}/{a}"))
                    seg_of[(arch, seed, s, a)] = name
        archs = sorted({a for a, _ in infos}, key=_arch_key)
        seeds = sorted({s for _, s in infos})
        layers = list(dict.fromkeys(a for i in infos.values() for a in i["layers"]))
        pairs, keys = [], {}

        def add(comp, ka, kb):
            if ka in seg_of and kb in seg_of:
                p = (seg_of[ka], seg_of[kb])
                pairs.append(p)
                keys[p] = (comp, ka, kb)

        for s in STATES:  # ordered so that the Gram-form cache reuses blocks: by layer, then seed/arch groups
            for a in layers:
                for arch in archs:
                    for s1, s2 in combinations(seeds, 2):
                        add("seed_vs_seed", (arch, s1, s, a), (arch, s2, s, a))
                for seed in seeds:
                    for a1, a2 in combinations(archs, 2):
                        add("arch_vs_arch", (a1, seed, s, a), (a2, seed, s, a))
        log.info(f"similarity_cross ({task}): {len(infos)} models ({', '.join(archs)}; seeds {seeds}), "
                 f"{len(pairs)} block pairs on {int(train.sum())} training clips, device {device}")
        res = _Engine(sources, train, cfg, device, log).run(pairs) if pairs else {}
    finally:
        for f in handles:
            f.close()
    rows = []
    for p in pairs:
        comp, ka, kb = keys[p]
        a = dict(arch=ka[0], seed=ka[1], trained=ka[2], layer=ka[3])
        b = dict(arch=kb[0], seed=kb[1], trained=kb[2], layer=kb[3])
        rows += [_row(dataset, comp, task, a, b, m, res[p]) for m in cfg["measures"]]
    log.info(f"similarity_cross: {len(rows)} rows in {time.perf_counter() - t0:.1f} s")
    return _frame(rows)


# ----------------------------------------------------------------------------------------------------------
# Channel vs channel
# ----------------------------------------------------------------------------------------------------------
def _channel_stats(block_fn: Callable, m: int, block: int, need_rows: bool, log=None, what: str = ""):
    """Exact centred-Gram statistics of C channel representations over m rows, streamed in row blocks.

    ``block_fn(idx)`` -> {name: centred activations (len(idx), C, D) float64}; the Gram of channel c is
    K_c = A_c A_c' (m x m). Returns {name: (F (C x C) = sum_ij K_c,ij K_d,ij, a (C x m) = diag K_c,
    r (C x C x m) = row sums of K_c * K_d or None)}; only blocks J >= I are formed (K symmetric).
    """
    starts = list(range(0, m, block))
    out = {}
    t0, nxt = time.perf_counter(), 30.0
    total = len(starts) * (len(starts) + 1) // 2
    done = 0
    for bi, i0 in enumerate(starts):
        I = np.arange(i0, min(i0 + block, m))
        AI = block_fn(I)
        for j0 in starts[bi:]:
            J = np.arange(j0, min(j0 + block, m))
            AJ = AI if j0 == i0 else block_fn(J)
            for name, A in AI.items():
                B = AJ[name]
                C = A.shape[1]
                if name not in out:
                    dev = A.device
                    out[name] = [torch.zeros(C, C, dtype=F64, device=dev), torch.zeros(C, m, dtype=F64, device=dev),
                                 torch.zeros(C, C, m, dtype=F64, device=dev) if need_rows else None]
                F, a, r = out[name]
                K = torch.bmm(A.transpose(0, 1), B.permute(1, 2, 0))  # (C, |I|, |J|)
                Kf = K.reshape(C, -1)
                w = 1.0 if j0 == i0 else 2.0
                F.addmm_(Kf, Kf.T, alpha=w)
                if j0 == i0:
                    a[:, i0 : i0 + len(I)] = K.diagonal(dim1=1, dim2=2)
                if r is not None:
                    r[:, :, i0 : i0 + len(I)] += torch.einsum("cij,dij->cdi", K, K)
                    if j0 != i0:
                        r[:, :, j0 : j0 + len(J)] += torch.einsum("cij,dij->cdj", K, K)
            done += 1
            el = time.perf_counter() - t0
            if log is not None and (el >= nxt or done == total):
                log.info(f"  {what}: {done}/{total} Gram blocks, {el:.0f} s")
                nxt = el + 30.0
    return {k: tuple(v) for k, v in out.items()}


def _channel_measures(F, a, m: int, measures):
    """(cka, cka_debiased) C x C matrices (numpy) from the channel Gram statistics."""
    d = F.diagonal()
    den = torch.sqrt(torch.outer(d, d))
    cka_m = torch.where(den > 0, F / torch.where(den > 0, den, torch.ones_like(den)), torch.full_like(F, float("nan")))
    out = {"cka": cka_m.cpu().numpy()}
    if "cka_debiased" in measures:
        tr = a.sum(1)
        ab = a @ a.T
        h = F - m / (m - 2) * ab + torch.outer(tr, tr) / ((m - 1) * (m - 2))
        hd = h.diagonal()
        den = torch.sqrt(torch.outer(hd.clamp_min(0), hd.clamp_min(0)))
        out["cka_debiased"] = torch.where(den > 0, h / torch.where(den > 0, den, torch.ones_like(den)),
                                          torch.full_like(h, float("nan"))).cpu().numpy()
    return out


def channel_cka(acts) -> np.ndarray:
    """Linear CKA between the channels of one layer: acts (N, C, H, W) -> (C, C), channel c's representation
    being its (H x W) map flattened, centred over the N clips (exact Gram form, float64)."""
    A = _t64(acts, "cpu" if not isinstance(acts, torch.Tensor) else acts.device)
    if A.ndim != 4 or A.shape[0] < 2:
        raise ValueError(f"channel_cka: expected activations (N >= 2, C, H, W), got {tuple(A.shape)}")
    A = A.reshape(A.shape[0], A.shape[1], -1)
    A = A - A.mean(0)
    F, a, _ = _channel_stats(lambda idx: {"x": A[torch.as_tensor(idx, device=A.device)]}, A.shape[0],
                             min(A.shape[0], 512), False)["x"]
    return _channel_measures(F, a, A.shape[0], ("cka",))["cka"]


def _channel_grams(parts: list, Kout: torch.Tensor, device, bufs: dict) -> None:
    """Centred Gram of every channel: ``parts`` = the activations of consecutive row batches, each (B, C, D)
    float32 on the CPU (m rows in all); Kout[c] = A_c A_c' (m x m, float64, A_c centred over the m rows), one BLAS
    dsyrk per channel (a product on CUDA). A channel's float64 copy is made in one pass (mean from the float32
    values, then subtract-and-cast straight from the batches into a reused buffer)."""
    m = sum(int(t.shape[0]) for t in parts)
    C, D = int(parts[0].shape[1]), int(parts[0].shape[2])
    nps = [t.numpy() for t in parts]
    if "x" not in bufs or bufs["x"].size < m * D:
        bufs["x"] = torch.empty(m * D, dtype=F64).numpy()
    if "k" not in bufs or bufs["k"].size < m * m:
        bufs["k"] = torch.empty(m * m, dtype=F64).numpy()
    o = bufs["x"][: m * D].reshape(m, D)
    for c in range(C):
        mean = sum(x[:, c].sum(0, dtype=np.float64) for x in nps) / m
        i0 = 0
        for x in nps:
            np.subtract(x[:, c], mean, out=o[i0 : i0 + len(x)])
            i0 += len(x)
        acc = _GramAcc(m, device, bufs["k"][: m * m] if device.type == "cpu" else None)
        acc.add(torch.from_numpy(o).to(device))
        acc.full(out=Kout[c])


def _channel_stats_memory(K: torch.Tensor, need_rows: bool):
    """(F, a, r) of :func:`_channel_stats` from the channel Grams K (C, m, m) held in memory."""
    C, m, _ = K.shape
    Kf = K.reshape(C, m * m)
    F = Kf @ Kf.T
    a = K.diagonal(dim1=1, dim2=2).clone()
    r = None
    if need_rows:  # r[c, d, i] = sum_j K_c,ij K_d,ij, batched over rows i
        r3 = torch.empty(m, C, C, dtype=F64, device=K.device)
        step = max(1, int(32e6 / (8 * m * 2 * C)))
        for i0 in range(0, m, step):
            i1 = min(i0 + step, m)
            torch.bmm(K[:, i0:i1].permute(1, 0, 2), K[:, i0:i1].permute(1, 2, 0), out=r3[i0:i1])
        r = r3.permute(1, 2, 0)
    return F, a, r


def similarity_channels(model_pt, mel_h5, params: Mapping, deep_params: Mapping, log=None,
                        dataset: str | None = None) -> pd.DataFrame:
    """Channel vs channel CKA (and debiased CKA) of conv1 and pool1, trained and untrained weights.

    The network (``deepfeat.models.load_model``) runs once per weight state on a seeded subset of
    m = min(n_train, ``channel_max_clips``) training clips (seed ``seed``; ``n`` = m in the output), inputs
    standardised with the model's train_mean/train_std, activations at ``deep_params["point"]``; channel c of a
    layer is its (H x W) map. Exact Gram form: the centred m x m Gram of every channel (float64, one dsyrk per
    channel), then all channel pairs at once (F = <K_c, K_d> in one product). When the activations of the subset
    do not fit ``memory_mb``, the Grams are streamed over row blocks instead (activations recomputed per block).
    Layers are written ``conv1/ch{c}``.
    """
    from deepfeat import extract, models

    log = log or get_logger()
    cfg = _config(params)
    device = pick_device(cfg["device"])
    dataset = dataset if dataset is not None else Path(mel_h5).parent.name
    point = (deep_params or {}).get("point", "raw")
    measures = [mm for mm in cfg["measures"] if mm in ("cka", "cka_debiased")]
    if not measures:
        log.info("similarity_channels: neither cka nor cka_debiased requested, nothing to do")
        return _frame([])
    t0 = time.perf_counter()
    train, _ = _train_mask(mel_h5)
    rows_train = np.flatnonzero(train)
    m = min(len(rows_train), cfg["channel_max_clips"])
    if m < len(rows_train):
        rng = np.random.default_rng([int(cfg["seed"]), 104729])
        rows = np.sort(rows_train[rng.choice(len(rows_train), size=m, replace=False)])
    else:
        rows = rows_train
    log.info(f"channel vs channel CKA on {m} of {len(rows_train)} training clips"
             + (f" (seeded subset: similarity.channel_max_clips = {cfg['channel_max_clips']}, seed {cfg['seed']})"
                if m < len(rows_train) else " (all)") + f", device {device}")
    with open_h5(mel_h5, "mel") as f:
        ds = f["mel"]
        mel = np.empty((m, *ds.shape[1:]), np.float32)
        pos = 0
        for i0 in range(0, len(train), 1024):
            sel = rows[(rows >= i0) & (rows < i0 + 1024)] - i0
            if len(sel):
                mel[pos : pos + len(sel)] = ds[i0 : min(i0 + 1024, len(train))][sel]
                pos += len(sel)
    out_rows = []
    boot = cfg["bootstrap"] > 0 and "cka" in measures
    gbufs: dict = {}
    for state in STATES:
        ts = time.perf_counter()
        model, meta = models.load_model(model_pt, state, device)
        model.eval()
        x_all = extract.standardise(mel, meta, "cpu")
        probe = extract.layer_activations(model, x_all[:1].to(device), list(CHANNEL_LAYERS), point)
        layers = [a for a in CHANNEL_LAYERS if a in probe]
        dims = {a: int(np.prod(probe[a].shape[2:])) for a in layers}
        chans = {a: int(probe[a].shape[1]) for a in layers}
        act_bytes = m * sum(chans[a] * dims[a] for a in layers) * 4
        gram_bytes = 8 * m * m * (sum(chans.values()) + 2) + (8 * m * max(chans.values()) ** 2 if boot else 0)
        in_memory = act_bytes + gram_bytes <= cfg["memory_mb"] * 1e6
        if in_memory:
            bs = 32  # small batches keep the layer maps in cache: ~20% faster forward passes here than 128
            acts = {a: [] for a in layers}  # per row batch, as the network returns them (no copy)
            with torch.inference_mode():
                for i0 in range(0, m, bs):
                    got = extract.layer_activations(model, x_all[i0 : i0 + bs].to(device), layers, point)
                    for a in layers:
                        acts[a].append(got[a].reshape(-1, chans[a], dims[a]).to("cpu", torch.float32).contiguous())
                    del got
            t_fwd = time.perf_counter() - ts
            stats = {}
            for a in layers:
                if gbufs.get(("K", a)) is None or gbufs[("K", a)].shape[0] != chans[a]:
                    gbufs[("K", a)] = torch.empty(chans[a], m, m, dtype=F64, device=device)
                _channel_grams(acts[a], gbufs[("K", a)], device, gbufs)
                stats[a] = _channel_stats_memory(gbufs[("K", a)], boot)
            del acts
            log.info(f"channels of {meta['arch']} seed {meta['seed']} ({state}): "
                     + ", ".join(f"{a} {chans[a]} x {dims[a]}" for a in layers)
                     + f"; forward {t_fwd:.1f} s, channel Grams and pairs {time.perf_counter() - ts - t_fwd:.1f} s")
        else:
            per_clip = sum(chans[a] * dims[a] for a in layers) * 8 * 3
            block = int(max(16, min(1024, cfg["memory_mb"] * 1e6 / 4 / per_clip)))
            log.info(f"channels of {meta['arch']} seed {meta['seed']} ({state}): "
                     + ", ".join(f"{a} {chans[a]} x {dims[a]}" for a in layers)
                     + f": activations of {m} clips exceed memory_mb, streamed in row blocks of {block}")

            def acts_fn(idx, means=None):
                with torch.no_grad():
                    got = extract.layer_activations(model, x_all[torch.as_tensor(idx)].to(device), layers, point)
                o = {a: got[a].reshape(len(idx), chans[a], -1).to(F64) for a in layers}
                if means is not None:
                    o = {a: o[a] - means[a] for a in layers}
                return o

            sums = {a: torch.zeros(chans[a], dims[a], dtype=F64, device=device) for a in layers}
            for i0 in range(0, m, block):
                got = acts_fn(np.arange(i0, min(i0 + block, m)))
                for a in layers:
                    sums[a] += got[a].sum(0)
            means = {a: sums[a] / m for a in layers}
            stats = _channel_stats(lambda idx: acts_fn(idx, means), m, block, boot, log, f"{meta['arch']} {state}")
        for a in layers:
            F, av, r = stats[a]
            vals = _channel_measures(F, av, m, measures)
            C = chans[a]
            ci = {}
            if boot:
                iu = [(c, d) for c, d in combinations(range(C), 2) if np.isfinite(vals["cka"][c, d])]
                if iu:
                    fro2 = F.diagonal()
                    psi = []
                    for c, d in iu:
                        sc = _Spec(n=m, p=dims[a], trace=0.0, fro2=float(fro2[c]), aa=0.0)
                        sd = _Spec(n=m, p=dims[a], trace=0.0, fro2=float(fro2[d]), aa=0.0)
                        psi.append(_cka_psi(r[c, d], r[c, c], r[d, d], sc, sd, float(vals["cka"][c, d]), m)
                                   .cpu().numpy())
                    lo, hi = _bootstrap_ci(np.array([vals["cka"][c, d] for c, d in iu]), np.stack(psi, 1),
                                           cfg["bootstrap"], cfg["seed"], 2)
                    ci = {p: (float(l), float(h)) for p, l, h in zip(iu, lo, hi)}
            for c, d in combinations(range(C), 2):
                for mm in measures:
                    v = float(vals[mm][c, d])
                    lo, hi = ci.get((c, d), (float("nan"), float("nan"))) if mm == "cka" else (float("nan"),) * 2
                    out_rows.append(dict(
                        dataset=dataset, comparison="channel_vs_channel", task=meta["task"], arch_a=meta["arch"],
                        seed_a=int(meta["seed"]), layer_a=f"{a}/ch{c}", trained_a=state, arch_b=meta["arch"],
                        seed_b=int(meta["seed"]), layer_b=f"{a}/ch{d}", trained_b=state, feature_b="", measure=mm,
                        value=v, ci_low=lo, ci_high=hi, n=m, p_a=dims[a], p_b=dims[a], method="gram",
                        flag="" if np.isfinite(v) else "zero_variance",
                    ))
        del model
    log.info(f"similarity_channels: {len(out_rows)} rows in {time.perf_counter() - t0:.1f} s")
    return _frame(out_rows)


__all__ = [
    "MEASURES", "COLUMNS", "MOMENT_SETTINGS", "Moments", "HandcraftedMoments", "cka", "cka_debiased", "lr_r2", "cca",
    "svcca", "all_measures", "channel_cka", "handcrafted_moments", "write_handcrafted_moments",
    "read_handcrafted_moments", "similarity_deep", "similarity_channels", "similarity_cross",
]
