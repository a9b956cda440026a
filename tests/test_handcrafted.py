"""Tests of the hand-crafted feature store (deepfeat.features) against direct reference computations."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import librosa
import numpy as np
import pytest
import pywt
import scipy.stats
import yaml
from conftest import make_meta, write_fake_mel

from deepfeat import config, workflow
from deepfeat import features as hc
from deepfeat.config import ConfigError
from deepfeat.formats.cliptable import write_clip_table
from deepfeat.formats.files import CorruptOutputError, write_h5

ROOT = Path(__file__).resolve().parents[1]
SR = 16000
MEL_PARAMS = {"n_fft": 2048, "hop_length": 502}


def old_ricker(points, a):
    """scipy.signal.ricker as it was before its removal (SciPy < 1.15), written out."""
    A = 2 / (np.sqrt(3 * a) * (np.pi**0.25))
    vec = np.arange(0, points) - (points - 1.0) / 2
    return A * (1 - vec**2 / a**2) * np.exp(-(vec**2) / (2 * a**2))


def old_cwt_row(row, width):
    """scipy.signal.cwt(row, ricker, [width])[0] of SciPy < 1.15: 'same' convolution with the reversed kernel."""
    n = min(10 * width, len(row))
    return np.convolve(row, old_ricker(n, width)[::-1], mode="same")


def old_cwt_frames(mel_clip, width):
    """The method's second family: the old cwt along the mel bins of every frame of one (F, T) clip -> (T, F)."""
    return np.stack([old_cwt_row(mel_clip[:, t], width) for t in range(mel_clip.shape[1])])


def build(clips, mel, out, params: dict, mel_params: dict = MEL_PARAMS) -> dict:
    """The handcrafted job, called as the workflow calls it."""
    return hc.build_store(clips=clips, mel=mel, features=out, settings={"handcrafted": params, "mel": mel_params})


def make_audio(n, sr=SR, seconds=4.0, seed=0):
    """Harmonic tones with decays plus noise; clip 0 is digital silence."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(sr * seconds)) / sr
    y = np.zeros((n, t.size))
    for i in range(1, n):
        f0 = rng.uniform(100, 1500)
        y[i] = sum(np.sin(2 * np.pi * f0 * h * t) / h for h in range(1, 4)) * np.exp(-t * rng.uniform(0.2, 3))
        y[i] += 0.01 * rng.standard_normal(t.size)
    return (0.3 * y).astype(np.float32)


def write_clips(path, audio, meta, sr=SR):
    with write_h5(path, "clips") as f:
        f.create_dataset("audio", data=audio)
        f.attrs["sample_rate"] = sr
        f.attrs["clip_seconds"] = audio.shape[1] / sr
        write_clip_table(f, meta, [{"name": "family", "type": "classification", "label": "family"}], "family")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A full default store on 10 fake clips (T=128 at 16 kHz), built in chunks of 4 (last chunk partial)."""
    d = tmp_path_factory.mktemp("hc")
    n = 10
    mel, meta = write_fake_mel(d / "mel.h5", n=n, n_frames=128)
    audio = make_audio(n)
    write_clips(d / "clips.h5", audio, meta)
    params = {"chunk_size": 4}
    timings = build(d / "clips.h5", d / "mel.h5", d / "handcrafted.h5", params)
    return {
        "dir": d,
        "mel": mel.astype(np.float64),
        "audio": audio,
        "path": d / "handcrafted.h5",
        "timings": timings,
        "meta": meta,
    }


# ---------------------------------------------------------------------------------------------- Ricker
@pytest.mark.parametrize("T", [7, 37, 128])
def test_ricker_matrix_matches_old_scipy_cwt(T):
    rng = np.random.default_rng(T)
    x = rng.normal(-40, 15, (5, T))
    for w in (1, 5, 10, 25):  # includes 10 w > T (kernel truncated to the row length)
        M = hc.ricker_matrix(T, w)
        assert M.shape == (T, T)
        ref = np.stack([old_cwt_row(r, w) for r in x])
        np.testing.assert_allclose(x @ M.T, ref, rtol=0, atol=1e-9)


