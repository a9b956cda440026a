"""Train one network on one task of a mel.h5: SGD, seeded, resumable, data resident on the device.

Protocol (docs/method.md): SGD with ``lr`` and ``momentum``, mini-batches of ``batch_size`` drawn by a random
permutation of the training split each epoch (a ``torch.Generator`` seeded with the model seed), ``epochs``
epochs, the last epoch kept (no early stopping). Initial weights: ``torch.manual_seed(seed)`` then
:func:`deepfeat.nets.models.build_model` on the CPU, so they are the same function of the seed on every device.

- Input: the dB mel-spectrogram standardised by the training split's scalar statistics,
  ``(mel - train_mean) / train_std`` (root attrs of mel.h5; :func:`deepfeat.nets.activations.standardise_input`,
  the function that also standardises the inputs of feature extraction).
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
  model's activations; when that exceeds ``models.memory_mb``, each batch is read from mel.h5 instead
  (:class:`StreamedInputs`: the same values, so the same weights; one HDF5 read per batch).
- Resumable: every ``checkpoint_every`` epochs (default 1) the model, optimiser (momentum buffers), generator
  state, history and elapsed time are written atomically to ``checkpoint`` (:mod:`deepfeat.formats.models`); a
  restarted job whose checkpoint matches its configuration resumes after the last saved epoch and ends with
  bit-identical weights to an uninterrupted run (on the same device and thread count). The checkpoint is deleted
  once the model file exists.
- Determinism: ``torch.use_deterministic_algorithms(True)`` during CPU training; on CUDA cuDNN deterministic and
  benchmark off (see :func:`deterministic`). Same seed, same device and thread count -> same weights.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from deepfeat.config import job
from deepfeat.formats.cliptable import TEST, TRAIN, task_targets
from deepfeat.formats.files import CorruptOutputError, remove_stale_temporaries, write_csv
from deepfeat.formats.mel import open_mel, standardisation
from deepfeat.formats.models import read_checkpoint, save_checkpoint, save_model
from deepfeat.formats.tables import HISTORY_COLUMNS
from deepfeat.nets.activations import standardise_input
from deepfeat.nets.features import mel_rows
from deepfeat.nets.models import build_model, check_arch, cpu_state, n_params
from deepfeat.runtime import pick_device

EVAL_BATCH = 256
READ_BLOCK = 1024
SPLITS = (("train", TRAIN), ("test", TEST))


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
class StreamedInputs:
    """One split's standardised inputs read from mel.h5 batch by batch, in place of a resident tensor (when the
    inputs would exceed ``models.memory_mb``). It answers what the training and evaluation loops ask of a tensor
    (``len``, ``device``, ``index_select(0, idx)``, slices) with exactly the values the resident tensor would hold,
    so training is the same; it costs one HDF5 read per batch instead of memory proportional to the clips."""

    def __init__(self, ds, rows: np.ndarray, norm: dict, device: torch.device):
        self.ds, self.rows, self.norm, self.device = ds, np.asarray(rows, dtype=np.int64), norm, device

    def __len__(self) -> int:
        return len(self.rows)

    def index_select(self, dim: int, idx: torch.Tensor) -> torch.Tensor:
        if dim != 0:
            raise ValueError("StreamedInputs.index_select: only rows (dim 0) can be selected")
        pos = idx.cpu().numpy()
        order = np.argsort(pos, kind="stable")  # HDF5 reads increasing rows; the batch keeps its own order
        x = standardise_input(self.ds[self.rows[pos[order]]], self.norm, self.device)
        out = torch.empty_like(x)
        out[torch.as_tensor(order, device=self.device)] = x
        return out

    def __getitem__(self, sl: slice) -> torch.Tensor:
        return standardise_input(mel_rows(self.ds, self.rows[sl]), self.norm, self.device)


def load_inputs(
    f, device: torch.device, log: logging.Logger | None = None, memory_mb: float | None = None
) -> tuple[dict, dict]:
    """Standardised train and test inputs of an open mel.h5: device tensors (n, 1, n_mels, T), float32, read block
    by block straight into preallocated tensors (host memory bounded by one block); or, when the tensors of both
    splits would exceed ``memory_mb``, :class:`StreamedInputs` that read each batch from the (open) file.
    Returns ({"train": x_train, "test": x_test}, {"train_mean", "train_std", "input_shape"}).
    """
    mel = f["mel"]
    mean, std = standardisation(f)
    norm = {"train_mean": mean, "train_std": std}
    split = f["meta/split"][:]
    n, n_mels, n_frames = mel.shape
    if split.shape != (n,):
        raise ValueError(f"{f.filename}: meta/split has {split.shape[0]} rows but mel has {n}")
    shape = [1, int(n_mels), int(n_frames)]
    resident = 4.0 * n * n_mels * n_frames
    if memory_mb is not None and resident > memory_mb * 1e6:
        if log:
            log.info(
                f"inputs of {n} clips ({resident / 1e9:.2f} GB) exceed models.memory_mb = {memory_mb:g}: "
                "read from mel.h5 batch by batch"
            )
        out = {name: StreamedInputs(mel, np.flatnonzero(split == code), norm, device) for name, code in SPLITS}
        return out, {**norm, "input_shape": shape}
    out = {}
    for name, code in SPLITS:
        out[name] = torch.empty((int((split == code).sum()), 1, n_mels, n_frames), dtype=torch.float32, device=device)
    pos = {"train": 0, "test": 0}
    t0 = time.perf_counter()
    for s in range(0, n, READ_BLOCK):
        block = mel[s : s + READ_BLOCK]
        sp = split[s : s + READ_BLOCK]
        for name, code in SPLITS:
            rows = block[sp == code]
            if len(rows):
                out[name][pos[name] : pos[name] + len(rows)] = standardise_input(rows, norm, device)
                pos[name] += len(rows)
    if log:
        log.info(
            f"loaded {n} clips ({pos['train']} train, {pos['test']} test) of 1x{n_mels}x{n_frames} onto {device} "
            f"in {time.perf_counter() - t0:.1f} s"
        )
    return out, {**norm, "input_shape": shape}


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
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    task_type: str,
    batch_size: int,
    generator: torch.Generator,
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
# One training run: its state, checkpoints, epochs
# ----------------------------------------------------------------------------------------------------------
@dataclass
class _Run:
    """What a training run holds between epochs (and what a checkpoint saves)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    init_state: dict
    fingerprint: dict
    history: list[dict] = field(default_factory=list)
    start_epoch: int = 0
    seconds_before: float = 0.0


