"""Train one network on one task of a mel.h5: SGD, seeded, resumable, data resident on the device.

Protocol (method.md): SGD with ``lr`` and ``momentum``, mini-batches of ``batch_size`` drawn by a random
permutation of the training split each epoch (a ``torch.Generator`` seeded with the model seed), ``epochs``
epochs, the last epoch kept (no early stopping). Initial weights: ``torch.manual_seed(seed)`` then
:func:`deepfeat.models.build_model` on the CPU, so they are the same function of the seed on every device.

- Input: the dB mel-spectrogram standardised by the training split's scalar statistics,
  ``(mel - train_mean) / train_std`` (root attrs of mel.h5).
- Classification: cross entropy on the logits (log-softmax applied once, inside the loss); metric accuracy,
  a fraction in [0, 1].
- Regression: one output trained with MSE on the z-scored target ``(y - target_mean) / target_std``
  (training-split mean and population std); losses are in z units, the metric is the RMSE in target units
  (``target_std * sqrt(MSE_z)``: MIDI numbers for pitch, velocity units for velocity).
- History per epoch: ``train_loss``/``train_metric`` are averages over the epoch's mini-batches as they were
  trained (train mode, weights changing), ``test_loss``/``test_metric`` come from an eval-mode pass over the test
  split after the epoch; ``clips_per_s`` = training clips / seconds of the epoch's training pass.
- Speed: both splits live on the device as single float32 tensors (N x 1 x n_mels x T); a batch is
  ``x.index_select(0, idx)`` for an index slice of the permutation: no DataLoader, no per-sample Python work,
  one host sync per epoch. Memory: 4 bytes x N x n_mels x T (NSynth 50,000 x 128 x 128: 3.3 GB) plus the
  model's activations.
- Resumable: every ``checkpoint_every`` epochs (default 1) the model, optimiser (momentum buffers), generator
  state, history and elapsed time are written atomically to ``checkpoint``; a restarted job whose checkpoint
  matches its configuration resumes after the last saved epoch and ends with bit-identical weights to an
  uninterrupted run (on the same device and thread count). The checkpoint is deleted once the model file exists.
- Determinism: ``torch.use_deterministic_algorithms(True)`` during CPU training; on CUDA cuDNN deterministic and
  benchmark off (see :func:`deterministic`). Same seed, same device and thread count -> same weights.
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from deepfeat.io import TEST, TRAIN, atomic_path, get_logger, open_h5, pick_device, task_targets, write_csv
from deepfeat.models import build_model, check_arch, cpu_state, n_params, remove_stale_temporaries, save_model

CHECKPOINT_FORMAT = "deepfeat-checkpoint-1"
HISTORY_COLUMNS = ["epoch", "train_loss", "test_loss", "train_metric", "test_metric", "metric", "clips_per_s"]
DEFAULTS = {"epochs": 150, "batch_size": 64, "lr": 0.005, "momentum": 0.9, "device": "auto", "checkpoint_every": 1}
EVAL_BATCH = 256
READ_BLOCK = 1024


@contextlib.contextmanager
def deterministic(device: torch.device):
    """Deterministic kernels while the block runs; restores the previous global state afterwards.

    CPU: ``torch.use_deterministic_algorithms(True)`` (strict: an op without a deterministic kernel raises).
    CUDA: cuDNN deterministic and benchmark off only; max-pool and gather backward have no deterministic CUDA
    kernels, so GPU runs are reproducible to rounding, not bit for bit.
    """
    prev = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev[0], warn_only=prev[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = prev[2], prev[3]


# ----------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------
def load_inputs(f, device: torch.device, log: logging.Logger | None = None) -> tuple[dict, dict]:
    """Standardised train and test inputs of an open mel.h5 as device tensors (n, 1, n_mels, T), float32.

    Read block by block straight into preallocated device tensors, so host memory stays bounded by one block.
    Returns ({"train": x_train, "test": x_test}, {"train_mean", "train_std", "input_shape"}).
    """
    path = f.filename
    if "mel" not in f:
        raise ValueError(f"{path}: no 'mel' dataset (expected N x n_mels x T)")
    mel = f["mel"]
    if mel.ndim != 3:
        raise ValueError(f"{path}: 'mel' must be N x n_mels x T, got shape {mel.shape}")
    for key in ("train_mean", "train_std"):
        if key not in f.attrs:
            raise ValueError(f"{path}: root attribute '{key}' missing (scalar training statistics of mel)")
    mean, std = float(f.attrs["train_mean"]), float(f.attrs["train_std"])
    if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
        raise ValueError(f"{path}: train_mean={mean}, train_std={std}: need finite values and std > 0")
    split = f["meta/split"][:]
    n, n_mels, n_frames = mel.shape
    if split.shape != (n,):
        raise ValueError(f"{path}: meta/split has {split.shape[0]} rows but mel has {n}")
    out = {}
    for name, code in (("train", TRAIN), ("test", TEST)):
        out[name] = torch.empty((int((split == code).sum()), 1, n_mels, n_frames), dtype=torch.float32, device=device)
    pos = {"train": 0, "test": 0}
    t0 = time.perf_counter()
    for s in range(0, n, READ_BLOCK):
        block = mel[s : s + READ_BLOCK]
        sp = split[s : s + READ_BLOCK]
        for name, code in (("train", TRAIN), ("test", TEST)):
            rows = block[sp == code]
            if len(rows):
                t = torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float32)).to(device)
                out[name][pos[name] : pos[name] + len(rows), 0] = (t - mean) / std
                pos[name] += len(rows)
    if log:
        log.info(
            f"loaded {n} clips ({pos['train']} train, {pos['test']} test) of 1x{n_mels}x{n_frames} onto {device} "
            f"in {time.perf_counter() - t0:.1f} s"
        )
    return out, {"train_mean": mean, "train_std": std, "input_shape": [1, int(n_mels), int(n_frames)]}


def load_targets(f, task: str, device: torch.device) -> tuple[dict, dict]:
    """Targets of ``task`` per split as device tensors (int64 codes, or float32 z-scores) and the task info."""
    path = f.filename
    if "labels" not in f or task not in f["labels"]:
        have = list(f["labels"]) if "labels" in f else []
        raise ValueError(f"{path}: no task '{task}' in labels/ (available: {have})")
    y, info = task_targets(f, task)
    split = f["meta/split"][:]
    tr, te = split == TRAIN, split == TEST
    if info["type"] == "classification":
        n_classes = len(info["classes"])
        if y.min() < 0 or y.max() >= n_classes:
            raise ValueError(f"{path}: labels/{task} has codes outside 0..{n_classes - 1}")
        info["n_outputs"] = n_classes
        ys = {k: torch.as_tensor(y[m], dtype=torch.long, device=device) for k, m in (("train", tr), ("test", te))}
    elif info["type"] == "regression":
        if not np.isfinite(y).all():
            raise ValueError(f"{path}: labels/{task} contains NaN/inf")
        m, s = float(y[tr].mean()), float(y[tr].std())
        if not s > 0:
            raise ValueError(f"{path}: labels/{task} is constant on the training split; cannot z-score it")
        info.update(n_outputs=1, target_mean=m, target_std=s)
        ys = {
            k: torch.as_tensor((y[mk] - m) / s, dtype=torch.float32, device=device)
            for k, mk in (("train", tr), ("test", te))
        }
    else:
        raise ValueError(f"{path}: labels/{task} has unknown type '{info['type']}'")
    return ys, info


# ----------------------------------------------------------------------------------------------------------
# Loops
# ----------------------------------------------------------------------------------------------------------
def _loss_and_score(out: torch.Tensor, y: torch.Tensor, task_type: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean loss, summed score): cross entropy + #correct, or MSE (z units) + summed squared error."""
    if task_type == "classification":
        return F.cross_entropy(out, y), (out.argmax(1) == y).sum()
    pred = out.squeeze(1)
    return F.mse_loss(pred, y), ((pred.detach() - y) ** 2).sum()


