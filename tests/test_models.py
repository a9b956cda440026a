"""Architectures: the method's 18 parameter counts, conv3 shapes, regression heads, activation points, model files."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from deepfeat.formats.files import CorruptOutputError
from deepfeat.formats.models import save_model
from deepfeat.nets.deform import DeformConv2d, ReferenceDeformConv2d
from deepfeat.nets.models import ARCHS, CONV_ARCHS, LAYERS, build_model, cpu_state, layer_shapes, load_model, n_params

# docs/method.md: (n_classes, T) -> parameter count per architecture
COUNTS = {
    "nsynth": (
        8,
        128,
        {
            "Regular": 79_118,
            "Deformable": 160_138,
            "Dilated": 151_118,
            "1dF": 2_770_118,
            "1dT": 2_770_118,
            "FeedForward": 1_967_408,
        },
    ),
    "composer": (
        5,
        176,
        {
            "Regular": 107_555,
            "Deformable": 202_975,
            "Dilated": 215_555,
            "1dF": 3_806_555,
            "1dT": 4_152_155,
            "FeedForward": 2_704_325,
        },
    ),
    "beethoven": (
        10,
        176,
        {
            "Regular": 108_160,
            "Deformable": 203_580,
            "Dilated": 216_160,
            "1dF": 3_807_160,
            "1dT": 4_152_760,
            "FeedForward": 2_704_930,
        },
    ),
}
CONV3 = {  # docs/method.md: conv3 output for T=128 and T=176
    "Regular": ((30, 4, 4), (30, 4, 6)),
    "Deformable": ((30, 6, 6), (30, 6, 8)),
    "Dilated": ((30, 6, 6), (30, 6, 9)),
    "1dF": ((30, 6, 128), (30, 6, 176)),
    "1dT": ((30, 128, 6), (30, 128, 9)),
}
GRID = [(ds, arch) for ds in COUNTS for arch in ARCHS]


@pytest.mark.parametrize("deformable", ["torchvision", "reference"])
@pytest.mark.parametrize("ds,arch", GRID)
def test_parameter_counts_match_the_method(ds, arch, deformable):
    n_classes, T, counts = COUNTS[ds]
    m = build_model(arch, 128, T, n_classes, deformable)
    assert n_params(m) == counts[arch]


@pytest.mark.parametrize("ds,arch", GRID)
def test_regression_head_has_one_output(ds, arch):
    n_classes, T, counts = COUNTS[ds]
    m = build_model(arch, 128, T, 1).eval()
    assert m.out.out_features == 1
    assert n_params(m) == counts[arch] - 121 * (n_classes - 1)  # out layer: 120 weights + 1 bias per output
    with torch.no_grad():
        assert m(torch.zeros(2, 1, 128, T)).shape == (2, 1)


@pytest.mark.parametrize("arch", CONV_ARCHS)
@pytest.mark.parametrize("t_index,T", [(0, 128), (1, 176)])
def test_conv3_output_shapes(arch, t_index, T):
    m = build_model(arch, 128, T, 8).eval()
    if arch == "Deformable":  # both semantics give the method's shapes
        ref = build_model(arch, 128, T, 8, "reference").eval()
        with torch.no_grad():
            assert (
                tuple(ref.activations(torch.randn(2, 1, 128, T), ["conv3"])["conv3"].shape[1:]) == CONV3[arch][t_index]
            )
    with torch.no_grad():
        acts = m.activations(torch.randn(2, 1, 128, T), LAYERS)
    assert tuple(acts["conv3"].shape) == (2, *CONV3[arch][t_index])
    assert {k: tuple(v.shape[1:]) for k, v in acts.items()} == layer_shapes(arch, 128, T)
    assert all(v.dim() == 4 for v in acts.values())
    with torch.no_grad():
        assert m(torch.randn(3, 128, T)).shape == (3, 8)  # (B, n_mels, T) accepted too


@pytest.mark.parametrize("arch", CONV_ARCHS)
def test_layer_names_and_order(arch):
    m = build_model(arch, 128, 128, 8)
    names = [n for n, _ in m.named_children()]
    assert names == ["conv1", "bn1", "pool1", "conv2", "bn2", "pool2", "conv3", "bn3", "fc1", "out"]
    assert isinstance(m.pool1, nn.MaxPool2d) and isinstance(m.pool2, nn.MaxPool2d)
    assert m.fc1.out_features == 120 and all(isinstance(getattr(m, f"bn{i}"), nn.BatchNorm2d) for i in (1, 2, 3))
    assert isinstance(m.conv3, DeformConv2d) == (arch == "Deformable")  # the default: models.deformable torchvision
    if arch == "Deformable":
        assert m.conv3.bias is None and m.conv3.offset.kernel_size == (3, 3) and m.conv3.offset.stride == (2, 2)
        r = build_model(arch, 128, 128, 8, "reference")
        assert type(r.conv3) is ReferenceDeformConv2d and r.conv3.padding == 0 and r.conv3.offset.stride == (2, 2)
        assert [n for n, _ in r.named_children()] == names
    with pytest.raises(ValueError, match="models.deformable"):
        build_model(arch, 128, 128, 8, "mmcv")


def test_feedforward_layers():
    m = build_model("FeedForward", 128, 128, 8)
    assert [n for n, _ in m.named_children()] == ["fc1", "bn1", "out"]
    assert isinstance(m.bn1, nn.BatchNorm1d) and m.fc1.in_features == 128 * 128
    with pytest.raises(ValueError, match="no conv/pool"):
        m.activations(torch.zeros(2, 1, 128, 128), ["conv1"])


def _trained_like(m):
    """Non-trivial BatchNorm statistics, so raw and activated points differ visibly."""
    g = torch.Generator().manual_seed(5)
    for bn in (m.bn1, m.bn2, m.bn3):
        bn.running_mean.copy_(torch.randn(bn.num_features, generator=g))
        bn.running_var.copy_(torch.rand(bn.num_features, generator=g) + 0.5)
        bn.weight.data.copy_(torch.randn(bn.num_features, generator=g))
        bn.bias.data.copy_(torch.randn(bn.num_features, generator=g))
    return m.eval()


@pytest.mark.parametrize("arch", ["Regular", "Dilated", "1dT"])
def test_activation_points(arch):
    torch.manual_seed(0)
    m = _trained_like(build_model(arch, 64, 64, 3))
    x = torch.randn(4, 1, 64, 64)
    with torch.no_grad():
        raw = m.activations(x, LAYERS, "raw")
        act = m.activations(x, LAYERS, "activated")
        c1 = F.conv2d(x, m.conv1.weight, m.conv1.bias, m.conv1.stride, m.conv1.padding, m.conv1.dilation)
        a1 = F.relu(
            F.batch_norm(c1, m.bn1.running_mean, m.bn1.running_var, m.bn1.weight, m.bn1.bias, False, 0.0, m.bn1.eps)
        )
        p1 = F.max_pool2d(a1, m.pool1.kernel_size)
        c2 = F.conv2d(p1, m.conv2.weight, m.conv2.bias, m.conv2.stride, m.conv2.padding, m.conv2.dilation)
        a2 = F.relu(m.bn2(c2))
        torch.testing.assert_close(raw["conv1"], c1)
        torch.testing.assert_close(act["conv1"], a1)
        torch.testing.assert_close(raw["pool1"], p1)
        torch.testing.assert_close(act["pool1"], p1)  # pool layers are the pool outputs at both points
        torch.testing.assert_close(raw["conv2"], c2)
        torch.testing.assert_close(act["conv2"], a2)
        torch.testing.assert_close(raw["pool2"], F.max_pool2d(a2, m.pool2.kernel_size))
        torch.testing.assert_close(act["conv3"], F.relu(m.bn3(raw["conv3"])))
        assert (act["conv3"] >= 0).all() and (raw["conv3"] < 0).any()
        fc = m.fc1(act["conv3"].flatten(1))
        torch.testing.assert_close(raw["fc1"].flatten(1), fc)
        torch.testing.assert_close(act["fc1"].flatten(1), F.relu(fc))
        torch.testing.assert_close(m(x), m.out(F.relu(fc)))
        assert list(m.activations(x, ["pool1"])) == ["pool1"]


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown architecture"):
        build_model("ResNet", 128, 128, 8)
    with pytest.raises(ValueError, match="too small"):
        build_model("Regular", 32, 32, 8)
    with pytest.raises(ValueError, match="n_outputs"):
        build_model("Regular", 128, 128, 0)
    m = build_model("Regular", 64, 64, 3)
    with pytest.raises(ValueError, match="expected input"):
        m(torch.zeros(2, 1, 64, 65))
    with pytest.raises(ValueError, match="layers"):
        m.activations(torch.zeros(2, 1, 64, 64), ["conv4"])
    with pytest.raises(ValueError, match="activation point"):
        m.activations(torch.zeros(2, 1, 64, 64), ["conv1"], "relu")


@pytest.mark.parametrize("arch", ARCHS)
def test_initial_weights_are_a_function_of_the_seed(arch):
    states = []
    for seed in (1, 1, 2):
        torch.manual_seed(seed)
        states.append(cpu_state(build_model(arch, 64, 64, 3)))
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert any(not torch.equal(states[0][k], states[2][k]) for k in states[0] if states[0][k].is_floating_point())


def test_save_and_load_model(tmp_path):
    torch.manual_seed(3)
    m = build_model("Deformable", 64, 64, 4)
    init = cpu_state(m)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(1.0)
    meta = {
        "arch": "Deformable",
        "input_shape": [1, 64, 64],
        "n_outputs": 4,
        "seed": 3,
        "train_mean": -40.0,
        "train_std": 10.0,
    }
    save_model(tmp_path / "m.pt", meta, init, cpu_state(m))
    trained, meta2 = load_model(tmp_path / "m.pt", "trained")
    untrained, _ = load_model(tmp_path / "m.pt", "untrained")
    assert meta2 == meta and not trained.training and not untrained.training
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in trained.state_dict().items())
    assert all(torch.equal(v, init[k]) for k, v in untrained.state_dict().items())
    (tmp_path / "bad.pt").write_bytes(b"not a torch file")
    with pytest.raises(CorruptOutputError):
        load_model(tmp_path / "bad.pt")
    torch.save({"format": "other"}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a deepfeat model"):
        load_model(tmp_path / "other.pt")
    with pytest.raises(ValueError, match="which"):
        load_model(tmp_path / "m.pt", "final")
    with pytest.raises(ValueError, match="meta lacks 'n_outputs'"):
        save_model(tmp_path / "x.pt", {"arch": "Regular", "input_shape": [1, 64, 64]}, init, init)
    assert not (tmp_path / "x.pt").exists()


@pytest.mark.parametrize("recorded", [None, "torchvision", "reference"])
def test_load_model_rebuilds_the_recorded_deformable_semantics(tmp_path, recorded):
    """A model file records the conv3 semantics it was built with; a file without the record (written before it
    existed) means torchvision."""
    semantics = recorded or "torchvision"
    torch.manual_seed(3)
    m = build_model("Deformable", 64, 64, 4, semantics).eval()
    meta = {"arch": "Deformable", "input_shape": [1, 64, 64], "n_outputs": 4}
    if recorded:
        meta["deformable"] = recorded
    save_model(tmp_path / "m.pt", meta, cpu_state(m), cpu_state(m))
    got, _ = load_model(tmp_path / "m.pt")
    assert type(got.conv3) is {"torchvision": DeformConv2d, "reference": ReferenceDeformConv2d}[semantics]
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(got(x), m(x))


def test_the_agreed_names_are_importable_from_the_subpackages():
    import deepfeat.nets as nets
    from deepfeat.nets import activations, deform, extract, models

    for name in (
        "ARCHS",
        "CONV_ARCHS",
        "CONV_LAYERS",
        "LAYERS",
        "POINTS",
        "build_model",
        "load_model",
        "layer_shapes",
        "n_params",
    ):
        assert getattr(nets, name) is getattr(models, name), name
    for name in ("layer_activations", "standardise_input"):
        assert getattr(nets, name) is getattr(activations, name), name
    assert nets.extract_features is extract.extract_features
    for name in ("DeformConv2d", "deform_conv2d", "conv_out_size"):
        assert getattr(nets, name) is getattr(deform, name), name
