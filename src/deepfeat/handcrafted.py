"""The hand-crafted feature store: one float32 (N x d) HDF5 dataset per feature, for every clip.

Inputs are ``clips.h5`` (raw audio, ``audio`` N x L, root attr ``sample_rate``) and ``mel.h5`` (``mel``
N x F x T in dB, in [-top_db, 0] per clip). The output ``handcrafted.h5`` (kind ``handcrafted``) holds
``features/<key>`` with attrs ``name`` (display name), ``definition``, ``params`` (JSON), ``dim`` and
``shape`` (JSON per-clip shape before flattening), in the order the features were computed; see
``docs/formats.md``. The clip table of ``mel.h5`` is copied alongside so the file is self-describing.

Feature families (the names of the ``handcrafted.features`` config list)
--------------------------------------------------------------------------
==================  =====================================================================================
``rms``             ``RMS``: librosa root-mean-square of each frame of the raw clip (amplitude units).
``spectral_*``      ``Spectral Centroid`` / ``Bandwidth`` / ``Flatness`` / ``Rolloff``: librosa on one
                    magnitude STFT of the raw clip (Hz, Hz, ratio in [0, 1], Hz), one value per frame.
``mean_power``      ``Mean Power (frequency)``: mean of the dB mel over mel bins, one value per frame;
                    ``Mean Power (time)``: mean over frames, one value per mel bin (``power_axes``).
``median_power``    the same with the median.
``time_to_db``      ``Time to -70 dB`` etc.: per mel bin the index of the first frame whose value is
                    ``<= threshold`` (frames; T when never reached).
``wavelet``         Ricker transform along time of every mel bin, summarised over time (per bin:
                    ``Mean Wavelet (25)``, ``Median``, ``Std``, ``Var``, ``Kurtosis``, ``Q25``, ``Q75``) and
                    over frequency (per frame: ``... over frequency``); plus ``Wavelet Combined``.
``dwt``             ``DWT db10 (horizontal)`` etc.: 2-D DWT detail coefficients of the dB mel.
``top4``            ``Top 4 Combined``: Mean Power (frequency) + Time to -70 dB + Mean Wavelet (cw) +
                    Wavelet Combined, concatenated (cw = ``combined_width``).
``random``          ``Random``: N(0, 1) noise, ``random_dim`` wide, seeded by ``random_seed``.
==================  =====================================================================================

Values for silent clips are finite by definition: librosa gives centroid/bandwidth/rolloff 0 Hz and
flatness 1 on an all-zero frame; the kurtosis of a constant row (std <= 1e-10 x max|x|) is defined as 0.

Adding a feature
----------------
Write one function that takes the :class:`Chunk` being processed and returns a list of :class:`Feature`
(display name, ``(B, ...)`` values, definition, params), decorate it with ``@register("my_family")`` and
add ``my_family`` to ``handcrafted.features`` in ``config.yaml``::

    @register("zero_crossing_rate")
    def _zcr(ctx: Chunk) -> list[Feature]:
        hop, n_fft = ctx.mel_params["hop_length"], ctx.mel_params["n_fft"]
        z = librosa.feature.zero_crossing_rate(ctx.audio, frame_length=n_fft, hop_length=hop)[:, 0]
        return [Feature("Zero Crossing Rate", z, "fraction of sign changes per frame",
                        {"frame_length": n_fft, "hop_length": hop})]

``ctx.audio`` (B x L float64), ``ctx.mel`` (B x F x T float64 dB), ``ctx.stft_magnitude()``,
``ctx.wavelet_stats(axis, width)`` and ``ctx.time_to_db(threshold)`` are computed once per chunk and shared
between families; ``ctx.state`` persists across chunks (e.g. a random generator). New parameters go into
the ``handcrafted`` section of ``config.yaml``, ``schemas/config.schema.yaml`` and :data:`DEFAULTS`.
"""
from __future__ import annotations

import json
import logging
import math
import re
import time
from collections import defaultdict
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable

import numpy as np

from deepfeat.io import copy_clip_table, open_h5, write_h5

KIND = "handcrafted"

#: Defaults of the ``handcrafted`` config section (kept equal to the schema's defaults by a test).
DEFAULTS: dict = {
    "features": [
        "rms", "spectral_centroid", "spectral_bandwidth", "spectral_flatness", "spectral_rolloff",
        "mean_power", "median_power", "time_to_db", "wavelet", "dwt", "top4", "random",
    ],
    "power_axes": ["frequency", "time"],
    "time_to_db_thresholds": [-70, -75, -80],
    "ricker_widths": [1, 5, 10, 25],
    "wavelet_stats": ["mean", "median", "std", "var", "kurtosis", "q25", "q75"],
    "wavelet_axes": ["time", "frequency"],
    "combined_width": 25,
    "dwt_wavelets": ["db10", "bior1.3"],
    "rolloff_percent": 0.85,
    "random_dim": 128,
    "random_seed": 0,
    "chunk_size": 128,
}

