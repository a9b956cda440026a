"""Regression probes: linear regression with an intercept in float64, by OLS or ridge.

Definitions
-----------
* **Regression probe.** Ordinary least squares with an intercept in float64; test RMSE in the target's raw
  units (MIDI pitch, velocity). When the model would have at least as many parameters as training clips
  (p + 1 >= n_train) the fit is ridge regression solved in the dual (n x n) form with penalty
  ``ridge * trace(K) / n_train`` (K = Xc Xc', Xc the centred training features), and the log says so.
  ``probe.ridge: auto`` (the default) instead fits ridge regression for every p, with the penalty of each
  target chosen by exact leave-one-out on the training split over ``RIDGE_GRID`` x trace(K) / n_train, all
  from one eigendecomposition of K (:func:`fit_linear`).

:func:`fit_linear` dispatches to one solver per case: :func:`_ols` (gelsd or the normal equations),
:func:`_ridge_fixed` (fixed penalty, dual form), :func:`_ridge_loo_gram` (leave-one-out penalty from the
n x n Gram matrix) and :func:`_ridge_loo_covariance` (leave-one-out penalty from the p x p covariance, when
the n x n matrix would not fit).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from deepfeat import config
from deepfeat.probe.standardisation import GRAM_BYTES, check_2d, cols_per_block, rows_per_chunk

LSTSQ_BYTES = 256 * 2**20  # OLS through LAPACK gelsd (SVD) on CPU when the float64 design fits in this
RIDGE_GRID = np.logspace(-6, 3, 25)  # ridge auto: candidate penalties lam / (trace(K) / n_train), log-spaced


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
# Helpers: passes over row chunks, eigen solves, leave-one-out
# ----------------------------------------------------------------------------------------------------------
def _tensor(X, device) -> torch.Tensor:
    X = X if isinstance(X, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(X))
    return X.to(device)


def _rows_times(X: torch.Tensor, mu: torch.Tensor, M: torch.Tensor, rows: int) -> torch.Tensor:
    """(X - mu) M in float64, ``rows`` rows of X at a time (an empty X gives 0 x M.shape[1])."""
    return torch.cat(
        [(X[i : i + rows].double() - mu) @ M for i in range(0, X.shape[0], rows)]
        or [torch.zeros(0, M.shape[1], dtype=torch.float64, device=M.device)]
    )


def _covariance(Xtr: torch.Tensor, mu: torch.Tensor, rows: int, Yc: torch.Tensor | None = None):
    """Xc' Xc (p x p, float64, summed over row chunks of the centred Xc = Xtr - mu), and Xc' Yc when ``Yc``
    is given (else None)."""
    n, p = Xtr.shape
    C = torch.zeros(p, p, dtype=torch.float64, device=Xtr.device)
    R = None if Yc is None else torch.zeros(p, Yc.shape[1], dtype=torch.float64, device=Xtr.device)
    for i in range(0, n, rows):
        B = Xtr[i : i + rows].double() - mu
        C.addmm_(B.T, B)
        if R is not None:
            R.addmm_(B.T, Yc[i : i + rows])
    return C, R


def _pinv_solve(A: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
    """Minimum-norm solution of the symmetric PSD system A X = R (eigenvalues below 1e-12 * max dropped)."""
    lam, V = torch.linalg.eigh(A)
    keep = lam > 1e-12 * lam.max().clamp_min(0)
    return V[:, keep] @ ((V[:, keep].T @ R) / lam[keep].unsqueeze(1))


def _top_eig(A: torch.Tensor, scale: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenpairs of the symmetric PSD float64 ``A`` whose eigenvalue exceeds scale x eps x the largest."""
    s, V = torch.linalg.eigh(A)
    keep = s > scale * torch.finfo(torch.float64).eps * s.max().clamp_min(0)
    if not bool(s.max() > 0):
        keep[:] = False
    return s[keep], V[:, keep]


