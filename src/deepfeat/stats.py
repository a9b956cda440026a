"""Resampling shared by every interval deepfeat reports: bootstrap weights and permutations that move the clips of
one recording together, and intervals of (paired) differences over clips and network seeds.

Clips of one recording are not exchangeable (they share the instrument, the room, the performance), so every
resample and every permutation here works on recordings: a bootstrap resample draws R recordings with replacement
among the R recordings present and gives each clip the count of its recording; a permutation shuffles the
recordings. Both are functions of the clips' recording ids, the seed and a ``stream`` number only, so every job of
a dataset draws the same resamples of the same clips: two quantities computed in different jobs are then paired
through the same resamples, and their difference has a valid interval.

Network seeds are the second source of variation. :func:`seed_replicates` combines them with the clip resamples
by a two-stage bootstrap: replicate b draws S seeds with replacement (seeded) and averages their replicate b. With S
seeds there are only C(2S - 1, S) distinct seed draws (3 for S = 2, 126 for S = 5), so with few seeds the interval
holds the seed-to-seed spread only coarsely.
"""

from __future__ import annotations

import numpy as np

#: ``stream`` numbers of the resamples drawn for different purposes (independent draws from one seed)
PROBE_STREAM, SIMILARITY_STREAM, CONTROL_STREAM, SEED_STREAM = 1, 2, 3, 4


def recording_codes(recordings) -> tuple[np.ndarray, int]:
    """(code of each clip's recording, number of recordings); codes number the sorted distinct recording ids."""
    ids, codes = np.unique(np.asarray(recordings).astype(str), return_inverse=True)
    return codes.astype(np.int64), len(ids)


def bootstrap_weights(recordings, resamples: int, seed: int, stream: int = PROBE_STREAM) -> np.ndarray:
    """(resamples x clips) float64 weights of a recording-level bootstrap: resample b draws R recordings with
    replacement among the R present, and clip i gets the number of times its recording was drawn. The weights of
    the clips of one recording are equal; their sum is the number of clips of the drawn recordings."""
    codes, R = recording_codes(recordings)
    if R == 0:
        return np.zeros((int(resamples), 0))
    rng = np.random.default_rng([int(seed), int(stream)])
    counts = rng.multinomial(R, np.full(R, 1.0 / R), size=int(resamples)).astype(np.float64)
    return counts[:, codes]


def permute_by_recording(values, recordings, seed: int, stream: int = CONTROL_STREAM) -> np.ndarray:
    """``values`` (one per clip) permuted at the recording level: recording r takes the value of the recording
    a seeded permutation sends it to (the value of that recording's first clip, when values vary within it), so all
    clips of a recording keep one value and the values' distribution over recordings is kept."""
    values = np.asarray(values)
    codes, R = recording_codes(recordings)
    _, first = np.unique(codes, return_index=True)  # the first clip of each recording
    rng = np.random.default_rng([int(seed), int(stream)])
    perm = rng.permutation(R)
    return values[first[perm]][codes]


def weighted_mean(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Mean of each resample: sum_i w_bi v_i / sum_i w_bi for ``values`` (clips, or clips x k: every column at
    once) and weights (resamples x clips); (resamples,) or (resamples x k); NaN for a resample without clips."""
    v = np.asarray(values, np.float64)
    weights = np.asarray(weights, np.float64)
    tot = weights.sum(1)
    tot = tot[:, None] if v.ndim == 2 else tot
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(tot > 0, (weights @ v) / tot, np.nan)


def weighted_accuracy(correct: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Accuracy of each resample: sum_i w_bi c_i / sum_i w_bi, for correctness ``correct`` (clips) and weights
    (resamples x clips); NaN for a resample without clips."""
    return weighted_mean(correct, weights)


def weighted_rmse(errors: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """RMSE of each resample: sqrt(sum_i w_bi e_i^2 / sum_i w_bi) for the prediction errors ``errors``
    (clips, or clips x targets) and weights (resamples x clips)."""
    return np.sqrt(weighted_mean(np.square(np.asarray(errors, np.float64)), weights))


def seed_replicates(per_seed: np.ndarray, seed: int, side: int = 0) -> np.ndarray:
    """Two-stage bootstrap of a mean over network seeds: ``per_seed`` (S x B) holds the B clip-resample replicates
    of each seed's value; replicate b draws S seeds with replacement (``default_rng([seed, SEED_STREAM, S, B])``)
    and averages their replicate b. Returns (B,). For S = 1 it is the clip replicates themselves.

    ``side``: 0 (the default) gives the draws above; side k > 0 draws independently of side 0
    (``default_rng([seed, SEED_STREAM, S, B, k])``), for the second side of a difference whose two sides are
    different networks (architecture vs architecture), so their seeds are not paired."""
    per_seed = np.asarray(per_seed, np.float64)
    S, B = per_seed.shape
    if S == 1:
        return per_seed[0].copy()
    rng = np.random.default_rng([int(seed), SEED_STREAM, S, B] + ([int(side)] if side else []))
    draws = rng.integers(0, S, size=(B, S))
    return per_seed[draws, np.arange(B)[:, None]].mean(1)


def interval(replicates: np.ndarray, level: float = 0.95, axis: int = -1) -> tuple[np.ndarray, np.ndarray]:
    """The equal-tailed percentile interval (lo, hi) of bootstrap ``replicates`` at ``level`` (NaN replicates are
    left out; all-NaN gives NaN)."""
    a = (1.0 - float(level)) / 2.0
    reps = np.asarray(replicates, np.float64)
    with np.errstate(all="ignore"):
        if np.isnan(reps).all():
            shape = np.delete(np.array(reps.shape), axis) if reps.ndim else ()
            return np.full(shape, np.nan), np.full(shape, np.nan)
        lo, hi = np.nanquantile(reps, [a, 1.0 - a], axis=axis)
    return lo, hi


def verdict(lo: float, hi: float) -> int:
    """+1 when an interval of a difference lies above zero, -1 below, 0 when it holds zero (or is undefined)."""
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return 0
    return 1 if lo > 0 else -1 if hi < 0 else 0


__all__ = [
    "CONTROL_STREAM",
    "PROBE_STREAM",
    "SEED_STREAM",
    "SIMILARITY_STREAM",
    "bootstrap_weights",
    "interval",
    "permute_by_recording",
    "recording_codes",
    "seed_replicates",
    "verdict",
    "weighted_accuracy",
    "weighted_mean",
    "weighted_rmse",
]
