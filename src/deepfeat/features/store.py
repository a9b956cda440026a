"""Building the hand-crafted feature store: one float32 (N x d) HDF5 dataset per feature, for every clip.

Inputs are ``clips.h5`` (raw audio, ``audio`` N x L, root attr ``sample_rate``) and ``mel.h5`` (``mel``
N x F x T in dB, in [-top_db, 0] per clip). The output ``handcrafted.h5`` (kind ``handcrafted``) holds
``features/<key>`` with attrs ``name`` (display name), ``definition``, ``params`` (JSON), ``dim`` and
``shape`` (JSON per-clip shape before flattening), in the order the features were computed; see
``docs/formats.md`` and :mod:`deepfeat.formats.handcrafted`. The clip table of ``mel.h5`` is copied alongside so
the file is self-describing.
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict

import numpy as np

from deepfeat import config
from deepfeat.features.chunk import Chunk, make_plan
from deepfeat.features.families import AUDIO_FAMILIES
from deepfeat.features.registry import FEATURES, Feature
from deepfeat.formats.clips import clip_audio, open_clips
from deepfeat.formats.cliptable import check_clip_ids
from deepfeat.formats.files import decode, write_h5
from deepfeat.formats.handcrafted import KIND, create_features, create_store, finish_store, write_chunk
from deepfeat.formats.mel import open_mel

#: the mel settings the features read (checked against the attributes of mel.h5's ``mel``)
MEL_KEYS = ("n_fft", "hop_length", "pad_mode")


def check_settings(params: dict) -> None:
    """The checks of the ``handcrafted`` settings that the schema cannot express (ValueError naming the key):
    every family of ``features`` registered and named once, every ``dwt_wavelets`` entry a discrete PyWavelets
    wavelet (when ``dwt`` is selected)."""
    bad = [f for f in params["features"] if f not in FEATURES]
    if bad:
        raise ValueError(f"handcrafted.features: unknown feature families {bad}; known: {sorted(FEATURES)}")
    if len(set(params["features"])) != len(params["features"]):
        raise ValueError(f"handcrafted.features: duplicate names in {params['features']}")
    if "dwt" in params["features"]:
        import pywt

        known = pywt.wavelist(kind="discrete")
        badw = [w for w in params["dwt_wavelets"] if w not in known]
        if badw:
            raise ValueError(f"handcrafted.dwt_wavelets: {badw} are not discrete PyWavelets wavelets; known: {known}")


def _check_inputs(fc, fm, clips, mel, mel_params: dict, need_audio: bool) -> int:
    """The sample rate of the clips, after checking that clips.h5 and mel.h5 belong together."""
    m = fm["mel"]
    for k in MEL_KEYS:
        if k in m.attrs and decode(m.attrs[k]) != str(mel_params[k]):
            raise ValueError(
                f"{mel}: mel was computed with {k}={decode(m.attrs[k])} but the mel config says mel.{k}: "
                f"{mel_params[k]}; rerun the melspec rule"
            )
    if fc is None:
        if need_audio:
            raise ValueError("the selected features need the raw clips (clips.h5), but none was given")
        return int(fm.attrs.get("sample_rate", 0))
    if fc["audio"].shape[0] != m.shape[0]:
        raise ValueError(f"{clips} has {fc['audio'].shape[0]} clips but {mel} has {m.shape[0]}")
    sr = int(fc.attrs["sample_rate"])
    if "sample_rate" in fm.attrs and int(fm.attrs["sample_rate"]) != sr:
        raise ValueError(f"{clips} is at {sr} Hz but {mel} at {int(fm.attrs['sample_rate'])} Hz")
    if "meta" in fc:
        check_clip_ids(fm, mel, fc["meta/clip_id"].asstr()[:], clips)
    return sr


@config.job(
    reads={
        "handcrafted": (
            "features",
            "power_axes",
            "time_to_db_thresholds",
            "ricker_widths",
            "wavelet_stats",
            "wavelet_axes",
            "combined_width",
            "dwt_wavelets",
            "rolloff_percent",
            "random_dim",
            "random_seed",
        ),
        "mel": ("n_fft", "hop_length", "pad_mode"),
    },
    tunes={"handcrafted": ("chunk_size",)},
)
def build_store(*, clips, mel, features, settings, log: logging.Logger | None = None) -> dict[str, float]:
    """Compute every feature of ``handcrafted.features`` for all clips and write ``features`` (the
    handcrafted.h5; kind 'handcrafted') from ``clips`` (clips.h5, or None when no audio feature is selected) and
    ``mel`` (mel.h5).

    Clips are processed ``chunk_size`` at a time and written into pre-sized float32 datasets (sized from the
    first chunk), so peak memory depends on the chunk size, not on N. Computation is float64. Returns
    wall-clock seconds per feature family and per shared step (read_audio, read_mel, stft, ricker_transform,
    wavelet_stats, time_to_db, write, total), which are also logged.
    """
    log = log or logging.getLogger(__name__)
    p, mp = settings["handcrafted"], settings["mel"]
    check_settings(p)
    families = list(p["features"])
    plan = make_plan(p, families)
    timings: dict[str, float] = defaultdict(float)
    t_start = time.perf_counter()
    need_audio = bool(AUDIO_FAMILIES & set(families))
    fc = open_clips(clips) if clips is not None else None  # audio itself is read lazily
    try:
        with open_mel(mel) as fm:
            sr = _check_inputs(fc, fm, clips, mel, mp, need_audio)
            mel_ds = fm["mel"]
            N, F, T = mel_ds.shape
            chunk = int(p["chunk_size"])
            log.info(
                f"handcrafted: {N} clips, mel {F} x {T}, sr {sr} Hz, {max(1, math.ceil(N / chunk))} chunk(s) "
                f"of <= {chunk} clips; families {families}; Ricker transform widths {plan['transform_widths']}"
            )
            with write_h5(features, KIND) as fo:
                g = create_store(fo, fm, N, sr, {"handcrafted": p, "mel": {k: mp[k] for k in MEL_KEYS}})
                audio = clip_audio(fc) if fc is not None else None  # float32 samples, whatever the storage
                layout = _write_features(g, audio, mel_ds, sr, p, mp, plan, timings, features, t_start, log)
                finish_store(g, layout)
    finally:
        if fc is not None:
            fc.close()
    timings["total"] = time.perf_counter() - t_start
    log.info(
        "handcrafted: wrote %d features (%d columns) to %s",
        len(layout),
        sum(int(np.prod(s)) for _, _, s in layout),
        features,
    )
    log.info("timings (s): " + ", ".join(f"{k} {v:.2f}" for k, v in sorted(timings.items(), key=lambda kv: -kv[1])))
    return dict(timings)


def _write_features(
    g, audio, mel_ds, sr: int, p: dict, mp: dict, plan: dict, timings, where, t_start: float, log
) -> list[tuple[str, str, tuple]]:
    """Compute and write the features chunk by chunk; returns the layout [(display name, key, per-clip shape)]."""
    families = list(p["features"])
    N = mel_ds.shape[0]
    chunk = int(p["chunk_size"])
    n_chunks = max(1, math.ceil(N / chunk))
    states: dict[str, dict] = {fam: {} for fam in families}
    layout: list[tuple[str, str, tuple]] = []  # (name, key, per-clip shape) in file order
    for ci in range(n_chunks):
        a, b = ci * chunk, min(N, (ci + 1) * chunk)
        ctx = Chunk(audio, mel_ds, a, b, sr, p, mp, plan, {}, timings)
        feats: list[Feature] = []
        for fam in families:
            ctx.state = states[fam]
            t0, c0 = time.perf_counter(), ctx.cache_seconds
            got = FEATURES[fam](ctx)
            timings[fam] += time.perf_counter() - t0 - (ctx.cache_seconds - c0)
            feats.extend(got)
        t0 = time.perf_counter()
        if ci == 0:
            layout = create_features(g, feats, N, b - a, where)
        write_chunk(g, feats, layout, a, b, where)
        timings["write"] += time.perf_counter() - t0
        el = time.perf_counter() - t_start
        log.info(
            f"chunk {ci + 1}/{n_chunks}: clips {a}-{b - 1} done, {b / el:.1f} clips/s, ETA {el / b * (N - b):.0f} s"
        )
    return layout
