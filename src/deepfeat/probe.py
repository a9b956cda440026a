"""Decoding probes: how well a feature (hand-crafted or a frozen CNN layer) decodes each task of a dataset.

Definitions
-----------
* **Standardisation.** Every feature column is z-scored with the mean and the population standard deviation
  (ddof 0) of the *training* split only, accumulated in float64; a column that is constant on the training
  split gets std 1 (so it becomes 0 there, never NaN). The probes see float32 standardised features.
* **Classification probe.** Multinomial logistic regression ``softmax(x W' + b)`` (``W``: C x d) trained
  exactly like ``torch.nn.Linear(d, C)`` + ``CrossEntropyLoss`` (mean over the batch) + ``torch.optim.SGD(lr,
  momentum)`` for ``epochs`` epochs of mini-batches of ``batch_size`` training clips (the last one smaller).
  Initial weights and bias ~ U(-1/sqrt(d), 1/sqrt(d)) (nn.Linear's default) drawn from
  ``torch.Generator().manual_seed(seed)``; the batch order of every epoch is exactly the one of
  ``DataLoader(TensorDataset(X, y), batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))``
  (tests check both against that reference). The gradient is written out in closed form
  (d loss / d logits = (softmax - onehot) / B), so there is no autograd and no per-batch Python objects; the
  training data stays on the device and batches are gathered by index. Many probes (features of the same
  width x tasks x seeds) are trained at once as one batched model (``torch.bmm``); every probe's result is
  independent of what it is batched with. Accuracy = fraction of clips whose arg-max class is the true one.
* **Primal and dual form of the same SGD.** Every SGD/momentum step adds ``G Z_b`` (G: C x B gradient of the
  batch logits, Z_b the batch rows of the standardised training matrix Z, n_train x d) to the velocity, so
  ``W = W0 + A Z`` and ``v_W = v_A Z`` at every step, with A and v_A (C x n_train) receiving ``G`` in the
  batch's columns. With the training Gram matrix ``K = Z Z'`` the batch logits are ``W0 Z_b' + A K[:, b] + b``
  and the updates are ``v_A <- mu v_A + scatter_b(G)``, ``A <- A - lr v_A``: the same iterates as on W, at
  O(n_train) instead of O(d) per clip, after computing K once per feature (shared by every task and seed,
  and by the least-squares probes; a concatenation of separately standardised blocks has K = sum of the
  blocks' K). At the end ``W = W0 + A Z`` is formed explicitly (returned, and used for the test clips). The
  form with fewer estimated multiply-adds runs (:func:`logistic_costs`); both give the same probes up to
  float32 rounding (tests compare them).
* **Regression probe.** Ordinary least squares with an intercept in float64; test RMSE in the target's raw
  units (MIDI pitch, velocity). When the model would have at least as many parameters as training clips
  (p + 1 >= n_train) the fit is ridge regression solved in the dual (n x n) form with penalty
  ``ridge * trace(K) / n_train`` (K = Xc Xc', Xc the centred training features), and the log says so.
  ``probe.ridge: auto`` (the default) instead fits ridge regression for every p, with the penalty of each
  target chosen by exact leave-one-out on the training split over ``RIDGE_GRID`` x trace(K) / n_train, all
  from one eigendecomposition of K (:func:`fit_linear`).
* **Tables** follow docs/formats.md: tidy scores (one row per value; accuracy as a fraction in [0, 1], rmse in
  target units) and long confusion matrices of the test split (true x predicted counts, class names, zeros
  kept).
"""
from __future__ import annotations

import json
import logging
import math
import re
import time
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from scipy.linalg import blas

from deepfeat.io import TEST, TRAIN, open_h5, pick_device, read_clip_table

DEFAULTS = {
    "epochs": 100,
    "lr": 0.01,
    "momentum": 0.9,
    "batch_size": 64,
    "seeds": [0, 1, 2, 3, 4],
    "ridge": "auto",  # penalty by exact leave-one-out on the training split (a number fixes it)
    "concat_features": ["Mean Power (frequency)", "Time to -70 dB", "Mean Wavelet (25)", "Wavelet Combined"],
    "device": "auto",
}
KEY_COLUMNS = ["dataset", "feature", "arch", "seed", "layer", "trained", "train_task", "probe_task", "probe_seed"]
SCORE_COLUMNS = KEY_COLUMNS + ["metric", "split", "value"]
CONFUSION_COLUMNS = KEY_COLUMNS + ["split", "true", "predicted", "count"]
CONCAT_LAYER = "conv3"
GROUP_BYTES = 256 * 2**20  # features of equal width are stacked into one batched model up to this size
CHUNK_BYTES = 64 * 2**20  # float64 working chunks of the statistics / least-squares passes
BLOCK_BYTES = 8 * 2**20  # float64 column blocks of the standardisation and Gram passes (cache-sized)
LSTSQ_BYTES = 256 * 2**20  # OLS through LAPACK gelsd (SVD) on CPU when the float64 design fits in this
PROGRESS_SECONDS = 30.0  # epoch progress lines at most this often during long trainings
GRAM_BYTES = 2 * 2**30  # the dual form's n_train x n_train Gram matrix (float64) at most this large
RIDGE_GRID = np.logspace(-6, 3, 25)  # ridge auto: candidate penalties lam / (trace(K) / n_train), log-spaced
FORM = "auto"  # logistic probes of the pipelines: auto (fewer estimated multiply-adds) | primal | dual

_log = logging.getLogger("deepfeat")