STATS = ("mean", "median", "std", "var", "kurtosis", "q25", "q75")
#: the statistics concatenated (in this order) into "Wavelet Combined"
COMBINED_STATS = ("median", "std", "var", "kurtosis", "q25", "q75")
STAT_LABELS = {"mean": "Mean", "median": "Median", "std": "Std", "var": "Var", "kurtosis": "Kurtosis",
               "q25": "Q25", "q75": "Q75"}
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
# ----------------------------------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------------------------------


@dataclass
class Feature:
    """One output feature of a chunk: display name, values ``(B, *shape)``, definition text and params."""

    name: str
    values: np.ndarray
    definition: str
    params: dict = field(default_factory=dict)


FeatureFn = Callable[["Chunk"], list[Feature]]
#: family name (as in ``handcrafted.features``) -> function computing that family's features for a chunk
FEATURES: dict[str, FeatureFn] = {}


def register(family: str) -> Callable[[FeatureFn], FeatureFn]:
    """Decorator adding a feature family to :data:`FEATURES` under ``family`` (its config name)."""

    def deco(fn: FeatureFn) -> FeatureFn:
        if family in FEATURES and FEATURES[family] is not fn:
            raise ValueError(f"feature family '{family}' is already registered")
        FEATURES[family] = fn
        return fn

    return deco


