"""clips.h5 storage: int16 when every clip is exact 16-bit PCM (lossless, half the size), float32 otherwise; the
readers see the same float32 samples either way, so the spectrograms and hand-crafted features are bit for bit
the same."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest
import soundfile as sf

from deepfeat import features as hc
from deepfeat.data.ingest import ingest_dataset
from deepfeat.data.mel import build_mel_store
from deepfeat.formats.clips import PCM16_SCALE, AudioWriter, clip_audio, open_clips, to_pcm16
from deepfeat.formats.files import open_h5, write_h5

SR = 22050


def pcm16_floats(shape, seed=0) -> np.ndarray:
    """float32 samples that are exact 16-bit PCM values / 32768, including both extremes."""
    q = np.random.default_rng(seed).integers(-32768, 32768, shape).astype(np.int16)
    q.flat[:2] = [-32768, 32767]
    return q.astype(np.float32) / np.float32(32768)


def test_int16_storage_round_trips_exactly(tmp_path):
    x = pcm16_floats((5, 1000))
    with write_h5(tmp_path / "c.h5", "clips") as f:
        w = AudioWriter(f, 1000, "int16")
        w.append(x[:2])
        w.append(x[2:])
        f.attrs["sample_rate"] = SR
    with open_clips(tmp_path / "c.h5") as f:
        assert f["audio"].dtype == np.int16 and f["audio"].attrs["scale"] == PCM16_SCALE == 2.0**-15
        assert (f["audio"].compression, f["audio"].shuffle) == ("gzip", True)  # lossless, checked below
        a = clip_audio(f)
        assert a.storage == "int16" and a.shape == (5, 1000) and len(a) == 5
        got = a[1:4]
        assert got.dtype == np.float32 and np.array_equal(got, x[1:4])  # bit for bit
        np.testing.assert_array_equal(a[:], x)
        np.testing.assert_array_equal(f["audio"][:], np.rint(x * 32768).astype(np.int16))


def test_int16_refuses_samples_that_are_not_exact_pcm16():
    with pytest.raises(ValueError, match="not exact 16-bit PCM"):
        to_pcm16(np.array([[0.1, 0.0]], np.float32))
    with pytest.raises(ValueError, match="not exact 16-bit PCM"):
        to_pcm16(np.array([[1.0]], np.float32))  # +full scale is 32768: one past the int16 range
    np.testing.assert_array_equal(to_pcm16(np.array([[-1.0, 0.5, 2.0**-15]], np.float32)), [[-32768, 16384, 1]])


def test_float32_storage_is_read_as_is(tmp_path):
    x = np.random.default_rng(1).normal(0, 0.1, (3, 50)).astype(np.float32)
    with write_h5(tmp_path / "c.h5", "clips") as f:
        AudioWriter(f, 50).append(x)
        f.attrs["sample_rate"] = SR
    with open_clips(tmp_path / "c.h5") as f:
        a = clip_audio(f)
        assert a.storage == "float32" and a.scale is None and "scale" not in f["audio"].attrs
        np.testing.assert_array_equal(a[:], x)
    with pytest.raises(ValueError, match="storage must be"):
        with write_h5(tmp_path / "d.h5", "clips") as f:
            AudioWriter(f, 50, "int8")


def _dataset(root, files: dict) -> dict:
    """A recordings folder with one 8.5 s file per (name -> (sample rate, channels, subtype)) and its config."""
    root.mkdir(parents=True)
    lines = ["path,composer"]
    rng = np.random.default_rng(2)
    for i, (name, (sr, ch, subtype)) in enumerate(files.items()):
        t = np.arange(int(8.5 * sr)) / sr
        y = 0.3 * np.sin(2 * np.pi * (200 + 30 * i) * t) * np.exp(-t / 3) + 0.01 * rng.normal(size=t.size)
        y = np.stack([y, 0.5 * y], axis=1) if ch == 2 else y
        sf.write(root / name, y.astype(np.float32), sr, subtype=subtype)
        lines.append(f"{name},{'ab'[i % 2]}")
    (root / "metadata.csv").write_text("\n".join(lines) + "\n")
    return {
        "format": "recordings",
        "sample_rate": SR,
        "tasks": [{"name": "composer", "type": "classification", "label": "composer"}],
        "main_task": "composer",
        "recordings": {"part_of_piece": False},
    }


@pytest.mark.parametrize(
    "odd, storage",
    [
        (None, "int16"),  # every file mono 16-bit PCM at the rate
        ((44100, 1, "PCM_16"), "float32"),  # resampled
        ((SR, 2, "PCM_16"), "float32"),  # channels mixed
        ((SR, 1, "FLOAT"), "float32"),
        ((SR, 1, "PCM_24"), "float32"),
    ],
)
def test_ingest_stores_int16_only_when_every_clip_is_exact(tmp_path, odd, storage):
    files = {f"r{i}.wav": (SR, 1, "PCM_16") for i in range(3)}
    if odd:
        files["odd.wav"] = odd
    ds = _dataset(tmp_path / "src", files)
    s = ingest_dataset(clips=tmp_path / "c.h5", settings={"dataset": ds}, root=tmp_path / "src", dataset="d")
    assert s["storage"] == storage
    with open_clips(tmp_path / "c.h5") as f:
        assert f["audio"].dtype == {"int16": np.int16, "float32": np.float32}[storage]
        audio = clip_audio(f)[:]
        rec = f["meta/recording"].asstr()[:]
    y, _ = sf.read(tmp_path / "src" / "r0.wav", dtype="float32")
    np.testing.assert_array_equal(audio[np.flatnonzero(rec == "r0.wav")[0]], y[: 4 * SR])  # the decoder's floats


def test_mel_and_handcrafted_are_bitwise_identical_for_both_storages(tmp_path):
    """The same clips stored as int16 and as float32: mel.h5 and handcrafted.h5 hold the same bits."""
    ds = _dataset(tmp_path / "src", {f"r{i}.wav": (SR, 1, "PCM_16") for i in range(4)})
    ingest_dataset(clips=tmp_path / "i16.h5", settings={"dataset": ds}, root=tmp_path / "src", dataset="d")
    shutil.copy(tmp_path / "i16.h5", tmp_path / "f32.h5")
    with h5py.File(tmp_path / "f32.h5", "a") as f:  # the float32 twin: same file, audio stored as float32
        x = clip_audio(f)[:]
        del f["audio"]
        AudioWriter(f, x.shape[1], "float32").append(x)
    hc_settings = {"handcrafted": {"features": ["rms", "spectral_centroid", "mean_power", "wavelet"]}}
    out = {}
    for name in ("i16", "f32"):
        build_mel_store(clips=tmp_path / f"{name}.h5", mel=tmp_path / f"mel_{name}.h5", settings={})
        hc.build_store(
            clips=tmp_path / f"{name}.h5",
            mel=tmp_path / f"mel_{name}.h5",
            features=tmp_path / f"hc_{name}.h5",
            settings=hc_settings,
        )
        with open_h5(tmp_path / f"mel_{name}.h5", "mel") as m, open_h5(tmp_path / f"hc_{name}.h5") as h:
            out[name] = {"mel": m["mel"][:], **{k: h["features"][k][:] for k in h["features"]}}
    assert out["i16"].keys() == out["f32"].keys() and len(out["i16"]) > 10
    for k in out["i16"]:
        assert np.array_equal(out["i16"][k], out["f32"][k]), k
    with open_h5(tmp_path / "i16.h5") as a, open_h5(tmp_path / "f32.h5") as b:
        assert a["audio"].dtype == np.int16 and b["audio"].dtype == np.float32
