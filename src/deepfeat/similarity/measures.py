"""The similarity measures of one pair of representations: their definitions and the maths shared by every form.

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
  of docs/method.md whenever p1 <= p2 and X has full column rank).
- ``procrustes``: the angular orthogonal Procrustes shape distance (Williams et al. 2021),
  arccos(||C_xy||_* / sqrt(tr C_xx tr C_yy)) in radians, [0, pi/2]; smaller = more similar (0: Y a rotation of a
  scaled X). ||C_xy||_* (nuclear norm) = the sum of the singular values of X'Y = the sum of the square roots of the
  eigenvalues of K_x^(1/2) K_y K_x^(1/2) (Gram form: of B_x'B_y, B the principal coordinates).
- ``r2_svcca`` / ``rho_svcca``: the same between U_X and U_Y, the leading left singular vectors of X and of Y
  that explain ``svcca_variance`` of their variance: d = min{k : sum_{i<=k} l_i / sum l >= 0.99} with l the
  squared singular values, i.e. the component whose cumulative share crosses the threshold is kept;
  normalised by min(d_X, d_Y).

- ``r2_lr_test``, ``r2_cca_test``, ``rho_cca_test``, ``r2_svcca_test``, ``rho_svcca_test``: the same fits on the
  training clips evaluated on the test clips (:func:`heldout_measures`, feature form; the Gram-space twin
  :meth:`deepfeat.similarity.gram_space._GramSpace._ho_values`, on the Gram subset and at most ``gram_max_clips``
  test clips; the block-by-block Gram path leaves them NaN, flag ``gram_form``). Held-out CCA/SVCCA are NaN when
  rank_a + rank_b (d_a + d_b) > n - 1: the training subspaces intersect, the unit canonical correlations tie and
  the test value would depend on an arbitrary rotation within them.

Whitening for LR/CCA/SVCCA uses eigh(C) with a relative rank cutoff: components with eigenvalue <= ``rank_rtol``
x the largest are dropped. LR, CCA and SVCCA values are NaN with a ``flag`` when the rank (or the SVCCA
dimension) reaches n - 1: the centred data then span every direction and these measures are trivially 1.
Singular values come from the eigenvalues of the smaller Gram of the matrix when its condition allows (smallest
eigenvalue >= 1e-6 x the largest), else from an SVD.

Chance level. LR, CCA and SVCCA grow with the dimensions relative to n even for unrelated data (the expected
r2_cca of independent Gaussian blocks is ~ p1/(n-1) for p1 <= p2); read them against the ``Random`` feature,
and prefer ``cka_debiased`` when p is not small compared with n.

Every form of the computation (streamed covariance blocks, :mod:`deepfeat.similarity.moments`; Gram form and
principal coordinates, :mod:`deepfeat.similarity.gram`; Gram space, :mod:`deepfeat.similarity.gram_space`) reduces
a pair to the same parts: ||C_xy||_F^2, sum_i a_i b_i, each block's :class:`_Spec` and the eigen-based parts of
:func:`_measures`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import torch

from deepfeat.formats.tables import MEASURES

EIG_MEASURES = frozenset({"r2_lr", "r2_cca", "rho_cca", "r2_svcca", "rho_svcca"})
#: the held-out twins: fitted on the training clips, evaluated on the test clips (feature form only)
HELDOUT_MEASURES = ("r2_lr_test", "r2_cca_test", "rho_cca_test", "r2_svcca_test", "rho_svcca_test")
EIG_MEASURES = EIG_MEASURES | frozenset(HELDOUT_MEASURES)
F64 = torch.float64
# From this size on, CPU eigendecompositions use LAPACK dsyevr through scipy: measured 1.5-2x faster than torch's
# here (n = 1024: 0.46 vs 0.66 s, n = 2048: 3.8 vs 6.9 s, one thread) and with less workspace. Smaller matrices
# (every one of the ci config) keep torch's, so their values stay bit for bit what they were.
EIGH_LAPACK_MIN = 1024
_INT_SETTINGS = ("max_features", "gram_max_clips", "channel_max_clips", "bootstrap", "chunk_size", "seed")
_FLOAT_SETTINGS = ("svcca_variance", "rank_rtol", "memory_mb")


def canonical(settings: Mapping) -> dict:
    """Resolved ``similarity`` settings as the computations use them: ``measures`` without repeats, in the order
    of :data:`MEASURES` (the row order of every table), integer and real settings as ``int`` and ``float``."""
    cfg = dict(settings)
    if "measures" in cfg:
        cfg["measures"] = [m for m in MEASURES if m in set(cfg["measures"])]
    for k in _INT_SETTINGS:
        if k in cfg:
            cfg[k] = int(cfg[k])
    for k in _FLOAT_SETTINGS:
        if k in cfg:
            cfg[k] = float(cfg[k])
    return cfg


def _t64(x, device) -> torch.Tensor:
    return torch.as_tensor(x).to(device=device, dtype=F64)


# ----------------------------------------------------------------------------------------------------------
# Spectra
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
    """A cached spectrum whose eigenvectors V are read only when first used (CKA alone never needs them), and
    dropped again by :meth:`release` (read anew when used after that)."""

    def __init__(self, load_V: Callable, **kw):
        self._V, self._load_V = None, load_V
        super().__init__(**kw)

    @property
    def V(self):
        if self._V is None and self._load_V is not None:
            self._V = self._load_V()
        return self._V

    @V.setter
    def V(self, v):
        self._V = v

    def release(self) -> None:
        self._V = None

    def nbytes(self) -> int:  # what it holds now (without reading V)
        return sum(int(t.numel()) * 8 for t in (self.lam, self._V, self.C, self.mean) if t is not None)


def _eigh_desc(A: torch.Tensor, overwrite: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(eigenvalues descending, clipped at 0; eigenvectors as columns) of the symmetric float64 matrix ``A``.
    ``overwrite``: ``A`` may be destroyed (CPU, n >= :data:`EIGH_LAPACK_MIN`: no copy of it is made)."""
    if A.device.type == "cpu" and A.shape[0] >= EIGH_LAPACK_MIN:
        a = A.numpy()
        if not overwrite:
            a = a.copy(order="F")
        elif not a.flags.f_contiguous:
            a = a.T  # the same symmetric matrix, Fortran-ordered: LAPACK works on it in place
        lam, V = scipy.linalg.eigh(a, driver="evr", overwrite_a=True, check_finite=False)
        return torch.from_numpy(lam[::-1].copy()).clamp_min(0), torch.from_numpy(np.ascontiguousarray(V[:, ::-1]))
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


