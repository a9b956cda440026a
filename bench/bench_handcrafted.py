"""Benchmark: Ricker-wavelet summary features, the reference per-row loop vs deepfeat's batched matmul.

Reference (as the paper's notebooks did): for every clip, mel bin and width, the old
``scipy.signal.cwt(row, ricker, [w])`` written out as ``np.convolve(row, ricker(min(10w, T), w), 'same')``,
then numpy/scipy statistics of that row (mean, median, std, var, kurtosis, 25th/75th percentile).
Ours: the store's code path (:class:`deepfeat.features.Chunk`): one float64 matmul with all widths'
(T x T) Ricker matrices stacked, the mean over time without the transform, and one sort for the quantiles.
Both run on the same clips in one process; the script checks that they agree and prints the speed-up. The
same comparison follows for the method's second family (the transform along the mel bins of every frame,
summarised over the bins: "... over frequency"). A last section times the five librosa frame features: per-clip
calls on y vs one batched STFT.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_handcrafted.py [--clips 32] [--frames 176]
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import librosa
import numpy as np
import scipy.stats

from deepfeat import config
from deepfeat import features as hc

WIDTHS = [1, 5, 10, 25]


def reference_wavelet(mel: np.ndarray, widths, along: str = "time") -> dict[tuple[int, str], np.ndarray]:
    """Per clip, per row (a mel bin along time, or with ``along="bins"`` a frame along the mel bins), per
    width: convolve, then the seven statistics of the row."""
    rows = mel if along == "time" else mel.transpose(0, 2, 1)  # (B, rows, n)
    B, R, n = rows.shape
    out = {(w, s): np.empty((B, R)) for w in widths for s in hc.STATS}
    for b in range(B):
        for f in range(R):
            row = rows[b, f].astype(np.float64)
            for w in widths:
                c = np.convolve(row, hc.ricker(min(10 * w, n), w), mode="same")
                out[(w, "mean")][b, f] = np.mean(c)
                out[(w, "median")][b, f] = np.median(c)
                out[(w, "std")][b, f] = np.std(c)
                out[(w, "var")][b, f] = np.var(c)
                out[(w, "kurtosis")][b, f] = scipy.stats.kurtosis(c, fisher=True, bias=True)
                out[(w, "q25")][b, f] = np.quantile(c, 0.25)
                out[(w, "q75")][b, f] = np.quantile(c, 0.75)
    return out


def reference_transform(mel: np.ndarray, widths) -> np.ndarray:
    """The convolutions alone (no statistics): per clip, per mel bin, per width. (B, W, F, T)."""
    B, F, T = mel.shape
    out = np.empty((B, len(widths), F, T))
    for b in range(B):
        for f in range(F):
            row = mel[b, f].astype(np.float64)
            for i, w in enumerate(widths):
                out[b, i, f] = np.convolve(row, hc.ricker(min(10 * w, T), w), mode="same")
    return out


def settings(given: dict) -> dict:
    """The ``handcrafted`` settings the store's job receives for ``given`` (schema defaults filled, checked)."""
    params = config.settings("handcrafted", given, config.section_keys("handcrafted"))
    hc.check_settings(params)
    return params


MEL_PARAMS = {"n_fft": 2048, "hop_length": 502, "pad_mode": "constant"}


def ours_wavelet(mel: np.ndarray, widths, axis: str = "time") -> dict[tuple[int, str], np.ndarray]:
    """The store's path for one wavelet family (``time``: over time; ``frequency``: along and over the mel bins):
    Chunk.wavelet_stats for every width."""
    params = settings(
        {"features": ["wavelet"], "ricker_widths": widths, "wavelet_axes": [axis], "combined_width": widths[-1]}
    )
    plan = hc.make_plan(params, ["wavelet"])
    ctx = hc.Chunk(None, mel, 0, len(mel), 16000, params, MEL_PARAMS, plan, {}, defaultdict(float))
    return {(w, s): v for w in widths for s, v in ctx.wavelet_stats(axis, w).items()}


def reference_librosa(y: np.ndarray, sr: int) -> list[np.ndarray]:
    kw = dict(sr=sr, n_fft=2048, hop_length=502)
    out = []
    for clip in y:
        out.append(
            np.concatenate(
                [
                    librosa.feature.rms(y=clip, frame_length=2048, hop_length=502)[0],
                    librosa.feature.spectral_centroid(y=clip, **kw)[0],
                    librosa.feature.spectral_bandwidth(y=clip, **kw)[0],
                    librosa.feature.spectral_flatness(y=clip, n_fft=2048, hop_length=502)[0],
                    librosa.feature.spectral_rolloff(y=clip, roll_percent=0.85, **kw)[0],
                ]
            )
        )
    return out