def feature_key(name: str) -> str:
    """HDF5 key of a display name: lower case, runs of non-alphanumerics -> '_' ('Mean Wavelet (25)' ->
    'mean_wavelet_25', 'DWT bior1.3 (vertical)' -> 'dwt_bior1_3_vertical')."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def _fmt(x: float) -> str:
    return f"{x:g}"


# ----------------------------------------------------------------------------------------------------------
# Numerics: Ricker wavelet transform (the old scipy.signal.cwt), summary statistics, time to dB
# ----------------------------------------------------------------------------------------------------------


def ricker(points: int, a: float) -> np.ndarray:
    """The Ricker ("Mexican hat") wavelet of the removed ``scipy.signal.ricker``, float64 (points,).

    ricker(t) = 2 / (sqrt(3a) pi^(1/4)) (1 - t^2/a^2) exp(-t^2 / (2a^2)), t = arange(points) - (points-1)/2.
    """
    A = 2 / (np.sqrt(3 * a) * (np.pi**0.25))
    wsq = a**2
    vec = np.arange(0, points) - (points - 1.0) / 2
    xsq = vec**2
    return A * (1 - xsq / wsq) * np.exp(-xsq / (2 * wsq))


@lru_cache(maxsize=64)
def _ricker_matrix_cached(T: int, width: int) -> np.ndarray:
    K = int(min(10 * width, T))
    s = (K - 1) // 2
    k = ricker(K, width)
    t = np.arange(T)[:, None]
    j = np.arange(T)[None, :]
    idx = t + s - j
    inside = (idx >= 0) & (idx < K)
    M = np.where(inside, k[np.clip(idx, 0, K - 1)], 0.0)
    M.setflags(write=False)
    return M


def ricker_matrix(T: int, width: int) -> np.ndarray:
    """(T x T) float64 matrix M with ``x @ M.T`` = old ``scipy.signal.cwt(x, ricker, [width])[0]``.

    K = min(10 width, T), s = (K-1)//2, k = ricker(K, width): M[t, j] = k[t + s - j] where 0 <= t+s-j < K,
    else 0, i.e. out[t] = sum_j x[j] k[t+s-j] (convolution, mode 'same', zero padding). Read-only (cached).
    """
    if int(T) < 1 or int(width) < 1:
        raise ValueError(f"ricker_matrix: need T >= 1 and width >= 1, got T={T}, width={width}")
    return _ricker_matrix_cached(int(T), int(width))


def ricker_transform(mel: np.ndarray, widths) -> np.ndarray:
    """Ricker transform along the last (time) axis: (B, F, T) -> (B, W, F, T) float64.

    All widths are stacked into one (W*T x T) matrix and applied in a single float64 matmul over all clips and
    bins; ``out[b, i, f] = mel[b, f] @ ricker_matrix(T, widths[i]).T``. The result is a transposed view of a
    (B, F, W, T) array (the time axis stays contiguous).
    """
    mel = np.asarray(mel, dtype=np.float64)
    if mel.ndim != 3:
        raise ValueError(f"ricker_transform: expected mel of shape (B, F, T), got {mel.shape}")
    B, F, T = mel.shape
    widths = [int(w) for w in widths]
    M = np.concatenate([ricker_matrix(T, w) for w in widths], axis=0)  # (W*T, T)
    out = (mel.reshape(B * F, T) @ M.T).reshape(B, F, len(widths), T)
    return out.transpose(0, 2, 1, 3)


def ricker_time_mean(mel: np.ndarray, widths) -> np.ndarray:
    """Mean over time of :func:`ricker_transform`, without the transform: (B, F, T) -> (B, W, F) float64.

    mean_t out[t] = x @ c with c[j] = mean_t M[t, j] (the column means of the Ricker matrix).
    """
    mel = np.asarray(mel, dtype=np.float64)
    T = mel.shape[-1]
    C = np.stack([ricker_matrix(T, int(w)).mean(axis=0) for w in widths], axis=1)  # (T, W)
    return np.moveaxis(mel @ C, -1, 1)


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


# ----------------------------------------------------------------------------------------------------------
# Chunk context: lazily read inputs and shared intermediates, computed once per chunk
# ----------------------------------------------------------------------------------------------------------


class Chunk:
    """The clips [start, stop) being processed, with lazily computed, cached shared intermediates.

    Attributes: ``params`` (handcrafted config, defaults filled), ``mel_params``, ``sr`` (Hz), ``start``,
    ``stop``, ``n_total``, ``n_frames`` (T of the mel), ``state`` (per-family dict persisting across chunks).
    Time spent in shared intermediates is recorded in ``timings`` under their own keys.
    """

    def __init__(self, audio_ds, mel_ds, start: int, stop: int, sr: int, params: dict, mel_params: dict,
                 plan: dict, state: dict, timings: dict):
        self._audio_ds, self._mel_ds = audio_ds, mel_ds
        self.start, self.stop = start, stop
        self.sr, self.params, self.mel_params = sr, params, mel_params
        self.n_total = mel_ds.shape[0]
        self.n_frames = mel_ds.shape[-1]
        self.state = state
        self.timings = timings
        self._plan = plan
        self._cache: dict = {}
        self._nested: list[float] = []
        self.cache_seconds = 0.0  # total time of (outermost) cached steps, subtracted from family timings

    def __len__(self) -> int:
        return self.stop - self.start

    def cached(self, key, timing_key: str, fn: Callable):
        """``fn()`` computed once per chunk under ``key``; its time is added to ``timings[timing_key]``."""
        if key not in self._cache:
            self._nested.append(0.0)
            t0 = time.perf_counter()
            try:
                self._cache[key] = fn()
            finally:
                dt = time.perf_counter() - t0
                inner = self._nested.pop()
            self.timings[timing_key] += dt - inner  # exclusive of nested cached steps (timed under their keys)
            if self._nested:
                self._nested[-1] += dt
            else:
                self.cache_seconds += dt
        return self._cache[key]

    @property
    def audio(self) -> np.ndarray:
        """Raw clips (B, L) float64 at ``sr``."""
        if self._audio_ds is None:
            raise ValueError("this feature needs the raw audio (clips.h5), which was not given")
        return self.cached("audio", "read_audio",
                           lambda: np.asarray(self._audio_ds[self.start:self.stop], dtype=np.float64))

    @property
    def mel(self) -> np.ndarray:
        """dB mel-spectrograms (B, F, T) float64."""
        return self.cached("mel", "read_mel",
                           lambda: np.asarray(self._mel_ds[self.start:self.stop], dtype=np.float64))

    def stft_magnitude(self) -> np.ndarray:
        """|STFT| of the raw clips (B, 1 + n_fft/2, frames) float64: Hann, ``center=True``, zero padding."""
        import librosa

        mp = self.mel_params
        return self.cached("stft", "stft", lambda: np.abs(librosa.stft(
            self.audio, n_fft=mp["n_fft"], hop_length=mp["hop_length"], window="hann", center=True,
            pad_mode="constant")))

    def spectral_centroid(self) -> np.ndarray:
        """librosa spectral centroid (B, 1, frames) in Hz of :meth:`stft_magnitude` (shared with bandwidth)."""
        import librosa

        mp = self.mel_params
        return self.cached("centroid", "spectral_centroid", lambda: librosa.feature.spectral_centroid(
            S=self.stft_magnitude(), sr=self.sr, n_fft=mp["n_fft"]))

    def time_to_db(self, threshold: float) -> np.ndarray:
        """:func:`time_to_db` of this chunk's mel (B, F)."""
        return self.cached(("ttd", float(threshold)), "time_to_db", lambda: time_to_db(self.mel, threshold))

    def _transform(self) -> tuple[np.ndarray, dict[int, int]]:
        widths = self._plan["transform_widths"]
        return self.cached("ricker", "ricker_transform",
                           lambda: (ricker_transform(self.mel, widths), {w: i for i, w in enumerate(widths)}))

    def wavelet_stats(self, axis: str, width: int) -> dict[str, np.ndarray]:
        """Statistics of the Ricker transform at ``width``, summarised over ``axis`` ('time': (B, F) per
        mel bin; 'frequency': (B, T) per frame). The stats computed are those the planned features need."""
        stats = self._plan["stats"].get((axis, int(width)))
        if not stats:
            raise KeyError(f"wavelet statistics over {axis} at width {width} were not planned")

        def compute():
            out = {}
            rest = [s for s in STATS if s in stats]
            if axis == "time" and "mean" in rest:  # exact and needs no transform
                out["mean"] = ricker_time_mean(self.mel, [width])[:, 0]
                rest.remove("mean")
            if rest:
                R, pos = self._transform()
                X = R[:, pos[int(width)]]  # (B, F, T), time contiguous
                if axis == "frequency":
                    X = np.ascontiguousarray(X.swapaxes(-1, -2))  # (B, T, F)
                out.update(summary_stats(X, rest))
            return out

        return self.cached(("wstats", axis, int(width)), "wavelet_stats", compute)


