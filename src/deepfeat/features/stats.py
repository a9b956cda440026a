"""Summary statistics of the wavelet features (one sort serves median and quantiles) and the time to a dB level.

Definitions (float64, along the last axis): mean; median (mean of the two middle values for an even count);
std / var (population, ddof 0); kurtosis (Fisher, biased: m4 / m2^2 - 3; 0 for a constant row, i.e. std <=
1e-10 x max|x|); q25 / q75 (numpy's default linear interpolation). Time to dB: per clip and mel bin, the index of
the first frame whose value is ``<= threshold`` (T when never reached).
"""

from __future__ import annotations

import numpy as np

STATS = ("mean", "median", "std", "var", "kurtosis", "q25", "q75")
#: the statistics concatenated (in this order) into "Wavelet Combined"
COMBINED_STATS = ("median", "std", "var", "kurtosis", "q25", "q75")
STAT_LABELS = {
    "mean": "Mean",
    "median": "Median",
    "std": "Std",
    "var": "Var",
    "kurtosis": "Kurtosis",
    "q25": "Q25",
    "q75": "Q75",
}
STAT_DEFINITIONS = {
    "mean": "arithmetic mean",
    "median": "median (mean of the two middle values for an even count)",
    "std": "population standard deviation (ddof=0)",
    "var": "population variance (ddof=0)",
    "kurtosis": "Fisher kurtosis, biased (m4/m2^2 - 3; 0 for a constant row)",
    "q25": "25th percentile (linear interpolation, numpy's default)",
    "q75": "75th percentile (linear interpolation, numpy's default)",
}
KURTOSIS_RTOL = 1e-10  # a row with std <= KURTOSIS_RTOL * max|x| counts as constant: kurtosis 0


def _quantile_sorted(s: np.ndarray, q: float) -> np.ndarray:
    """numpy's default (linear) quantile along the last axis of an already sorted array."""
    n = s.shape[-1]
    virtual = n * q + (1 + q * -1) - 1  # numpy's _compute_virtual_index with alpha = beta = 1
    lo = int(np.floor(virtual))
    lo = min(max(lo, 0), n - 1)
    hi = min(lo + 1, n - 1)
    g = virtual - np.floor(virtual)
    a, b = s[..., lo], s[..., hi]
    diff = b - a
    return b - diff * (1 - g) if g >= 0.5 else a + diff * g


def kurtosis(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Fisher kurtosis, biased (scipy.stats.kurtosis(fisher=True, bias=True)): m4 / m2^2 - 3, float64.

    A constant row (std <= 1e-10 x max|x|, including all-zero rows) has kurtosis 0 (scipy gives NaN).
    """
    x = np.asarray(x, dtype=np.float64)
    return summary_stats(np.moveaxis(x, axis, -1), ("kurtosis",))["kurtosis"]


def summary_stats(x: np.ndarray, stats=STATS) -> dict[str, np.ndarray]:
    """Summaries of ``x`` along its last axis, float64: {stat: x.shape[:-1]} for the requested ``stats``.

    mean, median, std/var (ddof 0), kurtosis (Fisher, biased, 0 for a constant row), q25/q75 (numpy's
    linear interpolation). One sort serves median and both quantiles.
    """
    x = np.asarray(x, dtype=np.float64)
    bad = [s for s in stats if s not in STATS]
    if bad:
        raise ValueError(f"unknown statistics {bad}; known: {list(STATS)}")
    out: dict[str, np.ndarray] = {}
    n = x.shape[-1]
    need_moments = any(s in stats for s in ("std", "var", "kurtosis"))
    if "mean" in stats or need_moments:
        mean = x.mean(axis=-1)
        if "mean" in stats:
            out["mean"] = mean
    if need_moments:
        d = x - mean[..., None]
        d *= d
        m2 = d.mean(axis=-1)
        if "var" in stats:
            out["var"] = m2
        if "std" in stats:
            out["std"] = np.sqrt(m2)
        if "kurtosis" in stats:
            d *= d
            m4 = d.mean(axis=-1)
            scale = np.abs(x).max(axis=-1)
            const = m2 <= (KURTOSIS_RTOL * scale) ** 2
            with np.errstate(divide="ignore", invalid="ignore"):
                k = m4 / (m2 * m2) - 3.0
            out["kurtosis"] = np.where(const, 0.0, k)
        del d
    if any(s in stats for s in ("median", "q25", "q75")):
        s = np.sort(x, axis=-1)
        if "median" in stats:
            m = n // 2
            out["median"] = s[..., m].copy() if n % 2 else (s[..., m - 1] + s[..., m]) / 2
        if "q25" in stats:
            out["q25"] = _quantile_sorted(s, 0.25)
        if "q75" in stats:
            out["q75"] = _quantile_sorted(s, 0.75)
    return {k: out[k] for k in stats}


def time_to_db(mel: np.ndarray, threshold: float) -> np.ndarray:
    """Per clip and mel bin, the index of the first frame with ``mel <= threshold`` (T if never): (B, F) int64.

    ``<=`` so that the floor itself (exactly -top_db, e.g. -80.0) counts as reached.
    """
    mel = np.asarray(mel)
    hit = mel <= threshold
    idx = hit.argmax(axis=-1)
    idx[~hit.any(axis=-1)] = mel.shape[-1]
    return idx
