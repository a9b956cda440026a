"""Deep features computed where they are used: the layers of a model's trained and untrained networks on any rows
of a mel.h5, batch by batch, never stored.

The networks are small (0.08-4 M parameters) and their activations are large (up to ~150,000 values per clip), so a
forward pass costs less than writing activations and reading them back. Every consumer of deep features (probes,
similarity) asks a :class:`ModelFeatures` for the rows it needs, in blocks whose size it bounds by its memory budget;
:class:`deepfeat.formats.deep.StoredFeatures` answers the same questions from an exported deep-feature file.

Definitions (the same as the export, :func:`deepfeat.nets.extract.extract_features`): the input is
``(mel - train_mean) / train_std`` with the model's training statistics; networks in eval mode, no gradients;
``point`` raw (conv output before BatchNorm/ReLU) or activated; layers in ``average_channels`` are the mean over
channels, the others flattened over (C, H, W). A row's values do not depend on which other rows share its batch
(the forward pass is per clip), so any subset of rows gives exactly the values of the full pass.

Memory: one batch of ``batch_size`` clips (the mel rows and one network's intermediates up to the last requested
layer, ~2 MB per clip for Regular at T = 128) plus the requested output rows.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from deepfeat.formats.deep import STATES
from deepfeat.formats.files import OpenFile, read_rows
from deepfeat.formats.mel import open_mel, standardisation
from deepfeat.nets.activations import layer_activations, standardise_input
from deepfeat.nets.models import load_model
from deepfeat.runtime import pick_device


def check_mel(f, mel_path, model_path, meta: dict) -> None:
    """The spectrograms of the open mel.h5 ``f`` have the model's input size and its training statistics."""
    mel = f["mel"]
    if list(mel.shape[1:]) != list(meta["input_shape"][1:]):
        raise ValueError(
            f"{mel_path}: spectrograms are {mel.shape[1]}x{mel.shape[2]} but {model_path} was trained on "
            f"{meta['input_shape'][1]}x{meta['input_shape'][2]}"
        )
    for key, value in zip(("train_mean", "train_std"), standardisation(f)):
        if not math.isclose(value, float(meta[key]), rel_tol=1e-6, abs_tol=1e-9):
            raise ValueError(
                f"{mel_path}: {key}={value} differs from the model's {meta[key]} "
                f"({model_path} was trained on another mel.h5); retrain or use the matching mel.h5"
            )


def mel_rows(ds, idx: np.ndarray) -> np.ndarray:
    """The spectrograms of the sorted, distinct clip indices ``idx`` (each run of consecutive clips read as one
    slice)."""
    return read_rows(ds, idx)


class ModelFeatures(OpenFile):
    """The deep features of one model file on the clips of one mel.h5, computed on demand.

    ``layers``, ``point``, ``average_channels``: the ``deep`` settings; ``device`` (a torch device or its config
    name) runs the networks; ``batch_size`` clips go through a network at once. Use as a context manager (it keeps
    mel.h5 open). Attributes: ``arch``, ``seed``, ``task``, ``layers``, ``point``, ``states`` (trained,
    untrained), ``shapes`` ({layer: per-clip shape}), ``widths`` ({layer: d}), ``n_clips``, ``label``.
    """

    def __init__(self, model, mel, layers, point: str, average_channels, device="auto", batch_size: int = 256):
        self.device = pick_device(device)
        self.nets = {s: load_model(model, s, self.device) for s in STATES}
        self.meta = self.nets["trained"][1]
        self.arch, self.seed, self.task = self.meta["arch"], int(self.meta["seed"]), self.meta["task"]
        self.layers, self.point = tuple(layers), point
        self.avg = set(average_channels)
        self.states = STATES
        self.batch_size = int(batch_size)
        self.label = str(model)
        if self.arch == "FeedForward" and any(a != "fc1" for a in self.layers):
            raise ValueError(f"{model}: FeedForward has no conv/pool layers (asked for {list(self.layers)})")
        self._f = open_mel(mel)
        try:
            check_mel(self._f, mel, model, self.meta)
        except Exception:
            self._f.close()
            raise
        self.n_clips = int(self._f["mel"].shape[0])
        zero = torch.zeros((1, *self.meta["input_shape"]), device=self.device)
        probe = layer_activations(self.nets["trained"][0], zero, list(self.layers), point)
        self.shapes = {a: list(probe[a].shape[2:] if a in self.avg else probe[a].shape[1:]) for a in self.layers}
        self.widths = {a: int(np.prod(s)) for a, s in self.shapes.items()}

    def batches(self, state: str, idx: np.ndarray, layers=None):
        """Yield (positions in ``idx``, {layer: float32 tensor (b, d) on the device}) batch by batch for the sorted,
        distinct clip indices ``idx``."""
        layers = list(self.layers if layers is None else layers)
        net = self.nets[state][0]
        idx = np.asarray(idx, dtype=np.int64)
        for b0 in range(0, len(idx), self.batch_size):
            sel = idx[b0 : b0 + self.batch_size]
            x = standardise_input(mel_rows(self._f["mel"], sel), self.meta, self.device)
            acts = layer_activations(net, x, layers, self.point)
            out = {}
            for a in layers:
                v = acts.pop(a)
                v = v.mean(1) if a in self.avg else v
                out[a] = v.reshape(len(sel), -1).to(torch.float32)
            yield slice(b0, b0 + len(sel)), out

    def rows(self, state: str, idx: np.ndarray, layers=None) -> dict[str, np.ndarray]:
        """{layer: float32 array (len(idx), d)} of the sorted, distinct clip indices ``idx``."""
        layers = list(self.layers if layers is None else layers)
        out = {a: np.empty((len(idx), self.widths[a]), np.float32) for a in layers}
        for pos, acts in self.batches(state, idx, layers):
            for a in layers:
                out[a][pos] = acts[a].cpu().numpy()
        return out


__all__ = ["ModelFeatures", "check_mel", "mel_rows"]
