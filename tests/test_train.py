"""Training: outputs and their format, metrics against a direct evaluation, seed determinism, exact resume."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from conftest import write_fake_mel

import deepfeat.nets.train as T
from deepfeat.config import ConfigError
from deepfeat.formats.cliptable import task_targets
from deepfeat.formats.files import open_h5
from deepfeat.formats.tables import HISTORY_COLUMNS
from deepfeat.nets import standardise_input, train_model
from deepfeat.nets.models import build_model, load_model
from deepfeat.runtime import get_logger

FAST = {"epochs": 2, "batch_size": 8, "lr": 0.005, "momentum": 0.9, "device": "cpu"}
META_KEYS = {
    "arch",
    "seed",
    "task",
    "task_type",
    "n_outputs",
    "input_shape",
    "train_mean",
    "train_std",
    "classes",
    "target_mean",
    "target_std",
    "epochs",
    "lr",
    "momentum",
    "batch_size",
    "n_params",
    "device",
    "seconds",
    "deformable",
}


@pytest.fixture(scope="module")
def mel(tmp_path_factory):
    path = tmp_path_factory.mktemp("mel") / "mel.h5"
    write_fake_mel(path, n=40, n_mels=64, n_frames=64)
    return path


def _run(mel, tmp_path, name="m", task="family", arch="Regular", seed=1, ckpt=True, **kw):
    out = tmp_path / f"{name}.pt"
    hist = T.train_model(
        mel=mel,
        model=out,
        history=tmp_path / f"{name}.history.csv",
        settings={"models": {**FAST, **kw}},
        task=task,
        arch=arch,
        seed=seed,
        checkpoint=tmp_path / f"{name}.ckpt" if ckpt else None,
        log=get_logger(tmp_path / f"{name}.log"),
    )
    return out, hist


def _direct(mel, model, meta, task):
    """Loss and metric of the test split computed here from the file, independently of the training loop."""
    with open_h5(mel, "mel") as f:
        x = torch.from_numpy(f["mel"][:]).unsqueeze(1)
        split = f["meta/split"][:]
        y, info = task_targets(f, task)
    x = (x[split == 1] - f_attr(mel, "train_mean")) / f_attr(mel, "train_std")
    with torch.no_grad():
        out = model(x)
    if info["type"] == "classification":
        yt = torch.from_numpy(y[split == 1])
        return F.cross_entropy(out, yt).item(), (out.argmax(1) == yt).double().mean().item()
    ytr = y[split == 0]
    m, s = ytr.mean(), ytr.std()
    pred = out[:, 0].double().numpy() * s + m
    z = torch.from_numpy((y[split == 1] - m) / s).float()
    return F.mse_loss(out[:, 0], z).item(), math.sqrt(np.mean((pred - y[split == 1]) ** 2))


def f_attr(mel, key):
    with open_h5(mel, "mel") as f:
        return float(f.attrs[key])


def test_classification_outputs_and_metrics(mel, tmp_path):
    out, hist = _run(mel, tmp_path, epochs=3)
    obj = torch.load(out, weights_only=True)
    assert obj["format"] == "deepfeat-model-1" and set(obj) == {"format", "meta", "init_state", "final_state"}
    meta = obj["meta"]
    assert META_KEYS <= set(meta)
    assert meta["input_shape"] == [1, 64, 64] and meta["n_outputs"] == 3
    assert meta["classes"] == ["class0", "class1", "class2"]
    assert meta["task_type"] == "classification" and meta["epochs"] == 3 and meta["device"] == "cpu"
    csv = pd.read_csv(tmp_path / "m.history.csv")
    assert list(csv.columns) == HISTORY_COLUMNS and csv["epoch"].tolist() == [1, 2, 3]
    assert (csv["metric"] == "accuracy").all() and csv["train_metric"].between(0, 1).all()
    assert (csv["clips_per_s"] > 0).all()
    pd.testing.assert_frame_equal(csv, hist, check_dtype=False)
    assert not (tmp_path / "m.ckpt").exists()  # removed once the model file is written
    log = (tmp_path / "m.log").read_text()
    assert "epoch 3/3" in log and "clips/s" in log

    trained, meta2 = load_model(out, "trained")
    untrained, _ = load_model(out, "untrained")
    assert meta2["n_params"] == sum(p.numel() for p in trained.parameters())
    loss, acc = _direct(mel, trained, meta2, "family")
    assert csv["test_loss"].iloc[-1] == pytest.approx(loss, rel=1e-5)
    assert csv["test_metric"].iloc[-1] == pytest.approx(acc, abs=1e-12)
    # the untrained weights are the seed's initial weights
    torch.manual_seed(1)
    fresh = build_model("Regular", 64, 64, 3)
    assert all(torch.equal(v, fresh.state_dict()[k]) for k, v in untrained.state_dict().items())
    assert any(not torch.equal(v, untrained.state_dict()[k]) for k, v in trained.state_dict().items())


def test_learns_the_separable_fake_classes(mel, tmp_path):
    _, hist = _run(mel, tmp_path, epochs=6, batch_size=8)
    assert hist["train_loss"].iloc[-1] < hist["train_loss"].iloc[0]
    assert hist["test_metric"].iloc[-1] > 0.6  # 3 balanced classes: chance is 1/3


def test_regression_uses_zscored_mse_and_reports_rmse(mel, tmp_path):
    out, hist = _run(mel, tmp_path, name="r", task="pitch", arch="Dilated")
    model, meta = load_model(out)
    with open_h5(mel, "mel") as f:
        y = f["labels/pitch"][:][f["meta/split"][:] == 0]
    assert meta["task_type"] == "regression" and meta["n_outputs"] == 1 and meta["classes"] is None
    assert meta["target_mean"] == pytest.approx(y.mean()) and meta["target_std"] == pytest.approx(y.std())
    loss, rmse = _direct(mel, model, meta, "pitch")
    assert (hist["metric"] == "rmse").all()
    assert hist["test_loss"].iloc[-1] == pytest.approx(loss, rel=1e-5)
    assert hist["test_metric"].iloc[-1] == pytest.approx(rmse, rel=1e-5)
    # RMSE in target units = target_std * sqrt(MSE in z units)
    assert hist["test_metric"].iloc[-1] == pytest.approx(meta["target_std"] * math.sqrt(loss), rel=1e-5)


def test_same_seed_same_weights_other_seed_other_weights(mel, tmp_path):
    a, ha = _run(mel, tmp_path, name="a", arch="Deformable", seed=7)
    b, hb = _run(mel, tmp_path, name="b", arch="Deformable", seed=7)
    c, _ = _run(mel, tmp_path, name="c", arch="Deformable", seed=8)
    sa, sb, sc = (torch.load(p, weights_only=True)["final_state"] for p in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa if sa[k].is_floating_point())
    pd.testing.assert_frame_equal(ha.drop(columns="clips_per_s"), hb.drop(columns="clips_per_s"))
    assert not torch.are_deterministic_algorithms_enabled()  # the global flag is restored afterwards


@pytest.mark.parametrize("arch,every", [("Regular", 1), ("FeedForward", 2)])
def test_resume_after_a_crash_gives_the_same_weights(mel, tmp_path, monkeypatch, arch, every):
    straight, h_straight = _run(mel, tmp_path, name="straight", arch=arch, epochs=4, ckpt=False)

    real = T.train_epoch
    calls = {"n": 0}

    def crash_in_epoch_3(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("simulated crash")
        return real(*a, **k)

    monkeypatch.setattr(T, "train_epoch", crash_in_epoch_3)
    with pytest.raises(RuntimeError, match="simulated crash"):
        _run(mel, tmp_path, name="resumed", arch=arch, epochs=4, checkpoint_every=every)
    ck = torch.load(tmp_path / "resumed.ckpt", weights_only=True)
    assert ck["epoch"] == 2 and len(ck["history"]) == 2
    assert not (tmp_path / "resumed.pt").exists()
    (tmp_path / ".resumed.ckpt.k1ll3d.ckpt").write_bytes(b"half a checkpoint")  # what a SIGKILL mid-save leaves
    monkeypatch.setattr(T, "train_epoch", real)

    resumed, h_resumed = _run(mel, tmp_path, name="resumed", arch=arch, epochs=4, checkpoint_every=every)
    assert "resumed from checkpoint" in (tmp_path / "resumed.log").read_text()
    assert not (tmp_path / "resumed.ckpt").exists() and not (tmp_path / ".resumed.ckpt.k1ll3d.ckpt").exists()
    s1, s2 = (torch.load(p, weights_only=True) for p in (straight, resumed))
    for key in ("init_state", "final_state"):
        assert all(torch.equal(s1[key][k], s2[key][k]) for k in s1[key]), key
    pd.testing.assert_frame_equal(h_straight.drop(columns="clips_per_s"), h_resumed.drop(columns="clips_per_s"))


def test_checkpoint_of_another_configuration_is_ignored(mel, tmp_path, monkeypatch):
    real = T.train_epoch
    calls = {"n": 0}

    def crash(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("crash")
        return real(*a, **k)

    monkeypatch.setattr(T, "train_epoch", crash)
    with pytest.raises(RuntimeError):
        _run(mel, tmp_path, name="x", lr=0.01)
    assert (tmp_path / "x.ckpt").exists()
    monkeypatch.setattr(T, "train_epoch", real)
    out, _ = _run(mel, tmp_path, name="x")  # lr 0.005 now: the old checkpoint must not be used
    assert "another configuration" in (tmp_path / "x.log").read_text()
    ref, _ = _run(mel, tmp_path, name="ref", ckpt=False)
    s1, s2 = (torch.load(p, weights_only=True)["final_state"] for p in (out, ref))
    assert all(torch.equal(s1[k], s2[k]) for k in s1)


def test_batches_cover_every_clip_once():
    g = torch.Generator().manual_seed(0)
    for n, bs in ((40, 8), (41, 8), (7, 64), (17, 4)):
        b = T.batch_indices(n, bs, g, "cpu")
        assert torch.equal(torch.sort(torch.cat(b)).values, torch.arange(n))
        assert min(len(x) for x in b) > 1 and max(len(x) for x in b) <= bs + 1


def test_bad_inputs(mel, tmp_path):
    with pytest.raises(ValueError, match="no task 'genre'.*available"):
        _run(mel, tmp_path, task="genre")
    with pytest.raises(ValueError, match="unknown architecture"):
        _run(mel, tmp_path, arch="VGG")
    with pytest.raises(ValueError, match="epochs"):
        _run(mel, tmp_path, epochs=0)


@pytest.mark.parametrize("deformable", ["torchvision", "reference"])
def test_the_deformable_semantics_is_recorded_and_rebuilt(mel, tmp_path, deformable):
    """models.deformable picks the conv3 of the Deformable network; the model file records it, so load_model
    rebuilds the same layer (the test split's loss is reproduced) and the untrained weights are the seed's."""
    from deepfeat.nets.deform import DeformConv2d, ReferenceDeformConv2d

    out, hist = _run(mel, tmp_path, arch="Deformable", epochs=1, deformable=deformable)
    trained, meta = load_model(out, "trained")
    untrained, _ = load_model(out, "untrained")
    assert meta["deformable"] == deformable
    layer = {"torchvision": DeformConv2d, "reference": ReferenceDeformConv2d}[deformable]
    assert type(trained.conv3) is layer and type(untrained.conv3) is layer
    loss, _ = _direct(mel, trained, meta, "family")
    assert hist["test_loss"].iloc[-1] == pytest.approx(loss, rel=1e-5)
    torch.manual_seed(1)
    fresh = build_model("Deformable", 64, 64, 3, deformable)
    assert all(torch.equal(v, fresh.state_dict()[k]) for k, v in untrained.state_dict().items())
    assert "deformable conv3" in (tmp_path / "m.log").read_text()


def test_unknown_settings_are_rejected_and_defaults_come_from_the_schema(mel, tmp_path):
    with pytest.raises(ConfigError, match="models.epoch: unknown key"):
        _run(mel, tmp_path, epoch=3)  # a misspelt key was silently ignored before
    with pytest.raises(ConfigError, match="models.lr"):
        _run(mel, tmp_path, lr=-1.0)
    assert train_model is T.train_model and train_model.job.reads == {
        "models": ("epochs", "batch_size", "lr", "momentum", "deformable")
    }
    assert train_model.job.tunes == {"models": ("device", "checkpoint_every", "memory_mb")}


@pytest.mark.parametrize("arch", ["Regular", "FeedForward"])
def test_inputs_beyond_the_memory_budget_are_streamed_with_the_same_training(mel, tmp_path, arch):
    """models.memory_mb bounds the inputs held: beyond it every batch is read from mel.h5, with the same values,
    so the same weights and history (the budget is a tune, never a result)."""
    a, ha = _run(mel, tmp_path, name="resident", arch=arch, seed=3)
    b, hb = _run(mel, tmp_path, name="streamed", arch=arch, seed=3, memory_mb=0.1)  # 40 x 64 x 64 x 4 B = 0.66 MB
    assert "read from mel.h5 batch by batch" in (tmp_path / "streamed.log").read_text()
    assert "batch by batch" not in (tmp_path / "resident.log").read_text()
    sa, sb = (torch.load(p, weights_only=True)["final_state"] for p in (a, b))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    pd.testing.assert_frame_equal(ha.drop(columns="clips_per_s"), hb.drop(columns="clips_per_s"))


def test_streamed_inputs_select_rows_in_the_batch_order(mel):
    with open_h5(mel, "mel") as f:
        xs, _ = T.load_inputs(f, torch.device("cpu"))
        ss, _ = T.load_inputs(f, torch.device("cpu"), memory_mb=0.1)
        idx = torch.tensor([5, 0, 17, 3])
        assert isinstance(ss["train"], T.StreamedInputs) and len(ss["train"]) == len(xs["train"])
        assert torch.equal(ss["train"].index_select(0, idx), xs["train"].index_select(0, idx))
        assert torch.equal(ss["test"][2:7], xs["test"][2:7])


def test_inputs_are_standardised_by_the_one_input_standardisation(mel):
    with open_h5(mel, "mel") as f:
        xs, norm = T.load_inputs(f, torch.device("cpu"))
        x, split = f["mel"][:], f["meta/split"][:]
        stats = {k: float(f.attrs[k]) for k in ("train_mean", "train_std")}
    assert norm == {**stats, "input_shape": [1, 64, 64]}
    assert torch.equal(xs["train"], standardise_input(x[split == 0], stats))
    assert torch.equal(xs["test"], standardise_input(x[split == 1], stats))