def _plan(params: dict, families: list[str]) -> dict:
    """Which wavelet statistics (axis, width) and which transform widths the selected families need."""
    stats: dict[tuple[str, int], set] = defaultdict(set)
    cw = int(params["combined_width"])
    if "wavelet" in families:
        for ax in params["wavelet_axes"]:
            for w in params["ricker_widths"]:
                stats[(ax, int(w))].update(params["wavelet_stats"])
    if "wavelet" in families or "top4" in families:
        stats[("time", cw)].update(COMBINED_STATS)
    if "top4" in families:
        stats[("time", cw)].add("mean")
    widths = sorted({w for (ax, w), s in stats.items() if s - ({"mean"} if ax == "time" else set())})
    return {"stats": dict(stats), "transform_widths": widths}


# ----------------------------------------------------------------------------------------------------------
# Feature families
# ----------------------------------------------------------------------------------------------------------


def _librosa_params(ctx: Chunk) -> dict:
    mp = ctx.mel_params
    return {"sr": int(ctx.sr), "n_fft": int(mp["n_fft"]), "hop_length": int(mp["hop_length"]), "window": "hann",
            "center": True, "pad_mode": "constant"}


@register("rms")
def _rms(ctx: Chunk) -> list[Feature]:
    import librosa

    p = _librosa_params(ctx)
    v = librosa.feature.rms(y=ctx.audio, frame_length=p["n_fft"], hop_length=p["hop_length"], center=True,
                            pad_mode="constant")[:, 0]
    return [Feature("RMS", v, "librosa.feature.rms of the raw clip: sqrt(mean(y^2)) over each zero-padded, "
                    "centred frame of n_fft samples, one value per frame (amplitude units)",
                    {"frame_length": p["n_fft"], "hop_length": p["hop_length"], "center": True,
                     "pad_mode": "constant", "sr": p["sr"]})]


@register("spectral_centroid")
def _centroid(ctx: Chunk) -> list[Feature]:
    p = _librosa_params(ctx)
    v = ctx.spectral_centroid()[:, 0]
    return [Feature("Spectral Centroid", v, "librosa.feature.spectral_centroid: magnitude-weighted mean "
                    "frequency of each STFT frame, Hz (0 for a silent frame)", p)]


@register("spectral_bandwidth")
def _bandwidth(ctx: Chunk) -> list[Feature]:
    import librosa

    p = _librosa_params(ctx)
    v = librosa.feature.spectral_bandwidth(S=ctx.stft_magnitude(), sr=p["sr"], n_fft=p["n_fft"],
                                           centroid=ctx.spectral_centroid())[:, 0]
    return [Feature("Spectral Bandwidth", v, "librosa.feature.spectral_bandwidth (p=2): magnitude-weighted "
                    "standard deviation of frequency around the centroid of each STFT frame, Hz (0 for a "
                    "silent frame)", {**p, "p": 2})]