def test_ricker_transform_all_widths_and_time_mean():
    rng = np.random.default_rng(1)
    mel = np.clip(rng.normal(-40, 20, (3, 6, 50)), -80, 0).astype(np.float32)
    widths = [1, 5, 10, 25]
    R = hc.ricker_transform(mel, widths)
    assert R.shape == (3, 4, 6, 50) and R.dtype == np.float64
    for b in range(3):
        for i, w in enumerate(widths):
            for f in range(6):
                np.testing.assert_allclose(R[b, i, f], old_cwt_row(mel[b, f].astype(np.float64), w), atol=1e-9)
    np.testing.assert_allclose(hc.ricker_time_mean(mel, widths), R.mean(axis=-1), rtol=0, atol=1e-12)


def test_ricker_transform_along_the_mel_bins_and_its_mean():
    """The method's second family: per frame, the old cwt along the F mel bins (kernel min(10 w, F))."""
    rng = np.random.default_rng(4)
    mel = np.clip(rng.normal(-40, 20, (3, 37, 9)), -80, 0).astype(np.float32)  # F = 37 < 10 w for w = 5, 10, 25
    widths = [1, 5, 10, 25]
    R = hc.ricker_transform_bins(mel, widths)
    assert R.shape == (3, 4, 9, 37) and R.dtype == np.float64
    for b in range(3):
        for i, w in enumerate(widths):
            np.testing.assert_allclose(R[b, i], old_cwt_frames(mel[b].astype(np.float64), w), rtol=0, atol=1e-9)
    np.testing.assert_allclose(hc.ricker_bins_mean(mel, widths), R.mean(axis=-1), rtol=0, atol=1e-12)
    # not the transform along time summarised over bins (what deepfeat's "over frequency" used to be)
    along_time = hc.ricker_transform(mel, widths).mean(axis=2)  # (B, W, T)
    assert not np.allclose(along_time, R.mean(axis=-1), atol=1e-3)


def test_summary_stats_match_numpy_and_scipy():
    rng = np.random.default_rng(2)
    for n in (7, 8, 128):  # odd and even counts (median / quantile interpolation)
        x = rng.standard_normal((4, 5, n)) ** 3
        s = hc.summary_stats(x)
        ref = {
            "mean": x.mean(-1),
            "median": np.median(x, -1),
            "std": x.std(-1),
            "var": x.var(-1),
            "kurtosis": scipy.stats.kurtosis(x, axis=-1, fisher=True, bias=True),
            "q25": np.quantile(x, 0.25, axis=-1),
            "q75": np.quantile(x, 0.75, axis=-1),
        }
        assert list(s) == list(hc.STATS)
        for k in hc.STATS:
            np.testing.assert_allclose(s[k], ref[k], rtol=1e-12, atol=1e-12, err_msg=k)


def test_kurtosis_of_constant_rows_is_zero_not_nan():
    x = np.array([[-80.0] * 9, [0.0] * 9, [1e-3 + 1e-20 * i for i in range(9)], [1, 2, 3, 4, 5, 6, 7, 8, 100.0]])
    k = hc.kurtosis(x)
    assert np.all(np.isfinite(k))
    np.testing.assert_array_equal(k[:3], 0.0)
    assert k[3] == pytest.approx(scipy.stats.kurtosis(x[3]), rel=1e-12)
    with pytest.raises(ValueError, match="unknown statistics"):
        hc.summary_stats(x, ("mean", "skew"))