def _start(arch: str, seed: int, task: str, p: dict, norm: dict, info: dict, n: dict, device) -> _Run:
    """The seeded initial network (built on the CPU, then moved), its optimiser, the batch-order generator and
    the fingerprint of the run's configuration."""
    torch.manual_seed(seed)
    model = build_model(arch, norm["input_shape"][1], norm["input_shape"][2], info["n_outputs"], p["deformable"])
    init_state = cpu_state(model)
    model.to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=float(p["lr"]), momentum=float(p["momentum"]))
    gen = torch.Generator().manual_seed(seed)
    fingerprint = {
        "arch": arch,
        "seed": seed,
        "task": task,
        "lr": float(p["lr"]),
        "momentum": float(p["momentum"]),
        "batch_size": int(p["batch_size"]),
        "n_train": n["train"],
        "n_test": n["test"],
        "input_shape": norm["input_shape"],
        "n_outputs": info["n_outputs"],
        "train_mean": norm["train_mean"],
        "train_std": norm["train_std"],
        "device_type": device.type,
        "deformable": p["deformable"],
    }
    return _Run(model, optimizer, gen, init_state, fingerprint)


def _matching_checkpoint(path, fingerprint: dict, epochs: int, log: logging.Logger):
    """The checkpoint's state if it exists and belongs to this run, else None (with the reason in the log)."""
    if not path or not Path(path).exists():
        return None
    try:
        ck = read_checkpoint(path)
    except CorruptOutputError as e:
        log.warning(f"{e}; starting from scratch")
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


