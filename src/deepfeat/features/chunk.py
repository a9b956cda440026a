"""The chunk being processed: the clips [start, stop), their inputs read lazily, and the intermediates that
several families share (STFT magnitude, spectral centroid, Ricker transform, wavelet statistics, time to dB),
each computed once per chunk; plus the plan of which wavelet statistics the selected families need.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable

import numpy as np

from deepfeat.features.ricker import ricker_bins_mean, ricker_time_mean, ricker_transform, ricker_transform_bins
from deepfeat.features.stats import COMBINED_STATS, STATS, summary_stats, time_to_db

#: the wavelet families of ``handcrafted.wavelet_axes``: (axis the Ricker transform runs along, axis summarised)
WAVELET_AXES = {
    "time": ("time", "time"),  # "Mean Wavelet (w)": one value per mel bin
    "frequency": ("bins", "bins"),  # "Mean Wavelet (w) over frequency": one value per frame (the method's)
    "time_across_bins": ("time", "bins"),  # "Mean Wavelet (w) across bins": one value per frame
}


class Chunk:
    """The clips [start, stop) being processed, with lazily computed, cached shared intermediates.

    Attributes: ``params`` (the ``handcrafted`` settings), ``mel_params``, ``sr`` (Hz), ``start``,
    ``stop``, ``n_total``, ``n_bins`` (F of the mel), ``n_frames`` (T), ``state`` (per-family dict persisting
    across chunks).
    Time spent in shared intermediates is recorded in ``timings`` under their own keys.
    """

    def __init__(
        self,
        audio_ds,
        mel_ds,
        start: int,
        stop: int,
        sr: int,
        params: dict,
        mel_params: dict,
        plan: dict,
        state: dict,
        timings: dict,
    ):
        self._audio_ds, self._mel_ds = audio_ds, mel_ds
        self.start, self.stop = start, stop
        self.sr, self.params, self.mel_params = sr, params, mel_params
        self.n_total = mel_ds.shape[0]
        self.n_bins, self.n_frames = mel_ds.shape[-2], mel_ds.shape[-1]
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
        return self.cached(
            "audio", "read_audio", lambda: np.asarray(self._audio_ds[self.start : self.stop], dtype=np.float64)
        )

    @property
    def mel(self) -> np.ndarray:
        """dB mel-spectrograms (B, F, T) float64."""
        return self.cached(
            "mel", "read_mel", lambda: np.asarray(self._mel_ds[self.start : self.stop], dtype=np.float64)
        )

    def stft_magnitude(self) -> np.ndarray:
        """|STFT| of the raw clips (B, 1 + n_fft/2, frames) float64: Hann, ``center=True``, padded with
        ``mel.pad_mode`` (as the mel-spectrogram)."""
        import librosa

        mp = self.mel_params
        return self.cached(
            "stft",
            "stft",
            lambda: np.abs(
                librosa.stft(
                    self.audio,
                    n_fft=mp["n_fft"],
                    hop_length=mp["hop_length"],
                    window="hann",
                    center=True,
                    pad_mode=mp["pad_mode"],
                )
            ),
        )

    def spectral_centroid(self) -> np.ndarray:
        """librosa spectral centroid (B, 1, frames) in Hz of :meth:`stft_magnitude` (shared with bandwidth)."""
        import librosa

        mp = self.mel_params
        return self.cached(
            "centroid",
            "spectral_centroid",
            lambda: librosa.feature.spectral_centroid(S=self.stft_magnitude(), sr=self.sr, n_fft=mp["n_fft"]),
        )

    def time_to_db(self, threshold: float) -> np.ndarray:
        """:func:`time_to_db` of this chunk's mel (B, F)."""
        return self.cached(("ttd", float(threshold)), "time_to_db", lambda: time_to_db(self.mel, threshold))

    def _transform(self, along: str) -> tuple[np.ndarray, dict[int, int]]:
        """The Ricker transform of every planned width along ``along`` ('time': (B, W, F, T); 'bins': (B, W, T,
        F)) and the position of each width."""
        widths = self._plan["transform_widths"][along]
        fn, key = (ricker_transform, "ricker_transform") if along == "time" else (ricker_transform_bins, "ricker_bins")
        return self.cached(("ricker", along), key, lambda: (fn(self.mel, widths), {w: i for i, w in enumerate(widths)}))

    def wavelet_stats(self, axis: str, width: int) -> dict[str, np.ndarray]:
        """Statistics of the Ricker transform at ``width`` for the wavelet family ``axis`` (:data:`WAVELET_AXES`):
        'time': along time, summarised over time, (B, F) per mel bin; 'frequency': along the mel bins,
        summarised over the mel bins, (B, T) per frame; 'time_across_bins': along time, summarised across the mel
        bins, (B, T) per frame. The stats computed are those the planned features need."""
        stats = self._plan["stats"].get((axis, int(width)))
        if not stats:
            raise KeyError(f"wavelet statistics of family {axis} at width {width} were not planned")
        along = WAVELET_AXES[axis][0]

        def compute():
            out = {}
            rest = [s for s in STATS if s in stats]
            if axis != "time_across_bins" and "mean" in rest:  # exact and needs no transform
                mean = ricker_time_mean if axis == "time" else ricker_bins_mean
                out["mean"] = mean(self.mel, [width])[:, 0]
                rest.remove("mean")
            if rest:
                R, pos = self._transform(along)
                X = R[:, pos[int(width)]]  # time: (B, F, T); bins: (B, T, F): the transformed axis last
                if axis == "time_across_bins":
                    X = np.ascontiguousarray(X.swapaxes(-1, -2))  # (B, T, F)
                out.update(summary_stats(X, rest))
            return out

        return self.cached(("wstats", axis, int(width)), "wavelet_stats", compute)


def make_plan(params: dict, families: list[str]) -> dict:
    """Which wavelet statistics (family axis, width) and which transform widths (per transform axis: 'time',
    'bins') the selected families need."""
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
    widths: dict[str, set] = {"time": set(), "bins": set()}
    for (ax, w), s in stats.items():
        if s - ({"mean"} if ax != "time_across_bins" else set()):  # the means of time/frequency need no transform
            widths[WAVELET_AXES[ax][0]].add(w)
    return {"stats": dict(stats), "transform_widths": {k: sorted(v) for k, v in widths.items()}}