def _loo_ridge(U: torch.Tensor, s: torch.Tensor, Yc: torch.Tensor, lams: torch.Tensor) -> torch.Tensor:
    """Exact leave-one-out mean squared error (G x T) of ridge with an unpenalised intercept, per penalty.

    ``U`` (n x r, orthonormal columns) and ``s`` (r, > 0) are the nonzero eigenpairs of the centred training
    Gram matrix K = Xc Xc'; ``Yc`` (n x T) the centred targets; ``lams`` (G) absolute penalties. The fit is the
    linear smoother H = 11'/n + U diag(s / (s + lam)) U' (the intercept is unpenalised and 1 is in the null
    space of K), so the leave-one-out residual is e_i / (1 - H_ii) with e = Yc - U diag(s/(s+lam)) U' Yc
    (exact for penalised least squares with a fixed penalty). Cost O(n r (G + G T)); 1 - H_ii <= 0
    (interpolation) gives inf.
    """
    n = U.shape[0]
    F = s[:, None] / (s[:, None] + lams[None, :])  # r x G shrinkage factors
    one_minus_h = (1.0 - 1.0 / n) - (U * U) @ F  # n x G
    UtY = U.T @ Yc  # r x T
    G, T = len(lams), Yc.shape[1]
    fit = (U @ (F[:, :, None] * UtY[:, None, :]).reshape(len(s), G * T)).reshape(n, G, T)
    e = Yc[:, None, :] - fit
    loo = e / one_minus_h[:, :, None]
    mse = (loo * loo).mean(0)
    return torch.where((one_minus_h > 0).all(0)[:, None], mse, torch.full_like(mse, math.inf))


def _choose_ridge(
    U: torch.Tensor, s: torch.Tensor, Yc: torch.Tensor, trace: float, n: int, form: str
) -> tuple[torch.Tensor, dict]:
    """Per target column, the penalty of ``RIDGE_GRID`` x trace / n with the smallest exact LOO error."""
    lams = torch.as_tensor(RIDGE_GRID * (trace / n), dtype=torch.float64, device=U.device)
    loo = _loo_ridge(U, s, Yc, lams)  # G x T
    best = torch.argmin(loo, 0)  # first minimum on ties: deterministic
    return lams[best], {
        "ridge_grid": lams.cpu().numpy(),
        "ridge_rel": RIDGE_GRID[best.cpu().numpy()],
        "loo_mse": loo.cpu().numpy(),
        "form": form,
    }


def _centred_gram(Xtr: torch.Tensor, mu: torch.Tensor, gram) -> torch.Tensor:
    """The centred training Gram matrix K = Xc Xc' (n x n, float64): from the uncentred ``gram`` Xtr Xtr' by
    exact double centring when given (nearly centred features only), else summed over column chunks."""
    n, p = Xtr.shape
    dev = Xtr.device
    if gram is not None:
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
        return G - r - r.T + m
    K = torch.zeros(n, n, dtype=torch.float64, device=dev)
    cols = rows_per_chunk(n)  # columns of n float64 rows per working chunk
    for a in range(0, p, cols):
        C = Xtr[:, a : a + cols].double() - mu[a : a + cols]
        K.addmm_(C, C.T)
    return K


