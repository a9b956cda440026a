"""Deep-feature extraction: file layout, stored rows == a direct forward pass, points, errors, bounded memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import write_fake_mel

from deepfeat.config import ConfigError
from deepfeat.formats.deep import deep_info, read_deep
from deepfeat.formats.files import open_h5
from deepfeat.formats.models import save_model
from deepfeat.nets import extract_features, layer_activations, standardise_input, train_model
from deepfeat.nets.models import build_model, cpu_state, load_model
from deepfeat.runtime import get_logger

ALL = ["conv1", "pool1", "conv2", "pool2", "conv3", "fc1"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A mel.h5 (37 clips, 64 x 64) and Regular/Deformable/FeedForward model files trained on it for 2 epochs."""
    d = tmp_path_factory.mktemp("extract")
    mel = d / "mel.h5"
    write_fake_mel(mel, n=37, n_mels=64, n_frames=64)
    models = {}
    for arch in ("Regular", "Deformable", "FeedForward"):
        models[arch] = d / f"{arch}.pt"
        train_model(
            mel=mel,
            model=models[arch],
            history=d / f"{arch}.history.csv",
            settings={"models": {"epochs": 2, "batch_size": 8, "device": "cpu"}},
            task="family",
            arch=arch,
            seed=3,
            log=get_logger(d / f"{arch}.log"),
        )
    return d, mel, models


def _extract(model, mel, deep, params, log=None):
    return extract_features(model=model, mel=mel, deep=deep, settings={"deep": params}, log=log)


def _direct_rows(model_pt, mel, which, layer, point, average):
    """The rows of one layer computed here: whole-file forward pass, channel mean or C-order flattening."""
    model, meta = load_model(model_pt, which)
    with h5py.File(mel, "r") as f:
        x = (torch.from_numpy(f["mel"][:]).unsqueeze(1) - meta["train_mean"]) / meta["train_std"]
    a = layer_activations(model, x, [layer], point)[layer]
    return (a.mean(1) if average else a).reshape(len(x), -1).numpy()


@pytest.mark.parametrize("arch", ["Regular", "Deformable"])
def test_layout_and_rows_equal_a_direct_forward_pass(trained, arch, tmp_path):
    d, mel, models = trained
    out = tmp_path / "deep.h5"
    shapes = _extract(
        models[arch], mel, out, {"store": ALL, "batch_size": 8, "device": "cpu"}, log=get_logger(tmp_path / "x.log")
    )
    assert "74/74 clip-states" in (tmp_path / "x.log").read_text()
    with open_h5(out, "deep") as f:
        assert f.attrs["arch"] == arch and f.attrs["seed"] == 3 and f.attrs["task"] == "family"
        assert json.loads(f.attrs["layers"]) == ALL
        assert f["meta/clip_id"].asstr()[:].tolist() == [f"clip{i:05d}" for i in range(37)]
        for which in ("trained", "untrained"):
            assert list(f[which]) == sorted(ALL)
            for layer in ALL:
                ds = f[which][layer]
                avg = layer in ("conv1", "pool1")
                assert ds.dtype == np.float32 and ds.chunks is not None
                assert json.loads(ds.attrs["shape"]) == shapes[layer]
                assert bool(ds.attrs["averaged_channels"]) == avg and ds.attrs["point"] == "raw"
                assert ds.shape == (37, int(np.prod(shapes[layer])))
                np.testing.assert_allclose(
                    ds[:], _direct_rows(models[arch], mel, which, layer, "raw", avg), rtol=1e-5, atol=1e-5
                )
        assert not np.allclose(f["trained/conv3"][:], f["untrained/conv3"][:])
    c3 = {"Regular": [30, 1, 1], "Deformable": [30, 3, 3]}[arch]
    assert shapes["conv1"] == [60, 60] and shapes["pool2"] == [20, 5, 5] and shapes["conv3"] == c3
    assert shapes["fc1"] == [120, 1, 1]