def _set_dims(s: _Spec, cfg: Mapping) -> _Spec:
    """Rank (``rank_rtol``) and SVCCA dimension (``svcca_variance``) of a spectrum whose ``lam`` is set."""
    s.rank = _rank(s.lam, cfg["rank_rtol"])
    s.d = _svcca_dim(s.lam, cfg["svcca_variance"], s.rank)
    return s


def _sumsq(A: torch.Tensor, block: int = 1 << 22) -> float:
    """sum of A_ij^2 in float64; a large matrix in row blocks (no temporary of its size)."""
    if A.numel() <= block:
        return float((A * A).sum())
    step = max(1, block // max(1, A.shape[1]))
    return float(sum((A[i : i + step] * A[i : i + step]).sum() for i in range(0, A.shape[0], step)))


def _spec_from_cov(C, n, aa, cfg, need_eig, mean=None, overwrite: bool = False) -> _Spec:
    """The spectrum of a block from its centred covariance ``C`` (destroyed when ``overwrite``)."""
    s = _Spec(n=n, p=C.shape[0], trace=float(C.diagonal().sum().clamp_min(0)), fro2=_sumsq(C), aa=aa, mean=mean)
    if need_eig:
        s.lam, s.V = _eigh_desc(C, overwrite=overwrite)
        _set_dims(s, cfg)
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


# ----------------------------------------------------------------------------------------------------------
# The measures of one pair
# ----------------------------------------------------------------------------------------------------------
def _hsic1(F: float, ab: float, ta: float, tb: float, n: int) -> float:
    """n(n-3) x the unbiased HSIC of two linear kernels from ||C_xy||^2, sum a_i b_i and the traces."""
    return F - n / (n - 2) * ab + ta * tb / ((n - 1) * (n - 2))


def _cka_values(
    F: float, ab: float, sx: _Spec, sy: _Spec, measures, n: int, vals: dict, setnan: Callable, zero: bool, zflag: str
) -> None:
    """``cka`` and ``cka_debiased`` of :func:`_measures` (into ``vals``, NaNs with flags through ``setnan``)."""
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


def _measures(
    F: float,
    ab: float,
    sx: _Spec,
    sy: _Spec,
    measures,
    n: int,
    lr: Callable | None = None,
    cca_sv: Callable | None = None,
    svcca_sv: Callable | None = None,
    nuc: Callable | None = None,
):
    """({measure: value}, {measure: flag}) of one pair from its parts.

    F = ||C_xy||_F^2 (= <K_x, K_y>), ab = sum_i a_i b_i; the eigen-based parts are callables evaluated only when
    their measure is asked and defined: ``lr()`` = tr(C_xy C_yy^+ C_yx) with C_yy^+ the rank-truncated inverse
    (= <K_x, P_y>, P_y the projector onto b's leading ``rank`` directions), ``cca_sv()`` / ``svcca_sv()`` the
    singular values of U_x'U_y over the rank / SVCCA subspaces (the canonical correlations), ``nuc()`` =
    ||C_xy||_* (``procrustes``; None or returning None: NaN with the flag ``procrustes_not_in_this_form``).
    """
    nan = float("nan")
    vals, flags = {}, {}
    zero = not (sx.fro2 > 0 and sy.fro2 > 0)
    zflag = "zero_variance_" + ("a" if not sx.fro2 > 0 else "b")

    def setnan(ms, flag):
        for m in ms:
            if m in measures:
                vals[m], flags[m] = nan, flag

    # held-out measures need the test clips: the feature form and Gram space fill them in (:func:`heldout_measures`)
    setnan([m for m in HELDOUT_MEASURES if m in measures], "gram_form")
    _cka_values(F, ab, sx, sy, measures, n, vals, setnan, zero, zflag)
    if "procrustes" in measures:
        if zero:
            setnan(["procrustes"], zflag)
        else:
            v = None if nuc is None else nuc()
            if v is None:
                setnan(["procrustes"], "procrustes_not_in_this_form")
            else:
                vals["procrustes"] = math.acos(min(1.0, max(-1.0, float(v) / math.sqrt(sx.trace * sy.trace))))
    eig = [m for m in measures if m in EIG_MEASURES and m not in HELDOUT_MEASURES]
    if not eig:
        return {m: vals[m] for m in measures if m in vals}, flags
    if zero:
        setnan(eig, zflag)
        return {m: vals[m] for m in measures}, {m: flags[m] for m in measures if m in flags}
    if "r2_lr" in measures:
        if sy.rank >= n - 1:
            setnan(["r2_lr"], f"rank_b={sy.rank}>=n-1={n - 1}")
        else:
            vals["r2_lr"] = float(lr()) / sx.trace
    # CCA over the full ranks, SVCCA over the 99 %-variance dimensions d: the same two numbers from singular values
    for (r2, rho), dim, label, svals in (
        (("r2_cca", "rho_cca"), "rank", "rank", cca_sv),
        (("r2_svcca", "rho_svcca"), "d", "svcca_dim", svcca_sv),
    ):
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
        float((cxy * cxy).sum()),
        ab,
        sx,
        sy,
        measures,
        n,
        lr=lambda: float((p1() * p1()).sum()),
        cca_sv=lambda: _svals(_white_left(p1(), sx, sx.rank)),
        svcca_sv=lambda: _svals(_white_left(p1()[:, : sy.d], sx, sx.d)),
        nuc=lambda: float(torch.linalg.svdvals(cxy).sum()),
    )


