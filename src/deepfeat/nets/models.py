"""The method's six networks, built for any input width, and loading them back from their model files.

Input: one standardised dB mel-spectrogram, shape (B, 1, n_mels, T) (a (B, n_mels, T) batch is accepted too).
Every convolutional network is

    conv1 (1->10) -> bn1 -> ReLU -> pool1 (max) -> conv2 (10->20) -> bn2 -> ReLU -> pool2 (max)
    -> conv3 (20->30) -> bn3 -> ReLU -> flatten -> fc1 (120) -> ReLU -> out (n_outputs)

with the kernels of the method (docs/method.md; k = kernel, s = stride, p = padding, d = dilation; pools have
stride = size, floor mode):

============  =============  ==========  ========================  ==========  =================================
arch          conv1          pool1       conv2                     pool2       conv3
============  =============  ==========  ========================  ==========  =================================
Regular       k5             2           k5 s3 p3                  2           k5 s2
Deformable    k5             2           k5 s3 p3                  2           deformable k5 s2 (no bias),
                                                                               offsets: conv k3 s2 p1 20->50
Dilated       k5 d3          2           k5 s2 p3 d2               2           k5 s2 p1
1dF           k(5,1) d(3,1)  (2,1)       k(5,1) s(2,1) p(3,0) d(2,1) (2,1)     k(5,1) s(2,1) p(1,0)
1dT           k(1,5) d(1,3)  (1,2)       k(1,5) s(1,2) p(0,3) d(1,2) (1,2)     k(1,5) s(1,2) p(0,1)
============  =============  ==========  ========================  ==========  =================================

The deformable conv3 has two semantics (``models.deformable``, :mod:`deepfeat.nets.deform`): ``torchvision``
(:class:`~deepfeat.nets.deform.DeformConv2d` with padding 2, the value that gives the method's 30x6x6 (T=128)
and 30x6x8 (T=176) outputs, the same grid as its k3 s2 p1 offset convolution) and ``reference``
(:class:`~deepfeat.nets.deform.ReferenceDeformConv2d`, the layer of the method's appendix, zero padding 0; its
output grid is its offset convolution's, the same sizes). Both have the same parameters.

``FeedForward`` is flatten -> fc1 (n_mels*T -> 120) -> bn1 (BatchNorm1d) -> ReLU -> out. Parameter counts
(BatchNorm weight and bias included) reproduce the method's 18 numbers exactly with either semantics
(tests/test_models.py). Weights use PyTorch's default initialisation (except the deformable offset convolution,
zero-initialised: weights and bias for ``torchvision``, weights only for ``reference``), so initial weights are
a function of the torch seed set before :func:`build_model`.

Layer names for activations: ``conv1, pool1, conv2, pool2, conv3, fc1``. At ``point="raw"`` a conv layer is the
convolution output before BatchNorm/ReLU (what the reference notebooks hooked) and fc1 the linear output before
ReLU; at ``point="activated"`` they are taken after BatchNorm+ReLU (fc1: after ReLU). Pool layers are always the
pool outputs. Every activation is 4-D (B, C, H, W); fc1 is returned as (B, 120, 1, 1).

A trained network is kept in a model file (initial and final weights with the training description, see
:mod:`deepfeat.formats.models`, whose meta records ``deformable``, the conv3 semantics it was built with; a
file without the record was built with ``torchvision``); :func:`load_model` rebuilds either set of weights.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from deepfeat import config
from deepfeat.formats.models import read_model
from deepfeat.nets.deform import DeformConv2d, ReferenceDeformConv2d, conv_out_size

ARCHS = ("Regular", "Deformable", "Dilated", "1dF", "1dT", "FeedForward")
CONV_ARCHS = ARCHS[:-1]
CONV_LAYERS = ("conv1", "pool1", "conv2", "pool2", "conv3")
LAYERS = CONV_LAYERS + ("fc1",)
POINTS = ("raw", "activated")
CHANNELS = (1, 10, 20, 30)
HIDDEN = 120
DEFORMABLE = ("torchvision", "reference")  # the enum of models.deformable
LEGACY_DEFORMABLE = "torchvision"  # the semantics of a model file that does not record it


@dataclass(frozen=True)
class Conv:
    """One convolution: (rows, columns) kernel, stride, padding, dilation."""

    k: tuple[int, int]
    s: tuple[int, int] = (1, 1)
    p: tuple[int, int] = (0, 0)
    d: tuple[int, int] = (1, 1)
    deformable: bool = False

    def out(self, h: int, w: int) -> tuple[int, int]:
        return tuple(conv_out_size(n, self.k[a], self.s[a], self.p[a], self.d[a]) for a, n in enumerate((h, w)))

    def transposed(self) -> Conv:
        """The same convolution with rows and columns swapped."""
        return Conv(self.k[::-1], self.s[::-1], self.p[::-1], self.d[::-1], self.deformable)


def _sq(v: int) -> tuple[int, int]:
    return (v, v)


def _transposed(spec: tuple) -> tuple:
    """An architecture with rows (frequency) and columns (time) swapped in every layer."""
    return tuple(op.transposed() if isinstance(op, Conv) else op[::-1] for op in spec)


# 1dF convolves along frequency (rows) only; 1dT is the same network along time (columns)
_1DF = (Conv((5, 1), d=(3, 1)), (2, 1), Conv((5, 1), (2, 1), (3, 0), (2, 1)), (2, 1), Conv((5, 1), (2, 1), (1, 0)))


# (conv1, pool1, conv2, pool2, conv3) per architecture
SPECS: dict[str, tuple[Conv, tuple[int, int], Conv, tuple[int, int], Conv]] = {
    "Regular": (Conv(_sq(5)), _sq(2), Conv(_sq(5), _sq(3), _sq(3)), _sq(2), Conv(_sq(5), _sq(2))),
    "Deformable": (
        Conv(_sq(5)),
        _sq(2),
        Conv(_sq(5), _sq(3), _sq(3)),
        _sq(2),
        Conv(_sq(5), _sq(2), _sq(2), deformable=True),
    ),
    "Dilated": (
        Conv(_sq(5), d=_sq(3)),
        _sq(2),
        Conv(_sq(5), _sq(2), _sq(3), _sq(2)),
        _sq(2),
        Conv(_sq(5), _sq(2), _sq(1)),
    ),
    "1dF": _1DF,
    "1dT": _transposed(_1DF),
}


def check_arch(arch: str) -> str:
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture '{arch}'; expected one of {list(ARCHS)}")
    return arch


def layer_shapes(arch: str, n_mels: int, n_frames: int) -> dict[str, tuple[int, int, int]]:
    """Per-clip (C, H, W) of conv1, pool1, conv2, pool2, conv3 and fc1 for a conv architecture (no forward pass).

    Raises ValueError when the input is too small for the architecture (some map would be empty).
    """
    check_arch(arch)
    if arch == "FeedForward":
        return {"fc1": (HIDDEN, 1, 1)}
    c1, p1, c2, p2, c3 = SPECS[arch]
    shapes = {}
    h, w = n_mels, n_frames
    for name, op, ch in (("conv1", c1, 10), ("pool1", p1, 10), ("conv2", c2, 20), ("pool2", p2, 20), ("conv3", c3, 30)):
        h, w = op.out(h, w) if isinstance(op, Conv) else (h // op[0], w // op[1])
        if h < 1 or w < 1:
            raise ValueError(f"{arch}: input 1x{n_mels}x{n_frames} is too small ({name} output would be {ch}x{h}x{w})")
        shapes[name] = (ch, h, w)
    shapes["fc1"] = (HIDDEN, 1, 1)
    return shapes


def _as_input(x: torch.Tensor, input_shape: tuple[int, int, int]) -> torch.Tensor:
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if x.dim() != 4 or tuple(x.shape[1:]) != tuple(input_shape):
        raise ValueError(f"expected input (B, {', '.join(map(str, input_shape))}), got {tuple(x.shape)}")
    return x


class ConvNet(nn.Module):
    """Regular / Deformable / Dilated / 1dF / 1dT network (see the module docstring for every layer)."""

    def __init__(self, arch: str, n_mels: int, n_frames: int, n_outputs: int, deformable: str = "torchvision"):
        super().__init__()
        if check_arch(arch) == "FeedForward":
            raise ValueError("ConvNet: FeedForward is built by FeedForward, not ConvNet")
        if deformable not in DEFORMABLE:
            raise ValueError(f"models.deformable: {deformable!r} is not one of {list(DEFORMABLE)}")
        self.arch, self.n_outputs, self.deformable = arch, int(n_outputs), deformable
        self.input_shape = (1, int(n_mels), int(n_frames))
        self.shapes = layer_shapes(arch, n_mels, n_frames)
        c1, p1, c2, p2, c3 = SPECS[arch]
        self.conv1 = nn.Conv2d(1, 10, c1.k, c1.s, c1.p, c1.d)
        self.bn1 = nn.BatchNorm2d(10)
        self.pool1 = nn.MaxPool2d(p1)
        self.conv2 = nn.Conv2d(10, 20, c2.k, c2.s, c2.p, c2.d)
        self.bn2 = nn.BatchNorm2d(20)
        self.pool2 = nn.MaxPool2d(p2)
        if c3.deformable and deformable == "reference":
            self.conv3 = ReferenceDeformConv2d(20, 30, c3.k[0], stride=c3.s[0], padding=0)
            if self.conv3.output_size(*self.shapes["pool2"][1:]) != self.shapes["conv3"][1:]:
                raise ValueError(f"{arch} (reference): conv3 grid differs from {self.shapes['conv3']}")
        elif c3.deformable:
            self.conv3 = DeformConv2d(
                20, 30, c3.k, c3.s, c3.p, c3.d, offset_kernel=3, offset_stride=2, offset_padding=1
            )
            self.conv3.output_size(*self.shapes["pool2"][1:])  # offsets and samples on the same grid
        else:
            self.conv3 = nn.Conv2d(20, 30, c3.k, c3.s, c3.p, c3.d)
        self.bn3 = nn.BatchNorm2d(30)
        c, h, w = self.shapes["conv3"]
        self.fc1 = nn.Linear(c * h * w, HIDDEN)
        self.out = nn.Linear(HIDDEN, self.n_outputs)

    def activations(self, x: torch.Tensor, layers, point: str = "raw") -> dict[str, torch.Tensor]:
        """Activations {layer: (B, C, H, W)} of the requested layers (see module docstring for ``point``).

        Runs the network only as far as the last requested layer. Gradients follow the caller's grad mode.
        """
        x = _as_input(x, self.input_shape)
        want = _check_layers(layers, point)
        acts: dict[str, torch.Tensor] = {}
        h = x
        for i, (conv, bn, pool) in enumerate(
            ((self.conv1, self.bn1, self.pool1), (self.conv2, self.bn2, self.pool2), (self.conv3, self.bn3, None)), 1
        ):
            z = conv(h)
            a = F.relu(bn(z), inplace=True)  # in place on the BatchNorm output: one map fewer in memory
            if f"conv{i}" in want:
                acts[f"conv{i}"] = z if point == "raw" else a
            if len(acts) == len(want):
                return acts
            if pool is not None:
                h = pool(a)
                if f"pool{i}" in want:
                    acts[f"pool{i}"] = h
                if len(acts) == len(want):
                    return acts
            else:
                h = a
        z = self.fc1(h.flatten(1))
        acts["fc1"] = (z if point == "raw" else F.relu(z)).view(z.shape[0], HIDDEN, 1, 1)
        return acts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _as_input(x, self.input_shape)
        h = self.pool1(F.relu(self.bn1(self.conv1(x))))
        h = self.pool2(F.relu(self.bn2(self.conv2(h))))
        h = F.relu(self.bn3(self.conv3(h)))
        return self.out(F.relu(self.fc1(h.flatten(1))))


class FeedForward(nn.Module):
    """flatten -> fc1 (n_mels*T -> 120) -> bn1 (BatchNorm1d) -> ReLU -> out (n_outputs)."""

    def __init__(self, n_mels: int, n_frames: int, n_outputs: int):
        super().__init__()
        self.arch, self.n_outputs = "FeedForward", int(n_outputs)
        self.input_shape = (1, int(n_mels), int(n_frames))
        self.shapes = {"fc1": (HIDDEN, 1, 1)}
        self.fc1 = nn.Linear(n_mels * n_frames, HIDDEN)
        self.bn1 = nn.BatchNorm1d(HIDDEN)
        self.out = nn.Linear(HIDDEN, self.n_outputs)

    def activations(self, x: torch.Tensor, layers, point: str = "raw") -> dict[str, torch.Tensor]:
        """Only ``fc1`` exists: raw = the linear output, activated = after BatchNorm1d + ReLU; (B, 120, 1, 1)."""
        want = _check_layers(layers, point)
        if want != ["fc1"]:
            raise ValueError(f"FeedForward has no conv/pool layers; only 'fc1' is available, asked for {want}")
        z = self.fc1(_as_input(x, self.input_shape).flatten(1))
        z = z if point == "raw" else F.relu(self.bn1(z))
        return {"fc1": z.view(z.shape[0], HIDDEN, 1, 1)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(_as_input(x, self.input_shape).flatten(1))
        return self.out(F.relu(self.bn1(h)))


def _check_layers(layers, point: str) -> list[str]:
    if point not in POINTS:
        raise ValueError(f"activation point '{point}' unknown; expected one of {list(POINTS)}")
    layers = [layers] if isinstance(layers, str) else list(layers)
    bad = [a for a in layers if a not in LAYERS]
    if bad or not layers or len(set(layers)) != len(layers):
        raise ValueError(f"layers {layers}: expected a non-empty list of distinct names from {list(LAYERS)}")
    return layers


def build_model(arch: str, n_mels: int, n_frames: int, n_outputs: int, deformable: str | None = None) -> nn.Module:
    """The network ``arch`` for inputs (1, n_mels, n_frames) and ``n_outputs`` logits (1 for regression).

    ``deformable``: the semantics of the Deformable network's conv3, ``torchvision`` or ``reference`` (None: the
    schema's default of ``models.deformable``); the other architectures ignore it. Call
    ``torch.manual_seed(seed)`` first to make the initial weights a function of the seed.
    """
    if int(n_outputs) < 1:
        raise ValueError(f"n_outputs must be >= 1, got {n_outputs}")
    deformable = config.default("models", "deformable") if deformable is None else deformable
    if check_arch(arch) == "FeedForward":
        return FeedForward(n_mels, n_frames, n_outputs)
    return ConvNet(arch, n_mels, n_frames, n_outputs, deformable)


def n_params(model: nn.Module) -> int:
    """Number of trainable parameters (BatchNorm weight and bias included, running statistics not)."""
    return sum(p.numel() for p in model.parameters())


def cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of the model's state_dict (safe to keep while training continues)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def load_model(path: str | os.PathLike, which: str = "trained", device=None) -> tuple[nn.Module, dict]:
    """(model in eval mode on ``device`` (default CPU), meta) from a model file (:mod:`deepfeat.formats.models`);
    ``which`` = trained|untrained. The Deformable conv3 gets the semantics the file records (``meta["deformable"]``;
    ``torchvision`` when absent, as in files written before the record existed)."""
    state, meta = read_model(path, which)
    _, n_mels, n_frames = meta["input_shape"]
    deformable = meta.get("deformable", LEGACY_DEFORMABLE)
    model = build_model(meta["arch"], n_mels, n_frames, meta["n_outputs"], deformable)
    model.load_state_dict(state)
    model.to(torch.device("cpu") if device is None else device).eval()
    return model, meta