def batch_indices(n: int, batch_size: int, generator: torch.Generator, device) -> list[torch.Tensor]:
    """One epoch's mini-batches: a seeded permutation of 0..n-1 cut into ``batch_size`` slices.

    A last batch of a single clip is merged into the previous one (BatchNorm cannot normalise one sample).
    """
    perm = torch.randperm(n, generator=generator).to(device)
    batches = list(torch.split(perm, batch_size))
    if len(batches) > 1 and len(batches[-1]) == 1:
        batches[-2:] = [torch.cat(batches[-2:])]
    return batches


def train_epoch(
    model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, task_type: str,
    batch_size: int, generator: torch.Generator,
) -> tuple[float, float]:
    """One pass of SGD over (x, y) in seeded random order; returns (mean loss, mean score) over the clips.

    The score is accuracy (classification) or mean squared error in z units (regression).
    """
    model.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=x.device)
    score_sum = torch.zeros((), dtype=torch.float64, device=x.device)
    for idx in batch_indices(len(x), batch_size, generator, x.device):
        out = model(x.index_select(0, idx))  # one row copy per clip (faster than x[idx] on CPU)
        loss, score = _loss_and_score(out, y.index_select(0, idx), task_type)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach().double() * len(idx)
        score_sum += score.double()
    n = len(x)
    return float(loss_sum) / n, float(score_sum) / n


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, task_type: str, batch_size: int = EVAL_BATCH):
    """Eval-mode (mean loss, mean score) over (x, y); NaN for an empty split."""
    if len(x) == 0:
        return float("nan"), float("nan")
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=x.device)
    score_sum = torch.zeros((), dtype=torch.float64, device=x.device)
    for s in range(0, len(x), batch_size):
        loss, score = _loss_and_score(model(x[s : s + batch_size]), y[s : s + batch_size], task_type)
        loss_sum += loss.double() * len(x[s : s + batch_size])
        score_sum += score.double()
    return float(loss_sum) / len(x), float(score_sum) / len(x)


