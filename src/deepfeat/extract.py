"""Frozen deep features: activations of a trained and of the untrained (initial) network for every clip.

:func:`layer_activations` returns the full per-channel maps {layer: (B, C, H, W)} of a batch (the channel
similarity code uses it). :func:`extract_features` writes ``deep/{task}/{arch}/seed{seed}.h5`` (kind ``deep``,
docs/formats.md): groups ``trained/`` and ``untrained/``, one float32 (N x d) dataset per layer, rows aligned
with the clip table of mel.h5 (both splits, file order), attrs ``shape`` (JSON per-clip shape: [H, W] when
averaged over channels, else [C, H, W]; a row reshapes to it in C order), ``averaged_channels``, ``point``.

Definitions: the input is ``(mel - train_mean) / train_std`` with the model's training statistics; networks in
eval mode (BatchNorm uses its running statistics), no gradients. ``point="raw"`` takes conv layers at the
convolution output before BatchNorm/ReLU (as the reference notebooks hooked them), ``"activated"`` after
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

import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from deepfeat.io import copy_clip_table, get_logger, open_h5, pick_device, write_h5
from deepfeat.models import CONV_LAYERS, LAYERS, POINTS, load_model, remove_stale_temporaries

DEFAULTS = {
    "layers": list(CONV_LAYERS),
    "point": "raw",
    "average_channels": ["conv1", "pool1"],
    "batch_size": 256,
    "device": "auto",
}
WEIGHTS = ("trained", "untrained")
CHUNK_BYTES = 1 << 20  # target HDF5 chunk size (1 MiB, what the default chunk cache holds)


def layer_activations(model: nn.Module, x: torch.Tensor, layers, point: str = "raw") -> dict[str, torch.Tensor]:
    """{layer: activations (B, C, H, W)} of a deepfeat network for a standardised input batch ``x``.

    ``x``: (B, 1, n_mels, T) or (B, n_mels, T), already standardised (see :func:`standardise`) and on the
    model's device. Full per-channel maps, nothing averaged. Runs under ``torch.no_grad()``; the caller puts
    the model in eval mode (:func:`deepfeat.models.load_model` returns it so).
    """
    if not hasattr(model, "activations"):
        raise TypeError(f"layer_activations: {type(model).__name__} is not a deepfeat network (build_model/load_model)")
    with torch.no_grad():
        return model.activations(x, layers, point)


def standardise(mel: np.ndarray | torch.Tensor, meta: dict, device=None) -> torch.Tensor:
    """(mel - train_mean) / train_std as float32 (B, 1, n_mels, T) on ``device``, with the model's statistics."""
    t = torch.as_tensor(mel, dtype=torch.float32).to(device or "cpu")
    if t.dim() == 3:
        t = t.unsqueeze(1)
    return (t - float(meta["train_mean"])) / float(meta["train_std"])


def _check_params(params: dict) -> dict:
    p = {**DEFAULTS, **{k: v for k, v in params.items() if k in DEFAULTS}}
    p["layers"] = list(p["layers"])
    bad = [a for a in p["layers"] if a not in LAYERS]
    if bad or not p["layers"] or len(set(p["layers"])) != len(p["layers"]):
        raise ValueError(f"deep.layers {p['layers']}: expected distinct names from {list(LAYERS)}")
    if p["point"] not in POINTS:
        raise ValueError(f"deep.point '{p['point']}': expected one of {list(POINTS)}")
    bad = [a for a in p["average_channels"] if a not in CONV_LAYERS]
    if bad:
        raise ValueError(f"deep.average_channels {bad}: only conv/pool layers {list(CONV_LAYERS)} can be averaged")
    if int(p["batch_size"]) < 1:
        raise ValueError(f"deep.batch_size must be >= 1, got {p['batch_size']}")
    p["batch_size"] = int(p["batch_size"])
    return p


