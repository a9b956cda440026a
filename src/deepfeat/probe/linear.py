"""Regression probes: linear regression with an intercept in float64, by OLS or ridge.

Definitions
-----------
* **Regression probe.** Ordinary least squares with an intercept in float64; test RMSE in the target's raw
  units (MIDI pitch, velocity). When the model would have at least as many parameters as training clips
  (p + 1 >= n_train) the fit is ridge regression solved in the dual (n x n) form with penalty
  ``ridge * trace(K) / n_train`` (K = Xc Xc', Xc the centred training features), and the log says so.
  ``probe.ridge: auto`` (the default) instead fits ridge regression for every p, with the penalty of each
  target chosen by exact leave-one-out on the training split over ``RIDGE_GRID`` x trace(K) / n_train, all
  from one eigendecomposition: of the p x p covariance Xc' Xc when p < n_train (O(n p^2 + p^3)), of the
  n x n Gram matrix K otherwise (O(n^2 p + n^3)); :func:`fit_linear`.

:func:`fit_linear` (arrays) and :func:`fit_linear_rows` (:class:`~deepfeat.probe.rows.Rows`, held in memory or
computed on demand) dispatch to one solver per case: :func:`_ols` (gelsd or the normal equations),
:func:`_ridge_fixed` (fixed penalty, dual form), :func:`_ridge_loo_gram` (leave-one-out penalty from the n x n
Gram matrix) and :func:`_ridge_loo_covariance` (from the p x p covariance). Every pass over the rows runs over
row blocks of a bounded size: besides the rows themselves a solver holds its p x p or n x n matrices and their
eigenvectors (16 k^2 bytes, k = min(n, p)), never an n x p float64 temporary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import scipy.linalg
import torch

from deepfeat import config
from deepfeat.probe.rows import ResidentRows, Rows, gram_of
from deepfeat.probe.standardisation import check_2d, rows_per_chunk

LSTSQ_BYTES = 256 * 2**20  # OLS through LAPACK gelsd (SVD) on CPU when the float64 design fits in this
RIDGE_GRID = np.logspace(-6, 3, 25)  # ridge auto: candidate penalties lam / (trace(K) / n_train), log-spaced
FORMS = ("auto", "primal", "dual")  # ridge auto: covariance (primal) when p < n_train, else Gram (dual); or forced


@dataclass
class _Fit:
    """What a solver returns: ``coef`` (p x T) on the centred features, the training and test predictions of
    the centred targets, the absolute penalty ``lam`` (a (T,) tensor with auto) and solver-specific extras."""

    method: str
    lam: float | torch.Tensor
    coef: torch.Tensor
    pred_tr: torch.Tensor
    pred_te: torch.Tensor
    extra: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------------------
# Passes over row blocks, eigen solves, leave-one-out
# ----------------------------------------------------------------------------------------------------------
def _rows_times(X: Rows, mu: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    """(X - mu) M in float64, one row block at a time (an empty X gives 0 x M.shape[1])."""
    out = torch.zeros(X.n, M.shape[1], dtype=torch.float64, device=M.device)
    for pos, B in X.blocks(rows_per_chunk(X.d)):
        out[pos] = (B.double() - mu) @ M
    return out


def _covariance(X: Rows, mu: torch.Tensor, Yc: torch.Tensor | None = None):
    """Xc' Xc (p x p, float64, summed over row blocks of the centred Xc = X - mu), and Xc' Yc when ``Yc``
    is given (else None)."""
    p, dev = X.d, mu.device
    C = torch.zeros(p, p, dtype=torch.float64, device=dev)
    R = None if Yc is None else torch.zeros(p, Yc.shape[1], dtype=torch.float64, device=dev)
    for pos, B in X.blocks(rows_per_chunk(p)):
        B = B.double() - mu
        C.addmm_(B.T, B)
        if R is not None:
            R.addmm_(B.T, Yc[pos])
    return C, R


def _pinv_solve(A: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
    """Minimum-norm solution of the symmetric PSD system A X = R (eigenvalues below 1e-12 * max dropped)."""
    lam, V = torch.linalg.eigh(A)
    keep = lam > 1e-12 * lam.max().clamp_min(0)
    return V[:, keep] @ ((V[:, keep].T @ R) / lam[keep].unsqueeze(1))


def _eigh(A: torch.Tensor, overwrite: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (ascending) and eigenvectors of the symmetric float64 ``A``. On the CPU LAPACK ?syevr, in
    place when ``overwrite`` (then A is destroyed): the matrix and its eigenvectors, no n^2 workspace."""
    if A.device.type != "cpu":
        return torch.linalg.eigh(A)
    a = A.numpy().T  # symmetric: the Fortran-ordered view of the C-ordered matrix (no copy)
    s, V = scipy.linalg.eigh(a, overwrite_a=overwrite, driver="evr", check_finite=False)
    return torch.from_numpy(s), torch.from_numpy(V)