@register("spectral_flatness")
def _flatness(ctx: Chunk) -> list[Feature]:
    import librosa

    p = _librosa_params(ctx)
    v = librosa.feature.spectral_flatness(S=ctx.stft_magnitude())[:, 0]
    return [Feature("Spectral Flatness", v, "librosa.feature.spectral_flatness: geometric over arithmetic mean "
                    "of max(1e-10, |STFT|^2) per frame, in (0, 1] (1 for a silent frame)",
                    {**p, "power": 2.0, "amin": 1e-10})]


@register("spectral_rolloff")
def _rolloff(ctx: Chunk) -> list[Feature]:
    import librosa

    p = _librosa_params(ctx)
    rp = float(ctx.params["rolloff_percent"])
    v = librosa.feature.spectral_rolloff(S=ctx.stft_magnitude(), sr=p["sr"], n_fft=p["n_fft"],
                                         roll_percent=rp)[:, 0]
    return [Feature("Spectral Rolloff", v, f"librosa.feature.spectral_rolloff: lowest STFT bin frequency below "
                    f"which {rp:g} of the frame's magnitude lies, Hz (0 for a silent frame)",
                    {**p, "roll_percent": rp})]


def _power(ctx: Chunk, how: str) -> list[Feature]:
    fn = {"Mean": np.mean, "Median": np.median}[how]
    out = []
    for ax in ctx.params["power_axes"]:
        if ax == "frequency":
            v = fn(ctx.mel, axis=1)
            d = f"{how.lower()} of the dB mel-spectrogram over mel bins, one value per frame (dB)"
        else:
            v = fn(ctx.mel, axis=2)
            d = f"{how.lower()} of the dB mel-spectrogram over frames, one value per mel bin (dB)"
        out.append(Feature(f"{how} Power ({ax})", v, d, {"over": "mel bins" if ax == "frequency" else "frames"}))
    return out


@register("mean_power")
def _mean_power(ctx: Chunk) -> list[Feature]:
    return _power(ctx, "Mean")


@register("median_power")
def _median_power(ctx: Chunk) -> list[Feature]:
    return _power(ctx, "Median")


def _ttd_feature(ctx: Chunk, thr: float) -> Feature:
    return Feature(f"Time to {_fmt(thr)} dB", ctx.time_to_db(thr),
                   f"per mel bin, index of the first frame with value <= {_fmt(thr)} dB; the frame count "
                   f"({ctx.n_frames}) if never reached (frames)", {"threshold_db": float(thr), "op": "<="})


@register("time_to_db")
def _time_to_db(ctx: Chunk) -> list[Feature]:
    return [_ttd_feature(ctx, float(t)) for t in ctx.params["time_to_db_thresholds"]]


def _wavelet_name(stat: str, width: int, axis: str) -> str:
    return f"{STAT_LABELS[stat]} Wavelet ({width})" + (" over frequency" if axis == "frequency" else "")


def _wavelet_definition(stat: str, width: int, axis: str, T: int) -> str:
    K = min(10 * width, T)
    per = "per mel bin, over frames" if axis == "time" else "per frame, over mel bins"
    return (f"{STAT_DEFINITIONS[stat]}, {per}, of the Ricker transform along time of each mel bin of the dB "
            f"mel (old scipy.signal.cwt: mode 'same' convolution with ricker(points={K}, a={width}))")


def _wavelet_combined(ctx: Chunk) -> Feature:
    cw = int(ctx.params["combined_width"])
    st = ctx.wavelet_stats("time", cw)
    v = np.stack([st[s] for s in COMBINED_STATS], axis=1)  # (B, 6, F)
    names = [_wavelet_name(s, cw, "time") for s in COMBINED_STATS]
    return Feature("Wavelet Combined", v, "concatenation of " + ", ".join(names),
                   {"width": cw, "stats": list(COMBINED_STATS), "axis": "time"})


@register("wavelet")
def _wavelet(ctx: Chunk) -> list[Feature]:
    p = ctx.params
    out = []
    for ax in p["wavelet_axes"]:
        for w in p["ricker_widths"]:
            st = ctx.wavelet_stats(ax, int(w))
            for s in [s for s in STATS if s in p["wavelet_stats"]]:
                out.append(Feature(_wavelet_name(s, int(w), ax), st[s],
                                   _wavelet_definition(s, int(w), ax, ctx.n_frames),
                                   {"width": int(w), "points": int(min(10 * int(w), ctx.n_frames)), "stat": s,
                                    "axis": ax, "mode": "same"}))
    out.append(_wavelet_combined(ctx))
    return out


