"""The Ricker ("Mexican hat") wavelet transform of the dB mel, along time (of each mel bin) or along the mel bins
(of each frame): the removed ``scipy.signal.cwt`` with ``scipy.signal.ricker``, written as one float64 matrix
product.

For a row x of n values (T frames, or F mel bins) and a width a: K = min(10 a, n), s = (K-1)//2,
k = ricker(K, a), and ``out[t] = sum_j x[j] k[t+s-j]`` (convolution, mode 'same', zero padding) =
``x @ ricker_matrix(n, a).T``.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np


def ricker(points: int, a: float) -> np.ndarray:
    """The Ricker ("Mexican hat") wavelet of the removed ``scipy.signal.ricker``, float64 (points,).

    ricker(t) = 2 / (sqrt(3a) pi^(1/4)) (1 - t^2/a^2) exp(-t^2 / (2a^2)), t = arange(points) - (points-1)/2.
    """
    A = 2 / (np.sqrt(3 * a) * (np.pi**0.25))
    wsq = a**2
    vec = np.arange(0, points) - (points - 1.0) / 2
    xsq = vec**2
    return A * (1 - xsq / wsq) * np.exp(-xsq / (2 * wsq))


@lru_cache(maxsize=64)
def _ricker_matrix_cached(T: int, width: int) -> np.ndarray:
    K = int(min(10 * width, T))
    s = (K - 1) // 2
    k = ricker(K, width)
    t = np.arange(T)[:, None]
    j = np.arange(T)[None, :]
    idx = t + s - j
    inside = (idx >= 0) & (idx < K)
    M = np.where(inside, k[np.clip(idx, 0, K - 1)], 0.0)
    M.setflags(write=False)
    return M


def ricker_matrix(T: int, width: int) -> np.ndarray:
    """(T x T) float64 matrix M with ``x @ M.T`` = old ``scipy.signal.cwt(x, ricker, [width])[0]`` for a row x
    of T values (frames or mel bins).

    K = min(10 width, T), s = (K-1)//2, k = ricker(K, width): M[t, j] = k[t + s - j] where 0 <= t+s-j < K,
    else 0, i.e. out[t] = sum_j x[j] k[t+s-j] (convolution, mode 'same', zero padding). Read-only (cached).
    """
    if int(T) < 1 or int(width) < 1:
        raise ValueError(f"ricker_matrix: need T >= 1 and width >= 1, got T={T}, width={width}")
    return _ricker_matrix_cached(int(T), int(width))


def _transform_rows(x: np.ndarray, widths) -> np.ndarray:
    """(B, R, n) float64 -> (B, W, R, n): the Ricker transform of every row of n values at every width, as one
    matmul with the stacked (W*n x n) matrices. A transposed view of a (B, R, W, n) array (rows contiguous)."""
    B, R, n = x.shape
    widths = [int(w) for w in widths]
    M = np.concatenate([ricker_matrix(n, w) for w in widths], axis=0)  # (W*n, n)
    out = (x.reshape(B * R, n) @ M.T).reshape(B, R, len(widths), n)
    return out.transpose(0, 2, 1, 3)


def _as_mel(mel: np.ndarray, who: str) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    if mel.ndim != 3:
        raise ValueError(f"{who}: expected mel of shape (B, F, T), got {mel.shape}")
    return mel


def ricker_transform(mel: np.ndarray, widths) -> np.ndarray:
    """Ricker transform along the last (time) axis: (B, F, T) -> (B, W, F, T) float64.

    All widths are stacked into one (W*T x T) matrix and applied in a single float64 matmul over all clips and
    bins; ``out[b, i, f] = mel[b, f] @ ricker_matrix(T, widths[i]).T``. The result is a transposed view of a
    (B, F, W, T) array (the time axis stays contiguous).
    """
    return _transform_rows(_as_mel(mel, "ricker_transform"), widths)


def ricker_time_mean(mel: np.ndarray, widths) -> np.ndarray:
    """Mean over time of :func:`ricker_transform`, without the transform: (B, F, T) -> (B, W, F) float64.

    mean_t out[t] = x @ c with c[j] = mean_t M[t, j] (the column means of the Ricker matrix).
    """
    mel = np.asarray(mel, dtype=np.float64)
    T = mel.shape[-1]
    C = np.stack([ricker_matrix(T, int(w)).mean(axis=0) for w in widths], axis=1)  # (T, W)
    return np.moveaxis(mel @ C, -1, 1)


def ricker_transform_bins(mel: np.ndarray, widths) -> np.ndarray:
    """Ricker transform along the mel bins of every frame: (B, F, T) -> (B, W, T, F) float64.

    ``out[b, i, t] = mel[b, :, t] @ ricker_matrix(F, widths[i]).T`` (kernel length min(10 w, F)). All widths
    are stacked into one (W*F x F) matrix applied in a single float64 matmul over all clips and frames. The
    result is a transposed view of a (B, T, W, F) array (the mel-bin axis stays contiguous).
    """
    frames = np.ascontiguousarray(_as_mel(mel, "ricker_transform_bins").transpose(0, 2, 1))  # (B, T, F)
    return _transform_rows(frames, widths)


def ricker_bins_mean(mel: np.ndarray, widths) -> np.ndarray:
    """Mean over the mel bins of :func:`ricker_transform_bins`, without the transform: (B, F, T) -> (B, W, T).

    mean_f out[t, f] = mel[:, t] @ c with c[j] = mean_f M[f, j] (the column means of the Ricker matrix).
    """
    mel = np.asarray(mel, dtype=np.float64)
    F = mel.shape[1]
    C = np.stack([ricker_matrix(F, int(w)).mean(axis=0) for w in widths], axis=1)  # (F, W)
    return np.einsum("bft,fw->bwt", mel, C, optimize=True)