# ------------------------------------------------------------------------------------------- time to dB
def test_time_to_db_semantics():
    T = 6
    mel = np.array(
        [
            [
                [0, -10, -70, -60, -90, -80],  # -70 reached at 2 (equality counts), -75 at 4, -80 at 4
                [-80, 0, 0, 0, 0, 0],  # exactly the floor at frame 0 counts for every threshold
                [0, -69.99, -69.5, -50, 0, -1],  # never reached -> T (the frame count)
                [-5, -72, -5, -79.99, -5, -80],  # each threshold first crossed at a different frame; floor last
            ]
        ],
        dtype=np.float32,
    )
    np.testing.assert_array_equal(hc.time_to_db(mel, -70), [[2, 0, T, 1]])
    np.testing.assert_array_equal(hc.time_to_db(mel, -75), [[4, 0, T, 3]])
    np.testing.assert_array_equal(hc.time_to_db(mel, -80), [[4, 0, T, 5]])


# --------------------------------------------------------------------------------------------- librosa
def test_librosa_features_match_per_clip_calls(store):
    audio, path = store["audio"], store["path"]
    kw = dict(sr=SR, n_fft=2048, hop_length=502)
    ref = {
        "RMS": lambda y: librosa.feature.rms(y=y, frame_length=2048, hop_length=502),
        "Spectral Centroid": lambda y: librosa.feature.spectral_centroid(y=y, **kw),
        "Spectral Bandwidth": lambda y: librosa.feature.spectral_bandwidth(y=y, **kw),
        "Spectral Flatness": lambda y: librosa.feature.spectral_flatness(y=y, n_fft=2048, hop_length=502),
        "Spectral Rolloff": lambda y: librosa.feature.spectral_rolloff(y=y, roll_percent=0.85, **kw),
    }
    for name, fn in ref.items():
        got = hc.read_feature(path, name)
        want = np.stack([fn(y.astype(np.float64))[0] for y in audio])
        assert got.shape == (10, 128)
        np.testing.assert_allclose(
            got, want.astype(np.float32), rtol=1e-5, atol=1e-5 * np.abs(want).max(), err_msg=name
        )
    # the silent clip: defined, finite values (0 Hz, flatness 1, rms 0)
    for name, value in (
        ("RMS", 0),
        ("Spectral Centroid", 0),
        ("Spectral Bandwidth", 0),
        ("Spectral Flatness", 1),
        ("Spectral Rolloff", 0),
    ):
        np.testing.assert_array_equal(hc.read_feature(path, name)[0], value, err_msg=name)


def test_pad_mode_is_passed_to_every_stft(store, tmp_path):
    """mel.pad_mode reflect (librosa 0.8's, the method's): RMS and the spectral features equal librosa's calls with
    pad_mode='reflect' and differ from the default (zeros) at the first and last frames only; the store records it;
    a mel.h5 computed with another pad mode is refused, naming the key."""
    d, audio = store["dir"], store["audio"]
    fams = ["rms", "spectral_centroid", "spectral_flatness"]
    build(d / "clips.h5", d / "mel.h5", tmp_path / "r.h5", {"features": fams}, {**MEL_PARAMS, "pad_mode": "reflect"})
    kw = dict(n_fft=2048, hop_length=502, pad_mode="reflect")
    ref = {
        "RMS": lambda y: librosa.feature.rms(y=y, frame_length=2048, hop_length=502, pad_mode="reflect"),
        "Spectral Centroid": lambda y: librosa.feature.spectral_centroid(y=y, sr=SR, **kw),
        "Spectral Flatness": lambda y: librosa.feature.spectral_flatness(y=y, **kw),
    }
    for name, fn in ref.items():
        got = hc.read_feature(tmp_path / "r.h5", name)
        want = np.stack([fn(y.astype(np.float64))[0] for y in audio[1:]])
        np.testing.assert_allclose(got[1:], want, rtol=1e-5, atol=1e-5 * np.abs(want).max(), err_msg=name)
        zero = hc.read_feature(store["path"], name)
        differs = np.flatnonzero(np.abs(got - zero).max(axis=0) > 1e-6 * np.abs(zero).max())
        assert set(differs) <= {0, 1, 2, 125, 126, 127} and {0, 127} <= set(differs), (name, differs)
    with h5py.File(tmp_path / "r.h5") as f:
        assert json.loads(f["features/rms"].attrs["params"])["pad_mode"] == "reflect"
        assert json.loads(f.attrs["params"])["mel"]["pad_mode"] == "reflect"
    with h5py.File(d / "mel.h5") as f:
        mel_attrs = dict(f["mel"].attrs)
    with write_h5(tmp_path / "mel.h5", "mel") as f:
        f.create_dataset("mel", data=store["mel"].astype(np.float32)).attrs.update(
            {**mel_attrs, "pad_mode": "constant"}
        )
        f.attrs["sample_rate"] = SR
    with pytest.raises(ValueError, match=r"pad_mode=constant but the mel config says mel\.pad_mode: reflect"):
        build(
            None,
            tmp_path / "mel.h5",
            tmp_path / "e.h5",
            {"features": ["random"]},
            {**MEL_PARAMS, "pad_mode": "reflect"},
        )