@register("dwt")
def _dwt(ctx: Chunk) -> list[Feature]:
    import pywt

    out = []
    for w in ctx.params["dwt_wavelets"]:
        _, (cH, cV, _) = pywt.dwt2(ctx.mel, w, mode="symmetric", axes=(-2, -1))
        for part, v in (("horizontal", cH), ("vertical", cV)):
            out.append(Feature(f"DWT {w} ({part})", v,
                               f"{part} detail coefficients of the single-level 2-D discrete wavelet transform "
                               f"(pywt.dwt2, wavelet {w}, mode symmetric) of the dB mel (bins x frames)",
                               {"wavelet": w, "mode": "symmetric", "detail": part, "pywt": pywt.__version__}))
    return out


@register("top4")
def _top4(ctx: Chunk) -> list[Feature]:
    cw = int(ctx.params["combined_width"])
    parts = [
        Feature("Mean Power (frequency)", ctx.mel.mean(axis=1), ""),
        _ttd_feature(ctx, -70.0),
        Feature(_wavelet_name("mean", cw, "time"), ctx.wavelet_stats("time", cw)["mean"], ""),
        _wavelet_combined(ctx),
    ]
    B = len(ctx)
    v = np.concatenate([f.values.reshape(B, -1) for f in parts], axis=1)
    names = [f.name for f in parts]
    return [Feature("Top 4 Combined", v, "concatenation of " + ", ".join(names),
                    {"parts": names, "dims": [int(np.prod(f.values.shape[1:])) for f in parts]})]


@register("random")
def _random(ctx: Chunk) -> list[Feature]:
    dim, seed = int(ctx.params["random_dim"]), int(ctx.params["random_seed"])
    if "rng" not in ctx.state:  # one stream over all clips in order: independent of the chunk size
        ctx.state["rng"] = np.random.default_rng(seed)
    v = ctx.state["rng"].standard_normal((len(ctx), dim))
    return [Feature("Random", v, f"i.i.d. standard normal noise, {dim} values per clip (numpy default_rng(seed) "
                    "drawn row by row in clip order)", {"dim": dim, "seed": seed, "generator": "PCG64"})]


# ----------------------------------------------------------------------------------------------------------
# Building and reading the store
# ----------------------------------------------------------------------------------------------------------


def check_params(params: dict | None) -> dict:
    """The ``handcrafted`` config section with :data:`DEFAULTS` filled in, validated (ValueError naming the key)."""
    params = dict(params or {})
    unknown = sorted(set(params) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"handcrafted: unknown keys {unknown}; known: {sorted(DEFAULTS)}")
    p = {**DEFAULTS, **params}
    bad = [f for f in p["features"] if f not in FEATURES]
    if bad:
        raise ValueError(f"handcrafted.features: unknown feature families {bad}; known: {sorted(FEATURES)}")
    if len(set(p["features"])) != len(p["features"]):
        raise ValueError(f"handcrafted.features: duplicate names in {p['features']}")
    for key, allowed in (("power_axes", ("frequency", "time")), ("wavelet_axes", ("time", "frequency")),
                         ("wavelet_stats", STATS)):
        if not p[key] or any(v not in allowed for v in p[key]):
            raise ValueError(f"handcrafted.{key}: expected a non-empty list from {list(allowed)}, got {p[key]}")
    for key in ("ricker_widths",):
        if not p[key] or any(int(w) != w or w < 1 for w in p[key]):
            raise ValueError(f"handcrafted.{key}: expected positive integers, got {p[key]}")
    for key in ("combined_width", "random_dim", "chunk_size"):
        if int(p[key]) != p[key] or p[key] < 1:
            raise ValueError(f"handcrafted.{key}: expected a positive integer, got {p[key]!r}")
    if any(t > 0 for t in p["time_to_db_thresholds"]):
        raise ValueError(f"handcrafted.time_to_db_thresholds: dB thresholds must be <= 0, got "
                         f"{p['time_to_db_thresholds']}")
    if not 0 < p["rolloff_percent"] < 1:
        raise ValueError(f"handcrafted.rolloff_percent: expected a number in (0, 1), got {p['rolloff_percent']}")
    if "dwt" in p["features"]:
        import pywt

        known = pywt.wavelist(kind="discrete")
        badw = [w for w in p["dwt_wavelets"] if w not in known]
        if badw:
            raise ValueError(f"handcrafted.dwt_wavelets: {badw} are not discrete PyWavelets wavelets; "
                             f"known: {known}")
    return p