def _dual_coefficients(
    Xtr: torch.Tensor, Xte: torch.Tensor, alpha: torch.Tensor, mu: torch.Tensor, means_here: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Coefficients Xc' alpha and test predictions in one pass over cache-sized column blocks; with
    ``means_here`` the column means ``mu`` are filled in by the same pass (they were not needed before).

    Note: ``C -= mu`` centres the block in place, and ``.double()`` of a float64 input is that input itself, so
    a float64 ``Xtr`` is left centred (known; a later change fixes it with its own test)."""
    n, p = Xtr.shape
    n_te = Xte.shape[0]
    coef = torch.empty(p, alpha.shape[1], dtype=torch.float64, device=Xtr.device)
    pred_te = torch.zeros(n_te, alpha.shape[1], dtype=torch.float64, device=Xtr.device)
    w = cols_per_block(max(n, n_te))
    for a in range(0, p, w):
        C = Xtr[:, a : a + w].double()
        if means_here:
            mu[a : a + w] = C.sum(0) / n
        C -= mu[a : a + w]
        coef[a : a + w] = C.T @ alpha
        pred_te.addmm_(Xte[:, a : a + w].double() - mu[a : a + w], coef[a : a + w])
    if not torch.isfinite(mu).all():
        raise ValueError("regression features (train): NaN or infinite values")
    return coef, pred_te


# ----------------------------------------------------------------------------------------------------------
# The solvers
# ----------------------------------------------------------------------------------------------------------
def _ols(Xtr: torch.Tensor, Xte: torch.Tensor, Yc: torch.Tensor, mu: torch.Tensor, rows: int) -> _Fit:
    """Ordinary least squares on the centred design (minimum-norm if rank deficient): LAPACK gelsd when the
    float64 design fits ``LSTSQ_BYTES`` on the CPU, else the normal equations (Cholesky; eigen-pseudo-inverse
    if singular; constant columns get coefficient 0)."""
    n, p = Xtr.shape
    if Xtr.device.type == "cpu" and n * p * 8 <= LSTSQ_BYTES:
        coef = torch.linalg.lstsq(Xtr.double() - mu, Yc, driver="gelsd").solution
    else:
        G, R = _covariance(Xtr, mu, rows, Yc)
        live = torch.diagonal(G) > 0  # constant columns carry no information
        coef = torch.zeros(p, Yc.shape[1], dtype=torch.float64, device=Xtr.device)
        Gl = G[live][:, live]
        L, info = torch.linalg.cholesky_ex(Gl)
        coef[live] = torch.cholesky_solve(R[live], L) if int(info) == 0 else _pinv_solve(Gl, R[live])
    return _Fit("ols", 0.0, coef, _rows_times(Xtr, mu, coef, rows), _rows_times(Xte, mu, coef, rows))


def _ridge_fixed(Xtr: torch.Tensor, Xte: torch.Tensor, Yc: torch.Tensor, mu: torch.Tensor, ridge: float, gram) -> _Fit:
    """Dual ridge with the fixed penalty lam = ridge x trace(K) / n: alpha = (K + lam I)^-1 Yc (Cholesky);
    ridge 0 gives the minimum-norm interpolant."""
    n = Xtr.shape[0]
    K = _centred_gram(Xtr, mu, gram)
    lam = ridge * float(torch.trace(K)) / n
    if lam > 0:
        Kr = K.clone()
        Kr.diagonal().add_(lam)
        alpha = torch.cholesky_solve(Yc, torch.linalg.cholesky(Kr))
    else:
        alpha = _pinv_solve(K, Yc)
    pred_tr = K @ alpha
    coef, pred_te = _dual_coefficients(Xtr, Xte, alpha, mu, gram is not None)
    return _Fit("ridge_dual", lam, coef, pred_tr, pred_te)


def _ridge_loo_gram(Xtr: torch.Tensor, Xte: torch.Tensor, Yc: torch.Tensor, mu: torch.Tensor, gram) -> _Fit:
    """Ridge with the leave-one-out penalty per target, from one eigendecomposition K = U diag(s) U' of the
    n x n centred Gram matrix: alpha = U diag(1 / (s + lam)) U' Yc."""
    n = Xtr.shape[0]
    K = _centred_gram(Xtr, mu, gram)
    trace = float(torch.trace(K))
    s, U = _top_eig(K, n)
    del K
    lam, extra = _choose_ridge(U, s, Yc, trace, n, "dual")
    UtY = U.T @ Yc
    pred_tr = U @ (s[:, None] / (s[:, None] + lam) * UtY)
    alpha = U @ (UtY / (s[:, None] + lam))
    del U
    coef, pred_te = _dual_coefficients(Xtr, Xte, alpha, mu, gram is not None)
    return _Fit("ridge_loo", lam, coef, pred_tr, pred_te, extra)


def _ridge_loo_covariance(Xtr: torch.Tensor, Xte: torch.Tensor, Yc: torch.Tensor, mu: torch.Tensor, rows: int) -> _Fit:
    """The same fit as :func:`_ridge_loo_gram` from the p x p covariance Xc' Xc = V diag(s) V' (p < n):
    U = Xc V diag(s)^-1/2, coefficients V diag(s^1/2 / (s + lam)) U' Yc."""
    n, p = Xtr.shape
    C, _ = _covariance(Xtr, mu, rows)
    trace = float(torch.trace(C))
    s, V = _top_eig(C, max(n, p))
    U = _rows_times(Xtr, mu, V, rows) / s.sqrt()
    lam, extra = _choose_ridge(U, s, Yc, trace, n, "primal")
    UtY = U.T @ Yc
    pred_tr = U @ (s[:, None] / (s[:, None] + lam) * UtY)
    coef = V @ (s.sqrt()[:, None] / (s[:, None] + lam) * UtY)
    return _Fit("ridge_loo", lam, coef, pred_tr, _rows_times(Xte, mu, coef, rows), extra)


# ----------------------------------------------------------------------------------------------------------
# The dispatcher
# ----------------------------------------------------------------------------------------------------------
def _regression_inputs(Xtr, ytr, Xte, yte, ridge, dev):
    """Checked inputs: (Xtr, Xte, Y (n x T), Yt (n_te x T) as tensors on ``dev``, auto?, 1-D targets?)."""
    check_2d(Xtr, "regression features (train)")
    check_2d(Xte, "regression features (test)")
    n, p = Xtr.shape
    if Xte.shape[1] != p:
        raise ValueError(f"regression features: train has {p} columns but test has {Xte.shape[1]}")
    if n < 2:
        raise ValueError(f"regression: need at least 2 training clips, got {n}")
    auto = isinstance(ridge, str)
    if auto and ridge != "auto":
        raise ValueError(f"ridge: expected a number >= 0 or 'auto', got {ridge!r}")
    if not auto and ridge < 0:
        raise ValueError(f"ridge: expected >= 0, got {ridge}")
    ytr, yte = np.asarray(ytr, dtype=np.float64), np.asarray(yte, dtype=np.float64)
    one = ytr.ndim == 1
    Y, Yt = (ytr[:, None], yte[:, None]) if one else (ytr, yte)
    if Y.ndim != 2 or Yt.ndim != 2 or len(Y) != n or len(Yt) != Xte.shape[0] or Y.shape[1] != Yt.shape[1]:
        raise ValueError(
            f"regression targets: expected ({n}[, T]) and ({Xte.shape[0]}[, T]), got {ytr.shape} and {yte.shape}"
        )
    if not (np.isfinite(Y).all() and np.isfinite(Yt).all()):
        raise ValueError("regression targets: NaN or infinite values")
    Xtr, Xte = _tensor(Xtr, dev), _tensor(Xte, dev)
    return Xtr, Xte, torch.as_tensor(Y, device=dev), torch.as_tensor(Yt, device=dev), auto, one


def _result(
    fit: _Fit, mu: torch.Tensor, Y: torch.Tensor, Yt: torch.Tensor, ybar: torch.Tensor, auto: bool, one: bool
) -> dict:
    """The returned dict of :func:`fit_linear` (predictions un-centred, RMSEs, intercept; scalars for 1-D)."""
    pred_tr = fit.pred_tr + ybar
    pred_te = fit.pred_te + ybar
    if not torch.isfinite(pred_te).all():
        raise ValueError("regression features (test): NaN or infinite values")
    rmse_tr = torch.sqrt(torch.mean((pred_tr - Y) ** 2, 0)).cpu().numpy()
    rmse_te = (
        torch.sqrt(torch.mean((pred_te - Yt) ** 2, 0)).cpu().numpy() if Yt.shape[0] else np.full(Y.shape[1], np.nan)
    )
    intercept = (ybar - mu @ fit.coef).cpu().numpy()
    coef, pred_te = fit.coef.cpu().numpy(), pred_te.cpu().numpy()
    lam, extra = fit.lam, fit.extra
    if auto:
        lam = lam.cpu().numpy()
        if one:
            lam, extra["loo_mse"] = float(lam[0]), extra["loo_mse"][:, 0]
            extra["ridge_rel"] = float(extra["ridge_rel"][0])
    if one:
        rmse_tr, rmse_te, coef, pred_te, intercept = (
            float(rmse_tr[0]),
            float(rmse_te[0]),
            coef[:, 0],
            pred_te[:, 0],
            float(intercept[0]),
        )
    return {
        "train_rmse": rmse_tr,
        "test_rmse": rmse_te,
        "pred": pred_te,
        "ridge_used": lam,
        "method": fit.method,
        "coef": coef,
        "intercept": intercept,
        **extra,
    }


def fit_linear(Xtr, ytr, Xte, yte, ridge: float | str | None = None, *, device=None, gram=None) -> dict:
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
    eigendecomposition K = U diag(s) U' serves every candidate (O(n_train^2) each, :func:`_loo_ridge`) and the
    final fit alpha = U diag(1 / (s + lam)) U' yc. When the n_train x n_train matrix would exceed
    ``GRAM_BYTES`` and p < n_train, the p x p covariance Xc' Xc = V diag(s) V' is decomposed instead
    (U = Xc V diag(s)^-1/2, coefficients V diag(s^1/2 / (s + lam)) U' yc): the same fit. Eigenvalues below
    n x eps x the largest count as zero. ``method`` is 'ridge_loo'; ``ridge_grid`` (G, absolute lam),
    ``ridge_rel`` (the chosen lam / (trace(K) / n), like ``ridge_used``), ``loo_mse`` (G or G x T, target
    units squared) and ``form`` ('dual' or 'primal') are also returned. ``ridge=None``: the schema's default
    (``probe.ridge``).

    ``gram`` (optional, float64 (n_train, n_train)) is the UNCENTRED Gram matrix ``Xtr Xtr'`` when already
    computed (used by the dual ridge and by auto): K is then obtained from it by exact double centring,
    K = G - r 1' - 1 r' + m 1 1' (r the row means of G, m its mean), instead of a pass over the p columns.
    Only for features whose training mean is (nearly) zero, such as standardised ones (else the centring would
    cancel digits: ValueError). The coefficients and test predictions then come from one pass over
    cache-sized column blocks.

    ``ytr``/``yte`` may be (n,) or (n, T) (T targets fitted with one factorisation). Returns ``train_rmse``,
    ``test_rmse`` (floats, or (T,) arrays for 2-D targets), ``pred`` (float64 test predictions, shaped like
    ``yte``), ``ridge_used`` (the absolute penalty lam, 0.0 for OLS; with auto and 2-D targets a (T,) array),
    ``method`` ('ols', 'ridge_dual' or 'ridge_loo'), ``coef`` (p or p x T), ``intercept``.
    """
    ridge = config.default("probe", "ridge") if ridge is None else ridge
    dev = torch.device("cpu") if device is None else torch.device(device)
    Xtr, Xte, Y, Yt, auto, one = _regression_inputs(Xtr, ytr, Xte, yte, ridge, dev)
    n, p = Xtr.shape
    rows = rows_per_chunk(p)
    primal = auto and p < n and n * n * 8 > GRAM_BYTES
    use_gram = gram is not None and (p + 1 >= n or auto) and not primal
    mu = torch.zeros(p, dtype=torch.float64, device=dev)
    if not use_gram:  # (with the Gram matrix, the column means come in the one pass after the solve)
        for i in range(0, n, rows):
            mu += Xtr[i : i + rows].double().sum(0)
        mu /= n
        if not torch.isfinite(mu).all():
            raise ValueError("regression features (train): NaN or infinite values")
    ybar = Y.mean(0)
    Yc = Y - ybar
    if primal:  # ridge auto from the p x p covariance (n_train x n_train would not fit)
        fit = _ridge_loo_covariance(Xtr, Xte, Yc, mu, rows)
    elif p + 1 < n and not auto:
        fit = _ols(Xtr, Xte, Yc, mu, rows)
    elif auto:
        fit = _ridge_loo_gram(Xtr, Xte, Yc, mu, gram if use_gram else None)
    else:
        fit = _ridge_fixed(Xtr, Xte, Yc, mu, float(ridge), gram if use_gram else None)
    return _result(fit, mu, Y, Yt, ybar, auto, one)