def test_sample_rate_is_passed_to_librosa(tmp_path):
    """The same samples declared at 22,050 Hz give frequencies scaled by 22050/16000 (the notebooks' bug)."""
    n = 3
    mel, meta = write_fake_mel(tmp_path / "mel.h5", n=n, n_frames=128)
    audio = make_audio(n, seed=3)
    write_clips(tmp_path / "clips.h5", audio, meta)
    with h5py.File(tmp_path / "mel.h5", "a") as f:
        f.attrs["sample_rate"] = 22050
    write_clips(tmp_path / "clips22.h5", audio, meta, sr=22050)
    p = {"features": ["spectral_centroid"]}
    build(tmp_path / "clips22.h5", tmp_path / "mel.h5", tmp_path / "a.h5", p)
    c22 = hc.read_feature(tmp_path / "a.h5", "Spectral Centroid")
    want = np.stack(
        [
            librosa.feature.spectral_centroid(y=y.astype(np.float64), sr=22050, n_fft=2048, hop_length=502)[0]
            for y in audio
        ]
    )
    np.testing.assert_allclose(c22, want, rtol=1e-5)
    assert json.loads(h5py.File(tmp_path / "a.h5")["features/spectral_centroid"].attrs["params"])["sr"] == 22050


# ---------------------------------------------------------------------------------------------- the store
EXPECTED_NAMES = (
    [
        "RMS",
        "Spectral Centroid",
        "Spectral Bandwidth",
        "Spectral Flatness",
        "Spectral Rolloff",
        "Mean Power (frequency)",
        "Mean Power (time)",
        "Median Power (frequency)",
        "Median Power (time)",
        "Time to -70 dB",
        "Time to -75 dB",
        "Time to -80 dB",
    ]
    + [
        f"{s} Wavelet ({w}){sfx}"
        for sfx in ("", " over frequency")  # the default wavelet_axes [time, frequency]: the method's two families
        for w in (1, 5, 10, 25)
        for s in ("Mean", "Median", "Std", "Var", "Kurtosis", "Q25", "Q75")
    ]
    + [
        "Wavelet Combined",
        "DWT db10 (horizontal)",
        "DWT db10 (vertical)",
        "DWT bior1.3 (horizontal)",
        "DWT bior1.3 (vertical)",
        "Top 4 Combined",
        "Random",
    ]
)


