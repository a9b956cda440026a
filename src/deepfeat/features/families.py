"""The built-in feature families, each a function of the :class:`~deepfeat.features.chunk.Chunk` registered
under its config name (the names of the ``handcrafted.features`` list).

==================  =====================================================================================
``rms``             ``RMS``: librosa root-mean-square of each frame of the raw clip (amplitude units).
``spectral_*``      ``Spectral Centroid`` / ``Bandwidth`` / ``Flatness`` / ``Rolloff``: librosa on one
                    magnitude STFT of the raw clip (Hz, Hz, ratio in [0, 1], Hz), one value per frame.
``mean_power``      ``Mean Power (frequency)``: mean of the dB mel over mel bins, one value per frame;
                    ``Mean Power (time)``: mean over frames, one value per mel bin (``power_axes``).
``median_power``    the same with the median.
``time_to_db``      ``Time to -70 dB`` etc.: per mel bin the index of the first frame whose value is
                    ``<= threshold`` (frames; T when never reached).
``wavelet``         one family per ``wavelet_axes`` entry (Ricker widths w, statistics ``Mean``, ``Median``,
                    ``Std``, ``Var``, ``Kurtosis``, ``Q25``, ``Q75``), plus ``Wavelet Combined``:
                    ``time``: the transform along time of every mel bin, summarised over time (per bin:
                    ``Mean Wavelet (25)``); ``frequency``: the transform along the mel bins of every frame
                    (kernel min(10 w, F)), summarised over the mel bins (per frame: ``Mean Wavelet (25)
                    over frequency``, the method's second family); ``time_across_bins``: the transform along
                    time summarised across the mel bins (per frame: ``Mean Wavelet (25) across bins``; not
                    the method's, deepfeat's "over frequency" before it followed the method).
``dwt``             ``DWT db10 (horizontal)`` etc.: 2-D DWT detail coefficients of the dB mel.
``top4``            ``Top 4 Combined``: Mean Power (frequency) + Time to -70 dB + Mean Wavelet (cw) +
                    Wavelet Combined, concatenated (cw = ``combined_width``).
``random``          ``Random``: N(0, 1) noise, ``random_dim`` wide, seeded by ``random_seed``.
==================  =====================================================================================

Values for silent clips are finite by definition: librosa gives centroid/bandwidth/rolloff 0 Hz and
flatness 1 on an all-zero frame; the kurtosis of a constant row (std <= 1e-10 x max|x|) is defined as 0.
"""

from __future__ import annotations

import numpy as np

from deepfeat.features.chunk import WAVELET_AXES, Chunk
from deepfeat.features.registry import Feature, register
from deepfeat.features.stats import COMBINED_STATS, STAT_DEFINITIONS, STAT_LABELS, STATS

#: built-in families that read the raw audio (a build without clips.h5 refuses them up front)
AUDIO_FAMILIES = {"rms", "spectral_centroid", "spectral_bandwidth", "spectral_flatness", "spectral_rolloff"}


def _fmt(x: float) -> str:
    return f"{x:g}"


def _librosa_params(ctx: Chunk) -> dict:
    mp = ctx.mel_params
    return {
        "sr": int(ctx.sr),
        "n_fft": int(mp["n_fft"]),
        "hop_length": int(mp["hop_length"]),
        "window": "hann",
        "center": True,
        "pad_mode": mp["pad_mode"],
    }


@register("rms")
def _rms(ctx: Chunk) -> list[Feature]:
    import librosa

    p = _librosa_params(ctx)
    v = librosa.feature.rms(
        y=ctx.audio, frame_length=p["n_fft"], hop_length=p["hop_length"], center=True, pad_mode=p["pad_mode"]
    )[:, 0]
    return [
        Feature(
            "RMS",
            v,
            f"librosa.feature.rms of the raw clip: sqrt(mean(y^2)) over each centred frame of n_fft samples "
            f"(the clip padded with pad_mode '{p['pad_mode']}'), one value per frame (amplitude units)",
            {
                "frame_length": p["n_fft"],
                "hop_length": p["hop_length"],
                "center": True,
                "pad_mode": p["pad_mode"],
                "sr": p["sr"],
            },
        )
    ]


@register("spectral_centroid")
def _centroid(ctx: Chunk) -> list[Feature]:
    p = _librosa_params(ctx)
    v = ctx.spectral_centroid()[:, 0]
    return [
        Feature(
            "Spectral Centroid",
            v,
            "librosa.feature.spectral_centroid: magnitude-weighted mean "
            "frequency of each STFT frame, Hz (0 for a silent frame)",
            p,
        )
    ]


@register("spectral_bandwidth")
def _bandwidth(ctx: Chunk) -> list[Feature]:
    import librosa

    p = _librosa_params(ctx)
    v = librosa.feature.spectral_bandwidth(
        S=ctx.stft_magnitude(), sr=p["sr"], n_fft=p["n_fft"], centroid=ctx.spectral_centroid()
    )[:, 0]
    return [
        Feature(
            "Spectral Bandwidth",
            v,
            "librosa.feature.spectral_bandwidth (p=2): magnitude-weighted "
            "standard deviation of frequency around the centroid of each STFT frame, Hz (0 for a "
            "silent frame)",
            {**p, "p": 2},
        )
    ]


@register("spectral_flatness")
def _flatness(ctx: Chunk) -> list[Feature]:
    import librosa

    p = _librosa_params(ctx)
    v = librosa.feature.spectral_flatness(S=ctx.stft_magnitude())[:, 0]
    return [
        Feature(
            "Spectral Flatness",
            v,
            "librosa.feature.spectral_flatness: geometric over arithmetic mean "
            "of max(1e-10, |STFT|^2) per frame, in (0, 1] (1 for a silent frame)",
            {**p, "power": 2.0, "amin": 1e-10},
        )
    ]


