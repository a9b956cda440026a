"""Mel stage: librosa exactness per clip at 16 kHz and 22,050 Hz, the streamed mel.h5 store, silent clips."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import librosa
import numpy as np
import pytest
import soundfile as sf
import torch

from deepfeat import config, workflow
from deepfeat.config import ConfigError
from deepfeat.data.ingest import ingest_dataset
from deepfeat.data.mel import _RunningMoments, build_mel_store, melspectrogram_db, n_frames
from deepfeat.formats.clips import clip_audio
from deepfeat.formats.cliptable import read_clip_table
from deepfeat.formats.files import CorruptOutputError, open_h5, read_rows, write_h5

TOL_DB = 1e-3


def librosa_db(clip: np.ndarray, sr: int, pad_mode: str = "constant") -> np.ndarray:
    """The reference: librosa per clip, exactly as the method describes it."""
    S = librosa.feature.melspectrogram(
        y=clip, sr=sr, n_fft=2048, hop_length=502, n_mels=128, fmax=8000, pad_mode=pad_mode
    )
    return librosa.power_to_db(S, ref=np.max)


def test_clips(sr: int, seconds: float = 4.0) -> np.ndarray:
    """tone + noise, white noise, silence, a very quiet tone (below amin in most bins), a click."""
    rng = np.random.default_rng(sr)
    L = int(seconds * sr)
    t = np.arange(L) / sr
    click = np.zeros(L)
    click[L // 3] = 0.9
    return np.stack(
        [
            0.5 * np.sin(2 * np.pi * 440 * t) * np.exp(-t) + 0.01 * rng.normal(size=L),
            rng.normal(0, 0.2, L),
            np.zeros(L),
            1e-6 * np.sin(2 * np.pi * 300 * t) + 1e-8 * rng.normal(size=L),
            click,
        ]
    ).astype(np.float32)


test_clips.__test__ = False  # a helper, not a test


@pytest.mark.parametrize("pad_mode", ["constant", "reflect"])
@pytest.mark.parametrize("sr, frames", [(16000, 128), (22050, 176)])
def test_matches_librosa_per_clip(sr, frames, pad_mode):
    clips = test_clips(sr)
    ours = melspectrogram_db(clips, sr, pad_mode=pad_mode)
    assert ours.dtype == np.float32 and ours.shape == (5, 128, frames)
    assert n_frames(clips.shape[1], 502) == frames
    for i, clip in enumerate(clips):
        ref = librosa_db(clip, sr, pad_mode)
        assert ref.shape == (128, frames)
        err = np.abs(ours[i] - ref).max()
        assert err <= TOL_DB, (sr, i, err)
    assert np.isfinite(ours).all()
    assert (ours[2] == 0).all()  # silence: 0 dB everywhere (ref = amin), never NaN/-inf
    assert ours.max(axis=(1, 2)).tolist() == [0.0] * 5
    assert (ours.min(axis=(1, 2)) >= -80.0).all()
    # the dB reference and floor are per clip: a batch gives what each clip alone gives
    np.testing.assert_array_equal(ours[3], melspectrogram_db(clips[3:4], sr, pad_mode=pad_mode)[0])
    assert (
        ours[3].max() == 0.0
        and librosa.power_to_db(
            np.stack(
                [
                    librosa.feature.melspectrogram(
                        y=c, sr=sr, n_fft=2048, hop_length=502, n_mels=128, fmax=8000, pad_mode="constant"
                    )
                    for c in clips[:4]
                ]
            ),
            ref=np.max,
        )[3].max()
        < -10
    )  # librosa 0.11 on a batch: global max, the trap we avoid


def test_inputs_tensor_1d_and_sub_batches(monkeypatch):
    sr = 16000
    clips = test_clips(sr, seconds=1.0)
    a = melspectrogram_db(clips, sr)
    b = melspectrogram_db(torch.from_numpy(clips), sr, device="cpu")
    c = melspectrogram_db(clips[1], sr)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a[1], c)
    import deepfeat.data.mel as mel

    monkeypatch.setitem(mel._WORK_BYTES, "cpu", 1)  # one clip per sub-batch: identical result
    np.testing.assert_array_equal(a, melspectrogram_db(clips, sr))
    # other parameters still librosa-exact
    ref = librosa.power_to_db(
        librosa.feature.melspectrogram(
            y=clips[0], sr=sr, n_fft=512, hop_length=128, n_mels=40, fmax=4000, pad_mode="constant"
        ),
        ref=np.max,
        top_db=60.0,
    )
    np.testing.assert_allclose(melspectrogram_db(clips[:1], sr, 512, 128, 40, 4000, 60.0)[0], ref, atol=TOL_DB)


def test_pad_mode_changes_the_padded_frames_only():
    """reflect vs constant padding: the power of the frames whose window reaches past either end differs (up to
    several dB at the first and last two frames); every frame in between is the same power."""
    sr = 16000
    clip = test_clips(sr)[0]
    kw = dict(sr=sr, n_fft=2048, hop_length=502, n_mels=128, fmax=8000)
    a = librosa.feature.melspectrogram(y=clip, pad_mode="constant", **kw)
    b = librosa.feature.melspectrogram(y=clip, pad_mode="reflect", **kw)
    diff = np.abs(10 * np.log10(np.maximum(a, 1e-10)) - 10 * np.log10(np.maximum(b, 1e-10))).max(axis=0)
    assert set(np.flatnonzero(diff > 1e-3)) <= {0, 1, 2, 125, 126, 127} and diff[0] > 1 and diff[-1] > 1
    ours = {m: melspectrogram_db(clip[None], sr, pad_mode=m)[0] for m in ("constant", "reflect")}
    # the peak of this decaying tone lies in frame 0..2 for both: the dB reference moves with the padding
    assert not np.array_equal(ours["constant"], ours["reflect"])


def test_bad_inputs():
    with pytest.raises(ValueError, match="NaN or inf"):
        melspectrogram_db(np.array([[0.0, np.nan] * 1000]), 16000)
    with pytest.raises(ValueError, match="shape"):
        melspectrogram_db(np.zeros((2, 3, 100)), 16000)
    with pytest.raises(ValueError, match="Nyquist"):
        melspectrogram_db(np.zeros((1, 4000)), 8000, fmax=8000)
    with pytest.raises(ValueError, match=r"mel\.pad_mode: 'edge' is not one of"):
        melspectrogram_db(np.zeros((1, 4000)), 16000, pad_mode="edge")
    with pytest.raises(ValueError, match=r"mel\.pad_mode 'reflect' needs clips longer than"):
        melspectrogram_db(np.zeros((1, 1000)), 16000, pad_mode="reflect")


def test_running_moments_exact():
    rng = np.random.default_rng(0)
    blocks = [rng.normal(-50, 15, size=(k, 7)) for k in (1, 10, 3, 50)]
    m = _RunningMoments()
    for b in blocks:
        m.add(b)
    allv = np.concatenate([b.ravel() for b in blocks])
    assert m.n == allv.size
    assert abs(m.mean - allv.mean()) < 1e-12 and abs(m.std - allv.std()) < 1e-12


# ----------------------------------------------------------------------------------------------------------
# clips.h5 -> mel.h5, built through ingest (NSynth at 16 kHz, recordings at 22,050 Hz), with silent audio
# ----------------------------------------------------------------------------------------------------------
def _nsynth(root: Path) -> dict:
    (root / "audio").mkdir(parents=True)
    ex = {}
    rng = np.random.default_rng(0)
    t = np.arange(4 * 16000) / 16000
    for i, fam in enumerate(["brass", "flute", "guitar"] * 3):
        nid = f"{fam}_acoustic_{i:03d}-{50 + i:03d}-100"
        ex[nid] = {"instrument_family_str": fam, "instrument_source": 0, "pitch": 50 + i, "velocity": 100}
        y = (
            np.zeros_like(t)
            if i == 4
            else 0.3 * np.sin(2 * np.pi * (200 + 40 * i) * t) + 0.01 * rng.normal(size=t.size)
        )
        sf.write(root / "audio" / f"{nid}.wav", y.astype(np.float32), 16000)
    (root / "examples.json").write_text(json.dumps(ex))
    return {
        "format": "nsynth",
        "sample_rate": 16000,
        "clip_seconds": 4.0,
        "tasks": [
            {"name": "family", "type": "classification", "label": "instrument_family_str"},
            {"name": "pitch", "type": "regression", "label": "pitch"},
        ],
        "main_task": "family",
        "nsynth": {"instrument_sources": [0], "drop_families": []},
        "split": {"method": "random", "test_fraction": 0.3, "seed": 0},
    }


def _recordings(root: Path) -> dict:
    root.mkdir(parents=True)
    rng = np.random.default_rng(1)
    lines = ["path,composer"]
    for i, comp in enumerate(["a", "b", "a", "b"]):
        n = int((8.5 + i) * 22050)
        y = np.zeros(n) if i == 2 else rng.normal(0, 0.1, n) * np.linspace(0, 1, n)
        sf.write(root / f"r{i}.wav", y.astype(np.float32), 22050)
        lines.append(f"r{i}.wav,{comp}")
    (root / "metadata.csv").write_text("\n".join(lines) + "\n")
    return {
        "format": "recordings",
        "sample_rate": 22050,
        "clip_seconds": 4.0,
        "recordings": {"metadata": "metadata.csv", "path_column": "path", "part_of_piece": True},
        "tasks": [
            {"name": "composer", "type": "classification", "label": "composer"},
            {"name": "part", "type": "classification", "label": "part"},
        ],
        "main_task": "composer",
        "split": {"method": "random", "test_fraction": 0.3, "seed": 0},
    }


PARAMS = {
    "n_mels": 128,
    "n_fft": 2048,
    "hop_length": 502,
    "fmax": 8000,
    "top_db": 80.0,
    "batch_size": 3,
    "device": "auto",
}


@pytest.mark.parametrize("pad_mode", ["constant", "reflect"])
@pytest.mark.parametrize("layout, frames", [("nsynth", 128), ("recordings", 176)])
def test_mel_store(tmp_path, layout, frames, pad_mode):
    ds = (_nsynth if layout == "nsynth" else _recordings)(tmp_path / "src")
    clips, out = tmp_path / "clips.h5", tmp_path / "mel.h5"
    ingest_dataset(clips=clips, settings={"dataset": ds}, root=tmp_path / "src", dataset="d")
    summary = build_mel_store(clips=clips, mel=out, settings={"mel": {**PARAMS, "pad_mode": pad_mode}})
    with open_h5(clips, "clips") as c, open_h5(out, "mel") as m:
        audio = clip_audio(c)[:]
        sr = int(c.attrs["sample_rate"])
        mel = m["mel"][:]
        assert mel.dtype == np.float32 and mel.shape == (audio.shape[0], 128, frames)
        assert m["mel"].chunks == (1, 128, frames) and m["mel"].compression == "gzip" and m["mel"].shuffle
        some = np.array([0, 2, 3, 4, mel.shape[0] - 1])  # scattered rows, read run by run: the same values
        assert np.array_equal(read_rows(m["mel"], some), mel[some])
        assert np.array_equal(read_rows(m["mel"], some[1:4]), mel[2:5])
        assert summary["shape"] == list(mel.shape)
        a = dict(m["mel"].attrs)
        for k in (
            "sr",
            "n_fft",
            "hop_length",
            "n_mels",
            "fmax",
            "window",
            "center",
            "pad_mode",
            "htk",
            "norm",
            "power",
            "ref",
            "amin",
            "top_db",
        ):
            assert k in a, k
        assert a["sr"] == sr and a["hop_length"] == 502 and a["pad_mode"] == pad_mode and a["norm"] == "slaney"
        assert json.loads(m.attrs["mel_params"])["pad_mode"] == pad_mode
        assert m.attrs["sample_rate"] == sr
        # every clip equals librosa; silent clips are finite (all 0 dB)
        assert np.isfinite(mel).all()
        assert (mel >= -80).all() and (mel.max(axis=(1, 2)) == 0).all()
        silent = np.flatnonzero(np.abs(audio).max(axis=1) == 0)
        assert silent.size >= 1 and (mel[silent] == 0).all()
        for i in range(mel.shape[0]):
            assert np.abs(mel[i] - librosa_db(audio[i], sr, pad_mode)).max() <= TOL_DB
        # standardisation statistics of the training split
        train = c["meta/split"][:] == 0
        vals = mel[train].astype(np.float64)
        assert abs(m.attrs["train_mean"] - vals.mean()) < 1e-9
        assert abs(m.attrs["train_std"] - vals.std()) < 1e-9
        assert np.isfinite(m.attrs["train_std"]) and m.attrs["train_std"] > 0
        # clip table copied unchanged
        tc, tm = read_clip_table(c), read_clip_table(m)
        assert tc[0].equals(tm[0]) and tc[1] == tm[1] and tc[2] == tm[2]


def test_mel_store_refuses_bad_input(tmp_path):
    ds = _nsynth(tmp_path / "src")
    clips = tmp_path / "clips.h5"
    ingest_dataset(clips=clips, settings={"dataset": ds}, root=tmp_path / "src", dataset="d")
    with pytest.raises(ConfigError, match=r"mel\.nmels: unknown key"):
        build_mel_store(clips=clips, mel=tmp_path / "mel.h5", settings={"mel": {**PARAMS, "nmels": 64}})
    with pytest.raises(CorruptOutputError, match="expected a deepfeat 'clips' file"):
        with write_h5(tmp_path / "other.h5", "mel") as f:
            f.create_dataset("audio", data=np.zeros((2, 10), np.float32))
        build_mel_store(clips=tmp_path / "other.h5", mel=tmp_path / "mel.h5", settings={"mel": PARAMS})
    with h5py.File(tmp_path / "half.h5", "w") as f:  # a killed ingest: no completion flag
        f.attrs["deepfeat_kind"] = "clips"
    with pytest.raises(CorruptOutputError, match="incomplete"):
        build_mel_store(clips=tmp_path / "half.h5", mel=tmp_path / "mel.h5", settings={"mel": PARAMS})
    assert not (tmp_path / "mel.h5").exists()


# ----------------------------------------------------------------------------------------------------------
# The job's settings
# ----------------------------------------------------------------------------------------------------------
def test_mel_declares_its_settings_and_the_workflow_reads_them():
    reads, tunes = ["n_mels", "n_fft", "hop_length", "fmax", "top_db", "pad_mode"], ["batch_size", "device"]
    assert build_mel_store.job.reads == {"mel": tuple(reads)} and build_mel_store.job.tunes == {"mel": tuple(tunes)}
    assert workflow.job_spec("melspec") == {"reads": {"mel": reads}, "tunes": {"mel": tunes}}


def test_defaults_are_the_schema_and_batch_size_changes_nothing(tmp_path):
    """No settings = the schema's defaults; melspectrogram_db's None parameters are the same defaults; the batch
    size (a tune) does not change a single value."""
    ds = _recordings(tmp_path / "src")
    clips = tmp_path / "clips.h5"
    ingest_dataset(clips=clips, settings={"dataset": ds}, root=tmp_path / "src", dataset="d")
    build_mel_store(clips=clips, mel=tmp_path / "a.h5", settings={})
    build_mel_store(clips=clips, mel=tmp_path / "b.h5", settings={"mel": {"batch_size": 1, "device": "cpu"}})
    d = config.defaults("mel")
    with open_h5(tmp_path / "a.h5", "mel") as a, open_h5(tmp_path / "b.h5", "mel") as b, open_h5(clips) as c:
        np.testing.assert_array_equal(a["mel"][:], b["mel"][:])
        assert a.attrs["train_mean"] == b.attrs["train_mean"] and a.attrs["train_std"] == b.attrs["train_std"]
        assert json.loads(a.attrs["mel_params"]) == json.loads(b.attrs["mel_params"])
        for k in ("n_mels", "n_fft", "hop_length", "fmax", "top_db", "pad_mode"):
            assert a["mel"].attrs[k] == d[k], k
        audio = clip_audio(c)[:3]
        np.testing.assert_array_equal(a["mel"][:3], melspectrogram_db(audio, 22050))
        explicit = melspectrogram_db(audio, 22050, d["n_fft"], d["hop_length"], d["n_mels"], d["fmax"], d["top_db"])
        np.testing.assert_array_equal(a["mel"][:3], explicit)
