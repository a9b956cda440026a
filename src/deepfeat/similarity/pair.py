"""The similarity of one pair of in-memory arrays: every measure of :mod:`deepfeat.similarity.measures`.

Columns are centred here (no other scaling). Settings left at ``None`` take the schema's default of the
``similarity`` section (:func:`deepfeat.config.default`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from deepfeat import config
from deepfeat.similarity.gram import _factor_from_centred, _factor_pair
from deepfeat.similarity.measures import EIG_MEASURES, HELDOUT_MEASURES, _pair_measures, _spec_from_cov, _t64, canonical
from deepfeat.similarity.moments import Moments

_KEYS = ("measures", "svcca_variance", "max_features", "rank_rtol")


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


def all_measures(
    X,
    Y,
    measures: Sequence[str] | None = None,
    method: str = "auto",
    svcca_variance: float | None = None,
    max_features: int | None = None,
    rank_rtol: float | None = None,
    device="cpu",
) -> dict:
    """Every requested measure between X (n x p1, representation a) and Y (n x p2, representation b).

    Columns are centred here (no other scaling). ``method``: "feature" (covariance blocks, one pass),
    "gram" (n x n Gram eigendecompositions of both blocks) or "auto" (gram when a block has more than
    ``max_features`` columns or at least n columns). ``measures``, ``svcca_variance``, ``max_features`` and
    ``rank_rtol``: None = the schema's default (``similarity`` section; ``measures`` = None: its default less the
    held-out measures, which need a test split; asked explicitly they are NaN, flag ``no_test_clips``). Returns
    {measure: value, ..., "flags": {measure: reason of a NaN}, "method": method used, "n": rows}.
    """
    given = dict(
        measures=None if measures is None else list(measures),
        svcca_variance=svcca_variance,
        max_features=max_features,
        rank_rtol=rank_rtol,
    )
    cfg = canonical(config.settings("similarity", {k: v for k, v in given.items() if v is not None}, _KEYS))
    dev = torch.device(device)
    X, Y = _check_xy(X, Y, dev)
    n, p1, p2 = X.shape[0], X.shape[1], Y.shape[1]
    if method == "auto":
        method = "gram" if max(p1, p2) > cfg["max_features"] or max(p1, p2) >= n else "feature"
    if measures is None:  # one set of rows: the default's held-out measures (r2_lr_test) have no test clips here
        cfg["measures"] = [m for m in cfg["measures"] if m not in HELDOUT_MEASURES]
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
    for m in HELDOUT_MEASURES:  # one set of rows: nothing is held out (the jobs evaluate them on the test clips)
        if m in flags:
            flags[m] = "no_test_clips"
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


def svcca(X, Y, variance: float | None = None, **kw) -> tuple[float, float]:
    """(mean squared, mean) canonical correlation between the leading singular subspaces (``variance`` rule;
    None = the schema's ``similarity.svcca_variance``)."""
    r = all_measures(X, Y, measures=("r2_svcca", "rho_svcca"), svcca_variance=variance, **kw)
    return r["r2_svcca"], r["rho_svcca"]