def _chunk_rows(d: int, batch: int, n: int) -> int:
    """Rows per chunk: the largest divisor of the batch size whose chunk holds <= CHUNK_BYTES (at least 1 row).

    Every batch then writes whole chunks, so no chunk cache is needed (see :func:`_no_cache`).
    """
    target = max(1, CHUNK_BYTES // (4 * d))
    rows = max(r for r in range(1, min(target, batch) + 1) if batch % r == 0)
    return max(1, min(rows, n))


def _no_cache():
    """Dataset access list without chunk cache: writes go straight to the file. With HDF5's default 1 MiB cache
    per dataset, RSS was measured to creep up by ~50 MB per 100 MB written (allocator churn of evicted chunks)."""
    import h5py

    dapl = h5py.h5p.create(h5py.h5p.DATASET_ACCESS)
    nslots, _, w0 = dapl.get_chunk_cache()
    dapl.set_chunk_cache(nslots, 0, w0)
    return dapl


def extract_features(model_pt, mel_h5, out, params: dict, log: logging.Logger | None = None) -> dict:
    """Write the deep-feature file ``out`` for the model file ``model_pt`` over every clip of ``mel_h5``.

    ``params`` (config section ``deep``): layers, point (raw|activated), average_channels, batch_size,
    device (auto|cpu|cuda). Returns {layer: stored per-clip shape}.
    """
    log = log or get_logger()
    p = _check_params(params)
    device = pick_device(p["device"])
    remove_stale_temporaries(out, log=log)
    nets = {w: load_model(model_pt, w, device) for w in WEIGHTS}
    meta = nets["trained"][1]
    if meta["arch"] == "FeedForward" and any(a != "fc1" for a in p["layers"]):
        raise ValueError(
            f"{model_pt}: FeedForward has no conv/pool layers (asked for {p['layers']}); deep features are "
            "extracted for the convolutional architectures only"
        )
    t_start = time.perf_counter()
    with open_h5(mel_h5, "mel") as f:
        mel = f["mel"]
        n = mel.shape[0]
        if list(mel.shape[1:]) != list(meta["input_shape"][1:]):
            raise ValueError(
                f"{mel_h5}: spectrograms are {mel.shape[1]}x{mel.shape[2]} but {model_pt} was trained on "
                f"{meta['input_shape'][1]}x{meta['input_shape'][2]}"
            )
        for key in ("train_mean", "train_std"):
            if not math.isclose(float(f.attrs[key]), float(meta[key]), rel_tol=1e-6, abs_tol=1e-9):
                raise ValueError(
                    f"{mel_h5}: {key}={float(f.attrs[key])} differs from the model's {meta[key]} "
                    f"({model_pt} was trained on another mel.h5); retrain or use the matching mel.h5"
                )
        # per-clip shapes from a one-clip forward pass
        zero = torch.zeros((1, *meta["input_shape"]), device=device)
        probe = layer_activations(nets["trained"][0], zero, p["layers"], p["point"])
        avg = set(p["average_channels"])
        shapes = {a: (list(probe[a].shape[2:]) if a in avg else list(probe[a].shape[1:])) for a in p["layers"]}
        dims = {a: int(np.prod(s)) for a, s in shapes.items()}
        bs = p["batch_size"]
        log.info(
            f"extracting {meta['arch']} seed {meta['seed']} ({meta['task']}) at {p['point']} point: "
            + ", ".join(f"{a} {shapes[a]}{' (channel mean)' if a in avg else ''}" for a in p["layers"])
            + f" for {n} clips, trained + untrained, batch {bs}, device {device}"
        )
        with write_h5(out, "deep") as g:
            g.attrs.update(
                arch=meta["arch"], seed=int(meta["seed"]), task=meta["task"], layers=json.dumps(p["layers"]),
                point=p["point"], average_channels=json.dumps(sorted(avg & set(p["layers"]))),
                model=Path(model_pt).name, n_clips=n,
            )
            copy_clip_table(f, g)
            dsets = {}
            for w in WEIGHTS:
                grp = g.create_group(w)
                for a in p["layers"]:
                    d = grp.create_dataset(
                        a, shape=(n, dims[a]), dtype=np.float32, chunks=(_chunk_rows(dims[a], bs, n), dims[a]),
                        dapl=_no_cache(),
                    )
                    d.attrs.update(shape=json.dumps(shapes[a]), averaged_channels=a in avg, point=p["point"])
                    dsets[w, a] = d
            t0, next_report = time.perf_counter(), 0.0
            for s in range(0, n, bs):
                x = standardise(mel[s : s + bs], meta, device)
                for w in WEIGHTS:
                    acts = layer_activations(nets[w][0], x, p["layers"], p["point"])
                    for a in p["layers"]:
                        v = acts.pop(a)
                        v = v.mean(1) if a in avg else v
                        dsets[w, a][s : s + len(x)] = v.reshape(len(x), -1).to("cpu", torch.float32).numpy()
                    del acts
                done = min(s + bs, n)
                el = time.perf_counter() - t0
                if el >= next_report or done == n:
                    log.info(f"{done}/{n} clips ({100 * done / n:.0f}%), {done / max(el, 1e-9):.0f} clips/s")
                    next_report = el + 30.0
    log.info(f"wrote {out} in {time.perf_counter() - t_start:.1f} s")
    return shapes


def read_deep(path, layer: str, which: str = "trained") -> tuple[np.ndarray, dict]:
    """(N x d float32 array, attrs with decoded ``shape``) of one layer of a deep-feature file."""
    with open_h5(path, "deep") as f:
        if which not in f or layer not in f[which]:
            have = list(f[which]) if which in f else []
            raise KeyError(f"{path}: no '{which}/{layer}' (available in {which}: {have})")
        d = f[which][layer]
        attrs = dict(d.attrs)
        attrs["shape"] = json.loads(attrs["shape"])
        return d[:], attrs


__all__ = ["layer_activations", "extract_features", "standardise", "read_deep"]