def _resume(run: _Run, checkpoint, epochs: int, log: logging.Logger) -> None:
    """Continue ``run`` from its checkpoint when one of the same configuration exists."""
    ck = _matching_checkpoint(checkpoint, run.fingerprint, epochs, log)
    if ck is None:
        return
    run.model.load_state_dict(ck["model"])
    run.optimizer.load_state_dict(ck["optimizer"])
    run.generator.set_state(ck["generator"])
    run.init_state, run.history = ck["init_state"], list(ck["history"])
    run.start_epoch, run.seconds_before = int(ck["epoch"]), float(ck["seconds"])
    log.info(f"resumed from checkpoint {checkpoint} after epoch {run.start_epoch}")


def _save_checkpoint(run: _Run, checkpoint, epoch: int, t_run: float) -> None:
    save_checkpoint(
        checkpoint,
        {
            "fingerprint": run.fingerprint,
            "epoch": epoch,
            "model": cpu_state(run.model),
            "optimizer": run.optimizer.state_dict(),
            "generator": run.generator.get_state(),
            "init_state": run.init_state,
            "history": run.history,
            "seconds": run.seconds_before + time.perf_counter() - t_run,
        },
    )


def _epochs(run: _Run, xs: dict, ys: dict, info: dict, p: dict, checkpoint, label: str, log) -> float:
    """Train the remaining epochs of ``run`` (history rows appended, checkpoints written); returns the training
    seconds (of this and any earlier, checkpointed attempt)."""
    epochs, batch_size, every = int(p["epochs"]), int(p["batch_size"]), int(p["checkpoint_every"])
    metric_name = "accuracy" if info["type"] == "classification" else "rmse"
    n_train, n_test = len(xs["train"]), len(xs["test"])
    t_run = time.perf_counter()
    for epoch in range(run.start_epoch, epochs):
        t0 = time.perf_counter()
        tr_loss, tr_score = train_epoch(
            run.model, run.optimizer, xs["train"], ys["train"], info["type"], batch_size, run.generator
        )
        t_train = time.perf_counter() - t0
        te_loss, te_score = evaluate(run.model, xs["test"], ys["test"], info["type"])
        if not math.isfinite(tr_loss):
            raise FloatingPointError(f"{label}: training loss became {tr_loss} in epoch {epoch + 1}")
        row = {
            "epoch": epoch + 1,
            "train_loss": tr_loss,
            "test_loss": te_loss,
            "train_metric": _metric(tr_score, info),
            "test_metric": _metric(te_score, info) if n_test else float("nan"),
            "metric": metric_name,
            "clips_per_s": n_train / t_train,
        }
        run.history.append(row)
        log.info(
            f"epoch {epoch + 1}/{epochs}: train loss {tr_loss:.4f} {metric_name} {row['train_metric']:.4f} | "
            f"test loss {te_loss:.4f} {metric_name} {row['test_metric']:.4f} | {row['clips_per_s']:.0f} clips/s, "
            f"{time.perf_counter() - t0:.1f} s"
        )
        if checkpoint and ((epoch + 1) % every == 0) and epoch + 1 < epochs:
            _save_checkpoint(run, checkpoint, epoch + 1, t_run)
    return run.seconds_before + time.perf_counter() - t_run