def ours_librosa(y: np.ndarray, sr: int) -> np.ndarray:
    params = settings(
        {"features": ["rms", "spectral_centroid", "spectral_bandwidth", "spectral_flatness", "spectral_rolloff"]}
    )
    mel_stub = np.zeros((len(y), 1, 1))
    ctx = hc.Chunk(y, mel_stub, 0, len(y), sr, params, MEL_PARAMS, hc.make_plan(params, []), {}, defaultdict(float))
    feats = [f for fam in params["features"] for f in hc.FEATURES[fam](ctx)]
    return np.concatenate([f.values for f in feats], axis=1)


def timed(fn, *a):
    t0 = time.perf_counter()
    r = fn(*a)
    return r, time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=32)
    ap.add_argument("--frames", type=int, default=176, help="T (176 at 22,050 Hz, 128 at 16 kHz)")
    ap.add_argument("--audio-clips", type=int, default=16, help="clips for the librosa section (0 skips it)")
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    # dB spectrogram-like rows: smooth decays plus noise, clipped to [-80, 0]
    t = np.arange(a.frames)
    mel = -80 * (1 - np.exp(-t / rng.uniform(5, 200, (a.clips, 128, 1)))) + rng.normal(0, 6, (a.clips, 128, a.frames))
    mel = np.clip(mel - rng.uniform(0, 30, (a.clips, 128, 1)), -80, 0).astype(np.float32)

    ours, t_ours = timed(ours_wavelet, mel, WIDTHS)  # warm-up (matrix cache), then timed again
    ours, t_ours = timed(ours_wavelet, mel, WIDTHS)
    ref, t_ref = timed(reference_wavelet, mel, WIDTHS)
    err = max(float(np.max(np.abs(ours[k] - ref[k]) / (1 + np.abs(ref[k])))) for k in ref)
    print(
        f"Ricker wavelet stats over time, {a.clips} clips x 128 bins x {a.frames} frames, widths {WIDTHS}, "
        f"{len(hc.STATS)} stats"
    )
    print(f"  reference per-row loop : {t_ref:8.3f} s  ({a.clips / t_ref:8.1f} clips/s)")
    print(f"  deepfeat batched       : {t_ours:8.3f} s  ({a.clips / t_ours:8.1f} clips/s)")
    print(f"  speed-up               : {t_ref / t_ours:8.1f} x   (max relative difference {err:.1e})")

    ref_t, t_rt = timed(reference_transform, mel, WIDTHS)
    ours_t, t_ot = timed(hc.ricker_transform, mel, WIDTHS)
    print(
        f"  transform alone        : loop {t_rt:.3f} s, matmul {t_ot:.3f} s, speed-up {t_rt / t_ot:.1f} x "
        f"(max abs difference {float(np.max(np.abs(ref_t - ours_t))):.1e})"
    )

    ours_f, t_of = timed(ours_wavelet, mel, WIDTHS, "frequency")
    ref_f, t_rf = timed(reference_wavelet, mel, WIDTHS, "bins")
    err_f = max(float(np.max(np.abs(ours_f[k] - ref_f[k]) / (1 + np.abs(ref_f[k])))) for k in ref_f)
    print(f"Ricker wavelet stats over frequency (along the 128 mel bins of each of {a.frames} frames), same clips")
    print(f"  reference per-column loop : {t_rf:8.3f} s  ({a.clips / t_rf:8.1f} clips/s)")
    print(f"  deepfeat batched          : {t_of:8.3f} s  ({a.clips / t_of:8.1f} clips/s)")
    print(f"  speed-up                  : {t_rf / t_of:8.1f} x   (max relative difference {err_f:.1e})")

    if a.audio_clips:
        sr = 22050
        tt = np.arange(4 * sr) / sr
        y = np.stack(
            [
                np.sin(2 * np.pi * rng.uniform(80, 1500) * tt) * np.exp(-tt * rng.uniform(0.2, 3))
                + 0.02 * rng.standard_normal(tt.size)
                for _ in range(a.audio_clips)
            ]
        )
        ref_l, t_rl = timed(reference_librosa, y, sr)
        ours_l, t_ol = timed(ours_librosa, y, sr)
        err_l = float(np.max(np.abs(np.stack(ref_l) - ours_l) / (1e-9 + np.abs(np.stack(ref_l)))))
        print(f"librosa RMS + 4 spectral features, {a.audio_clips} clips of 4 s at {sr} Hz")
        print(f"  per-clip calls on y    : {t_rl:8.3f} s")
        print(f"  batched, one STFT      : {t_ol:8.3f} s")
        print(f"  speed-up               : {t_rl / t_ol:8.1f} x   (max relative difference {err_l:.1e})")


if __name__ == "__main__":
    main()