def test_store_names_attrs_and_layout(store):
    path = store["path"]
    assert hc.list_features(path) == EXPECTED_NAMES
    with h5py.File(path) as f:
        assert f.attrs["deepfeat_kind"] == "handcrafted" and f.attrs["deepfeat_complete"]
        assert f["meta/clip_id"].asstr()[:].tolist() == store["meta"]["clip_id"].tolist()
        for name in EXPECTED_NAMES:
            ds = f["features"][hc.feature_key(name)]
            assert ds.dtype == np.float32 and ds.shape[0] == 10
            assert ds.attrs["name"] == name and len(ds.attrs["definition"]) > 20
            shape = json.loads(ds.attrs["shape"])
            assert int(np.prod(shape)) == ds.attrs["dim"] == ds.shape[1]
            assert isinstance(json.loads(ds.attrs["params"]), dict)
            assert np.all(np.isfinite(ds[:])), name
        assert f["features/mean_wavelet_25"].attrs["name"] == "Mean Wavelet (25)"
        assert json.loads(f["features/wavelet_combined"].attrs["shape"]) == [6, 128]
        assert json.loads(f["features/mean_wavelet_25_over_frequency"].attrs["shape"]) == [128]
        ofreq = json.loads(f["features/mean_wavelet_25_over_frequency"].attrs["params"])
        assert ofreq == {
            "width": 25,
            "points": 128,
            "stat": "mean",
            "axis": "frequency",
            "along": "mel bins",
            "over": "mel bins",
            "mode": "same",
        }
        assert "along the mel bins of each frame" in f["features/mean_wavelet_25_over_frequency"].attrs["definition"]
    t = store["timings"]
    assert set(config.default("handcrafted", "features")) <= set(t) and t["total"] > 0 and t["ricker_transform"] > 0


def test_store_values_against_direct_computation(store):
    path, mel = store["path"], store["mel"]
    T = mel.shape[-1]
    np.testing.assert_allclose(hc.read_feature(path, "Mean Power (frequency)"), mel.mean(1), rtol=1e-6)
    np.testing.assert_allclose(hc.read_feature(path, "Median Power (time)"), np.median(mel, 2), rtol=1e-6)
    for thr in (-70, -75, -80):
        want = np.array(
            [
                [next((t for t in range(T) if mel[b, f, t] <= thr), T) for f in range(mel.shape[1])]
                for b in range(len(mel))
            ]
        )
        np.testing.assert_array_equal(hc.read_feature(path, f"Time to {thr} dB"), want)
    # wavelets for one clip, per row (along time) and per frame (along the mel bins), as the method defines them
    b = 3
    for w in (5, 25):
        rows = np.stack([old_cwt_row(r, w) for r in mel[b]])  # (F, T): along time
        frames = old_cwt_frames(mel[b], w)  # (T, F): along the mel bins
        checks = {
            f"Mean Wavelet ({w})": rows.mean(1),
            f"Kurtosis Wavelet ({w})": scipy.stats.kurtosis(rows, axis=1),
            f"Q75 Wavelet ({w})": np.quantile(rows, 0.75, axis=1),
            f"Mean Wavelet ({w}) over frequency": frames.mean(axis=1),
            f"Median Wavelet ({w}) over frequency": np.median(frames, axis=1),
            f"Std Wavelet ({w}) over frequency": frames.std(axis=1),
            f"Kurtosis Wavelet ({w}) over frequency": scipy.stats.kurtosis(frames, axis=1),
        }
        for name, want in checks.items():
            np.testing.assert_allclose(hc.read_feature(path, name)[b], want, rtol=2e-6, atol=1e-5, err_msg=name)
    rows = np.stack([old_cwt_row(r, 25) for r in mel[b]])
    comb = np.concatenate(
        [
            np.median(rows, 1),
            rows.std(1),
            rows.var(1),
            scipy.stats.kurtosis(rows, axis=1),
            np.quantile(rows, 0.25, axis=1),
            np.quantile(rows, 0.75, axis=1),
        ]
    )
    np.testing.assert_allclose(hc.read_feature(path, "Wavelet Combined")[b], comb, rtol=2e-6, atol=1e-5)


def test_dwt_matches_per_clip_pywt(store):
    path, mel = store["path"], store["mel"]
    for w in ("db10", "bior1.3"):
        H = hc.read_feature(path, f"DWT {w} (horizontal)")
        V = hc.read_feature(path, f"DWT {w} (vertical)")
        for b in (0, 9):
            _, (cH, cV, _) = pywt.dwt2(mel[b], w)
            np.testing.assert_allclose(H[b], cH.ravel(), rtol=1e-6, atol=1e-4)
            np.testing.assert_allclose(V[b], cV.ravel(), rtol=1e-6, atol=1e-4)
    assert H.shape[1] == 66 * 66  # bior1.3 (filter length 6): (128 + 5) // 2 per axis