def heldout_measures(cxy, sx: _Spec, sy: _Spec, test: dict, measures) -> dict:
    """{measure: value} of the held-out measures of one feature-form pair: fitted on the training clips (the
    cross-covariance ``cxy`` and the spectra ``sx``/``sy`` with their means, eigenvectors and ranks), evaluated on
    the test clips (``test``: n, mean_x, mean_y, the test-centred sums of products cxx, cyy, cxy).

    ``r2_lr_test``: 1 - SSE / SST of the test rows of a predicted from b by the training regression (training means
    and rank-truncated C_yy^+ C_yx), SST around the test mean. ``r2_cca_test`` / ``rho_cca_test``: the training
    canonical directions (K = min(rank_a, rank_b) pairs) applied to the test rows; mean squared / mean correlation of
    the test canonical variates (test-centred; a correlation may be negative). ``r2_svcca_test`` / ``rho_svcca_test``:
    the same over the SVCCA dimensions. CCA/SVCCA: NaN when kx + ky > n - 1 (intersecting subspaces: no unique
    canonical directions); ``r2_lr_test``: NaN when rank_b >= n - 1 (the training fit interpolates, as for
    ``r2_lr``)."""
    out = {}
    nt = test["n"]
    if nt < 2:
        return {m: float("nan") for m in HELDOUT_MEASURES if m in measures}
    Cxx, Cyy, Cxy = test["cxx"], test["cyy"], test["cxy"]
    if "r2_lr_test" in measures and sy.rank >= sy.n - 1:  # the training fit interpolates (as r2_lr: NaN)
        out["r2_lr_test"] = float("nan")
    elif "r2_lr_test" in measures:
        r = sy.rank
        Ty = sy.V[:, :r] * sy.lam[:r].rsqrt()  # p_y x r: training whitening of b
        P = cxy @ Ty  # p_x x r: the training fit, x_hat = P z with z = Ty'(y - mean_y)
        dx, dy = test["mean_x"] - sx.mean, test["mean_y"] - sy.mean
        Sxz = (Cxy + nt * torch.outer(dx, dy)) @ Ty
        Szz = Ty.T @ (Cyy + nt * torch.outer(dy, dy)) @ Ty
        sst = float(Cxx.diagonal().sum())
        sxx = sst + nt * float(dx @ dx)
        sse = sxx - 2 * float((P * Sxz).sum()) + float(((P.T @ P) * Szz).sum())
        out["r2_lr_test"] = 1 - sse / sst if sst > 0 else float("nan")
    for (r2, rho), dim in ((("r2_cca_test", "rho_cca_test"), "rank"), (("r2_svcca_test", "rho_svcca_test"), "d")):
        if r2 not in measures and rho not in measures:
            continue
        kx, ky = getattr(sx, dim), getattr(sy, dim)
        if kx + ky > sx.n - 1:  # the subspaces intersect: tied unit canonical correlations, directions not unique
            out[r2] = out[rho] = float("nan")
            continue
        Tx = sx.V[:, :kx] * sx.lam[:kx].rsqrt()
        Ty = sy.V[:, :ky] * sy.lam[:ky].rsqrt()
        U, _, Vh = torch.linalg.svd(Tx.T @ cxy @ Ty, full_matrices=False)
        K = min(kx, ky)
        A, B = Tx @ U[:, :K], Ty @ Vh[:K].T
        cov = ((Cxy @ B) * A).sum(0)
        va, vb = ((Cxx @ A) * A).sum(0), ((Cyy @ B) * B).sum(0)
        corr = cov / torch.sqrt(va * vb)
        out[r2] = float((corr * corr).mean()) if K else float("nan")
        out[rho] = float(corr.mean()) if K else float("nan")
    return {m: v for m, v in out.items() if m in measures}