def _top_eig(A: torch.Tensor, scale: int, overwrite: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenpairs of the symmetric PSD float64 ``A`` whose eigenvalue exceeds scale x eps x the largest (the
    kept ones are the last columns: a view, no copy)."""
    s, V = _eigh(A, overwrite)
    top = s.max().clamp_min(0) if len(s) else torch.zeros((), dtype=s.dtype)
    keep = s > scale * torch.finfo(torch.float64).eps * top
    if not bool(top > 0):
        keep[:] = False
    k0 = len(s) - int(keep.sum())
    return s[k0:], V[:, k0:]


def _loo_scan(U_blocks, n: int, s: torch.Tensor, UtY: torch.Tensor, Yc: torch.Tensor, lams: torch.Tensor):
    """Exact leave-one-out mean squared error (G x T) of ridge with an unpenalised intercept, per penalty, and
    the training fits (n, G, T) of every penalty, over row blocks ``U_blocks`` ((positions, U_b) pairs).

    ``U`` (n x r, orthonormal columns) and ``s`` (r, > 0) are the nonzero eigenpairs of the centred training
    Gram matrix K = Xc Xc'; ``UtY`` = U' Yc; ``Yc`` (n x T) the centred targets; ``lams`` (G) absolute
    penalties. The fit is the linear smoother H = 11'/n + U diag(s / (s + lam)) U' (the intercept is
    unpenalised and 1 is in the null space of K), so the leave-one-out residual is e_i / (1 - H_ii) with
    e = Yc - U diag(s/(s+lam)) U' Yc (exact for penalised least squares with a fixed penalty). Cost
    O(n r (G + G T)); 1 - H_ii <= 0 (interpolation) gives inf.
    """
    G, T = len(lams), Yc.shape[1]
    F = s[:, None] / (s[:, None] + lams[None, :])  # r x G shrinkage factors
    M = (F[:, :, None] * UtY[:, None, :]).reshape(len(s), G * T)
    sse = torch.zeros(G, T, dtype=torch.float64, device=Yc.device)
    ok = torch.ones(G, dtype=torch.bool, device=Yc.device)
    fits = torch.empty(n, G, T, dtype=torch.float64, device=Yc.device)
    for pos, U in U_blocks:
        one_minus_h = (1.0 - 1.0 / n) - (U * U) @ F  # b x G
        fit = (U @ M).reshape(-1, G, T)
        loo = (Yc[pos][:, None, :] - fit) / one_minus_h[:, :, None]
        sse += (loo * loo).sum(0)
        ok &= (one_minus_h > 0).all(0)
        fits[pos] = fit
    mse = sse / n
    return torch.where(ok[:, None], mse, torch.full_like(mse, math.inf)), fits


def _choose_ridge(loo: torch.Tensor, fits: torch.Tensor, trace: float, n: int, form: str):
    """Per target column, the penalty of ``RIDGE_GRID`` x trace / n with the smallest exact LOO error, its
    training fits (n x T) and the extras of the result."""
    lams = torch.as_tensor(RIDGE_GRID * (trace / n), dtype=torch.float64, device=loo.device)
    best = torch.argmin(loo, 0)  # first minimum on ties: deterministic
    pred_tr = fits[:, best, torch.arange(fits.shape[2], device=fits.device)]
    return (
        lams[best],
        pred_tr,
        {
            "ridge_grid": lams.cpu().numpy(),
            "ridge_rel": RIDGE_GRID[best.cpu().numpy()],
            "loo_mse": loo.cpu().numpy(),
            "form": form,
        },
    )


def _grid(trace: float, n: int, device) -> torch.Tensor:
    return torch.as_tensor(RIDGE_GRID * (trace / n), dtype=torch.float64, device=device)


def _centred_gram(Xtr: Rows, mu: torch.Tensor | None, gram, consume: bool = False, width=None) -> torch.Tensor:
    """The centred training Gram matrix K = Xc Xc' (n x n, float64): from the uncentred ``gram`` Xtr Xtr' by
    exact double centring when given (nearly centred features only; in place when ``consume``), else summed
    over column chunks of the centred rows (held rows) or from the uncentred Gram matrix of rows computed on
    demand (standardised, hence nearly centred; summed over column groups of ``width`` columns)."""
    n, dev = Xtr.n, Xtr.device
    if gram is None and Xtr.resident:
        K = torch.zeros(n, n, dtype=torch.float64, device=dev)
        cols = rows_per_chunk(n)  # columns of n float64 rows per working chunk
        for a in range(0, Xtr.d, cols):
            C = Xtr.Z[:, a : a + cols].double() - mu[a : a + cols]
            K.addmm_(C, C.T)
        return K
    if gram is None:
        gram, consume = gram_of(Xtr, torch.float64, width), True
    G = gram if isinstance(gram, torch.Tensor) else torch.from_numpy(np.asarray(gram))
    if tuple(G.shape) != (n, n) or G.dtype != torch.float64:
        raise ValueError(
            f"regression: gram must be the float64 ({n}, {n}) matrix Xtr Xtr', got {G.dtype} {tuple(G.shape)}"
        )
    G = G.to(dev)
    m = G.mean()  # = |training mean|^2: must be negligible next to the mean squared norm trace / n
    if not torch.isfinite(G).all():
        raise ValueError("regression: gram has NaN or infinite values")
    if float(m) > 1e-6 * float(torch.trace(G)) / n:
        raise ValueError(
            "regression: gram is for (nearly) centred features such as standardised ones; "
            "these have a large mean (centring would cancel digits), call without gram"
        )
    r = G.mean(1, keepdim=True)
    K = G if consume else G.clone()
    K -= r
    K -= r.T
    K += m
    return K


def _dual_coefficients(
    Xtr: Rows, Xte: Rows, alpha: torch.Tensor, mu: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(coefficients Xc' alpha, test predictions, column means mu) in one pass over the training row blocks and
    one over the test rows. Without ``mu`` (the Gram matrix was given: nearly centred features) the means are
    summed in the same pass and Xc' alpha = X' alpha - mu 1' alpha. Reads the inputs only (a float64 input is
    never centred in place)."""
    n, p, dev = Xtr.n, Xtr.d, alpha.device
    XtA = torch.zeros(p, alpha.shape[1], dtype=torch.float64, device=dev)
    here = mu is None
    m = torch.zeros(p, dtype=torch.float64, device=dev) if here else mu
    for pos, B in Xtr.blocks(rows_per_chunk(p)):
        B = B.double()
        if here:
            m += B.sum(0)
        XtA.addmm_((B if here else B - m).T, alpha[pos])
    if here:
        m /= n
        if not torch.isfinite(m).all():
            raise ValueError("regression features (train): NaN or infinite values")
        XtA -= m[:, None] * alpha.sum(0)[None, :]
    return XtA, _rows_times(Xte, m, XtA), m


# ----------------------------------------------------------------------------------------------------------
# The solvers
# ----------------------------------------------------------------------------------------------------------
def _ols(Xtr: Rows, Xte: Rows, Yc: torch.Tensor, mu: torch.Tensor) -> _Fit:
    """Ordinary least squares on the centred design (minimum-norm if rank deficient): LAPACK gelsd when the
    float64 design of held rows fits ``LSTSQ_BYTES`` on the CPU, else the normal equations (Cholesky;
    eigen-pseudo-inverse if singular; constant columns get coefficient 0)."""
    n, p = Xtr.n, Xtr.d
    if Xtr.resident and Xtr.device.type == "cpu" and n * p * 8 <= LSTSQ_BYTES:
        coef = torch.linalg.lstsq(Xtr.Z.double() - mu, Yc, driver="gelsd").solution
    else:
        G, R = _covariance(Xtr, mu, Yc)
        live = torch.diagonal(G) > 0  # constant columns carry no information
        coef = torch.zeros(p, Yc.shape[1], dtype=torch.float64, device=Yc.device)
        Gl = G[live][:, live]
        L, info = torch.linalg.cholesky_ex(Gl)
        coef[live] = torch.cholesky_solve(R[live], L) if int(info) == 0 else _pinv_solve(Gl, R[live])
    return _Fit("ols", 0.0, coef, _rows_times(Xtr, mu, coef), _rows_times(Xte, mu, coef))


def _ridge_fixed(Xtr: Rows, Xte: Rows, Yc: torch.Tensor, mu, ridge: float, gram, consume: bool, width) -> _Fit:
    """Dual ridge with the fixed penalty lam = ridge x trace(K) / n: alpha = (K + lam I)^-1 Yc (Cholesky);
    ridge 0 gives the minimum-norm interpolant."""
    n = Xtr.n
    K = _centred_gram(Xtr, mu, gram, consume, width)
    lam = ridge * float(torch.trace(K)) / n
    if lam > 0:
        Kr = K.clone()
        Kr.diagonal().add_(lam)
        alpha = torch.cholesky_solve(Yc, torch.linalg.cholesky(Kr))
        del Kr
    else:
        alpha = _pinv_solve(K, Yc)
    pred_tr = K @ alpha
    del K
    coef, pred_te, mu = _dual_coefficients(Xtr, Xte, alpha, mu)
    return _Fit("ridge_dual", lam, coef, pred_tr, pred_te, {"mu": mu})


def _ridge_loo_gram(Xtr: Rows, Xte: Rows, Yc: torch.Tensor, mu, gram, consume: bool, width) -> _Fit:
    """Ridge with the leave-one-out penalty per target, from one eigendecomposition K = U diag(s) U' of the
    n x n centred Gram matrix: alpha = U diag(1 / (s + lam)) U' Yc."""
    n = Xtr.n
    K = _centred_gram(Xtr, mu, gram, consume, width)
    trace = float(torch.trace(K))
    s, U = _top_eig(K, n, overwrite=True)  # K is ours (centred copy or consumed): decomposed in place
    del K
    UtY = U.T @ Yc
    lams = _grid(trace, n, Yc.device)
    step = rows_per_chunk(U.shape[1])
    loo, fits = _loo_scan(((slice(i, i + step), U[i : i + step]) for i in range(0, n, step)), n, s, UtY, Yc, lams)
    lam, pred_tr, extra = _choose_ridge(loo, fits, trace, n, "dual")
    del fits
    alpha = U @ (UtY / (s[:, None] + lam))
    del U
    coef, pred_te, mu = _dual_coefficients(Xtr, Xte, alpha, mu)
    return _Fit("ridge_loo", lam, coef, pred_tr, pred_te, {**extra, "mu": mu})


def _ridge_loo_covariance(Xtr: Rows, Xte: Rows, Yc: torch.Tensor, mu: torch.Tensor) -> _Fit:
    """The same fit as :func:`_ridge_loo_gram` from the p x p covariance Xc' Xc = V diag(s) V' (p < n):
    U = Xc V diag(s)^-1/2 (row block by row block, never held), U' Yc = diag(s)^-1/2 V' Xc' Yc, coefficients
    V diag(s^1/2 / (s + lam)) U' Yc."""
    n, p = Xtr.n, Xtr.d
    C, R = _covariance(Xtr, mu, Yc)
    trace = float(torch.trace(C))
    s, V = _top_eig(C, max(n, p), overwrite=True)
    del C
    sq = s.sqrt()
    UtY = (V.T @ R) / sq[:, None]

    def u_blocks():
        for pos, B in Xtr.blocks(rows_per_chunk(p)):
            yield pos, ((B.double() - mu) @ V) / sq

    loo, fits = _loo_scan(u_blocks(), n, s, UtY, Yc, _grid(trace, n, Yc.device))
    lam, pred_tr, extra = _choose_ridge(loo, fits, trace, n, "primal")
    del fits
    coef = V @ (sq[:, None] / (s[:, None] + lam) * UtY)
    return _Fit("ridge_loo", lam, coef, pred_tr, _rows_times(Xte, mu, coef), extra)


# ----------------------------------------------------------------------------------------------------------
# The dispatcher
# ----------------------------------------------------------------------------------------------------------
def solver(n: int, p: int, ridge, form: str = "auto") -> str:
    """Which solver a regression of p features on n training clips runs: 'covariance' (ridge auto, p < n, or
    ``form='primal'``), 'gram' (ridge auto otherwise, or ``form='dual'``), 'ols' (a numeric ridge and
    p + 1 < n) or 'fixed' (a numeric ridge, dual form)."""
    if isinstance(ridge, str):
        if form not in FORMS:
            raise ValueError(f"regression form must be one of {FORMS}, got {form!r}")
        return {"primal": "covariance", "dual": "gram"}.get(form, "covariance" if p < n else "gram")
    return "ols" if p + 1 < n else "fixed"


def _check_ridge(ridge) -> bool:
    auto = isinstance(ridge, str)
    if auto and ridge != "auto":
        raise ValueError(f"ridge: expected a number >= 0 or 'auto', got {ridge!r}")
    if not auto and ridge < 0:
        raise ValueError(f"ridge: expected >= 0, got {ridge}")
    return auto


def _regression_inputs(Xtr, ytr, Xte, yte, ridge, dev):
    """Checked inputs: (Xtr, Xte, Y (n x T), Yt (n_te x T) as tensors on ``dev``, auto?, 1-D targets?)."""
    check_2d(Xtr, "regression features (train)")
    check_2d(Xte, "regression features (test)")
    n, p = Xtr.shape
    if Xte.shape[1] != p:
        raise ValueError(f"regression features: train has {p} columns but test has {Xte.shape[1]}")
    auto = _check_ridge(ridge)
    Y, Yt, one = targets(ytr, yte, n, Xte.shape[0], dev)
    Xtr, Xte = (X if isinstance(X, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(X)) for X in (Xtr, Xte))
    return Xtr.to(dev), Xte.to(dev), Y, Yt, auto, one


def targets(ytr, yte, n: int, n_te: int, dev) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Checked float64 targets (n x T), (n_te x T) on ``dev``, and whether they were 1-D."""
    if n < 2:
        raise ValueError(f"regression: need at least 2 training clips, got {n}")
    ytr, yte = np.asarray(ytr, dtype=np.float64), np.asarray(yte, dtype=np.float64)
    one = ytr.ndim == 1
    Y, Yt = (ytr[:, None], yte[:, None]) if one else (ytr, yte)
    if Y.ndim != 2 or Yt.ndim != 2 or len(Y) != n or len(Yt) != n_te or Y.shape[1] != Yt.shape[1]:
        raise ValueError(f"regression targets: expected ({n}[, T]) and ({n_te}[, T]), got {ytr.shape} and {yte.shape}")
    if not (np.isfinite(Y).all() and np.isfinite(Yt).all()):
        raise ValueError("regression targets: NaN or infinite values")
    return torch.as_tensor(Y, device=dev), torch.as_tensor(Yt, device=dev), one


def _result(fit: _Fit, mu: torch.Tensor, Y: torch.Tensor, Yt: torch.Tensor, ybar: torch.Tensor, auto: bool) -> dict:
    """The returned dict of :func:`fit_linear_rows` (predictions un-centred, RMSEs, intercept; 2-D)."""
    pred_tr = fit.pred_tr + ybar
    pred_te = fit.pred_te + ybar
    if not torch.isfinite(pred_te).all():
        raise ValueError("regression features (test): NaN or infinite values")
    rmse_tr = torch.sqrt(torch.mean((pred_tr - Y) ** 2, 0)).cpu().numpy()
    rmse_te = (
        torch.sqrt(torch.mean((pred_te - Yt) ** 2, 0)).cpu().numpy() if Yt.shape[0] else np.full(Y.shape[1], np.nan)
    )
    intercept = (ybar - mu @ fit.coef).cpu().numpy()
    lam = fit.lam.cpu().numpy() if auto else fit.lam
    return {
        "train_rmse": rmse_tr,
        "test_rmse": rmse_te,
        "pred": pred_te.cpu().numpy(),
        "ridge_used": lam,
        "method": fit.method,
        "coef": fit.coef.cpu().numpy(),
        "intercept": intercept,
        **fit.extra,
    }


def fit_linear_rows(
    Xtr: Rows,
    Xte: Rows,
    Y: torch.Tensor,
    Yt: torch.Tensor,
    ridge,
    *,
    gram=None,
    form="auto",
    consume=False,
    gram_width: int | None = None,
) -> dict:
    """:func:`fit_linear` on :class:`~deepfeat.probe.rows.Rows` (held or computed on demand) and checked 2-D
    float64 targets (:func:`targets`); the result is 2-D (T targets). ``consume``: the given ``gram`` may be
    overwritten (centred and decomposed in place, saving an n x n copy); ``gram_width``: columns per pass of a
    Gram matrix summed here from rows computed on demand (all of them by default)."""
    auto = _check_ridge(ridge)
    kind = solver(Xtr.n, Xtr.d, ridge, form)
    use_gram = gram is not None and kind in ("gram", "fixed")
    # the column means: first for the covariance forms and held rows; with a Gram matrix (given, or of rows
    # computed on demand: nearly centred) they come in the pass after the solve
    mu = Xtr.mean() if kind in ("covariance", "ols") or (Xtr.resident and not use_gram) else None
    if mu is not None and not torch.isfinite(mu).all():
        raise ValueError("regression features (train): NaN or infinite values")
    ybar = Y.mean(0)
    Yc = Y - ybar
    g = gram if use_gram else None
    if kind == "covariance":
        fit = _ridge_loo_covariance(Xtr, Xte, Yc, mu)
    elif kind == "ols":
        fit = _ols(Xtr, Xte, Yc, mu)
    elif kind == "gram":
        fit = _ridge_loo_gram(Xtr, Xte, Yc, mu, g, consume, gram_width)
    else:
        fit = _ridge_fixed(Xtr, Xte, Yc, mu, float(ridge), g, consume, gram_width)
    mu = fit.extra.pop("mu", mu)
    return _result(fit, mu, Y, Yt, ybar, auto)


def fit_linear(Xtr, ytr, Xte, yte, ridge: float | str | None = None, *, device=None, gram=None, form="auto") -> dict:
    """Linear regression with an intercept in float64; RMSE in the targets' units.

    Numeric ``ridge`` (>= 0):

    * p + 1 < n_train: ordinary least squares (minimum-norm if the design is rank deficient): LAPACK gelsd on
      the centred design when it fits in ``LSTSQ_BYTES`` on the CPU, else the normal equations (Gram matrix
      accumulated in float64 chunks, Cholesky, eigen-pseudo-inverse if singular).
    * p + 1 >= n_train (features outnumber the clips): ridge in the dual form, alpha = (K + lam I)^-1 yc with
      K = Xc Xc' and lam = ``ridge`` * trace(K) / n_train; ``ridge`` 0 gives the minimum-norm interpolant.

    ``ridge="auto"`` (any p): ridge regression (intercept unpenalised) whose penalty is chosen PER TARGET
    COLUMN by exact leave-one-out mean squared error on the training split only, over the absolute penalties
    lam = ``RIDGE_GRID`` x trace(K) / n_train (smallest LOO error wins; the first on ties). One float64
    eigendecomposition serves every candidate (O(n_train k) each, :func:`_loo_scan`) and the final fit: of the
    p x p covariance Xc' Xc = V diag(s) V' when p < n_train (U = Xc V diag(s)^-1/2, coefficients
    V diag(s^1/2 / (s + lam)) U' yc; ``form`` 'primal'), else of K = U diag(s) U' (alpha = U diag(1 / (s + lam))
    U' yc; 'dual'). ``form`` forces one ('primal' or 'dual'; 'auto' by default): the same fit. Eigenvalues
    below max(n, p) x eps x the largest count as zero. ``method`` is 'ridge_loo'; ``ridge_grid`` (G, absolute
    lam), ``ridge_rel`` (the chosen lam / (trace(K) / n), like ``ridge_used``), ``loo_mse`` (G or G x T, target
    units squared) and ``form`` are also returned. ``ridge=None``: the schema's default (``probe.ridge``).

    ``gram`` (optional, float64 (n_train, n_train)) is the UNCENTRED Gram matrix ``Xtr Xtr'`` when already
    computed (used by the dual forms): K is then obtained from it by exact double centring,
    K = G - r 1' - 1 r' + m 1 1' (r the row means of G, m its mean), instead of a pass over the p columns.
    Only for features whose training mean is (nearly) zero, such as standardised ones (else the centring would
    cancel digits: ValueError). The coefficients and test predictions then come from one pass over row blocks.
    The inputs are never modified.

    ``ytr``/``yte`` may be (n,) or (n, T) (T targets fitted with one factorisation). Returns ``train_rmse``,
    ``test_rmse`` (floats, or (T,) arrays for 2-D targets), ``pred`` (float64 test predictions, shaped like
    ``yte``), ``ridge_used`` (the absolute penalty lam, 0.0 for OLS; with auto and 2-D targets a (T,) array),
    ``method`` ('ols', 'ridge_dual' or 'ridge_loo'), ``coef`` (p or p x T), ``intercept``.
    """
    ridge = config.default("probe", "ridge") if ridge is None else ridge
    dev = torch.device("cpu") if device is None else torch.device(device)
    Xtr, Xte, Y, Yt, auto, one = _regression_inputs(Xtr, ytr, Xte, yte, ridge, dev)
    r = fit_linear_rows(ResidentRows(Xtr), ResidentRows(Xte), Y, Yt, ridge, gram=gram, form=form)
    if one:
        for key in ("train_rmse", "test_rmse", "intercept"):
            r[key] = float(r[key][0])
        r["coef"], r["pred"] = r["coef"][:, 0], r["pred"][:, 0]
        if auto:
            r["ridge_used"], r["loo_mse"], r["ridge_rel"] = (
                float(r["ridge_used"][0]),
                r["loo_mse"][:, 0],
                float(r["ridge_rel"][0]),
            )
    return r
