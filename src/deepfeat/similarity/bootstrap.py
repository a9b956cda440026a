"""Bootstrap confidence intervals of CKA from per-row influence values.

``ci_low``/``ci_high`` (CKA only): B = ``bootstrap`` multinomial resamples of the clips (rows), seeded with
``seed``. Each resample is evaluated with the first-order (influence-function) expansion of log CKA computed from
exact per-row contributions: CKA*_b = CKA exp((1/n) sum_i w_bi psi_i / CKA) with
psi_i = 2n r_i / (||C_xx|| ||C_yy||) - CKA n (q^x_i / ||C_xx||^2 + q^y_i / ||C_yy||^2), r_i = x_i'C_xy y_i,
q^x_i = x_i'C_xx x_i (a delta-method bootstrap; sum_i psi_i = 0 exactly). It needs one extra pass over the clips
instead of B passes and does not inherit the upward bias that duplicated rows cause in a naive resampling of
CKA (duplicates inflate the diagonal of the Gram matrices). The interval is the 2.5 and 97.5 percentiles,
clipped to [0, 1]. Rows that are not CKA have NaN intervals.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from deepfeat.similarity.measures import _Spec


def _cka_psi(r, qx, qy, sx: _Spec, sy: _Spec, cka_value: float, n: int):
    """Per-row influence values of CKA (their mean is 0): see the module docstring."""
    den = math.sqrt(sx.fro2 * sy.fro2)
    return 2 * n * r / den - cka_value * n * (qx / sx.fro2 + qy / sy.fro2)


def _self_influence(u: torch.Tensor, s: _Spec) -> torch.Tensor:
    """q_i = u_i'C u_i for centred rows u."""
    if s.C is not None:
        return ((u @ s.C) * u).sum(1)
    t = u @ s.V
    return (t * t) @ s.lam


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
# Replicates (*.boot.h5): the same first-order expansion under the recording-level resamples of deepfeat.stats
# ----------------------------------------------------------------------------------------------------------
def _dcka_psi(r, qx, qy, sx: _Spec, sy: _Spec, dcka_value: float, n: int):
    """Per-row influence values of debiased CKA (their mean is 0).

    Debiased CKA estimates the same functional as CKA, T_xy / sqrt(T_xx T_yy) with T_xy = ||Sigma_xy||_F^2, each T
    by the unbiased HSIC_1; its first-order expansion is that functional's influence function with the unbiased
    estimates plugged in: psi_i = IF^xy_i / sqrt(T_xx T_yy) - dCKA (IF^xx_i / T_xx + IF^yy_i / T_yy) / 2, with
    IF^xy_i = 2 (r_i / n - F / n^2), F = sum_i r_i, IF^xx_i = 2 (q^x_i / n - sum_j q^x_j / n^2) and
    T = HSIC_1 / (n (n - 3)) (the value of :func:`deepfeat.similarity.measures._hsic1` over n (n - 3)).
    """
    from deepfeat.similarity.measures import _hsic1

    txx = _hsic1(sx.fro2, sx.aa, sx.trace, sx.trace, n) / (n * (n - 3))
    tyy = _hsic1(sy.fro2, sy.aa, sy.trace, sy.trace, n) / (n * (n - 3))
    r, qx, qy = (np.asarray(v.cpu() if isinstance(v, torch.Tensor) else v, np.float64) for v in (r, qx, qy))
    ixy = 2 * (r / n - r.sum() / n**2)
    ixx = 2 * (qx / n - qx.sum() / n**2)
    iyy = 2 * (qy / n - qy.sum() / n**2)
    return ixy / math.sqrt(txx * tyy) - dcka_value * (ixx / txx + iyy / tyy) / 2


class _Resampler:
    """The recording-level bootstrap of :func:`deepfeat.stats.bootstrap_weights` over the n rows of a value,
    applied to per-row influence values: delta_b = sum_i w_bi psi_i / sum_i w_bi (the first-order change of the
    value under resample b; for multinomial weights of sum n this is the (1/n) sum_i w_bi psi_i of
    :func:`_bootstrap_ci`). Weights are equal within a recording, so the sums run over recordings:
    delta_b = sum_r c_br S_r / sum_r c_br n_r with c_br the draw counts, S_r the sum of psi over recording r's
    rows and n_r their number (the same numbers as W @ psi / W.sum(1), without the B x n weight matrix)."""

    def __init__(self, recordings, resamples: int, seed: int, stream: int):
        from deepfeat.stats import bootstrap_weights, recording_codes

        rec = np.asarray(recordings).astype(str)
        self.codes, self.R = recording_codes(rec)
        # bootstrap_weights of the sorted distinct recordings (codes 0..R-1) are exactly the draw counts c_br
        counts = bootstrap_weights(np.unique(rec), resamples, seed, stream)
        self.n = len(rec)
        self.total = counts @ np.bincount(self.codes, minlength=self.R).astype(np.float64)
        # kept as small integers (a count above 255 among R draws of R recordings does not occur in practice):
        # B x R bytes instead of 8 B x R; products in float64 blocks of resamples
        self.counts = counts.astype(np.uint8) if counts.size and counts.max() <= 255 else counts
        del counts

    def delta(self, psi) -> np.ndarray:
        """(B,) first-order changes of a value with per-row influence values ``psi`` (n,)."""
        psi = np.asarray(psi.cpu() if isinstance(psi, torch.Tensor) else psi, np.float64)
        if psi.shape != (self.n,):
            raise ValueError(f"replicates: {psi.shape} influence values for {self.n} rows")
        S = np.bincount(self.codes, weights=psi, minlength=self.R)
        step = max(1, int(2**24 // max(1, self.R)))
        num = np.concatenate(
            [self.counts[b : b + step].astype(np.float64) @ S for b in range(0, len(self.counts), step)]
        )
        with np.errstate(invalid="ignore", divide="ignore"):
            return num / self.total


def _replicates(measure: str, value: float, delta: np.ndarray) -> np.ndarray:
    """Replicates of a value from its first-order changes: CKA on the log scale and clipped to [0, 1] as in
    :func:`_bootstrap_ci` (CKA exp(delta / CKA)), debiased CKA (which may be negative) additively."""
    if not np.isfinite(value):
        return np.full(len(delta), np.nan)
    if measure == "cka":
        boots = value * np.exp(delta / value) if value > 0 else value + delta
        return np.clip(boots, 0.0, 1.0)
    return value + delta