def test_top4_is_the_concatenation(store):
    path = store["path"]
    parts = ["Mean Power (frequency)", "Time to -70 dB", "Mean Wavelet (25)", "Wavelet Combined"]
    want = np.concatenate([hc.read_feature(path, n) for n in parts], axis=1)
    np.testing.assert_array_equal(hc.read_feature(path, "Top 4 Combined"), want)
    assert want.shape[1] == 128 + 128 + 128 + 6 * 128


def test_random_is_seeded_and_independent_of_chunking(store, tmp_path):
    d = store["dir"]
    a = hc.read_feature(store["path"], "Random")
    build(None, d / "mel.h5", tmp_path / "r.h5", {"features": ["random"], "chunk_size": 3})
    np.testing.assert_array_equal(hc.read_feature(tmp_path / "r.h5", "random"), a)
    np.testing.assert_array_equal(a, np.random.default_rng(0).standard_normal((10, 128)).astype(np.float32))
    build(None, d / "mel.h5", tmp_path / "s.h5", {"features": ["random"], "random_seed": 1})
    assert not np.allclose(hc.read_feature(tmp_path / "s.h5", "Random"), a)


def test_constant_spectrograms_give_finite_features(tmp_path):
    """Silence in dB (all -80) and all-0 clips: every mel-based feature is finite, kurtosis defined as 0."""
    n, F, T = 3, 16, 40
    mel = np.full((n, F, T), -80.0, dtype=np.float32)
    mel[1] = 0.0
    mel[2] = np.linspace(0, -80, T)[None, :]
    with write_h5(tmp_path / "mel.h5", "mel") as f:
        f.create_dataset("mel", data=mel)
        f.attrs["sample_rate"] = SR
    p = {"features": ["mean_power", "median_power", "time_to_db", "wavelet", "dwt", "top4"]}
    build(None, tmp_path / "mel.h5", tmp_path / "h.h5", p)
    for name in hc.list_features(tmp_path / "h.h5"):
        assert np.all(np.isfinite(hc.read_feature(tmp_path / "h.h5", name))), name
    # an all-0 dB spectrogram transforms to 0 along either axis: constant -> kurtosis 0 (not NaN)
    np.testing.assert_array_equal(hc.read_feature(tmp_path / "h.h5", "Kurtosis Wavelet (5) over frequency")[1], 0)
    np.testing.assert_array_equal(hc.read_feature(tmp_path / "h.h5", "Time to -70 dB")[1], T)
    # along time, every bin of a constant spectrogram has the same transform -> constant across bins -> kurtosis 0
    build(None, tmp_path / "mel.h5", tmp_path / "a.h5", {"features": ["wavelet"], "wavelet_axes": ["time_across_bins"]})
    np.testing.assert_array_equal(hc.read_feature(tmp_path / "a.h5", "Kurtosis Wavelet (5) across bins")[:2], 0)


