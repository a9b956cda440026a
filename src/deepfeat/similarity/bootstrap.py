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