def _metric(score: float, info: dict) -> float:
    """Accuracy as is; regression MSE (z units) -> RMSE in target units."""
    return score if info["type"] == "classification" else info["target_std"] * math.sqrt(score)


# ----------------------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------------------
def _save_checkpoint(path, state: dict) -> None:
    with atomic_path(path, suffix=".ckpt") as tmp:
        torch.save(state, tmp)


def _load_checkpoint(path, fingerprint: dict, epochs: int, log: logging.Logger):
    """The checkpoint's state if it exists and belongs to this run, else None (with the reason in the log)."""
    if not path or not Path(path).exists():
        return None
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # written atomically, so this means a foreign or damaged file
        log.warning(f"checkpoint {path} unreadable ({e}); starting from scratch")
        return None
    if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
        log.warning(f"checkpoint {path} is not a deepfeat checkpoint; starting from scratch")
        return None
    if ck.get("fingerprint") != fingerprint:
        old = ck.get("fingerprint") or {}
        diff = {k: (old.get(k), v) for k, v in fingerprint.items() if old.get(k) != v}
        log.warning(f"checkpoint {path} is from another configuration {diff}; starting from scratch")
        return None
    if ck["epoch"] > epochs:
        log.warning(f"checkpoint {path} is at epoch {ck['epoch']} > epochs={epochs}; starting from scratch")
        return None
    return ck