def test_selected_options_and_feature_subsets(store, tmp_path):
    d = store["dir"]
    p = {
        "features": ["wavelet", "mean_power"],
        "ricker_widths": [3],
        "wavelet_stats": ["var"],
        "wavelet_axes": ["frequency"],
        "power_axes": ["time"],
        "combined_width": 5,
    }
    build(None, d / "mel.h5", tmp_path / "o.h5", p)
    assert hc.list_features(tmp_path / "o.h5") == [
        "Var Wavelet (3) over frequency",
        "Wavelet Combined",
        "Mean Power (time)",
    ]
    np.testing.assert_allclose(
        hc.read_feature(tmp_path / "o.h5", "Var Wavelet (3) over frequency")[0],
        old_cwt_frames(store["mel"][0], 3).var(1),
        rtol=1e-6,
    )
    # deepfeat's former "over frequency": the transform along time, summarised across the mel bins
    p2 = {**p, "wavelet_axes": ["time_across_bins", "frequency"], "wavelet_stats": ["mean", "q25"]}
    build(None, d / "mel.h5", tmp_path / "a.h5", p2)
    names = hc.list_features(tmp_path / "a.h5")
    assert names[:4] == [
        "Mean Wavelet (3) across bins",
        "Q25 Wavelet (3) across bins",
        "Mean Wavelet (3) over frequency",
        "Q25 Wavelet (3) over frequency",
    ]
    rows = np.stack([old_cwt_row(r, 3) for r in store["mel"][0]])  # (F, T) along time
    a = tmp_path / "a.h5"
    np.testing.assert_allclose(
        hc.read_feature(a, "Mean Wavelet (3) across bins")[0], rows.mean(0), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(
        hc.read_feature(a, "Q25 Wavelet (3) across bins")[0], np.quantile(rows, 0.25, axis=0), rtol=1e-5, atol=1e-5
    )
    with h5py.File(a) as f:
        assert json.loads(f["features/mean_wavelet_3_across_bins"].attrs["params"])["along"] == "time"
    # the two per-frame families are different features (the issue measured r = 0.065 at w = 25 on a real clip)
    r = np.corrcoef(
        hc.read_feature(a, "Mean Wavelet (3) across bins")[0], hc.read_feature(a, "Mean Wavelet (3) over frequency")[0]
    )
    assert abs(r[0, 1]) < 0.9


# ------------------------------------------------------------------------------------- registry, errors
def test_registry_extension_one_function_plus_config_name(store, tmp_path):
    @hc.register("test_max_power")
    def _max_power(ctx):
        return [hc.Feature("Max Power (time)", ctx.mel.max(axis=2), "maximum over frames (dB)", {})]

    try:
        build(None, store["dir"] / "mel.h5", tmp_path / "x.h5", {"features": ["test_max_power"], "chunk_size": 4})
        np.testing.assert_allclose(hc.read_feature(tmp_path / "x.h5", "Max Power (time)"), store["mel"].max(2))
    finally:
        del hc.FEATURES["test_max_power"]


def test_bad_config_and_inputs_give_clear_errors(store, tmp_path):
    d = store["dir"]
    with pytest.raises(ValueError, match=r"unknown feature families \['mfcc'\]; known: .*wavelet"):
        build(d / "clips.h5", d / "mel.h5", tmp_path / "e.h5", {"features": ["mfcc"]})
    with pytest.raises(ConfigError, match=r"handcrafted\.widths: unknown key"):
        build(d / "clips.h5", d / "mel.h5", tmp_path / "e.h5", {"widths": [1]})
    with pytest.raises(ConfigError, match=r"mel\.nfft: unknown key"):
        build(d / "clips.h5", d / "mel.h5", tmp_path / "e.h5", {}, {"nfft": 2048})
    with pytest.raises(ValueError, match="dwt_wavelets.*db99"):
        build(d / "clips.h5", d / "mel.h5", tmp_path / "e.h5", {"dwt_wavelets": ["db99"]})
    with pytest.raises(ValueError, match=r"handcrafted\.features: duplicate names"):
        build(None, d / "mel.h5", tmp_path / "e.h5", {"features": ["random", "random"]})
    with pytest.raises(ConfigError, match=r"handcrafted\.power_axes"):  # the schema's checks
        build(None, d / "mel.h5", tmp_path / "e.h5", {"power_axes": ["diagonal"]})
    with pytest.raises(ConfigError, match=r"handcrafted\.time_to_db_thresholds"):
        build(None, d / "mel.h5", tmp_path / "e.h5", {"time_to_db_thresholds": [3]})
    with pytest.raises(ConfigError, match=r"handcrafted\.chunk_size"):
        build(None, d / "mel.h5", tmp_path / "e.h5", {"chunk_size": 0})
    with pytest.raises(ValueError, match="need the raw clips"):
        build(None, d / "mel.h5", tmp_path / "e.h5", {"features": ["rms"]})
    meta = make_meta(4)
    write_clips(tmp_path / "short.h5", make_audio(4), meta)
    with pytest.raises(ValueError, match="has 4 clips but"):
        build(tmp_path / "short.h5", d / "mel.h5", tmp_path / "e.h5", {"features": ["rms"]})
    assert not (tmp_path / "e.h5").exists()
    with pytest.raises(KeyError, match="no feature 'Nope'; available"):
        hc.read_feature(store["path"], "Nope")
    with pytest.raises(CorruptOutputError):
        hc.read_feature(d / "mel.h5", "RMS")


def test_settings_are_the_schema_and_config_sections():
    """The job reads every key of the handcrafted section (chunk_size only as a tune); config.yaml sets them all,
    and its values pass the checks the schema cannot express."""
    keys = config.section_keys("handcrafted")
    spec = hc.build_store.job
    assert list(spec.reads["handcrafted"]) + list(spec.tunes["handcrafted"]) == keys
    assert spec.tunes == {"handcrafted": ("chunk_size",)} and spec.reads["mel"] == ("n_fft", "hop_length", "pad_mode")
    assert workflow.job_spec("handcrafted") == {
        "reads": {"handcrafted": keys[:-1], "mel": ["n_fft", "hop_length", "pad_mode"]},
        "tunes": {"handcrafted": ["chunk_size"]},
    }
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())["handcrafted"]
    assert set(cfg) == set(keys)
    hc.check_settings(config.settings("handcrafted", cfg, keys))
    assert set(config.default("handcrafted", "features")) == set(hc.FEATURES)  # every built-in family by default