#: built-in families that read the raw audio (a build without clips.h5 refuses them up front)
AUDIO_FAMILIES = {"rms", "spectral_centroid", "spectral_bandwidth", "spectral_flatness", "spectral_rolloff"}


def _check_inputs(fc, fm, clips_h5, mel_h5, mel_params, need_audio: bool) -> int:
    if "mel" not in fm:
        raise ValueError(f"{mel_h5}: no dataset 'mel' (expected N x n_mels x T dB spectrograms)")
    mel = fm["mel"]
    if mel.ndim != 3 or min(mel.shape) < 1:
        raise ValueError(f"{mel_h5}: 'mel' must be N x n_mels x T with N, n_mels, T >= 1, got shape {mel.shape}")
    for k in ("n_fft", "hop_length"):
        if k in mel.attrs and int(mel.attrs[k]) != int(mel_params[k]):
            raise ValueError(f"{mel_h5}: mel was computed with {k}={mel.attrs[k]} but the mel config says "
                             f"{mel_params[k]}; rerun the melspec rule")
    if fc is None:
        if need_audio:
            raise ValueError("the selected features need the raw clips (clips.h5), but none was given")
        return int(fm.attrs.get("sample_rate", 0))
    if "audio" not in fc or fc["audio"].ndim != 2:
        raise ValueError(f"{clips_h5}: expected a dataset 'audio' of shape N x L")
    if fc["audio"].shape[0] != mel.shape[0]:
        raise ValueError(f"{clips_h5} has {fc['audio'].shape[0]} clips but {mel_h5} has {mel.shape[0]}")
    if "sample_rate" not in fc.attrs:
        raise ValueError(f"{clips_h5}: root attribute 'sample_rate' missing")
    sr = int(fc.attrs["sample_rate"])
    if "sample_rate" in fm.attrs and int(fm.attrs["sample_rate"]) != sr:
        raise ValueError(f"{clips_h5} is at {sr} Hz but {mel_h5} at {int(fm.attrs['sample_rate'])} Hz")
    if "meta" in fc and "meta" in fm:
        a, b = fc["meta/clip_id"].asstr()[:], fm["meta/clip_id"].asstr()[:]
        if not np.array_equal(a, b):
            raise ValueError(f"{clips_h5} and {mel_h5}: clip ids differ (rows do not align); rerun melspec")
    return sr


def build_store(clips_h5, mel_h5, out, params: dict, mel_params: dict, log: logging.Logger | None = None
                ) -> dict[str, float]:
    """Compute every feature of ``params['features']`` for all clips and write ``out`` (kind 'handcrafted').

    Clips are processed ``chunk_size`` at a time and written into pre-sized float32 datasets (sized from the
    first chunk), so peak memory depends on the chunk size, not on N. Computation is float64.
    ``clips_h5`` may be None when no audio feature is selected. Returns wall-clock seconds per feature family
    and per shared step (read_audio, read_mel, stft, ricker_transform, wavelet_stats, time_to_db, write, total),
    which are also logged.
    """
    log = log or logging.getLogger("deepfeat.handcrafted")
    p = check_params(params)
    mp = {"n_fft": 2048, "hop_length": 502, **(mel_params or {})}
    families = list(p["features"])
    plan = _plan(p, families)
    timings: dict[str, float] = defaultdict(float)
    t_start = time.perf_counter()
    need_audio = bool(AUDIO_FAMILIES & set(families))
    fc = open_h5(clips_h5, "clips") if clips_h5 is not None else None  # audio itself is read lazily
    try:
        fm = open_h5(mel_h5, "mel")
        try:
            sr = _check_inputs(fc, fm, clips_h5, mel_h5, mp, need_audio)
            mel_ds = fm["mel"]
            N, F, T = mel_ds.shape
            chunk = int(p["chunk_size"])
            n_chunks = max(1, math.ceil(N / chunk))
            log.info(f"handcrafted: {N} clips, mel {F} x {T}, sr {sr} Hz, {n_chunks} chunk(s) of <= {chunk} "
                     f"clips; families {families}; Ricker transform widths {plan['transform_widths']}")
            states: dict[str, dict] = {fam: {} for fam in families}
            with write_h5(out, KIND) as fo:
                fo.attrs["n_clips"] = N
                fo.attrs["sample_rate"] = sr
                fo.attrs["params"] = json.dumps({"handcrafted": p, "mel": {k: mp[k] for k in ("n_fft",
                                                                                              "hop_length")}})
                if "meta" in fm:
                    copy_clip_table(fm, fo)
                g = fo.create_group("features", track_order=True)
                layout: list[tuple[str, str, tuple]] = []  # (name, key, per-clip shape) in file order
                for ci in range(n_chunks):
                    a, b = ci * chunk, min(N, (ci + 1) * chunk)
                    ctx = Chunk(fc["audio"] if fc is not None else None, mel_ds, a, b, sr, p, mp, plan, {},
                                timings)
                    feats: list[Feature] = []
                    for fam in families:
                        ctx.state = states[fam]
                        t0, c0 = time.perf_counter(), ctx.cache_seconds
                        got = FEATURES[fam](ctx)
                        timings[fam] += time.perf_counter() - t0 - (ctx.cache_seconds - c0)
                        feats.extend(got)
                    t0 = time.perf_counter()
                    if ci == 0:
                        layout = _create_datasets(g, feats, N, b - a, out)
                    _write_chunk(g, feats, layout, a, b, out)
                    timings["write"] += time.perf_counter() - t0
                    el = time.perf_counter() - t_start
                    log.info(f"chunk {ci + 1}/{n_chunks}: clips {a}-{b - 1} done, {b / el:.1f} clips/s, "
                             f"ETA {el / b * (N - b):.0f} s")
                g.attrs["names"] = json.dumps([n for n, _, _ in layout])
        finally:
            fm.close()
    finally:
        if fc is not None:
            fc.close()
    timings["total"] = time.perf_counter() - t_start
    log.info("handcrafted: wrote %d features (%d columns) to %s", len(layout),
             sum(int(np.prod(s)) for _, _, s in layout), out)
    log.info("timings (s): " + ", ".join(f"{k} {v:.2f}" for k, v in sorted(timings.items(), key=lambda kv: -kv[1])))
    return dict(timings)


