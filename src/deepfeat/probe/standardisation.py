"""Standardisation with training statistics, and training Gram matrices.

Definitions
-----------
* **Standardisation.** Every feature column is z-scored with the mean and the population standard deviation
  (ddof 0) of the *training* split only, accumulated in float64; a column that is constant on the training
  split gets std 1 (so it becomes 0 there, never NaN). The probes see float32 standardised features.
* **Gram matrix.** ``K = Z Z'`` (n_train x n_train) of the standardised training matrix Z (n_train x d), summed
  over column blocks; a concatenation of separately standardised blocks has K = sum of the blocks' K.

The working-memory sizes below bound the float64 temporaries of every pass over the columns or rows of a
feature (here and in :mod:`deepfeat.probe.linear` / :mod:`deepfeat.probe.logistic`).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.linalg import blas

CHUNK_BYTES = 64 * 2**20  # float64 working chunks of the statistics / least-squares passes
BLOCK_BYTES = 8 * 2**20  # float64 column blocks of the standardisation and Gram passes (cache-sized)
GRAM_BYTES = 2 * 2**30  # an n_train x n_train Gram matrix (float64) at most this large (dual forms)


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


def gram_matrix(Z, dtype: torch.dtype = torch.float64, device=None) -> torch.Tensor:
    """The Gram matrix ``K = Z Z'`` (n x n) of a float32 (n x d) matrix, as a ``dtype`` tensor on ``device``.

    Summed over column blocks in ``dtype``: float64 forms the exact products of the float32 inputs and sums
    them in float64. On the CPU the blocks go through BLAS ?syrk into one triangle of K (half the
    multiply-adds of a matrix product; no n x n temporaries), mirrored at the end; elsewhere through torch.
    """
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"gram_matrix: dtype must be torch.float32 or torch.float64, got {dtype}")
    dev = torch.device("cpu") if device is None else torch.device(device)
    check_2d(Z, "gram_matrix")
    n, d = Z.shape
    w = max(256, cols_per_block(n))
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