def test_chunk_size_changes_no_value(store, tmp_path):
    """chunk_size is a tune: another chunking gives the same file (values and attributes)."""
    build(store["dir"] / "clips.h5", store["dir"] / "mel.h5", tmp_path / "one.h5", {"chunk_size": 10})
    with h5py.File(store["path"]) as a, h5py.File(tmp_path / "one.h5") as b:
        assert list(a["features"]) == list(b["features"])
        for key in a["features"]:
            np.testing.assert_array_equal(a["features"][key][:], b["features"][key][:], err_msg=key)
            assert dict(a["features"][key].attrs) == dict(b["features"][key].attrs), key
        pa, pb = json.loads(a.attrs["params"]), json.loads(b.attrs["params"])
        assert pa["handcrafted"].pop("chunk_size") == 4 and pb["handcrafted"].pop("chunk_size") == 10
        assert pa == pb


def test_the_readme_example_works_verbatim(store, tmp_path):
    """The "Adding a feature" example of the README and of deepfeat.features, with its import lines."""
    code = """
import librosa
from deepfeat.features import Chunk, Feature, register

@register("zero_crossing_rate")
def _zcr(ctx: Chunk) -> list[Feature]:
    hop, n_fft = ctx.mel_params["hop_length"], ctx.mel_params["n_fft"]
    z = librosa.feature.zero_crossing_rate(ctx.audio, frame_length=n_fft, hop_length=hop)[:, 0]
    return [Feature("Zero Crossing Rate", z, "fraction of sign changes per frame",
                    {"frame_length": n_fft, "hop_length": hop})]
"""
    assert code.strip().split("\n", 2)[2].strip() in hc.__doc__.replace("\n    ", "\n")
    try:
        exec(compile(code, "readme_example", "exec"), {})
        build(
            store["dir"] / "clips.h5",
            store["dir"] / "mel.h5",
            tmp_path / "z.h5",
            {"features": ["zero_crossing_rate"], "chunk_size": 4},
        )
        want = np.stack(
            [
                librosa.feature.zero_crossing_rate(y.astype(np.float64), frame_length=2048, hop_length=502)[0]
                for y in store["audio"]
            ]
        )
        np.testing.assert_allclose(hc.read_feature(tmp_path / "z.h5", "Zero Crossing Rate"), want, rtol=1e-6)
    finally:
        del hc.FEATURES["zero_crossing_rate"]
