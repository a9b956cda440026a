"""Standardisation with training statistics, and training Gram matrices.

Definitions
-----------
* **Standardisation.** Every feature column is z-scored with the mean and the population standard deviation
  (ddof 0) of the *training* split only, accumulated in float64; a column that is constant on the training
  split gets std 1 (so it becomes 0 there, never NaN). The probes see float32 standardised features.
* **Streamed statistics.** The same mean and std of rows that are never held (computed batch by batch):
  :class:`RunningStats` merges float64 blocks pairwise (each centred on its own mean), so they equal those of
  :func:`standardise` up to rounding (exactly, for one block); :func:`standardise_rows` z-scores a block.
* **Gram matrix.** ``K = Z Z'`` (n_train x n_train) of the standardised training matrix Z (n_train x d), summed
  over column blocks (:class:`GramAccumulator`: also over column groups given one at a time, e.g. one forward
  pass each); a concatenation of separately standardised blocks has K = sum of the blocks' K.

The working-memory sizes below bound the float64 temporaries of every pass over the columns or rows of a
feature (here and in :mod:`deepfeat.probe.linear` / :mod:`deepfeat.probe.logistic`).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.linalg import blas

CHUNK_BYTES = 64 * 2**20  # float64 working chunks of the statistics / least-squares passes
BLOCK_BYTES = 8 * 2**20  # float64 column blocks of the standardisation and Gram passes (cache-sized)


def rows_per_chunk(d: int) -> int:
    """How many rows of ``d`` float64 values fit one working chunk (``CHUNK_BYTES``); at least 1. Also used for
    the columns of n rows per chunk."""
    return max(1, CHUNK_BYTES // (8 * max(1, d)))


def cols_per_block(n: int) -> int:
    """How many columns of ``n`` float64 rows fit one cache-sized block (``BLOCK_BYTES``); at least 64."""
    return max(64, BLOCK_BYTES // (8 * max(1, n)))


def check_2d(X, what: str) -> None:
    """ValueError naming ``what`` unless ``X`` is a 2-D (clips x features) array or tensor."""
    if getattr(X, "ndim", None) != 2:
        raise ValueError(f"{what}: expected a 2-D (clips x features) array, got shape {getattr(X, 'shape', None)}")


def _centre_block(c: np.ndarray, name: str, a: int) -> tuple[np.ndarray, np.ndarray]:
    """Training mean and population std (std 0 -> 1) of a float64 column block ``c`` (columns a..), which is
    centred in place. Raises ValueError naming ``name`` on NaN/inf."""
    if not np.isfinite(c).all():
        raise ValueError(
            f"{name}: {int((~np.isfinite(c)).sum())} non-finite value(s) in the training split "
            f"(columns {a}..{a + c.shape[1] - 1})"
        )
    mean = c.sum(0) / len(c)
    c -= mean
    std = np.sqrt(np.einsum("ij,ij->j", c, c) / len(c))
    std[std == 0] = 1.0
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
    check_2d(Xtr, f"{name} (train)")
    check_2d(Xte, f"{name} (test)")
    if Xtr.shape[1] != Xte.shape[1]:
        raise ValueError(f"{name}: train has {Xtr.shape[1]} columns but test has {Xte.shape[1]}")
    n, d = Xtr.shape
    if n == 0:
        raise ValueError(f"{name}: the training split is empty")
    outs = [
        X if inplace and X.dtype == np.float32 and X.flags.writeable else np.empty(X.shape, np.float32)
        for X in (Xtr, Xte)
    ]
    mean, std = np.empty(d), np.empty(d)
    w = cols_per_block(max(n, len(Xte)))
    for a in range(0, d, w):
        c = np.array(Xtr[:, a : a + w], dtype=np.float64)
        m, s = _centre_block(c, name, a)
        c /= s
        outs[0][:, a : a + w] = c
        t = np.array(Xte[:, a : a + w], dtype=np.float64)
        if not np.isfinite(t).all():
            raise ValueError(
                f"{name}: {int((~np.isfinite(t)).sum())} non-finite value(s) in the test split "
                f"(columns {a}..{a + t.shape[1] - 1})"
            )
        t -= m
        t /= s
        outs[1][:, a : a + w] = t
        mean[a : a + w], std[a : a + w] = m, s
    return (outs[0], outs[1], mean, std) if return_stats else (outs[0], outs[1])


class RunningStats:
    """Column mean and population std (std 0 -> 1) of rows seen block by block, in float64: the statistics of
    :func:`standardise` without holding the rows. Each block is centred on its own mean and merged into the
    running mean and centred sum of squares by the exact pairwise update (M2 += M2_b + delta^2 n n_b / (n + n_b)),
    so no sum of squares cancels. ``name`` is named by the errors (NaN/inf)."""

    def __init__(self, d: int, name: str, device=None):
        self.name, self.n = name, 0
        self.mean = torch.zeros(d, dtype=torch.float64, device=device)
        self.m2 = torch.zeros(d, dtype=torch.float64, device=device)

    def add(self, x) -> None:
        x = torch.as_tensor(x).to(device=self.mean.device, dtype=torch.float64)
        if not bool(torch.isfinite(x).all()):
            bad = (~torch.isfinite(x)).any(0).nonzero()[:, 0]
            raise ValueError(
                f"{self.name}: {int((~torch.isfinite(x)).sum())} non-finite value(s) in the training split "
                f"(columns {int(bad[0])}..{int(bad[-1])})"
            )
        b = x.shape[0]
        if b == 0:
            return
        mb = x.sum(0) / b
        c = x - mb
        m2b = (c * c).sum(0)
        n = self.n + b
        delta = mb - self.mean
        self.mean += delta * (b / n)
        self.m2 += m2b + delta * delta * (self.n * b / n)
        self.n = n

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std) float64 tensors; ValueError naming the feature when no training row was seen."""
        if self.n == 0:
            raise ValueError(f"{self.name}: the training split is empty")
        std = torch.sqrt(self.m2 / self.n)
        std[std == 0] = 1.0
        return self.mean, std


