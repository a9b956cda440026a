"""Frozen deep features: activations of a trained and of the untrained (initial) network for every clip.

:func:`extract_features` writes ``deep/{task}/{arch}/seed{seed}.h5`` (kind ``deep``, docs/formats.md,
:mod:`deepfeat.formats.deep`): groups ``trained/`` and ``untrained/``, one float32 (N x d) dataset per layer,
rows aligned with the clip table of mel.h5 (both splits, file order), attrs ``shape`` (JSON per-clip shape:
[H, W] when averaged over channels, else [C, H, W]; a row reshapes to it in C order), ``averaged_channels``,
``point``.

Definitions: the input is ``(mel - train_mean) / train_std`` with the model's training statistics
(:func:`deepfeat.nets.activations.standardise_input`, the same function that standardises the training inputs);
networks in eval mode (BatchNorm uses its running statistics), no gradients. ``point="raw"`` takes conv layers
at the convolution output before BatchNorm/ReLU (as the reference notebooks hooked them), ``"activated"`` after
BatchNorm+ReLU; pool layers are always the pool outputs; fc1 is the linear output (raw) or after ReLU
(activated), stored as shape [120, 1, 1]. Layers in ``average_channels`` are the mean over channels (C x fewer
dimensions), the others are flattened over (C, H, W).

Memory: streamed batch by batch into pre-sized chunked HDF5 datasets (chunk rows divide the batch size, no chunk
cache), so the peak does not depend on the number of clips N. Per batch of B clips it holds the mel batch
(4 n_mels T B bytes, numpy + tensor), one network's forward intermediates up to the last requested layer (the
conv1 map dominates: 10 x 124 x 124 floats per clip for NSynth, kept raw and after BatchNorm+ReLU) and the
converted float32 rows. Measured peak above the process baseline (CPU, batch 256, all five layers, raw):
Regular 1 x 128 x 128: 0.51 GB (~2 MB per clip of the batch); 1dT 1 x 128 x 176: 0.96 GB. So for 50,000 NSynth
clips the bound is ~0.5 GB at the default batch of 256, the same as for 500 clips (lower ``batch_size`` to
lower it); tests/test_extract.py checks that the peak RSS does not grow from N=150 to N=2,000 clips. The output
itself is 4 bytes x N x sum(d) on disk: 50,000 NSynth clips x (15,376 + 3,844 + 9,680 + 2,420 + 480) x 2 weight
sets = 12.7 GB.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from torch import nn

from deepfeat.config import job
from deepfeat.formats.deep import STATES, write_deep
from deepfeat.formats.files import remove_stale_temporaries
from deepfeat.formats.mel import open_mel
from deepfeat.nets.activations import layer_activations, standardise_input
from deepfeat.nets.features import check_mel
from deepfeat.nets.models import load_model
from deepfeat.runtime import pick_device

REPORT_EVERY_S = 30.0  # seconds between progress lines


def _stored_shapes(net: nn.Module, meta: dict, layers: list[str], point: str, avg: set, device) -> dict:
    """Per-clip stored shape of every layer, from a one-clip forward pass: [H, W] when averaged, else [C, H, W]."""
    zero = torch.zeros((1, *meta["input_shape"]), device=device)
    probe = layer_activations(net, zero, layers, point)
    return {a: (list(probe[a].shape[2:]) if a in avg else list(probe[a].shape[1:])) for a in layers}


def _write_batches(mel, nets: dict, dsets: dict, meta: dict, d: dict, device, log) -> None:
    """Fill the datasets batch by batch: standardise, run both weight states, average or flatten, store."""
    n, bs, avg = mel.shape[0], int(d["batch_size"]), set(d["average_channels"])
    t0, next_report = time.perf_counter(), 0.0
    for s in range(0, n, bs):
        x = standardise_input(mel[s : s + bs], meta, device)
        for w in STATES:
            acts = layer_activations(nets[w][0], x, d["layers"], d["point"])
            for a in d["layers"]:
                v = acts.pop(a)
                v = v.mean(1) if a in avg else v
                dsets[w, a][s : s + len(x)] = v.reshape(len(x), -1).to("cpu", torch.float32).numpy()
            del acts
        done = min(s + bs, n)
        el = time.perf_counter() - t0
        if el >= next_report or done == n:
            log.info(f"{done}/{n} clips ({100 * done / n:.0f}%), {done / max(el, 1e-9):.0f} clips/s")
            next_report = el + REPORT_EVERY_S


@job(reads={"deep": ("layers", "point", "average_channels")}, tunes={"deep": ("batch_size", "device")})
def extract_features(*, model, mel, deep, settings, log: logging.Logger | None = None) -> dict:
    """Write the deep-feature file ``deep`` for the model file ``model`` over every clip of ``mel`` (mel.h5).

    ``settings["deep"]``: layers, point (raw|activated), average_channels; batch_size and device (auto|cpu|cuda)
    change only speed and memory. Returns {layer: stored per-clip shape}.
    """
    log = log or logging.getLogger(__name__)
    d = settings["deep"]
    device = pick_device(d["device"])
    remove_stale_temporaries(deep, log=log)
    nets = {w: load_model(model, w, device) for w in STATES}
    meta = nets["trained"][1]
    if meta["arch"] == "FeedForward" and any(a != "fc1" for a in d["layers"]):
        raise ValueError(
            f"{model}: FeedForward has no conv/pool layers (asked for {d['layers']}); deep features are "
            "extracted for the convolutional architectures only"
        )
    t_start = time.perf_counter()
    with open_mel(mel) as f:
        check_mel(f, mel, model, meta)
        n = f["mel"].shape[0]
        avg = set(d["average_channels"])
        shapes = _stored_shapes(nets["trained"][0], meta, d["layers"], d["point"], avg, device)
        log.info(
            f"extracting {meta['arch']} seed {meta['seed']} ({meta['task']}) at {d['point']} point: "
            + ", ".join(f"{a} {shapes[a]}{' (channel mean)' if a in avg else ''}" for a in d["layers"])
            + f" for {n} clips, trained + untrained, batch {d['batch_size']}, device {device}"
        )
        with write_deep(
            deep,
            f,
            n,
            arch=meta["arch"],
            seed=meta["seed"],
            task=meta["task"],
            layers=d["layers"],
            point=d["point"],
            averaged=avg,
            model=Path(model).name,
            shapes=shapes,
            batch_size=int(d["batch_size"]),
        ) as dsets:
            _write_batches(f["mel"], nets, dsets, meta, d, device, log)
    log.info(f"wrote {deep} in {time.perf_counter() - t_start:.1f} s")
    return shapes


__all__ = ["extract_features"]
