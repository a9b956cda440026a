"""Activations of a deepfeat network and the one standardisation of its input.

:func:`layer_activations` returns the full per-channel maps {layer: (B, C, H, W)} of a batch (feature extraction
and the channel similarity code use it); :func:`standardise_input` is ``(mel - train_mean) / train_std`` with the
training split's scalar statistics, the input of every network, in training and in extraction alike.

Definitions: networks in eval mode (BatchNorm uses its running statistics), no gradients. ``point="raw"`` takes
conv layers at the convolution output before BatchNorm/ReLU (as the reference notebooks hooked them),
``"activated"`` after BatchNorm+ReLU; pool layers are always the pool outputs; fc1 is the linear output (raw) or
after ReLU (activated), shaped (B, 120, 1, 1) (see :mod:`deepfeat.nets.models`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def layer_activations(model: nn.Module, x: torch.Tensor, layers, point: str = "raw") -> dict[str, torch.Tensor]:
    """{layer: activations (B, C, H, W)} of a deepfeat network for a standardised input batch ``x``.

    ``x``: (B, 1, n_mels, T) or (B, n_mels, T), already standardised (see :func:`standardise_input`) and on the
    model's device. Full per-channel maps, nothing averaged. Runs under ``torch.no_grad()``; the caller puts
    the model in eval mode (:func:`deepfeat.nets.models.load_model` returns it so).
    """
    if not hasattr(model, "activations"):
        raise TypeError(f"layer_activations: {type(model).__name__} is not a deepfeat network (build_model/load_model)")
    with torch.no_grad():
        return model.activations(x, layers, point)


def standardise_input(mel: np.ndarray | torch.Tensor, meta: dict, device=None) -> torch.Tensor:
    """(mel - train_mean) / train_std as float32 (B, 1, n_mels, T) on ``device``, with the model's statistics.

    ``meta`` holds ``train_mean`` and ``train_std`` (a model file's meta, or the root attributes of mel.h5): the
    scalar mean and population standard deviation of every dB value of the training split."""
    t = torch.as_tensor(mel, dtype=torch.float32).to(device or "cpu")
    if t.dim() == 3:
        t = t.unsqueeze(1)
    return (t - float(meta["train_mean"])) / float(meta["train_std"])


__all__ = ["layer_activations", "standardise_input"]