def test_raw_point_is_the_conv_output_and_activated_is_after_bn_relu(trained, tmp_path):
    d, mel, models = trained
    raw, act = tmp_path / "raw.h5", tmp_path / "act.h5"
    params = {"store": ["conv1", "conv2"], "average_channels": [], "batch_size": 16, "device": "cpu"}
    _extract(models["Regular"], mel, raw, params)
    _extract(models["Regular"], mel, act, {**params, "point": "activated"})
    model, meta = load_model(models["Regular"], "trained")
    with h5py.File(mel, "r") as f:
        x = standardise_input(f["mel"][:], meta)
    with torch.no_grad():  # independent of ConvNet.activations: the layers called by hand
        c1 = F.conv2d(x, model.conv1.weight, model.conv1.bias)
        a1 = F.relu(model.bn1(c1))
        c2 = model.conv2(model.pool1(a1))
        a2 = F.relu(model.bn2(c2))
    r1, s1 = read_deep(raw, "conv1")
    np.testing.assert_allclose(r1, c1.reshape(37, -1).numpy(), rtol=1e-5, atol=1e-5)
    assert s1["shape"] == [10, 60, 60] and not s1["averaged_channels"]
    np.testing.assert_allclose(read_deep(raw, "conv2")[0], c2.reshape(37, -1).numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(read_deep(act, "conv1")[0], a1.reshape(37, -1).numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(read_deep(act, "conv2")[0], a2.reshape(37, -1).numpy(), rtol=1e-5, atol=1e-5)
    assert read_deep(act, "conv2")[1]["point"] == "activated"
    # a row reshapes to the stored per-clip shape
    assert np.array_equal(r1[5].reshape(s1["shape"]), c1[5].numpy())


def test_layer_activations_full_maps(trained):
    d, mel, models = trained
    model, meta = load_model(models["Deformable"], "untrained")
    with h5py.File(mel, "r") as f:
        x = standardise_input(f["mel"][:5], meta)
    acts = layer_activations(model, x, ALL)
    assert {k: tuple(v.shape) for k, v in acts.items()} == {
        "conv1": (5, 10, 60, 60),
        "pool1": (5, 10, 30, 30),
        "conv2": (5, 20, 11, 11),
        "pool2": (5, 20, 5, 5),
        "conv3": (5, 30, 3, 3),
        "fc1": (5, 120, 1, 1),
    }
    assert not any(v.requires_grad for v in acts.values())


def test_errors(trained, tmp_path):
    d, mel, models = trained
    with pytest.raises(ConfigError, match="deep.store: empty"):  # the default exports nothing
        _extract(models["Regular"], mel, tmp_path / "x.h5", {"device": "cpu"})
    with pytest.raises(ValueError, match="FeedForward has no conv"):
        _extract(models["FeedForward"], mel, tmp_path / "ff.h5", {"store": ALL, "device": "cpu"})
    with pytest.raises(ValueError, match="deep.store"):
        _extract(models["Regular"], mel, tmp_path / "x.h5", {"store": ["conv9"], "device": "cpu"})
    with pytest.raises(ValueError, match="average_channels"):
        _extract(
            models["Regular"], mel, tmp_path / "x.h5", {"store": ALL, "average_channels": ["fc1"], "device": "cpu"}
        )
    other = tmp_path / "other.h5"
    write_fake_mel(other, n=20, n_mels=64, n_frames=64, seed=5)
    with pytest.raises(ValueError, match="train_mean.*differs"):
        _extract(models["Regular"], other, tmp_path / "x.h5", {"store": ALL, "device": "cpu"})
    wide = tmp_path / "wide.h5"
    write_fake_mel(wide, n=20, n_mels=64, n_frames=70)
    with pytest.raises(ValueError, match="64x70 but"):
        _extract(models["Regular"], wide, tmp_path / "x.h5", {"store": ALL, "device": "cpu"})
    assert not (tmp_path / "x.h5").exists()
    with pytest.raises(KeyError, match="available"):
        _extract(models["Regular"], mel, tmp_path / "ok.h5", {"store": ["conv3"], "device": "cpu"})
        read_deep(tmp_path / "ok.h5", "conv1")
    with pytest.raises(ConfigError, match="deep.stor: unknown key"):  # silently ignored before
        _extract(models["Regular"], mel, tmp_path / "x.h5", {"stor": ["conv3"], "device": "cpu"})
    with pytest.raises(ConfigError, match="deep.store: .* non-unique"):  # the schema's uniqueItems
        _extract(models["Regular"], mel, tmp_path / "x.h5", {"store": ["conv3", "conv3"], "device": "cpu"})
    assert not (tmp_path / "x.h5").exists()


def test_written_file_passes_the_reader_checks(trained, tmp_path):
    d, mel, models = trained
    out = tmp_path / "seed3.h5"
    shapes = _extract(models["Deformable"], mel, out, {"store": ["pool1", "conv3"], "device": "cpu"})
    with open_h5(out, "deep") as f:
        info = deep_info(f, out, n_clips=37)
        assert json.loads(f.attrs["average_channels"]) == ["pool1"] and f.attrs["model"] == "Deformable.pt"
    assert (info.arch, info.seed, info.task, info.layers, info.point) == (
        "Deformable",
        3,
        "family",
        ("pool1", "conv3"),
        "raw",
    )
    assert info.widths == {a: int(np.prod(s)) for a, s in shapes.items()}
    assert extract_features.job.reads == {"deep": ("store", "point", "average_channels")}
    assert extract_features.job.tunes == {"deep": ("batch_size", "device")}


# Peak RSS of the child itself: VmHWM (kB) starts afresh at exec, unlike ru_maxrss, which Linux carries over
# from the forking parent (here the pytest process, whose size would leak into the measurement).
PEAK = """
import sys
from deepfeat.nets import extract_features
extract_features(model=sys.argv[1], mel=sys.argv[2], deep=sys.argv[3],
                 settings={"deep": {"store": ["conv1", "pool1", "conv2", "pool2", "conv3"], "batch_size": 32,
                                    "device": "cpu"}})
print(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:")))
"""


def _peak_rss_mb(d, n):
    """Peak RSS (MB) of a fresh process extracting n clips (Regular, 64 x 64, all five layers, batch 32)."""
    mel, model = d / f"mel{n}.h5", d / f"model{n}.pt"
    write_fake_mel(mel, n=n, n_mels=64, n_frames=64)
    with h5py.File(mel, "r") as f:
        stats = {k: float(f.attrs[k]) for k in ("train_mean", "train_std")}
    torch.manual_seed(0)
    m = build_model("Regular", 64, 64, 3)
    save_model(
        model,
        {"arch": "Regular", "seed": 0, "task": "family", "input_shape": [1, 64, 64], "n_outputs": 3, **stats},
        cpu_state(m),
        cpu_state(m),
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        [sys.executable, "-c", PEAK, str(model), str(mel), str(d / f"deep{n}.h5")],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return int(r.stdout.split()[-1]) / 1024


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="peak RSS read from Linux /proc/self/status")
def test_peak_memory_does_not_grow_with_the_number_of_clips(tmp_path):
    small, large = _peak_rss_mb(tmp_path, 150), _peak_rss_mb(tmp_path, 2000)
    # Holding the outputs of 2,000 clips would take 2000 x 7,450 floats x 4 B x 2 weight sets = 119 MB (plus
    # 33 MB of spectrograms); streaming keeps the difference to allocator noise (~10 MB measured).
    with h5py.File(tmp_path / "deep2000.h5", "r") as f:
        held = sum(f[w][a].size * 4 for w in ("trained", "untrained") for a in f[w]) / 2**20
    assert held > 100
    assert large - small < 40, (small, large)