def _create_datasets(g, feats: list[Feature], N: int, B: int, out) -> list[tuple[str, str, tuple]]:
    layout, seen = [], {}
    for f in feats:
        key = feature_key(f.name)
        if key in seen:
            raise ValueError(f"{out}: features '{f.name}' and '{seen[key]}' map to the same key '{key}'")
        seen[key] = f.name
        v = np.asarray(f.values)
        if v.ndim < 2 or v.shape[0] != B:
            raise ValueError(f"feature '{f.name}': expected values of shape (clips={B}, ...), got {v.shape}")
        shape = tuple(int(s) for s in v.shape[1:])
        d = int(np.prod(shape))
        rows = int(min(N, max(1, (1 << 20) // (4 * d))))
        ds = g.create_dataset(key, shape=(N, d), dtype=np.float32, chunks=(rows, d))
        ds.attrs["name"] = f.name
        ds.attrs["definition"] = f.definition
        ds.attrs["params"] = json.dumps(f.params, sort_keys=True)
        ds.attrs["dim"] = d
        ds.attrs["shape"] = json.dumps(list(shape))
        layout.append((f.name, key, shape))
    return layout


def _write_chunk(g, feats: list[Feature], layout, a: int, b: int, out) -> None:
    names = [f.name for f in feats]
    if names != [n for n, _, _ in layout]:
        raise RuntimeError(f"{out}: clips {a}-{b - 1} produced features {names}, the first chunk "
                           f"{[n for n, _, _ in layout]}")
    for f, (name, key, shape) in zip(feats, layout):
        v = np.asarray(f.values, dtype=np.float64)
        if v.shape != (b - a, *shape):
            raise RuntimeError(f"feature '{name}': clips {a}-{b - 1} have shape {v.shape[1:]}, first chunk {shape}")
        bad = ~np.isfinite(v)
        if bad.any():
            rows = np.unique(np.nonzero(bad.reshape(b - a, -1))[0] + a)[:5]
            raise FloatingPointError(f"feature '{name}': non-finite values for clips {rows.tolist()} "
                                     "(this is a bug: every feature is defined to be finite)")
        g[key][a:b] = v.reshape(b - a, -1).astype(np.float32)


def list_features(path) -> list[str]:
    """Display names of the features in a handcrafted.h5, in file order."""
    with open_h5(path, KIND) as f:
        g = f["features"]
        if "names" in g.attrs:
            return json.loads(g.attrs["names"])
        return [str(g[k].attrs["name"]) for k in g]


def read_feature(path, name: str) -> np.ndarray:
    """One feature (N x d float32) of a handcrafted.h5 by display name (or its key, e.g. 'mean_wavelet_25')."""
    with open_h5(path, KIND) as f:
        g = f["features"]
        key = feature_key(name)
        if key not in g:
            names = [str(g[k].attrs["name"]) for k in g]
            raise KeyError(f"{path}: no feature '{name}'; available: {names}")
        return g[key][:]