@register("spectral_rolloff")
def _rolloff(ctx: Chunk) -> list[Feature]:
    import librosa

    p = _librosa_params(ctx)
    rp = float(ctx.params["rolloff_percent"])
    v = librosa.feature.spectral_rolloff(S=ctx.stft_magnitude(), sr=p["sr"], n_fft=p["n_fft"], roll_percent=rp)[:, 0]
    return [
        Feature(
            "Spectral Rolloff",
            v,
            f"librosa.feature.spectral_rolloff: lowest STFT bin frequency below "
            f"which {rp:g} of the frame's magnitude lies, Hz (0 for a silent frame)",
            {**p, "roll_percent": rp},
        )
    ]


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
    return Feature(
        f"Time to {_fmt(thr)} dB",
        ctx.time_to_db(thr),
        f"per mel bin, index of the first frame with value <= {_fmt(thr)} dB; the frame count "
        f"({ctx.n_frames}) if never reached (frames)",
        {"threshold_db": float(thr), "op": "<="},
    )


@register("time_to_db")
def _time_to_db(ctx: Chunk) -> list[Feature]:
    return [_ttd_feature(ctx, float(t)) for t in ctx.params["time_to_db_thresholds"]]


def _wavelet_name(stat: str, width: int, axis: str) -> str:
    return f"{STAT_LABELS[stat]} Wavelet ({width})" + _WAVELET_SUFFIX[axis]


_WAVELET_SUFFIX = {"time": "", "frequency": " over frequency", "time_across_bins": " across bins"}
_WAVELET_PER = {
    "time": "per mel bin, over frames, of the Ricker transform along time of each mel bin",
    "frequency": "per frame, over mel bins, of the Ricker transform along the mel bins of each frame",
    "time_across_bins": "per frame, across mel bins, of the Ricker transform along time of each mel bin",
}


def _wavelet_points(ctx: Chunk, width: int, axis: str) -> int:
    """The kernel length K = min(10 w, n) of the family's transform (n = frames, or mel bins)."""
    return int(min(10 * width, ctx.n_bins if WAVELET_AXES[axis][0] == "bins" else ctx.n_frames))


def _wavelet_definition(stat: str, width: int, axis: str, points: int) -> str:
    return (
        f"{STAT_DEFINITIONS[stat]}, {_WAVELET_PER[axis]} of the dB mel (old scipy.signal.cwt: mode 'same' "
        f"convolution with zeros outside, ricker(points={points}, a={width}))"
    )


def _wavelet_combined(ctx: Chunk) -> Feature:
    cw = int(ctx.params["combined_width"])
    st = ctx.wavelet_stats("time", cw)
    v = np.stack([st[s] for s in COMBINED_STATS], axis=1)  # (B, 6, F)
    names = [_wavelet_name(s, cw, "time") for s in COMBINED_STATS]
    return Feature(
        "Wavelet Combined",
        v,
        "concatenation of " + ", ".join(names),
        {"width": cw, "stats": list(COMBINED_STATS), "axis": "time"},
    )


@register("wavelet")
def _wavelet(ctx: Chunk) -> list[Feature]:
    p = ctx.params
    out = []
    for ax in p["wavelet_axes"]:
        for w in p["ricker_widths"]:
            st = ctx.wavelet_stats(ax, int(w))
            K = _wavelet_points(ctx, int(w), ax)
            along, over = (("mel bins" if a == "bins" else "time") for a in WAVELET_AXES[ax])
            for s in [s for s in STATS if s in p["wavelet_stats"]]:
                out.append(
                    Feature(
                        _wavelet_name(s, int(w), ax),
                        st[s],
                        _wavelet_definition(s, int(w), ax, K),
                        {
                            "width": int(w),
                            "points": K,
                            "stat": s,
                            "axis": ax,
                            "along": along,
                            "over": over,
                            "mode": "same",
                        },
                    )
                )
    out.append(_wavelet_combined(ctx))
    return out


@register("dwt")
def _dwt(ctx: Chunk) -> list[Feature]:
    import pywt

    out = []
    for w in ctx.params["dwt_wavelets"]:
        _, (cH, cV, _) = pywt.dwt2(ctx.mel, w, mode="symmetric", axes=(-2, -1))
        for part, v in (("horizontal", cH), ("vertical", cV)):
            out.append(
                Feature(
                    f"DWT {w} ({part})",
                    v,
                    f"{part} detail coefficients of the single-level 2-D discrete wavelet transform "
                    f"(pywt.dwt2, wavelet {w}, mode symmetric) of the dB mel (bins x frames)",
                    {"wavelet": w, "mode": "symmetric", "detail": part, "pywt": pywt.__version__},
                )
            )
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
    return [
        Feature(
            "Top 4 Combined",
            v,
            "concatenation of " + ", ".join(names),
            {"parts": names, "dims": [int(np.prod(f.values.shape[1:])) for f in parts]},
        )
    ]


@register("random")
def _random(ctx: Chunk) -> list[Feature]:
    dim, seed = int(ctx.params["random_dim"]), int(ctx.params["random_seed"])
    if "rng" not in ctx.state:  # one stream over all clips in order: independent of the chunk size
        ctx.state["rng"] = np.random.default_rng(seed)
    v = ctx.state["rng"].standard_normal((len(ctx), dim))
    return [
        Feature(
            "Random",
            v,
            f"i.i.d. standard normal noise, {dim} values per clip (numpy default_rng(seed) "
            "drawn row by row in clip order)",
            {"dim": dim, "seed": seed, "generator": "PCG64"},
        )
    ]