def standardise_rows(x, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Float32 ``(x - mean) / std`` computed in float64 (as :func:`standardise` does) for a block of raw rows."""
    x = torch.as_tensor(x).to(device=mean.device, dtype=torch.float64)
    return ((x - mean) / std).to(torch.float32)


class GramAccumulator:
    """``K = Z Z'`` (n x n) summed over column groups of Z given one at a time (e.g. one forward pass each), in
    ``dtype`` on ``device``: float64 forms the exact products of float32 inputs and sums them in float64.

    Each group is cut into blocks of :func:`gram_block` columns counted from the group's start; groups that are
    multiples of that width therefore sum exactly the blocks :func:`gram_matrix` sums, in the same order. On the
    CPU the blocks go through BLAS ?syrk into one triangle of K (half the multiply-adds of a matrix product; no
    n x n temporaries), mirrored by :meth:`result`; elsewhere through torch.
    """

    def __init__(self, n: int, dtype: torch.dtype = torch.float64, device=None):
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"gram_matrix: dtype must be torch.float32 or torch.float64, got {dtype}")
        self.n, self.dtype = n, dtype
        self.dev = torch.device("cpu") if device is None else torch.device(device)
        self.w = gram_block(n)
        if self.dev.type == "cpu":
            np_dtype = np.float64 if dtype == torch.float64 else np.float32
            self._syrk = blas.dsyrk if dtype == torch.float64 else blas.ssyrk
            self._np_dtype = np_dtype
            self.K = np.zeros((n, n), dtype=np_dtype, order="F")
        else:
            self.K = torch.zeros(n, n, dtype=dtype, device=self.dev)

    def add(self, Z) -> None:
        """Add the Gram matrix of the (n x w) column group ``Z`` (array or tensor)."""
        check_2d(Z, "gram_matrix")
        if Z.shape[0] != self.n:
            raise ValueError(f"gram_matrix: a column group has {Z.shape[0]} rows, the Gram matrix {self.n}")
        d = Z.shape[1]
        if self.dev.type != "cpu":
            Zt = (Z if isinstance(Z, torch.Tensor) else torch.from_numpy(np.asarray(Z, dtype=np.float32))).to(self.dev)
            for a in range(0, d, self.w):
                c = Zt[:, a : a + self.w].to(self.dtype)
                self.K.addmm_(c, c.T)
            return
        Zn = Z.detach().cpu().numpy() if isinstance(Z, torch.Tensor) else np.asarray(Z, dtype=np.float32)
        for a in range(0, d, self.w):  # c' of the C-ordered copy is Fortran-ordered: BLAS reads it in place
            c = np.array(Zn[:, a : a + self.w], dtype=self._np_dtype).T
            self.K = self._syrk(1.0, c, beta=1.0, c=self.K, trans=1, overwrite_c=1)

    def result(self) -> torch.Tensor:
        """K as a (C-contiguous) ``dtype`` tensor on the device; the accumulator is spent."""
        K, self.K = self.K, None
        if self.dev.type != "cpu":
            return K
        n = self.n
        for a in range(0, n, 1024):  # lower triangle := upper, block by block, in place
            K[a : a + 1024, :a] = K[:a, a : a + 1024].T
            blk = K[a : a + 1024, a : a + 1024]
            blk[np.tril_indices(len(blk), -1)] = blk.T[np.tril_indices(len(blk), -1)]
        return torch.from_numpy(K.T)  # symmetric: the C-ordered view of the Fortran-ordered K


def gram_block(n: int) -> int:
    """Columns per block of the Gram passes over n rows (cache-sized, at least 256)."""
    return max(256, cols_per_block(n))


def gram_matrix(Z, dtype: torch.dtype = torch.float64, device=None) -> torch.Tensor:
    """The Gram matrix ``K = Z Z'`` (n x n) of a float32 (n x d) matrix, as a ``dtype`` tensor on ``device``
    (summed over column blocks in ``dtype``, :class:`GramAccumulator`)."""
    check_2d(Z, "gram_matrix")
    acc = GramAccumulator(Z.shape[0], dtype, device)
    acc.add(Z)
    return acc.result()