# ----------------------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------------------
def train_model(
    mel_h5, task: str, arch: str, seed: int, params: dict, out_model, out_history, checkpoint=None,
    log: logging.Logger | None = None,
) -> pd.DataFrame:
    """Train ``arch`` on ``task`` of ``mel_h5`` with ``seed``; write the model file and the history CSV.

    ``params``: epochs, batch_size, lr, momentum, device (auto|cpu|cuda), checkpoint_every (optional, default 1);
    other keys are ignored. ``checkpoint``: path of the resumable epoch checkpoint (None: no checkpointing).
    Returns the history table. File formats: docs/formats.md.
    """
    log = log or get_logger()
    p = {**DEFAULTS, **{k: v for k, v in params.items() if k in DEFAULTS}}
    epochs, batch_size, every = int(p["epochs"]), int(p["batch_size"]), int(p["checkpoint_every"])
    if epochs < 1 or batch_size < 1 or every < 1:
        raise ValueError(
            f"params: epochs, batch_size and checkpoint_every must be >= 1, got {epochs}, {batch_size}, {every}"
        )
    seed = int(seed)
    device = pick_device(p["device"])
    t_start = time.perf_counter()
    remove_stale_temporaries(out_model, out_history, checkpoint, log=log)

    check_arch(arch)  # before reading gigabytes
    with open_h5(mel_h5, "mel") as f:
        ys, info = load_targets(f, task, device)
        xs, norm = load_inputs(f, device, log)
    n_train, n_test = len(xs["train"]), len(xs["test"])
    if n_train < 2:
        raise ValueError(f"{mel_h5}: the training split has {n_train} clips; need at least 2")

    torch.manual_seed(seed)
    model = build_model(arch, norm["input_shape"][1], norm["input_shape"][2], info["n_outputs"])
    init_state = cpu_state(model)
    model.to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=float(p["lr"]), momentum=float(p["momentum"]))
    gen = torch.Generator().manual_seed(seed)

    fingerprint = {
        "arch": arch, "seed": seed, "task": task, "lr": float(p["lr"]), "momentum": float(p["momentum"]),
        "batch_size": batch_size, "n_train": n_train, "n_test": n_test, "input_shape": norm["input_shape"],
        "n_outputs": info["n_outputs"], "train_mean": norm["train_mean"], "train_std": norm["train_std"],
        "device_type": device.type,
    }
    history: list[dict] = []
    start_epoch, seconds_before = 0, 0.0
    ck = _load_checkpoint(checkpoint, fingerprint, epochs, log)
    if ck is not None:
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        gen.set_state(ck["generator"])
        init_state, history = ck["init_state"], list(ck["history"])
        start_epoch, seconds_before = int(ck["epoch"]), float(ck["seconds"])
        log.info(f"resumed from checkpoint {checkpoint} after epoch {start_epoch}")
    log.info(
        f"training {arch} on '{task}' ({info['type']}, {info['n_outputs']} outputs), seed {seed}, "
        f"{n_params(model):,} parameters, {n_train} train / {n_test} test clips, device {device}, "
        f"epochs {epochs}, batch {batch_size}, lr {p['lr']}, momentum {p['momentum']}"
    )
    metric_name = "accuracy" if info["type"] == "classification" else "rmse"

    t_run = time.perf_counter()
    with deterministic(device):
        for epoch in range(start_epoch, epochs):
            t0 = time.perf_counter()
            tr_loss, tr_score = train_epoch(model, optimizer, xs["train"], ys["train"], info["type"], batch_size, gen)
            t_train = time.perf_counter() - t0
            te_loss, te_score = evaluate(model, xs["test"], ys["test"], info["type"])
            if not math.isfinite(tr_loss):
                raise FloatingPointError(f"{arch} seed {seed}: training loss became {tr_loss} in epoch {epoch + 1}")
            row = {
                "epoch": epoch + 1, "train_loss": tr_loss, "test_loss": te_loss,
                "train_metric": _metric(tr_score, info),
                "test_metric": _metric(te_score, info) if n_test else float("nan"),
                "metric": metric_name, "clips_per_s": n_train / t_train,
            }
            history.append(row)
            log.info(
                f"epoch {epoch + 1}/{epochs}: train loss {tr_loss:.4f} {metric_name} {row['train_metric']:.4f} | "
                f"test loss {te_loss:.4f} {metric_name} {row['test_metric']:.4f} | {row['clips_per_s']:.0f} clips/s, "
                f"{time.perf_counter() - t0:.1f} s"
            )
            if checkpoint and ((epoch + 1) % every == 0) and epoch + 1 < epochs:
                _save_checkpoint(checkpoint, {
                    "format": CHECKPOINT_FORMAT, "fingerprint": fingerprint, "epoch": epoch + 1,
                    "model": cpu_state(model), "optimizer": optimizer.state_dict(), "generator": gen.get_state(),
                    "init_state": init_state, "history": history,
                    "seconds": seconds_before + time.perf_counter() - t_run,
                })

    seconds = seconds_before + time.perf_counter() - t_run
    meta = {
        "arch": arch, "seed": seed, "task": task, "task_type": info["type"], "n_outputs": info["n_outputs"],
        "input_shape": norm["input_shape"], "train_mean": norm["train_mean"], "train_std": norm["train_std"],
        "classes": info.get("classes"), "target_mean": info.get("target_mean"), "target_std": info.get("target_std"),
        "epochs": epochs, "lr": float(p["lr"]), "momentum": float(p["momentum"]), "batch_size": batch_size,
        "n_params": n_params(model), "n_train": n_train, "n_test": n_test, "device": str(device),
        "seconds": seconds, "mel_h5": str(mel_h5),
    }
    hist = pd.DataFrame(history, columns=HISTORY_COLUMNS)
    save_model(out_model, meta, init_state, cpu_state(model))
    write_csv(hist, out_history)
    if checkpoint:
        Path(checkpoint).unlink(missing_ok=True)
    last = history[-1]
    log.info(
        f"done: test {metric_name} {last['test_metric']:.4f} after {epochs} epochs, {seconds:.1f} s training "
        f"({time.perf_counter() - t_start:.1f} s total); wrote {out_model} and {out_history}"
    )
    return hist


__all__ = ["train_model", "train_epoch", "evaluate", "batch_indices", "load_inputs", "load_targets", "deterministic"]