def _model_meta(run: _Run, info: dict, p: dict, seconds: float, mel, device) -> dict:
    """The ``meta`` of the model file (see :mod:`deepfeat.formats.models`)."""
    fp = run.fingerprint
    return {
        "arch": fp["arch"],
        "deformable": fp["deformable"],
        "seed": fp["seed"],
        "task": fp["task"],
        "task_type": info["type"],
        "n_outputs": info["n_outputs"],
        "input_shape": fp["input_shape"],
        "train_mean": fp["train_mean"],
        "train_std": fp["train_std"],
        "classes": info.get("classes"),
        "target_mean": info.get("target_mean"),
        "target_std": info.get("target_std"),
        "epochs": int(p["epochs"]),
        "lr": float(p["lr"]),
        "momentum": float(p["momentum"]),
        "batch_size": int(p["batch_size"]),
        "n_params": n_params(run.model),
        "n_train": fp["n_train"],
        "n_test": fp["n_test"],
        "device": str(device),
        "seconds": seconds,
        "mel_h5": str(mel),
    }


# ----------------------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------------------
@job(
    reads={"models": ("epochs", "batch_size", "lr", "momentum", "deformable")},
    tunes={"models": ("device", "checkpoint_every", "memory_mb")},
)
def train_model(
    *,
    mel,
    model,
    history,
    settings,
    task: str,
    arch: str,
    seed: int,
    checkpoint=None,
    log: logging.Logger | None = None,
) -> pd.DataFrame:
    """Train ``arch`` on ``task`` of ``mel`` (mel.h5) with ``seed``; write the model file ``model`` and the
    history CSV ``history``.

    ``settings["models"]``: epochs, batch_size, lr, momentum, deformable (the semantics of the Deformable conv3,
    recorded in the model file's meta); device (auto|cpu|cuda) and checkpoint_every change only speed (and where
    it can resume). ``checkpoint``: path of the resumable epoch checkpoint (None: no
    checkpointing). Returns the history table. File formats: docs/formats.md.
    """
    log = log or logging.getLogger(__name__)
    p = settings["models"]
    seed = int(seed)
    device = pick_device(p["device"])
    t_start = time.perf_counter()
    remove_stale_temporaries(model, history, checkpoint, log=log)

    check_arch(arch)  # before reading gigabytes
    with open_mel(mel) as f:  # open while training: inputs beyond models.memory_mb are read batch by batch
        ys, info = load_targets(f, task, device)
        xs, norm = load_inputs(f, device, log, p["memory_mb"])
        n = {"train": len(xs["train"]), "test": len(xs["test"])}
        if n["train"] < 2:
            raise ValueError(f"{mel}: the training split has {n['train']} clips; need at least 2")
        run = _start(arch, seed, task, p, norm, info, n, device)
        _resume(run, checkpoint, int(p["epochs"]), log)
        conv3 = f" ({p['deformable']} deformable conv3)" if arch == "Deformable" else ""
        log.info(
            f"training {arch}{conv3} on '{task}' ({info['type']}, {info['n_outputs']} outputs), seed {seed}, "
            f"{n_params(run.model):,} parameters, {n['train']} train / {n['test']} test clips, device {device}, "
            f"epochs {p['epochs']}, batch {p['batch_size']}, lr {p['lr']}, momentum {p['momentum']}"
        )
        with deterministic(device):
            seconds = _epochs(run, xs, ys, info, p, checkpoint, f"{arch} seed {seed}", log)

    hist = pd.DataFrame(run.history, columns=HISTORY_COLUMNS)
    save_model(model, _model_meta(run, info, p, seconds, mel, device), run.init_state, cpu_state(run.model))
    write_csv(hist, history)
    if checkpoint:
        Path(checkpoint).unlink(missing_ok=True)
    last = run.history[-1]
    log.info(
        f"done: test {last['metric']} {last['test_metric']:.4f} after {p['epochs']} epochs, {seconds:.1f} s "
        f"training ({time.perf_counter() - t_start:.1f} s total); wrote {model} and {history}"
    )
    return hist


__all__ = [
    "StreamedInputs",
    "batch_indices",
    "deterministic",
    "evaluate",
    "load_inputs",
    "load_targets",
    "train_epoch",
    "train_model",
]