# ----------------------------------------------------------------------------------------------------------
# Parameters
# ----------------------------------------------------------------------------------------------------------
def probe_params(params: dict | None) -> dict:
    """The ``probe:`` config section with defaults filled in and values checked (ValueError names the key)."""
    params = dict(params or {})
    unknown = sorted(set(params) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"probe: unknown key(s) {unknown}; expected a subset of {sorted(DEFAULTS)}")
    hp = {**DEFAULTS, **params}
    for key in ("epochs", "batch_size"):
        if not isinstance(hp[key], (int, np.integer)) or hp[key] < 1:
            raise ValueError(f"probe.{key}: expected an integer >= 1, got {hp[key]!r}")
    if not hp["lr"] > 0:
        raise ValueError(f"probe.lr: expected a number > 0, got {hp['lr']!r}")
    if not 0 <= hp["momentum"] <= 1:
        raise ValueError(f"probe.momentum: expected a number in [0, 1], got {hp['momentum']!r}")
    r = hp["ridge"]
    if r != "auto" and (isinstance(r, (bool, str)) or not isinstance(r, (int, float, np.number)) or not r >= 0):
        raise ValueError(f"probe.ridge: expected a number >= 0 or 'auto', got {r!r}")
    seeds = hp["seeds"]
    if not isinstance(seeds, (list, tuple)) or not seeds or not all(isinstance(s, (int, np.integer)) for s in seeds):
        raise ValueError(f"probe.seeds: expected a non-empty list of integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"probe.seeds: seeds must be unique, got {seeds!r}")
    hp["seeds"] = [int(s) for s in seeds]
    hp["concat_features"] = list(hp["concat_features"] or [])
    return hp


# ----------------------------------------------------------------------------------------------------------
# Standardisation with training statistics; Gram matrices
# ----------------------------------------------------------------------------------------------------------
def _rows_per_chunk(d: int) -> int:
    return max(1, CHUNK_BYTES // (8 * max(1, d)))


def _cols_per_block(n: int) -> int:
    return max(64, BLOCK_BYTES // (8 * max(1, n)))


def _check_2d(X, what: str) -> None:
    if getattr(X, "ndim", None) != 2:
        raise ValueError(f"{what}: expected a 2-D (clips x features) array, got shape {getattr(X, 'shape', None)}")


def _centre_block(c: np.ndarray, name: str, a: int) -> tuple[np.ndarray, np.ndarray]:
    """Training mean and population std (std 0 -> 1) of a float64 column block ``c`` (columns a..), which is
    centred in place. Raises ValueError naming ``name`` on NaN/inf."""
    if not np.isfinite(c).all():
        raise ValueError(f"{name}: {int((~np.isfinite(c)).sum())} non-finite value(s) in the training split "
                         f"(columns {a}..{a + c.shape[1] - 1})")
    mean = c.sum(0) / len(c)
    c -= mean
    std = np.sqrt(np.einsum("ij,ij->j", c, c) / len(c))
    std[std == 0] = 1.0
    return mean, std


def train_stats(Xtr: np.ndarray, name: str = "features") -> tuple[np.ndarray, np.ndarray]:
    """Column mean and population std (ddof 0) in float64 over cache-sized column blocks; std 0 -> 1.

    Raises ValueError naming ``name`` when a value is NaN or infinite.
    """
    _check_2d(Xtr, f"{name} (train)")
    n, d = Xtr.shape
    if n == 0:
        raise ValueError(f"{name}: the training split is empty")
    mean, std = np.empty(d), np.empty(d)
    w = _cols_per_block(n)
    for a in range(0, d, w):
        mean[a : a + w], std[a : a + w] = _centre_block(np.array(Xtr[:, a : a + w], dtype=np.float64), name, a)
    return mean, std


def standardise(Xtr, Xte, *, name: str = "features", return_stats: bool = False, inplace: bool = False):
    """Z-score both splits with the TRAINING split's column mean and std (float64 statistics).

    Returns float32 ``(Ztr, Zte)`` (plus ``(mean, std)`` when ``return_stats``). Constant training columns
    get std 1; NaN/inf inputs raise ValueError naming ``name``. ``inplace=True`` overwrites float32 numpy
    inputs instead of allocating (used for large layers). One pass over cache-sized column blocks:
    ``z = (x - mean) / std`` computed in float64, stored as float32.
    """
    Xtr = Xtr.numpy() if isinstance(Xtr, torch.Tensor) else np.asarray(Xtr)
    Xte = Xte.numpy() if isinstance(Xte, torch.Tensor) else np.asarray(Xte)
    _check_2d(Xtr, f"{name} (train)")
    _check_2d(Xte, f"{name} (test)")
    if Xtr.shape[1] != Xte.shape[1]:
        raise ValueError(f"{name}: train has {Xtr.shape[1]} columns but test has {Xte.shape[1]}")
    n, d = Xtr.shape
    if n == 0:
        raise ValueError(f"{name}: the training split is empty")
    outs = [X if inplace and X.dtype == np.float32 and X.flags.writeable else np.empty(X.shape, np.float32)
            for X in (Xtr, Xte)]
    mean, std = np.empty(d), np.empty(d)
    w = _cols_per_block(max(n, len(Xte)))
    for a in range(0, d, w):
        c = np.array(Xtr[:, a : a + w], dtype=np.float64)
        m, s = _centre_block(c, name, a)
        c /= s
        outs[0][:, a : a + w] = c
        t = np.array(Xte[:, a : a + w], dtype=np.float64)
        if not np.isfinite(t).all():
            raise ValueError(f"{name}: {int((~np.isfinite(t)).sum())} non-finite value(s) in the test split "
                             f"(columns {a}..{a + t.shape[1] - 1})")
        t -= m
        t /= s
        outs[1][:, a : a + w] = t
        mean[a : a + w], std[a : a + w] = m, s
    return (outs[0], outs[1], mean, std) if return_stats else (outs[0], outs[1])


def gram_matrix(Z, dtype: torch.dtype = torch.float64, device=None) -> torch.Tensor:
    """The Gram matrix ``K = Z Z'`` (n x n) of a float32 (n x d) matrix, as a ``dtype`` tensor on ``device``.

    Summed over column blocks in ``dtype``: float64 forms the exact products of the float32 inputs and sums
    them in float64. On the CPU the blocks go through BLAS ?syrk into one triangle of K (half the
    multiply-adds of a matrix product; no n x n temporaries), mirrored at the end; elsewhere through torch.
    """
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"gram_matrix: dtype must be torch.float32 or torch.float64, got {dtype}")
    dev = torch.device("cpu") if device is None else torch.device(device)
    _check_2d(Z, "gram_matrix")
    n, d = Z.shape
    w = max(256, _cols_per_block(n))
    if dev.type != "cpu":
        Zt = (Z if isinstance(Z, torch.Tensor) else torch.from_numpy(np.asarray(Z, dtype=np.float32))).to(dev)
        K = torch.zeros(n, n, dtype=dtype, device=dev)
        for a in range(0, d, w):
            c = Zt[:, a : a + w].to(dtype)
            K.addmm_(c, c.T)
        return K
    Zn = Z.detach().cpu().numpy() if isinstance(Z, torch.Tensor) else np.asarray(Z, dtype=np.float32)
    np_dtype, syrk = (np.float64, blas.dsyrk) if dtype == torch.float64 else (np.float32, blas.ssyrk)
    K = np.zeros((n, n), dtype=np_dtype, order="F")
    for a in range(0, d, w):  # c' of the C-ordered copy is Fortran-ordered: BLAS reads it in place
        K = syrk(1.0, np.array(Zn[:, a : a + w], dtype=np_dtype).T, beta=1.0, c=K, trans=1, overwrite_c=1)
    for a in range(0, n, 1024):  # lower triangle := upper, block by block, in place
        K[a : a + 1024, :a] = K[:a, a : a + 1024].T
        blk = K[a : a + 1024, a : a + 1024]
        blk[np.tril_indices(len(blk), -1)] = blk.T[np.tril_indices(len(blk), -1)]
    return torch.from_numpy(K.T)  # symmetric: the C-ordered view of the Fortran-ordered K


# ----------------------------------------------------------------------------------------------------------
# Logistic regression: batched SGD with the closed-form gradient, primal (W) or dual (A, W = W0 + A Z) form
# ----------------------------------------------------------------------------------------------------------
class _EpochOrder:
    """The clip order of each epoch of ``DataLoader(..., shuffle=True, generator=Generator().manual_seed(seed))``.

    Per epoch the DataLoader iterator draws one int64 base seed from the generator, then its RandomSampler
    draws randperm(n) (the order used) and, when the epoch's iteration ends, one more randperm(n) that it
    discards. Reproducing those draws makes our batches exactly the reference DataLoader's.
    """

    def __init__(self, seed: int):
        self.g = torch.Generator().manual_seed(int(seed))

    def next(self, n: int) -> torch.Tensor:
        torch.empty((), dtype=torch.int64).random_(generator=self.g)
        perm = torch.randperm(n, generator=self.g)
        torch.randperm(n, generator=self.g)
        return perm


def init_linear(d: int, n_classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Initial (C x d weight, C bias) ~ U(-1/sqrt(d), 1/sqrt(d)) from ``Generator().manual_seed(seed)`` (CPU)."""
    g = torch.Generator().manual_seed(int(seed))
    bound = 1.0 / math.sqrt(d)
    w = torch.empty(n_classes, d).uniform_(-bound, bound, generator=g)
    b = torch.empty(n_classes).uniform_(-bound, bound, generator=g)
    return w, b


def _as_list(X, device) -> list[torch.Tensor]:
    """F float32 (n, d) tensors on ``device`` from an array (n, d), a list of F (n, d) arrays, or (F, n, d)."""
    if isinstance(X, (list, tuple)):
        parts = [x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x, dtype=np.float32)) for x in X]
        if not parts or len({tuple(x.shape) for x in parts}) != 1 or parts[0].ndim != 2:
            raise ValueError(f"features: a group needs (n, d) arrays of one shape, got {[tuple(x.shape) for x in parts]}")
    else:
        X = X if isinstance(X, torch.Tensor) else torch.from_numpy(np.asarray(X, dtype=np.float32))
        if X.ndim not in (2, 3):
            raise ValueError(f"features: expected (n, d), (F, n, d) or a list of (n, d), got shape {tuple(X.shape)}")
        parts = [X] if X.ndim == 2 else list(X.unbind(0))
    return [x.to(device=device, dtype=torch.float32).contiguous() for x in parts]


def _as_labels(Y, n: int, n_classes: Sequence[int], what: str) -> np.ndarray:
    Y = np.asarray(Y)
    Y = Y[None] if Y.ndim == 1 else Y
    if Y.ndim != 2 or Y.shape != (len(n_classes), n):
        raise ValueError(f"{what}: expected {len(n_classes)} label vector(s) of length {n}, got shape {Y.shape}")
    if not np.issubdtype(Y.dtype, np.integer):
        raise ValueError(f"{what}: class codes must be integers, got dtype {Y.dtype}")
    for k, c in enumerate(n_classes):
        if n and (Y[k].min() < 0 or Y[k].max() >= c):
            raise ValueError(f"{what}: codes of task {k} must lie in [0, {c}), got [{Y[k].min()}, {Y[k].max()}]")
    return Y.astype(np.int64)


def _class_mask(n_classes: Sequence[int], device) -> torch.Tensor | None:
    """(K, Cmax, 1) additive logit mask: -inf on the padded classes of narrower tasks (they never win and get
    zero gradient), None when every task has Cmax classes."""
    cmax = max(n_classes)
    if all(c == cmax for c in n_classes):
        return None
    mask = torch.zeros(len(n_classes), cmax, 1)
    for k, c in enumerate(n_classes):
        mask[k, c:] = -math.inf
    return mask.to(device)


def _live_rows(n_classes: Sequence[int], S: int, device) -> torch.Tensor:
    """Indices of the real (not padded) class rows of an (S * K * Cmax) stack of weight rows."""
    cmax = max(n_classes)
    rows = [(s * len(n_classes) + k) * cmax + c for s in range(S) for k, nc in enumerate(n_classes) for c in range(nc)]
    return torch.tensor(rows, dtype=torch.int64, device=device)


def _init_weights(d: int, n_classes: Sequence[int], seeds: Sequence[int], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Initial weights (S, K*Cmax, d) and biases (S, K*Cmax, 1): task k of seed s from init_linear(d, C_k, s),
    padded class rows zero."""
    K, S, cmax = len(n_classes), len(seeds), max(n_classes)
    W0 = torch.zeros(S, K, cmax, d)
    b0 = torch.zeros(S, K, cmax)
    for si, s in enumerate(seeds):
        for k, c in enumerate(n_classes):
            W0[si, k, :c], b0[si, k, :c] = init_linear(d, c, s)
    return W0.view(S, K * cmax, d).to(device), b0.view(S, K * cmax, 1).to(device)


def _onehot(Ytr: np.ndarray, n_classes: Sequence[int], device) -> torch.Tensor:
    onehot = torch.zeros(len(n_classes), max(n_classes), Ytr.shape[1], device=device)  # (K, Cmax, n)
    onehot.scatter_(1, torch.as_tensor(Ytr, device=device).unsqueeze(1), 1.0)
    return onehot


def _logit_grad(z: torch.Tensor, onehot: torch.Tensor, idx: torch.Tensor, mask, F: int, S: int, K: int,
                cmax: int, B: int) -> torch.Tensor:
    """d mean-CE / d logits = (softmax - onehot) / B for logits z (F*S, K*Cmax, B) of the seed-major batch
    ``idx`` (S*B,)."""
    if mask is not None:
        z = (z.view(F * S, K, cmax, B) + mask).view(F * S, K * cmax, B)
    G = torch.softmax(z.view(F, S, K, cmax, B), dim=3)
    G.sub_(onehot.index_select(2, idx).view(K, cmax, S, B).permute(2, 0, 1, 3)).div_(B)
    return G.view(F * S, K * cmax, B)


def _sgd_loop(n: int, seeds: Sequence[int], hp: dict, step, log: logging.Logger | None, label: str) -> None:
    """Run ``step(idx (S, B))`` for every mini-batch of every epoch, batches in the reference DataLoader order."""
    bs, epochs = int(hp["batch_size"]), int(hp["epochs"])
    orders = [_EpochOrder(s) for s in seeds]
    t0 = last = time.perf_counter()
    for epoch in range(epochs):
        perm = torch.stack([o.next(n) for o in orders])  # (S, n)
        for start in range(0, n, bs):
            step(perm[:, start : start + bs])
        now = time.perf_counter()
        if log is not None and now - last >= PROGRESS_SECONDS and epoch + 1 < epochs:
            log.info(f"  {label}: epoch {epoch + 1}/{epochs}, {now - t0:.0f} s")
            last = now


def _train_primal(XF: torch.Tensor, Ytr: np.ndarray, n_classes: Sequence[int], seeds: Sequence[int], W0, b0,
                  hp: dict, log: logging.Logger | None = None, label: str = "") -> tuple[torch.Tensor, torch.Tensor]:
    """SGD on W for F x S x K probes at once. XF (F, n, d): standardised training features; Ytr (K, n) codes.

    Layout (chosen for speed on CPU, measured in bench/bench_probe.py): probe block j = f * S + s; weights
    Wt (F*S, K*Cmax, d) (nn.Linear's C x d per task), logits computed transposed (F*S, K*Cmax, B) so the
    softmax over the small class axis runs vectorised along the batch. Returns (Wt, bt (F*S, K*Cmax, 1)).
    """
    F, n, d = XF.shape
    K, S, cmax = len(n_classes), len(seeds), max(n_classes)
    dev = XF.device
    mask, onehot = _class_mask(n_classes, dev), _onehot(Ytr, n_classes, dev)
    Wt = W0.repeat(F, 1, 1)  # block f*S+s starts from seed s's initial weights
    bt = b0.repeat(F, 1, 1)
    vW, vb = torch.zeros_like(Wt), torch.zeros_like(bt)
    lr, mu = float(hp["lr"]), float(hp["momentum"])

    def step(ib):
        B = ib.shape[1]
        idx = ib.reshape(-1).to(dev)  # (S*B,) seed-major
        Xb = XF.index_select(1, idx).view(F * S, B, d)  # rows of probe block f*S+s
        G = _logit_grad(torch.baddbmm(bt, Wt, Xb.transpose(1, 2)), onehot, idx, mask, F, S, K, cmax, B)
        vW.mul_(mu).add_(torch.bmm(G, Xb))
        vb.mul_(mu).add_(G.sum(2, keepdim=True))
        Wt.add_(vW, alpha=-lr)
        bt.add_(vb, alpha=-lr)

    _sgd_loop(n, seeds, hp, step, log, label)
    if not torch.isfinite(Wt).all():
        raise FloatingPointError(f"{label}: logistic-regression weights diverged (lr {lr} too large?)")
    return Wt, bt


def _train_dual(KF: torch.Tensor, P0: torch.Tensor, b0: torch.Tensor, Ytr: np.ndarray, n_classes: Sequence[int],
                seeds: Sequence[int], hp: dict, log: logging.Logger | None = None, label: str = ""
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """The same SGD in the dual form (module doc): W = W0 + A Z, v_W = v_A Z.

    KF (F, n, n): training Gram matrices Z Z' (float32); P0 (F*S, K*Cmax, n): initial logits W0 Z' of the
    training clips (no bias); b0 (S, K*Cmax, 1). Returns (A (F*S, K*Cmax, n), bt (F*S, K*Cmax, 1)).
    """
    F, n, _ = KF.shape
    K, S, cmax = len(n_classes), len(seeds), max(n_classes)
    KC, dev = K * cmax, KF.device
    mask, onehot = _class_mask(n_classes, dev), _onehot(Ytr, n_classes, dev)
    A = torch.zeros(F * S, KC, n, device=dev)
    bt = b0.repeat(F, 1, 1)
    vA, vb = torch.zeros_like(A), torch.zeros_like(bt)
    lr, mu = float(hp["lr"]), float(hp["momentum"])

    def step(ib):
        B = ib.shape[1]
        ib = ib.to(dev).contiguous()
        idx = ib.view(-1)
        Kb = KF.index_select(1, idx).view(F * S, B, n)  # K symmetric: rows idx = the batch's columns
        cols = ib.view(1, S, 1, B).expand(F, S, KC, B).reshape(F * S, KC, B)
        z = torch.baddbmm(torch.gather(P0, 2, cols).add_(bt), A, Kb.transpose(1, 2))  # (F*S, KC, B)
        G = _logit_grad(z, onehot, idx, mask, F, S, K, cmax, B)
        vA.mul_(mu).scatter_add_(2, cols, G)  # velocity v_A Z: G lands in the batch's columns
        vb.mul_(mu).add_(G.sum(2, keepdim=True))
        A.add_(vA, alpha=-lr)
        bt.add_(vb, alpha=-lr)

    _sgd_loop(n, seeds, hp, step, log, label)
    if not torch.isfinite(A).all():
        raise FloatingPointError(f"{label}: logistic-regression weights diverged (lr {lr} too large?)")
    return A, bt


def _argmax_codes(z: torch.Tensor, n_classes: Sequence[int], S: int, mask) -> torch.Tensor:
    """Class codes (S, K, rows) from logits z (rows, S*K*Cmax) (padded classes masked)."""
    K, cmax = len(n_classes), max(n_classes)
    z = z.reshape(-1, S, K, cmax)
    if mask is not None:
        z = z + mask
    return z.argmax(-1).permute(1, 2, 0)


@torch.no_grad()
def _predict_group(Xs: list[torch.Tensor], Wt: torch.Tensor, bt: torch.Tensor, n_classes: Sequence[int],
                   S: int) -> np.ndarray:
    """Arg-max class codes (S, F, K, n) of every probe on the F (n, d) feature matrices Xs."""
    F, (n, d) = len(Xs), Xs[0].shape
    K, cmax = len(n_classes), max(n_classes)
    mask = _class_mask(n_classes, Xs[0].device)
    mask = None if mask is None else mask[..., 0]
    out = torch.empty(S, F, K, n, dtype=torch.int64)
    W = Wt.view(F, S * K * cmax, d)
    b = bt.view(F, S * K * cmax)
    step = max(1, CHUNK_BYTES // (4 * max(d, S * K * cmax)))
    for f in range(F):
        for i in range(0, n, step):
            z = torch.addmm(b[f], Xs[f][i : i + step], W[f].T)
            out[:, f, :, i : i + step] = _argmax_codes(z, n_classes, S, mask).cpu()
    return out.numpy()


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """(C x C) int64 counts, rows = true class, columns = predicted class."""
    flat = np.asarray(y_true, dtype=np.int64) * n_classes + np.asarray(y_pred, dtype=np.int64)
    return np.bincount(flat, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def logistic_costs(n_train: int, n_test: int, d: int, n_classes: Sequence[int], n_seeds: int, params: dict,
                   gram_columns: int | None = None) -> dict:
    """Estimated multiply-adds of training and evaluating one feature's S x K logistic probes in each form.

    With R = S * K * Cmax weight rows (padded), E epochs, b = ceil(n_train / batch) batches per epoch:
    * ``primal`` = 3 E n_train d R (forward, gradient, gather and update traffic) + R (n_train + n_test) d;
    * ``dual`` = ``gram`` + R d (2 n_train + n_test) (initial logits W0 Z', final W = W0 + A Z, test logits)
      + E R n_train^2 (batch logits A K_b) + 3 E b R n_train (velocity and A updates);
    * ``gram`` = n_train (n_train + 1) / 2 x ``gram_columns`` (the columns whose K still has to be computed:
      d by default, 0 when K is given, the new block's width when a concatenation reuses a block's K).
    ``form`` is the cheaper one, except that the dual needs an n_train x n_train matrix: only when its float64
    size fits ``GRAM_BYTES`` (n_train <= ~16,000).
    """
    hp = probe_params(params)
    E, R = int(hp["epochs"]), n_seeds * len(n_classes) * max(n_classes)
    batches = math.ceil(n_train / int(hp["batch_size"]))
    g = n_train * (n_train + 1) / 2 * (d if gram_columns is None else gram_columns)
    primal = 3.0 * E * n_train * d * R + R * (n_train + n_test) * d
    dual = g + R * d * (2 * n_train + n_test) + E * R * n_train**2 + 3.0 * E * batches * R * n_train
    fits = 8 * n_train**2 <= GRAM_BYTES
    return {"primal": primal, "dual": dual, "gram": g, "form": "dual" if fits and dual < primal else "primal"}


def _as_grams(gram_in, F: int, n: int, device) -> list[torch.Tensor]:
    parts = list(gram_in) if isinstance(gram_in, (list, tuple)) else (
        [gram_in] if getattr(gram_in, "ndim", 0) == 2 else list(gram_in))
    parts = [g if isinstance(g, torch.Tensor) else torch.from_numpy(np.asarray(g)) for g in parts]
    if len(parts) != F or any(tuple(g.shape) != (n, n) for g in parts):
        raise ValueError(f"gram: expected {F} training Gram matrices of shape ({n}, {n}), "
                         f"got {[tuple(g.shape) for g in parts]}")
    return [g.to(device=device, dtype=torch.float32) for g in parts]


def fit_logistic_many(Xtr, Ytr, Xte, Yte, n_classes: Sequence[int], seeds: Sequence[int], params: dict, *,
                      device=None, log: logging.Logger | None = None, label: str = "probes", form: str = "auto",
                      gram=None) -> dict:
    """Train S x F x K logistic probes as one batched model on ALREADY STANDARDISED float features.

    ``Xtr``/``Xte``: (n, d), a list of F (n, d) arrays of equal width d, or (F, n, d) (F features);
    ``Ytr``/``Yte``: (K, n) int class codes (K classification tasks, or (n,) for one); ``n_classes``: K
    class counts; ``seeds``: S probe seeds. ``form``: 'primal' (SGD on W), 'dual' (the same SGD on A with
    W = W0 + A Z, module doc) or 'auto' (the one with fewer estimated multiply-adds, :func:`logistic_costs`);
    ``gram``: optional training Gram matrices ``Ztr Ztr'`` of the F features ((n_tr, n_tr) each, any float
    dtype; reused by the dual form instead of computing them).
    Returns arrays indexed [s, f, k]: ``train_acc``, ``test_acc`` (fractions), ``pred_test`` (S, F, K,
    n_test), ``confusion`` (nested list [s][f][k] of C_k x C_k), ``weight`` (S, F, K, Cmax, d) and ``bias``
    (S, F, K, Cmax) (task k uses the first C_k rows), ``form`` (the one that ran), ``costs``
    (:func:`logistic_costs`) and ``seconds`` (wall time of the whole batch).
    """
    hp = probe_params(params)
    n_classes = [int(c) for c in n_classes]
    if not n_classes or min(n_classes) < 1:
        raise ValueError(f"{label}: n_classes must be a non-empty list of counts >= 1, got {n_classes}")
    if form not in ("auto", "primal", "dual"):
        raise ValueError(f"{label}: form must be 'auto', 'primal' or 'dual', got {form!r}")
    dev = pick_device(hp["device"]) if device is None else torch.device(device)
    t0 = time.perf_counter()
    Ztr, Zte = _as_list(Xtr, dev), _as_list(Xte, dev)
    F, (n_tr, d) = len(Ztr), Ztr[0].shape
    if len(Zte) != F or Zte[0].shape[1] != d:
        raise ValueError(f"{label}: {F} train feature(s) of width {d} but {len(Zte)} test feature(s) of width "
                         f"{Zte[0].shape[1]}")
    if n_tr == 0:
        raise ValueError(f"{label}: no training clips")
    Ytr = _as_labels(Ytr, n_tr, n_classes, f"{label} (train labels)")
    Yte = _as_labels(Yte, Zte[0].shape[0], n_classes, f"{label} (test labels)")
    seeds = [int(s) for s in seeds]
    S, K, cmax = len(seeds), len(n_classes), max(n_classes)
    grams = None if gram is None else _as_grams(gram, F, n_tr, dev)
    costs = logistic_costs(n_tr, Zte[0].shape[0], d, n_classes, S, hp, 0 if grams is not None else None)
    form = costs["form"] if form == "auto" else form
    W0, b0 = _init_weights(d, n_classes, seeds, dev)
    if form == "primal":
        XF = Ztr[0].unsqueeze(0) if F == 1 else torch.stack(Ztr)
        Wt, bt = _train_primal(XF, Ytr, n_classes, seeds, W0, b0, hp, log, label)
        del XF
        ptr = _predict_group(Ztr, Wt, bt, n_classes, S)
    else:
        KF = torch.stack(grams if grams is not None else [gram_matrix(z, torch.float32, dev) for z in Ztr])
        live = _live_rows(n_classes, S, dev)  # padded class rows of W0 and A stay zero: skip them
        W0l = W0.view(S * K * cmax, d).index_select(0, live)
        P0 = torch.zeros(F, S * K * cmax, n_tr, device=dev)
        for f in range(F):
            P0[f, live] = W0l @ Ztr[f].T
        A, bt = _train_dual(KF, P0.view(F * S, K * cmax, n_tr), b0, Ytr, n_classes, seeds, hp, log, label)
        A = A.view(F, S * K * cmax, n_tr)
        Wt = W0.view(1, S * K * cmax, d).repeat(F, 1, 1)
        for f in range(F):
            Wt[f, live] = torch.addmm(W0l, A[f].index_select(0, live), Ztr[f])
        mask = _class_mask(n_classes, dev)
        ztr = torch.baddbmm(P0 + bt.view(F, S * K * cmax, 1), A, KF)  # (F, S*K*Cmax, n_tr) training logits
        ptr = torch.stack([_argmax_codes(ztr[f].T, n_classes, S, None if mask is None else mask[..., 0])
                           for f in range(F)], 1).cpu().numpy()
        Wt = Wt.view(F * S, K * cmax, d)
        del KF, P0, A, ztr
    pte = _predict_group(Zte, Wt, bt, n_classes, S)
    train_acc = (ptr == Ytr[None, None]).mean(-1)
    test_acc = (pte == Yte[None, None]).mean(-1) if Yte.shape[1] else np.full(pte.shape[:3], np.nan)
    conf = [[[confusion_matrix(Yte[k], pte[s, f, k], c) for k, c in enumerate(n_classes)]
             for f in range(F)] for s in range(S)]
    weight = Wt.view(F, S, K, cmax, d).transpose(0, 1).cpu()
    bias = bt.view(F, S, K, cmax).transpose(0, 1).cpu()
    return {"train_acc": train_acc, "test_acc": test_acc, "pred_test": pte, "confusion": conf,
            "weight": weight, "bias": bias, "form": form, "costs": costs, "seconds": time.perf_counter() - t0}


def fit_logistic(Xtr, ytr, Xte, yte, n_classes: int, seed: int, params: dict) -> dict:
    """One multinomial logistic probe (see module doc): standardise with training stats, SGD, evaluate.

    Returns ``train_acc``, ``test_acc`` (fractions in [0, 1]), ``confusion`` (C x C int64, rows true,
    columns predicted, test split) and ``pred`` (predicted test codes), plus ``weight`` (C x d), ``bias`` (C)
    of the model on the standardised features.
    """
    Ztr, Zte = standardise(Xtr, Xte)
    r = fit_logistic_many(Ztr, np.asarray(ytr)[None], Zte, np.asarray(yte)[None], [n_classes], [seed], params,
                          label="logistic probe")
    return {"train_acc": float(r["train_acc"][0, 0, 0]), "test_acc": float(r["test_acc"][0, 0, 0]),
            "confusion": r["confusion"][0][0][0], "pred": r["pred_test"][0, 0, 0],
            "weight": r["weight"][0, 0, 0].clone(), "bias": r["bias"][0, 0, 0].clone()}


# ----------------------------------------------------------------------------------------------------------
# Linear regression: OLS (float64), dual ridge when p + 1 >= n
# ----------------------------------------------------------------------------------------------------------
def _tensor(X, device) -> torch.Tensor:
    X = X if isinstance(X, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(X))
    return X.to(device)


def _pinv_solve(A: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
    """Minimum-norm solution of the symmetric PSD system A X = R (eigenvalues below 1e-12 * max dropped)."""
    lam, V = torch.linalg.eigh(A)
    keep = lam > 1e-12 * lam.max().clamp_min(0)
    return V[:, keep] @ ((V[:, keep].T @ R) / lam[keep].unsqueeze(1))


def _loo_ridge(U: torch.Tensor, s: torch.Tensor, Yc: torch.Tensor, lams: torch.Tensor) -> torch.Tensor:
    """Exact leave-one-out mean squared error (G x T) of ridge with an unpenalised intercept, per penalty.

    ``U`` (n x r, orthonormal columns) and ``s`` (r, > 0) are the nonzero eigenpairs of the centred training
    Gram matrix K = Xc Xc'; ``Yc`` (n x T) the centred targets; ``lams`` (G) absolute penalties. The fit is the
    linear smoother H = 11'/n + U diag(s / (s + lam)) U' (the intercept is unpenalised and 1 is in the null
    space of K), so the leave-one-out residual is e_i / (1 - H_ii) with e = Yc - U diag(s/(s+lam)) U' Yc
    (exact for penalised least squares with a fixed penalty). Cost O(n r (G + G T)); 1 - H_ii <= 0
    (interpolation) gives inf.
    """
    n = U.shape[0]
    F = s[:, None] / (s[:, None] + lams[None, :])  # r x G shrinkage factors
    one_minus_h = (1.0 - 1.0 / n) - (U * U) @ F  # n x G
    UtY = U.T @ Yc  # r x T
    G, T = len(lams), Yc.shape[1]
    fit = (U @ (F[:, :, None] * UtY[:, None, :]).reshape(len(s), G * T)).reshape(n, G, T)
    e = Yc[:, None, :] - fit
    loo = e / one_minus_h[:, :, None]
    mse = (loo * loo).mean(0)
    return torch.where((one_minus_h > 0).all(0)[:, None], mse, torch.full_like(mse, math.inf))


def _top_eig(A: torch.Tensor, scale: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenpairs of the symmetric PSD float64 ``A`` whose eigenvalue exceeds scale x eps x the largest."""
    s, V = torch.linalg.eigh(A)
    keep = s > scale * torch.finfo(torch.float64).eps * s.max().clamp_min(0)
    if not bool(s.max() > 0):
        keep[:] = False
    return s[keep], V[:, keep]


def fit_linear(Xtr, ytr, Xte, yte, ridge: float | str = 1e-3, *, device=None, gram=None) -> dict:
    """Linear regression with an intercept in float64; RMSE in the targets' units.

    Numeric ``ridge`` (>= 0):

    * p + 1 < n_train: ordinary least squares (minimum-norm if the design is rank deficient): LAPACK gelsd on
      the centred design when it fits in ``LSTSQ_BYTES`` on the CPU, else the normal equations (Gram matrix
      accumulated in float64 chunks, Cholesky, eigen-pseudo-inverse if singular).
    * p + 1 >= n_train (features outnumber the clips): ridge in the dual form, alpha = (K + lam I)^-1 yc with
      K = Xc Xc' and lam = ``ridge`` * trace(K) / n_train; ``ridge`` 0 gives the minimum-norm interpolant.

    ``ridge="auto"`` (any p): ridge regression (intercept unpenalised) whose penalty is chosen PER TARGET
    COLUMN by exact leave-one-out mean squared error on the training split only, over the absolute penalties
    lam = ``RIDGE_GRID`` x trace(K) / n_train (smallest LOO error wins; the first on ties). One float64
    eigendecomposition K = U diag(s) U' serves every candidate (O(n_train^2) each, :func:`_loo_ridge`) and the
    final fit alpha = U diag(1 / (s + lam)) U' yc. When the n_train x n_train matrix would exceed
    ``GRAM_BYTES`` and p < n_train, the p x p covariance Xc' Xc = V diag(s) V' is decomposed instead
    (U = Xc V diag(s)^-1/2, coefficients V diag(s^1/2 / (s + lam)) U' yc): the same fit. Eigenvalues below
    n x eps x the largest count as zero. ``method`` is 'ridge_loo'; ``ridge_grid`` (G, absolute lam),
    ``ridge_rel`` (the chosen lam / (trace(K) / n), like ``ridge_used``), ``loo_mse`` (G or G x T, target
    units squared) and ``form`` ('dual' or 'primal') are also returned.

    ``gram`` (optional, float64 (n_train, n_train)) is the UNCENTRED Gram matrix ``Xtr Xtr'`` when already
    computed (used by the dual ridge and by auto): K is then obtained from it by exact double centring,
    K = G - r 1' - 1 r' + m 1 1' (r the row means of G, m its mean), instead of a pass over the p columns.
    Only for features whose training mean is (nearly) zero, such as standardised ones (else the centring would
    cancel digits: ValueError). The coefficients and test predictions then come from one pass over
    cache-sized column blocks.

    ``ytr``/``yte`` may be (n,) or (n, T) (T targets fitted with one factorisation). Returns ``train_rmse``,
    ``test_rmse`` (floats, or (T,) arrays for 2-D targets), ``pred`` (float64 test predictions, shaped like
    ``yte``), ``ridge_used`` (the absolute penalty lam, 0.0 for OLS; with auto and 2-D targets a (T,) array),
    ``method`` ('ols', 'ridge_dual' or 'ridge_loo'), ``coef`` (p or p x T), ``intercept``.
    """
    dev = torch.device("cpu") if device is None else torch.device(device)
    _check_2d(Xtr, "regression features (train)")
    _check_2d(Xte, "regression features (test)")
    n, p = Xtr.shape
    if Xte.shape[1] != p:
        raise ValueError(f"regression features: train has {p} columns but test has {Xte.shape[1]}")
    if n < 2:
        raise ValueError(f"regression: need at least 2 training clips, got {n}")
    auto = isinstance(ridge, str)
    if auto and ridge != "auto":
        raise ValueError(f"ridge: expected a number >= 0 or 'auto', got {ridge!r}")
    if not auto and ridge < 0:
        raise ValueError(f"ridge: expected >= 0, got {ridge}")
    ytr, yte = np.asarray(ytr, dtype=np.float64), np.asarray(yte, dtype=np.float64)
    one = ytr.ndim == 1
    Y, Yt = (ytr[:, None], yte[:, None]) if one else (ytr, yte)
    if Y.ndim != 2 or Yt.ndim != 2 or len(Y) != n or len(Yt) != Xte.shape[0] or Y.shape[1] != Yt.shape[1]:
        raise ValueError(f"regression targets: expected ({n}[, T]) and ({Xte.shape[0]}[, T]), "
                         f"got {ytr.shape} and {yte.shape}")
    if not (np.isfinite(Y).all() and np.isfinite(Yt).all()):
        raise ValueError("regression targets: NaN or infinite values")
    Xtr, Xte = _tensor(Xtr, dev), _tensor(Xte, dev)
    Y, Yt = torch.as_tensor(Y, device=dev), torch.as_tensor(Yt, device=dev)
    rows, n_te = _rows_per_chunk(p), Xte.shape[0]
    primal = auto and p < n and n * n * 8 > GRAM_BYTES
    use_gram = gram is not None and (p + 1 >= n or auto) and not primal
    mu = torch.zeros(p, dtype=torch.float64, device=dev)
    if not use_gram:  # (with the Gram matrix, the column means come in the one pass after the solve)
        for i in range(0, n, rows):
            mu += Xtr[i : i + rows].double().sum(0)
        mu /= n
        if not torch.isfinite(mu).all():
            raise ValueError("regression features (train): NaN or infinite values")
    ybar = Y.mean(0)
    Yc = Y - ybar
    extra = {}
    if primal:  # ridge auto from the p x p covariance (n_train x n_train would not fit)
        method = "ridge_loo"
        C = torch.zeros(p, p, dtype=torch.float64, device=dev)
        for i in range(0, n, rows):
            B = Xtr[i : i + rows].double() - mu
            C.addmm_(B.T, B)
        trace = float(torch.trace(C))
        s, V = _top_eig(C, max(n, p))
        U = torch.cat([(Xtr[i : i + rows].double() - mu) @ V for i in range(0, n, rows)]) / s.sqrt()
        lam, extra = _choose_ridge(U, s, Yc, trace, n, "primal")
        UtY = U.T @ Yc
        pred_tr = U @ (s[:, None] / (s[:, None] + lam) * UtY)
        coef = V @ (s.sqrt()[:, None] / (s[:, None] + lam) * UtY)
        pred_te = torch.cat([(Xte[i : i + rows].double() - mu) @ coef for i in range(0, n_te, rows)]
                            or [torch.zeros(0, Y.shape[1], dtype=torch.float64, device=dev)])
    elif p + 1 < n and not auto:
        method, lam = "ols", 0.0
        if dev.type == "cpu" and n * p * 8 <= LSTSQ_BYTES:
            coef = torch.linalg.lstsq(Xtr.double() - mu, Yc, driver="gelsd").solution
        else:
            G = torch.zeros(p, p, dtype=torch.float64, device=dev)
            R = torch.zeros(p, Y.shape[1], dtype=torch.float64, device=dev)
            for i in range(0, n, rows):
                C = Xtr[i : i + rows].double() - mu
                G.addmm_(C.T, C)
                R.addmm_(C.T, Yc[i : i + rows])
            live = torch.diagonal(G) > 0  # constant columns carry no information
            coef = torch.zeros(p, Y.shape[1], dtype=torch.float64, device=dev)
            Gl = G[live][:, live]
            L, info = torch.linalg.cholesky_ex(Gl)
            coef[live] = torch.cholesky_solve(R[live], L) if int(info) == 0 else _pinv_solve(Gl, R[live])
        pred_tr = torch.cat([(Xtr[i : i + rows].double() - mu) @ coef for i in range(0, n, rows)])
        pred_te = torch.cat([(Xte[i : i + rows].double() - mu) @ coef for i in range(0, n_te, rows)]
                            or [torch.zeros(0, Y.shape[1], dtype=torch.float64, device=dev)])
    else:
        method = "ridge_loo" if auto else "ridge_dual"
        cols = max(1, CHUNK_BYTES // (8 * n))
        if use_gram:
            G = gram if isinstance(gram, torch.Tensor) else torch.from_numpy(np.asarray(gram))
            if tuple(G.shape) != (n, n) or G.dtype != torch.float64:
                raise ValueError(f"regression: gram must be the float64 ({n}, {n}) matrix Xtr Xtr', "
                                 f"got {G.dtype} {tuple(G.shape)}")
            G = G.to(dev)
            m = G.mean()  # = |training mean|^2: must be negligible next to the mean squared norm trace / n
            if not torch.isfinite(G).all():
                raise ValueError("regression: gram has NaN or infinite values")
            if float(m) > 1e-6 * float(torch.trace(G)) / n:
                raise ValueError("regression: gram is for (nearly) centred features such as standardised ones; "
                                 "these have a large mean (centring would cancel digits), call without gram")
            r = G.mean(1, keepdim=True)
            K = G - r - r.T + m
        else:
            K = torch.zeros(n, n, dtype=torch.float64, device=dev)
            for a in range(0, p, cols):
                C = Xtr[:, a : a + cols].double() - mu[a : a + cols]
                K.addmm_(C, C.T)
        if auto:
            trace = float(torch.trace(K))
            s, U = _top_eig(K, n)
            del K
            lam, extra = _choose_ridge(U, s, Yc, trace, n, "dual")
            UtY = U.T @ Yc
            pred_tr = U @ (s[:, None] / (s[:, None] + lam) * UtY)
            alpha = U @ (UtY / (s[:, None] + lam))
            del U
        else:
            lam = float(ridge) * float(torch.trace(K)) / n
            if lam > 0:
                Kr = K.clone()
                Kr.diagonal().add_(lam)
                alpha = torch.cholesky_solve(Yc, torch.linalg.cholesky(Kr))
            else:
                alpha = _pinv_solve(K, Yc)
            pred_tr = K @ alpha
        # coefficients Xc' alpha and test predictions in one pass over cache-sized column blocks
        coef = torch.empty(p, Y.shape[1], dtype=torch.float64, device=dev)
        pred_te = torch.zeros(n_te, Y.shape[1], dtype=torch.float64, device=dev)
        w = _cols_per_block(max(n, n_te))
        for a in range(0, p, w):
            C = Xtr[:, a : a + w].double()
            if use_gram:
                mu[a : a + w] = C.sum(0) / n
            C -= mu[a : a + w]
            coef[a : a + w] = C.T @ alpha
            pred_te.addmm_(Xte[:, a : a + w].double() - mu[a : a + w], coef[a : a + w])
        if not torch.isfinite(mu).all():
            raise ValueError("regression features (train): NaN or infinite values")
    pred_tr = pred_tr + ybar
    pred_te = pred_te + ybar
    if not torch.isfinite(pred_te).all():
        raise ValueError("regression features (test): NaN or infinite values")
    rmse_tr = torch.sqrt(torch.mean((pred_tr - Y) ** 2, 0)).cpu().numpy()
    rmse_te = (torch.sqrt(torch.mean((pred_te - Yt) ** 2, 0)).cpu().numpy() if n_te
               else np.full(Y.shape[1], np.nan))
    intercept = (ybar - mu @ coef).cpu().numpy()
    coef, pred_te = coef.cpu().numpy(), pred_te.cpu().numpy()
    if auto:
        lam = lam.cpu().numpy()
        if one:
            lam, extra["loo_mse"] = float(lam[0]), extra["loo_mse"][:, 0]
            extra["ridge_rel"] = float(extra["ridge_rel"][0])
    if one:
        rmse_tr, rmse_te, coef, pred_te, intercept = (float(rmse_tr[0]), float(rmse_te[0]), coef[:, 0],
                                                      pred_te[:, 0], float(intercept[0]))
    return {"train_rmse": rmse_tr, "test_rmse": rmse_te, "pred": pred_te, "ridge_used": lam, "method": method,
            "coef": coef, "intercept": intercept, **extra}


def _choose_ridge(U: torch.Tensor, s: torch.Tensor, Yc: torch.Tensor, trace: float, n: int,
                  form: str) -> tuple[torch.Tensor, dict]:
    """Per target column, the penalty of ``RIDGE_GRID`` x trace / n with the smallest exact LOO error."""
    lams = torch.as_tensor(RIDGE_GRID * (trace / n), dtype=torch.float64, device=U.device)
    loo = _loo_ridge(U, s, Yc, lams)  # G x T
    best = torch.argmin(loo, 0)  # first minimum on ties: deterministic
    return lams[best], {"ridge_grid": lams.cpu().numpy(), "ridge_rel": RIDGE_GRID[best.cpu().numpy()],
                        "loo_mse": loo.cpu().numpy(), "form": form}


# ----------------------------------------------------------------------------------------------------------
# Input files
# ----------------------------------------------------------------------------------------------------------
def read_labels(mel_h5) -> tuple[np.ndarray, list[dict], str]:
    """(split (N,) uint8, tasks with ``y`` (codes or values) and ``classes``, main task) from ``mel.h5``."""
    with open_h5(mel_h5, "mel") as f:
        df, tasks, main = read_clip_table(f)
    split = df["split"].to_numpy()
    bad = ~np.isin(split, (TRAIN, TEST))
    if bad.any():
        raise ValueError(f"{mel_h5}: meta/split must be 0 (train) or 1 (test); found {sorted(set(split[bad]))}")
    if not (split == TRAIN).any() or not (split == TEST).any():
        raise ValueError(f"{mel_h5}: the split needs both train and test clips "
                         f"({int((split == TRAIN).sum())} train, {int((split == TEST).sum())} test)")
    for t in tasks:
        if t["type"] == "classification":
            t["y"] = df[t["name"] + "_code"].to_numpy(dtype=np.int64)
        elif t["type"] == "regression":
            t["y"] = df[t["name"]].to_numpy(dtype=np.float64)
            if not np.isfinite(t["y"]).all():
                raise ValueError(f"{mel_h5}: labels/{t['name']} has NaN or infinite values")
        else:
            raise ValueError(f"{mel_h5}: labels/{t['name']} has unknown type {t['type']!r}")
    return split, tasks, main


def _handcrafted_index(f, path, n: int) -> dict[str, dict]:
    """display name -> {key, d} of every feature in an open handcrafted.h5 (rows checked against n)."""
    if "features" not in f:
        raise ValueError(f"{path}: no 'features' group")
    out = {}
    for key, ds in f["features"].items():
        if ds.ndim != 2 or ds.shape[0] != n:
            raise ValueError(f"{path}: features/{key} has shape {ds.shape}; expected ({n}, d) rows aligned with mel.h5")
        name = ds.attrs.get("name", key)
        name = name.decode() if isinstance(name, bytes) else str(name)
        if name in out:
            raise ValueError(f"{path}: display name {name!r} used by features/{out[name]['key']} and features/{key}")
        out[name] = {"key": key, "d": int(ds.shape[1])}
    if not out:
        raise ValueError(f"{path}: the 'features' group is empty")
    return out


class _Pool:
    """Float32 slabs reused group after group within one job. A fresh array of hundreds of MB costs a page
    fault per page on first touch (and, with transparent huge pages, compaction stalls: ~2-3 s per deep-probe
    job measured), for every layer; a slab is allocated once (grown when a wider feature comes) and reused."""

    def __init__(self):
        self.slabs: dict = {}

    def array(self, key, shape: tuple[int, int]) -> np.ndarray:
        size = int(np.prod(shape))
        slab = self.slabs.get(key)
        if slab is None or slab.size < size:
            self.slabs[key] = None  # free the old slab before allocating the larger one
            slab = self.slabs[key] = np.empty(size, dtype=np.float32)
        return slab[:size].reshape(shape)

    def pair(self, i: int, n_tr: int, n_te: int, d: int) -> tuple[np.ndarray, np.ndarray]:
        """(train, test) destinations of the i-th feature of a group."""
        return self.array((i, TRAIN), (n_tr, d)), self.array((i, TEST), (n_te, d))

    def release(self, key) -> None:
        """Hand the slab over to the caller (e.g. conv3 kept for the concatenations): never reused again."""
        self.slabs.pop(key, None)


def _load_split(ds, split: np.ndarray, what: str, out: tuple[np.ndarray, np.ndarray] | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """Read an (N x d) dataset in row chunks straight into float32 (train, test) arrays (``out``, e.g. pooled
    slabs or column blocks of a concatenation, else new arrays), then standardise them in place: peak memory
    is the feature itself plus one reused chunk buffer."""
    n, d = ds.shape
    tr = split == TRAIN
    n_tr = int(tr.sum())
    if out is None:
        out = np.empty((n_tr, d), dtype=np.float32), np.empty((n - n_tr, d), dtype=np.float32)
    Xtr, Xte = out
    if Xtr.shape != (n_tr, d) or Xte.shape != (n - n_tr, d):
        raise ValueError(f"{what}: destination shapes {Xtr.shape}, {Xte.shape} do not fit ({n_tr} + {n - n_tr}, {d})")
    step = min(n, _rows_per_chunk(d))
    buf = np.empty((step, d), dtype=np.float32)
    i_tr = i_te = 0
    for i in range(0, n, step):
        k = min(step, n - i)
        ds.read_direct(buf, np.s_[i : i + k], np.s_[0:k])
        m = tr[i : i + k]
        a = int(m.sum())
        np.compress(m, buf[:k], axis=0, out=Xtr[i_tr : i_tr + a])
        np.compress(~m, buf[:k], axis=0, out=Xte[i_te : i_te + k - a])
        i_tr, i_te = i_tr + a, i_te + k - a
    return standardise(Xtr, Xte, name=what, inplace=True)


def _groups(items: list[dict], n: int) -> list[list[dict]]:
    """Split items (each with width ``d``) into batches of equal width whose stacked size fits GROUP_BYTES."""
    by_d: dict[int, list[dict]] = defaultdict(list)
    for it in items:
        by_d[it["d"]].append(it)
    out = []
    for d, its in by_d.items():
        per = max(1, GROUP_BYTES // max(1, 4 * n * d))
        out += [its[i : i + per] for i in range(0, len(its), per)]
    return out


# ----------------------------------------------------------------------------------------------------------
# Tidy tables
# ----------------------------------------------------------------------------------------------------------
class _Tables:
    def __init__(self, dataset: str):
        self.dataset = dataset
        self.scores: list[dict] = []
        self.confusion: list[tuple[dict, list[str], np.ndarray]] = []

    def keys(self, feature, probe_task, probe_seed="", arch="", seed="", layer="", trained="", train_task=""):
        return {"dataset": self.dataset, "feature": feature, "arch": arch, "seed": seed, "layer": layer,
                "trained": trained, "train_task": train_task, "probe_task": probe_task, "probe_seed": probe_seed}

    def add_scores(self, keys: dict, metric: str, train: float, test: float) -> None:
        self.scores.append({**keys, "metric": metric, "split": "train", "value": float(train)})
        self.scores.append({**keys, "metric": metric, "split": "test", "value": float(test)})

    def add_confusion(self, keys: dict, classes: list[str], cm: np.ndarray) -> None:
        self.confusion.append((keys, list(classes), np.asarray(cm)))

    def frames(self, features: list[str], tasks: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Both tables, rows ordered by feature (as given), trained before untrained, task (as given); the
        order therefore does not depend on how probes were grouped for training."""
        scores = pd.DataFrame(self.scores, columns=SCORE_COLUMNS)
        sizes = np.array([len(c) ** 2 for _, c, _ in self.confusion], dtype=np.int64)
        cols = {k: np.repeat(np.array([keys[k] for keys, _, _ in self.confusion], dtype=object), sizes)
                for k in KEY_COLUMNS}
        cols["split"] = np.full(int(sizes.sum()), "test", dtype=object)
        cls = [np.asarray(c, dtype=object) for _, c, _ in self.confusion]
        cols["true"] = np.concatenate([np.repeat(c, len(c)) for c in cls] or [np.empty(0, object)])
        cols["predicted"] = np.concatenate([np.tile(c, len(c)) for c in cls] or [np.empty(0, object)])
        cols["count"] = np.concatenate([cm.reshape(-1) for _, _, cm in self.confusion] or [np.empty(0, np.int64)])
        conf = pd.DataFrame(cols, columns=CONFUSION_COLUMNS)
        return self._sorted(scores, features, tasks), self._sorted(conf[CONFUSION_COLUMNS], features, tasks)

    @staticmethod
    def _sorted(df: pd.DataFrame, features: list[str], tasks: list[str]) -> pd.DataFrame:
        rank = {"feature": {v: i for i, v in enumerate(features)}, "trained": {"": 0, "trained": 0, "untrained": 1},
                "probe_task": {v: i for i, v in enumerate(tasks)}}
        keys = pd.DataFrame({c: df[c].map(r) for c, r in rank.items()})
        order = keys.sort_values(list(rank), kind="stable").index
        return df.loc[order].reset_index(drop=True)


def _gram_plan(d: int, n_tr: int, n_te: int, tasks: list[dict], n_seeds: int, hp: dict,
               gram_columns: int | None = None) -> torch.dtype | None:
    """The training Gram matrix a group of width ``d`` needs: float64 when a regression probe is a dual ridge
    (d + 1 >= n_train, float64 sums as in :func:`fit_linear`; the logistic probes then reuse it), float32 when
    only the logistic probes want it (dual form cheaper, :func:`logistic_costs`), None when neither does."""
    if any(t["type"] == "regression" for t in tasks) and d + 1 >= n_tr:
        return torch.float64
    cls = [len(t["classes"]) for t in tasks if t["type"] == "classification"]
    if cls and FORM != "primal":
        if FORM == "dual" or logistic_costs(n_tr, n_te, d, cls, n_seeds, hp, gram_columns)["form"] == "dual":
            return torch.float32
    return None


def _run_group(tables: _Tables, feats: list[dict], Ztr: list[np.ndarray], Zte: list[np.ndarray], split: np.ndarray,
               tasks: list[dict], seeds: list[int], hp: dict, dev, log: logging.Logger,
               grams: list[torch.Tensor] | None = None) -> list[torch.Tensor] | None:
    """Probe F equal-width standardised features (``feats[i]['keys']`` -> table keys) on the given tasks.

    ``grams``: the features' training Gram matrices when already known; otherwise they are computed here when
    :func:`_gram_plan` asks for them. Returns the Gram matrices used (None if none).
    """
    cls = [t for t in tasks if t["type"] == "classification"]
    reg = [t for t in tasks if t["type"] == "regression"]
    tr, te = split == TRAIN, split == TEST
    F, d = len(feats), Ztr[0].shape[1]
    if grams is None:
        dtype = _gram_plan(d, int(tr.sum()), int(te.sum()), tasks, len(seeds), hp)
        if dtype is not None:
            t0 = time.perf_counter()
            grams = [gram_matrix(z, dtype, dev) for z in Ztr]
            log.info(f"training Gram matrices ({str(dtype)[6:]}) of {F} feature(s) of width {d} in "
                     f"{time.perf_counter() - t0:.1f} s")
    if cls:
        n_classes = [len(t["classes"]) for t in cls]
        label = f"{F} feature(s) of width {d} x {len(cls)} task(s) x {len(seeds)} seed(s)"
        r = fit_logistic_many(Ztr, np.stack([t["y"][tr] for t in cls]), Zte, np.stack([t["y"][te] for t in cls]),
                              n_classes, seeds, hp, device=dev, log=log, label=label, form=FORM, gram=grams)
        per = r["seconds"] / (F * len(cls) * len(seeds))
        c = r["costs"]
        log.info(f"trained {label} = {F * len(cls) * len(seeds)} logistic probes in {r['seconds']:.1f} s, "
                 f"{r['form']} form (estimated multiply-adds per feature: primal {c['primal'] / 1e9:.2f} G, "
                 f"dual {c['dual'] / 1e9:.2f} G{' with the Gram matrix given' if grams is not None else ''})")
        for fi, ft in enumerate(feats):
            for k, t in enumerate(cls):
                for si, s in enumerate(seeds):
                    keys = ft["keys"](t["name"], s)
                    a_tr, a_te = r["train_acc"][si, fi, k], r["test_acc"][si, fi, k]
                    tables.add_scores(keys, "accuracy", a_tr, a_te)
                    tables.add_confusion(keys, t["classes"], r["confusion"][si][fi][k])
                    log.info(f"probe {ft['label']} | task {t['name']} | seed {s} | {per:.2f} s (batched) | "
                             f"accuracy train {a_tr:.4f} test {a_te:.4f} (majority {t['chance']:.4f})")
    if not reg:
        return grams
    Ytr = np.stack([t["y"][tr] for t in reg], 1)
    Yte = np.stack([t["y"][te] for t in reg], 1)
    for fi, ft in enumerate(feats):
        t0 = time.perf_counter()
        g = grams[fi] if grams is not None and grams[fi].dtype == torch.float64 else None
        r = fit_linear(Ztr[fi], Ytr, Zte[fi], Yte, hp["ridge"], device=dev, gram=g)  # all regression tasks at once
        sec = (time.perf_counter() - t0) / len(reg)
        how = ("OLS" if r["method"] == "ols" else "" if r["method"] == "ridge_loo" else
               f"{d} features >= {int(tr.sum())} - 1 training clips: dual ridge, penalty {r['ridge_used']:.4g}")
        for k, t in enumerate(reg):
            if r["method"] == "ridge_loo":
                rel = r["ridge_rel"][k]
                edge = " (grid edge)" if rel in (RIDGE_GRID[0], RIDGE_GRID[-1]) else ""
                how = (f"{d} features, {int(tr.sum())} training clips: {r['form']} ridge, penalty "
                       f"{r['ridge_used'][k]:.4g} = {rel:.3g}{edge} x trace(K)/n by leave-one-out "
                       f"(LOO rmse {math.sqrt(r['loo_mse'][:, k].min()):.4f})")
            tables.add_scores(ft["keys"](t["name"], ""), "rmse", r["train_rmse"][k], r["test_rmse"][k])
            log.info(f"probe {ft['label']} | task {t['name']} | {sec:.2f} s | {how} | "
                     f"rmse train {r['train_rmse'][k]:.4f} test {r['test_rmse'][k]:.4f}")
    return grams


def _ridge_note(hp: dict) -> str:
    """How the regression probes set their penalty (one log line per run)."""
    if hp["ridge"] != "auto":
        return (f"regression probes: OLS when features + 1 < training clips, else dual ridge with penalty "
                f"{hp['ridge']:g} x trace(K)/n")
    return (f"regression probes: ridge for every width, penalty per task by exact leave-one-out on the training "
            f"split over lam / (trace(K)/n) in {np.array2string(RIDGE_GRID, precision=3, max_line_width=10**4)} "
            f"({len(RIDGE_GRID)} values, one eigendecomposition of the n_train x n_train Gram matrix K; the p x p "
            f"covariance instead when n_train x n_train float64 exceeds {GRAM_BYTES / 2**30:g} GiB and p < n_train)")


def _chance(tasks: list[dict], split: np.ndarray) -> None:
    te = split == TEST
    for t in tasks:
        if t["type"] == "classification":
            counts = np.bincount(t["y"][te], minlength=len(t["classes"]))
            t["chance"] = counts.max() / max(1, counts.sum())


# ----------------------------------------------------------------------------------------------------------
# Entry points
# ----------------------------------------------------------------------------------------------------------
def probe_handcrafted(features_h5, mel_h5, params: dict, dataset: str, log: logging.Logger | None = None):
    """Every hand-crafted feature x every task x the probe seeds (classification; regression is deterministic).

    Returns (scores, confusion) tidy DataFrames in the layout of docs/formats.md.
    """
    log = log or _log
    hp = probe_params(params)
    dev = pick_device(hp["device"])
    split, tasks, _ = read_labels(mel_h5)
    _chance(tasks, split)
    n, n_tr = len(split), int((split == TRAIN).sum())
    tables = _Tables(dataset)
    pool = _Pool()
    t0 = time.perf_counter()
    with open_h5(features_h5, "handcrafted") as f:
        index = _handcrafted_index(f, features_h5, n)
        log.info(f"{dataset}: {len(index)} hand-crafted features, {n} clips ({n_tr} train, {n - n_tr} test), "
                 f"tasks {[t['name'] for t in tasks]}, seeds {hp['seeds']}, {hp['epochs']} epochs, device {dev}")
        if any(t["type"] == "regression" for t in tasks):
            log.info(_ridge_note(hp))
        items = [{"name": name, **v} for name, v in index.items()]
        for group in _groups(items, n):
            Ztr, Zte, feats = [], [], []
            for i, it in enumerate(group):
                a, b = _load_split(f["features"][it["key"]], split, f"{features_h5}: features/{it['key']}",
                                   pool.pair(i, n_tr, n - n_tr, it["d"]))
                Ztr.append(a)
                Zte.append(b)
                feats.append({"label": it["name"],
                              "keys": lambda task, s, name=it["name"]: tables.keys(name, task, s)})
            _run_group(tables, feats, Ztr, Zte, split, tasks, hp["seeds"], hp, dev, log)
    log.info(f"{dataset}: hand-crafted probes done in {time.perf_counter() - t0:.1f} s")
    return tables.frames(list(index), [t["name"] for t in tasks])


def _deep_meta(f, path) -> tuple[str, int, str, list[str]]:
    try:
        arch, seed, task = str(f.attrs["arch"]), int(f.attrs["seed"]), str(f.attrs["task"])
        layers = f.attrs["layers"]
        layers = json.loads(layers) if isinstance(layers, (str, bytes)) else [str(x) for x in layers]
    except KeyError as e:
        raise ValueError(f"{path}: missing root attribute {e} (expected arch, seed, task, layers)") from None
    m = re.fullmatch(r"seed(\d+)\.h5", Path(path).name)
    if m and int(m.group(1)) != seed:
        raise ValueError(f"{path}: root attr seed={seed} contradicts the file name (seed {m.group(1)})")
    for which in ("trained", "untrained"):
        if which not in f:
            raise ValueError(f"{path}: group '{which}/' missing")
        missing = [layer for layer in layers if layer not in f[which]]
        if missing:
            raise ValueError(f"{path}: {which}/ lacks layer(s) {missing} listed in attrs 'layers' {layers}")
    return arch, seed, task, layers


def probe_deep(deep_h5, features_h5, mel_h5, params: dict, dataset: str, log: logging.Logger | None = None):
    """Probe one model file: every layer, trained and untrained, on EVERY task (probe seed = model seed), plus
    trained ``conv3`` concatenated with each ``concat_features`` hand-crafted feature on the main task.

    Returns (scores, confusion) tidy DataFrames in the layout of docs/formats.md.
    """
    log = log or _log
    hp = probe_params(params)
    dev = pick_device(hp["device"])
    split, tasks, main = read_labels(mel_h5)
    _chance(tasks, split)
    n, n_tr = len(split), int((split == TRAIN).sum())
    main_task = [t for t in tasks if t["name"] == main]
    if not main_task or main_task[0]["type"] != "classification":
        raise ValueError(f"{mel_h5}: main task {main!r} is not a classification task of the clip table")
    tables = _Tables(dataset)
    pool = _Pool()
    t0 = time.perf_counter()
    with open_h5(deep_h5, "deep") as f, open_h5(features_h5, "handcrafted") as hf:
        arch, seed, train_task, layers = _deep_meta(f, deep_h5)
        hc = _handcrafted_index(hf, features_h5, n)
        concat = hp["concat_features"]
        missing = [c for c in concat if c not in hc]
        if missing:
            raise ValueError(f"probe.concat_features: {missing} not found in {features_h5}; "
                             f"available display names: {sorted(hc)}")
        if concat and CONCAT_LAYER not in layers:
            raise ValueError(f"{deep_h5}: the concatenation experiment needs layer {CONCAT_LAYER!r}, the file has "
                             f"{layers}; add it to deep.layers or set probe.concat_features: []")
        log.info(f"{dataset}: {arch} seed {seed} trained on {train_task}: layers {layers}, {n} clips ({n_tr} train), "
                 f"probe tasks {[t['name'] for t in tasks]}, {hp['epochs']} epochs, device {dev}")
        if any(t["type"] == "regression" for t in tasks):
            log.info(_ridge_note(hp))
        for layer in layers:
            items = []
            for which in ("trained", "untrained"):
                ds = f[which][layer]
                if ds.ndim != 2 or ds.shape[0] != n:
                    raise ValueError(f"{deep_h5}: {which}/{layer} has shape {ds.shape}; expected ({n}, d)")
                items.append({"which": which, "d": int(ds.shape[1])})
            keep_conv3 = None
            for group in _groups(items, n):
                Ztr, Zte, feats = [], [], []
                for i, it in enumerate(group):
                    a, b = _load_split(f[it["which"]][layer], split, f"{deep_h5}: {it['which']}/{layer}",
                                       pool.pair(i, n_tr, n - n_tr, it["d"]))
                    Ztr.append(a)
                    Zte.append(b)
                    feats.append({"label": f"{arch} {layer} ({it['which']})",
                                  "keys": lambda task, s, w=it["which"], lay=layer: tables.keys(
                                      f"{arch} {lay}", task, s, arch, seed, lay, w, train_task)})
                grams = _run_group(tables, feats, Ztr, Zte, split, tasks, [seed], hp, dev, log)
                for i, it in enumerate(group):
                    if layer == CONCAT_LAYER and it["which"] == "trained":
                        keep_conv3 = (Ztr[i], Zte[i], None if grams is None else grams[i])
                        pool.release((i, TRAIN))
                        pool.release((i, TEST))
                del Ztr, Zte, grams
            if keep_conv3 is not None and concat:
                _run_concat(tables, keep_conv3, hf, hc, concat, split, main_task, arch, seed, train_task, hp, dev,
                            log, features_h5, pool)
    log.info(f"{dataset}: deep probes of {arch} seed {seed} done in {time.perf_counter() - t0:.1f} s")
    order = [f"{arch} {layer}" for layer in layers] + [f"{arch} {CONCAT_LAYER} + {c}" for c in concat]
    return tables.frames(order, [t["name"] for t in tasks])


def _run_concat(tables, conv3, hf, hc, concat, split, main_task, arch, seed, train_task, hp, dev, log, path, pool):
    """Trained conv3 + each hand-crafted feature (each standardised separately, columns concatenated).

    Blocks standardised separately make the concatenation's Gram matrix the sum of the blocks' ones, so
    conv3's (computed once, or kept from its own probes) is reused and only the hand-crafted block's is new.
    """
    c_tr, c_te, K3 = conv3
    n_tr, n_te, d3 = len(c_tr), len(c_te), c_tr.shape[1]
    items = [{"name": name, "d": d3 + hc[name]["d"]} for name in concat]
    for group in _groups(items, len(split)):
        d = group[0]["d"]
        dtype = _gram_plan(d, n_tr, n_te, main_task, 1, hp, gram_columns=d - d3 + (d3 if K3 is None else 0))
        if dtype is not None and K3 is None:
            K3 = gram_matrix(c_tr, dtype, dev)
        Ztr, Zte, feats, grams = [], [], [], []
        for i, it in enumerate(group):
            key = hc[it["name"]]["key"]
            ztr, zte = pool.pair(i, n_tr, n_te, d)
            ztr[:, :d3], zte[:, :d3] = c_tr, c_te
            a, _ = _load_split(hf["features"][key], split, f"{path}: features/{key}", (ztr[:, d3:], zte[:, d3:]))
            Ztr.append(ztr)
            Zte.append(zte)
            if dtype is not None:
                grams.append(K3 + gram_matrix(a, K3.dtype, dev))
            label = f"{arch} {CONCAT_LAYER} + {it['name']}"
            feats.append({"label": label, "keys": lambda task, s, lab=label: tables.keys(
                lab, task, s, arch, seed, CONCAT_LAYER, "trained", train_task)})
        _run_group(tables, feats, Ztr, Zte, split, main_task, [seed], hp, dev, log, grams if dtype else None)
