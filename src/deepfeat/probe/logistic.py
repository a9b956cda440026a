"""Classification probes: multinomial logistic regression trained by batched mini-batch SGD, in the primal or
the dual form.

Definitions
-----------
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
  form with fewer estimated multiply-adds runs (:func:`~deepfeat.probe.plan.logistic_costs`); both give the same
  probes up to float32 rounding (tests compare them).

The functions taking a ``params`` dict read the ``probe`` config section from it (``epochs``, ``lr``,
``momentum``, ``batch_size``, ``device``): missing keys take the schema's defaults, unknown keys are an error
(:func:`deepfeat.config.settings`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence

import numpy as np
import torch

from deepfeat import config
from deepfeat.probe.plan import _costs
from deepfeat.probe.rows import ResidentRows, Rows
from deepfeat.probe.standardisation import CHUNK_BYTES, GramAccumulator, standardise
from deepfeat.runtime import pick_device

PROGRESS_SECONDS = 30.0  # epoch progress lines at most this often during long trainings
SGD_KEYS = ("epochs", "lr", "momentum", "batch_size", "device", "memory_mb")  # the probe settings the SGD probes read


# ----------------------------------------------------------------------------------------------------------
# The reference protocol: initial weights and the DataLoader's epoch order
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


# ----------------------------------------------------------------------------------------------------------
# Inputs and the batched layout
# ----------------------------------------------------------------------------------------------------------
def _as_list(X, device) -> list[torch.Tensor]:
    """F float32 (n, d) tensors on ``device`` from an array (n, d), a list of F (n, d) arrays, or (F, n, d)."""
    if isinstance(X, (list, tuple)):
        parts = [x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x, dtype=np.float32)) for x in X]
        if not parts or len({tuple(x.shape) for x in parts}) != 1 or parts[0].ndim != 2:
            raise ValueError(
                f"features: a group needs (n, d) arrays of one shape, got {[tuple(x.shape) for x in parts]}"
            )
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


def _as_grams(gram_in, F: int, n: int, device) -> list[torch.Tensor]:
    parts = (
        list(gram_in)
        if isinstance(gram_in, (list, tuple))
        else ([gram_in] if getattr(gram_in, "ndim", 0) == 2 else list(gram_in))
    )
    parts = [g if isinstance(g, torch.Tensor) else torch.from_numpy(np.asarray(g)) for g in parts]
    if len(parts) != F or any(tuple(g.shape) != (n, n) for g in parts):
        raise ValueError(
            f"gram: expected {F} training Gram matrices of shape ({n}, {n}), got {[tuple(g.shape) for g in parts]}"
        )
    return [g.to(device=device, dtype=torch.float32) for g in parts]


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


# ----------------------------------------------------------------------------------------------------------
# SGD with the closed-form gradient: primal (W) and dual (A, W = W0 + A Z) form
# ----------------------------------------------------------------------------------------------------------
def _logit_grad(
    z: torch.Tensor, onehot: torch.Tensor, idx: torch.Tensor, mask, F: int, S: int, K: int, cmax: int, B: int
) -> torch.Tensor:
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


def _sgd_state(Ytr: np.ndarray, n_classes: Sequence[int], b0: torch.Tensor, F: int, hp: dict, dev):
    """What both forms start from: the class mask, the one-hot targets (K, Cmax, n), the F-fold biases and
    their zero velocity, and (lr, momentum)."""
    bt = b0.repeat(F, 1, 1)  # block f*S+s starts from seed s's initial biases
    return (
        _class_mask(n_classes, dev),
        _onehot(Ytr, n_classes, dev),
        bt,
        torch.zeros_like(bt),
        float(hp["lr"]),
        float(hp["momentum"]),
    )


def _steps(
    G: torch.Tensor, W: torch.Tensor, vW: torch.Tensor, bt: torch.Tensor, vb: torch.Tensor, lr: float, mu: float
) -> None:
    """The rest of one SGD/momentum step once the weight velocity ``vW`` has its share of the gradient ``G``:
    the bias velocity, then ``W -= lr vW`` and ``b -= lr vb`` (in place)."""
    vb.mul_(mu).add_(G.sum(2, keepdim=True))
    W.add_(vW, alpha=-lr)
    bt.add_(vb, alpha=-lr)


def _check_finite(W: torch.Tensor, label: str, lr: float) -> None:
    if not torch.isfinite(W).all():
        raise FloatingPointError(f"{label}: logistic-regression weights diverged (lr {lr} too large?)")


def _train_primal(
    gather,
    shape: tuple[int, int, int],
    dev,
    Ytr: np.ndarray,
    n_classes: Sequence[int],
    seeds: Sequence[int],
    W0,
    b0,
    hp: dict,
    log: logging.Logger | None = None,
    label: str = "",
) -> tuple[torch.Tensor, torch.Tensor]:
    """SGD on W for F x S x K probes at once. ``gather(idx)``: the standardised training rows ``idx`` (S*B,
    seed-major) of the F features, (F, S*B, d), held or computed on the fly; ``shape`` (F, n, d); Ytr (K, n).

    Layout (chosen for speed on CPU, measured in bench/bench_probe.py): probe block j = f * S + s; weights
    Wt (F*S, K*Cmax, d) (nn.Linear's C x d per task), logits computed transposed (F*S, K*Cmax, B) so the
    softmax over the small class axis runs vectorised along the batch. Returns (Wt, bt (F*S, K*Cmax, 1)).
    """
    F, n, d = shape
    K, S, cmax = len(n_classes), len(seeds), max(n_classes)
    mask, onehot, bt, vb, lr, mu = _sgd_state(Ytr, n_classes, b0, F, hp, dev)
    Wt = W0.repeat(F, 1, 1)  # block f*S+s starts from seed s's initial weights
    vW = torch.zeros_like(Wt)

    def step(ib):
        B = ib.shape[1]
        idx = ib.reshape(-1).to(dev)  # (S*B,) seed-major
        Xb = gather(idx).view(F * S, B, d)  # rows of probe block f*S+s
        G = _logit_grad(torch.baddbmm(bt, Wt, Xb.transpose(1, 2)), onehot, idx, mask, F, S, K, cmax, B)
        vW.mul_(mu).add_(torch.bmm(G, Xb))
        _steps(G, Wt, vW, bt, vb, lr, mu)

    _sgd_loop(n, seeds, hp, step, log, label)
    _check_finite(Wt, label, lr)
    return Wt, bt


def _train_dual(
    KF: torch.Tensor,
    P0: torch.Tensor,
    b0: torch.Tensor,
    Ytr: np.ndarray,
    n_classes: Sequence[int],
    seeds: Sequence[int],
    hp: dict,
    log: logging.Logger | None = None,
    label: str = "",
) -> tuple[torch.Tensor, torch.Tensor]:
    """The same SGD in the dual form (module doc): W = W0 + A Z, v_W = v_A Z.

    KF (F, n, n): training Gram matrices Z Z' (float32); P0 (F*S, K*Cmax, n): initial logits W0 Z' of the
    training clips (no bias); b0 (S, K*Cmax, 1). Returns (A (F*S, K*Cmax, n), bt (F*S, K*Cmax, 1)).
    """
    F, n, _ = KF.shape
    K, S, cmax = len(n_classes), len(seeds), max(n_classes)
    KC, dev = K * cmax, KF.device
    mask, onehot, bt, vb, lr, mu = _sgd_state(Ytr, n_classes, b0, F, hp, dev)
    A = torch.zeros(F * S, KC, n, device=dev)
    vA = torch.zeros_like(A)

    def step(ib):
        B = ib.shape[1]
        ib = ib.to(dev).contiguous()
        idx = ib.view(-1)
        Kb = KF.index_select(1, idx).view(F * S, B, n)  # K symmetric: rows idx = the batch's columns
        cols = ib.view(1, S, 1, B).expand(F, S, KC, B).reshape(F * S, KC, B)
        z = torch.baddbmm(torch.gather(P0, 2, cols).add_(bt), A, Kb.transpose(1, 2))  # (F*S, KC, B)
        G = _logit_grad(z, onehot, idx, mask, F, S, K, cmax, B)
        vA.mul_(mu).scatter_add_(2, cols, G)  # velocity v_A Z: G lands in the batch's columns
        _steps(G, A, vA, bt, vb, lr, mu)

    _sgd_loop(n, seeds, hp, step, log, label)
    _check_finite(A, label, lr)
    return A, bt


# ----------------------------------------------------------------------------------------------------------
# Prediction and evaluation
# ----------------------------------------------------------------------------------------------------------
def _argmax_codes(z: torch.Tensor, n_classes: Sequence[int], S: int, mask) -> torch.Tensor:
    """Class codes (S, K, rows) from logits z (rows, S*K*Cmax) (padded classes masked)."""
    K, cmax = len(n_classes), max(n_classes)
    z = z.reshape(-1, S, K, cmax)
    if mask is not None:
        z = z + mask
    return z.argmax(-1).permute(1, 2, 0)


@torch.no_grad()
def _predict_group(Xs: list[Rows], Wt: torch.Tensor, bt: torch.Tensor, n_classes: Sequence[int], S: int) -> np.ndarray:
    """Arg-max class codes (S, F, K, n) of every probe on the rows of the F features Xs (one pass each)."""
    F, n, d = len(Xs), Xs[0].n, Xs[0].d
    K, cmax = len(n_classes), max(n_classes)
    mask = _class_mask(n_classes, Xs[0].device)
    mask = None if mask is None else mask[..., 0]
    out = torch.empty(S, F, K, n, dtype=torch.int64)
    W = Wt.view(F, S * K * cmax, d)
    b = bt.view(F, S * K * cmax)
    step = max(1, CHUNK_BYTES // (4 * max(d, S * K * cmax)))
    for f in range(F):
        for pos, x in Xs[f].blocks(step):
            z = torch.addmm(b[f], x, W[f].T)
            out[:, f, :, pos] = _argmax_codes(z, n_classes, S, mask).cpu()
    return out.numpy()


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """(C x C) int64 counts, rows = true class, columns = predicted class."""
    flat = np.asarray(y_true, dtype=np.int64) * n_classes + np.asarray(y_pred, dtype=np.int64)
    return np.bincount(flat, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


# ----------------------------------------------------------------------------------------------------------
# Fitting (the form by estimated cost: deepfeat.probe.plan.logistic_costs)
# ----------------------------------------------------------------------------------------------------------
def _fit_primal(
    Ztr: list[Rows], Ytr: np.ndarray, n_classes: list[int], seeds: list[int], W0, b0, hp: dict, log, label: str
):
    """Primal form: (weights (F*S, K*Cmax, d), biases (F*S, K*Cmax, 1), training codes (S, F, K, n_train)).
    Held rows are gathered from one (F, n, d) stack; rows computed on demand (one feature) batch by batch."""
    F, n, d, dev = len(Ztr), Ztr[0].n, Ztr[0].d, Ztr[0].device
    if all(z.resident for z in Ztr):
        stack = Ztr[0].Z.unsqueeze(0) if F == 1 else torch.stack([z.Z for z in Ztr])
        gather = stack.index_select
        Wt, bt = _train_primal(
            lambda idx: gather(1, idx), (F, n, d), dev, Ytr, n_classes, seeds, W0, b0, hp, log, label
        )
        del stack, gather
    elif F == 1:
        take = Ztr[0].take
        Wt, bt = _train_primal(
            lambda idx: take(idx).unsqueeze(0), (F, n, d), dev, Ytr, n_classes, seeds, W0, b0, hp, log, label
        )
    else:
        raise ValueError(f"{label}: features computed on demand are trained one at a time, got {F}")
    return Wt, bt, _predict_group(Ztr, Wt, bt, n_classes, len(seeds))


def _initial_logits(Ztr: list[Rows], W0l: torch.Tensor, grams, gram_width: int | None):
    """(P0 (F, live rows, n_train) = W0 Z' of the live class rows, float32 Gram matrices (F, n, n)).

    Without ``grams`` every feature's Gram matrix is summed over column groups of ``gram_width`` columns (all of
    them by default; one pass over the rows each when they are computed on demand) and P0 in the same groups;
    with ``grams`` P0 takes one pass over row blocks."""
    F, n, d, dev = len(Ztr), Ztr[0].n, Ztr[0].d, Ztr[0].device
    P0 = torch.zeros(F, W0l.shape[0], n, device=dev)
    out = []
    for f, z in enumerate(Ztr):
        if grams is None:
            acc = GramAccumulator(n, torch.float32, dev)
            for a, Zg in z.column_groups(gram_width or d):
                acc.add(Zg)
                P0[f] += W0l[:, a : a + Zg.shape[1]] @ Zg.T
            out.append(acc.result())
        else:
            for pos, Zb in z.blocks():
                P0[f][:, pos] = W0l @ Zb.T
    KF = torch.stack(grams if grams is not None else out) if F > 1 else (grams or out)[0].unsqueeze(0)
    return P0, KF


def _final_weights(Zf: Rows, W0l: torch.Tensor, A_live: torch.Tensor) -> torch.Tensor:
    """``W0 + A Z`` of the live class rows, summed over row blocks (one pass when computed on demand)."""
    W = None
    for pos, Zb in Zf.blocks():
        W = torch.addmm(W0l if W is None else W, A_live[:, pos], Zb)
    return W


def _fit_dual(
    Ztr: list[Rows],
    grams: list[torch.Tensor] | None,
    Ytr: np.ndarray,
    n_classes: list[int],
    seeds: list[int],
    W0,
    b0,
    hp: dict,
    log,
    label: str,
    gram_width: int | None = None,
):
    """Dual form (module doc), the training Gram matrices given or computed here (float32): the same outputs as
    :func:`_fit_primal`, with ``W = W0 + A Z`` formed explicitly and the training logits ``W0 Z' + A K + b``."""
    F, n_tr, d = len(Ztr), Ztr[0].n, Ztr[0].d
    S, K, cmax = len(seeds), len(n_classes), max(n_classes)
    dev = Ztr[0].device
    live = _live_rows(n_classes, S, dev)  # padded class rows of W0 and A stay zero: skip them
    W0l = W0.view(S * K * cmax, d).index_select(0, live)
    P0l, KF = _initial_logits(Ztr, W0l, grams, gram_width)
    P0 = torch.zeros(F, S * K * cmax, n_tr, device=dev)
    P0[:, live] = P0l
    del P0l
    A, bt = _train_dual(KF, P0.view(F * S, K * cmax, n_tr), b0, Ytr, n_classes, seeds, hp, log, label)
    A = A.view(F, S * K * cmax, n_tr)
    Wt = W0.view(1, S * K * cmax, d).repeat(F, 1, 1)
    for f in range(F):
        Wt[f, live] = _final_weights(Ztr[f], W0l, A[f].index_select(0, live))
    mask = _class_mask(n_classes, dev)
    ztr = torch.baddbmm(P0 + bt.view(F, S * K * cmax, 1), A, KF)  # (F, S*K*Cmax, n_tr) training logits
    ptr = (
        torch.stack(
            [_argmax_codes(ztr[f].T, n_classes, S, None if mask is None else mask[..., 0]) for f in range(F)], 1
        )
        .cpu()
        .numpy()
    )
    Wt = Wt.view(F * S, K * cmax, d)
    del KF, P0, A, ztr
    return Wt, bt, ptr


def fit_logistic_many(
    Xtr,
    Ytr,
    Xte,
    Yte,
    n_classes: Sequence[int],
    seeds: Sequence[int],
    params: dict | None,
    *,
    device=None,
    log: logging.Logger | None = None,
    label: str = "probes",
    form: str = "auto",
    gram=None,
) -> dict:
    """Train S x F x K logistic probes as one batched model on ALREADY STANDARDISED float features.

    ``Xtr``/``Xte``: (n, d), a list of F (n, d) arrays of equal width d, or (F, n, d) (F features);
    ``Ytr``/``Yte``: (K, n) int class codes (K classification tasks, or (n,) for one); ``n_classes``: K
    class counts; ``seeds``: S probe seeds; ``params``: the probe settings (``epochs``, ``lr``, ``momentum``,
    ``batch_size``, and ``device`` unless ``device`` is given). ``form``: 'primal' (SGD on W), 'dual' (the
    same SGD on A with W = W0 + A Z, module doc) or 'auto' (the one with fewer estimated multiply-adds,
    :func:`~deepfeat.probe.plan.logistic_costs`); ``gram``: optional training Gram matrices ``Ztr Ztr'`` of the F
    features ((n_tr, n_tr) each, any float dtype; reused by the dual form instead of computing them).
    Returns arrays indexed [s, f, k]: ``train_acc``, ``test_acc`` (fractions), ``pred_test`` (S, F, K,
    n_test), ``confusion`` (nested list [s][f][k] of C_k x C_k), ``weight`` (S, F, K, Cmax, d) and ``bias``
    (S, F, K, Cmax) (task k uses the first C_k rows), ``form`` (the one that ran), ``costs``
    (:func:`~deepfeat.probe.plan.logistic_costs`) and ``seconds`` (wall time of the whole batch).
    """
    hp = config.settings("probe", params, SGD_KEYS)
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
        raise ValueError(
            f"{label}: {F} train feature(s) of width {d} but {len(Zte)} test feature(s) of width {Zte[0].shape[1]}"
        )
    if n_tr == 0:
        raise ValueError(f"{label}: no training clips")
    Ytr = _as_labels(Ytr, n_tr, n_classes, f"{label} (train labels)")
    Yte = _as_labels(Yte, Zte[0].shape[0], n_classes, f"{label} (test labels)")
    grams = None if gram is None else _as_grams(gram, F, n_tr, dev)
    r = fit_logistic_rows(
        [ResidentRows(z) for z in Ztr],
        Ytr,
        [ResidentRows(z) for z in Zte],
        Yte,
        n_classes,
        seeds,
        hp,
        log=log,
        label=label,
        form=form,
        gram=grams,
    )
    r["seconds"] = time.perf_counter() - t0
    return r


def fit_logistic_rows(
    Ztr: list[Rows],
    Ytr: np.ndarray,
    Zte: list[Rows],
    Yte: np.ndarray,
    n_classes: list[int],
    seeds: Sequence[int],
    hp: dict,
    *,
    log: logging.Logger | None = None,
    label: str = "probes",
    form: str = "auto",
    gram: list[torch.Tensor] | None = None,
    gram_width: int | None = None,
) -> dict:
    """:func:`fit_logistic_many` on :class:`~deepfeat.probe.rows.Rows` of F features (held in memory, or one
    feature computed on demand: batches gathered on the fly in the primal form, the Gram matrix summed over
    column groups of ``gram_width`` columns in the dual). ``Ytr``/``Yte``: checked (K, n) int64 codes; ``hp``:
    resolved settings (:data:`SGD_KEYS`); ``gram``: float32 training Gram matrices on the device, or None."""
    t0 = time.perf_counter()
    F, n_tr, d = len(Ztr), Ztr[0].n, Ztr[0].d
    seeds = [int(s) for s in seeds]
    S, K, cmax = len(seeds), len(n_classes), max(n_classes)
    dev = Ztr[0].device
    costs = _costs(n_tr, Zte[0].n, d, n_classes, S, hp, 0 if gram is not None else None)
    form = costs["form"] if form == "auto" else form
    W0, b0 = _init_weights(d, n_classes, seeds, dev)
    if form == "primal":
        Wt, bt, ptr = _fit_primal(Ztr, Ytr, n_classes, seeds, W0, b0, hp, log, label)
    else:
        Wt, bt, ptr = _fit_dual(Ztr, gram, Ytr, n_classes, seeds, W0, b0, hp, log, label, gram_width)
    pte = _predict_group(Zte, Wt, bt, n_classes, S)
    train_acc = (ptr == Ytr[None, None]).mean(-1)
    test_acc = (pte == Yte[None, None]).mean(-1) if Yte.shape[1] else np.full(pte.shape[:3], np.nan)
    conf = [
        [[confusion_matrix(Yte[k], pte[s, f, k], c) for k, c in enumerate(n_classes)] for f in range(F)]
        for s in range(S)
    ]
    weight = Wt.view(F, S, K, cmax, d).transpose(0, 1).cpu()
    bias = bt.view(F, S, K, cmax).transpose(0, 1).cpu()
    return {
        "train_acc": train_acc,
        "test_acc": test_acc,
        "pred_test": pte,
        "confusion": conf,
        "weight": weight,
        "bias": bias,
        "form": form,
        "costs": costs,
        "seconds": time.perf_counter() - t0,
    }


def fit_logistic(Xtr, ytr, Xte, yte, n_classes: int, seed: int, params: dict | None = None) -> dict:
    """One multinomial logistic probe (see module doc): standardise with training stats, SGD, evaluate.

    ``params``: the probe settings, as for :func:`fit_logistic_many`. Returns ``train_acc``, ``test_acc``
    (fractions in [0, 1]), ``confusion`` (C x C int64, rows true, columns predicted, test split) and ``pred``
    (predicted test codes), plus ``weight`` (C x d), ``bias`` (C) of the model on the standardised features.
    """
    Ztr, Zte = standardise(Xtr, Xte)
    r = fit_logistic_many(
        Ztr, np.asarray(ytr)[None], Zte, np.asarray(yte)[None], [n_classes], [seed], params, label="logistic probe"
    )
    return {
        "train_acc": float(r["train_acc"][0, 0, 0]),
        "test_acc": float(r["test_acc"][0, 0, 0]),
        "confusion": r["confusion"][0][0][0],
        "pred": r["pred_test"][0, 0, 0],
        "weight": r["weight"][0, 0, 0].clone(),
        "bias": r["bias"][0, 0, 0].clone(),
    }
