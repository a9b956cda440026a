"""The Gram form: blocks on a seeded subset of m rows, as centred Grams and principal coordinates.

Blocks that the feature form does not take (:func:`deepfeat.similarity.feature_form.block_forms`: more than
``max_features`` columns, at least as many columns as training clips, or a covariance beyond ``memory_mb``) use the
exact Gram form instead of the streamed covariances: on a seeded subset of m = min(n, ``gram_max_clips``) training
clips (all of them when n is small enough, so the values equal the feature form; :data:`GRAM_STREAM` is the subset's
random stream, see :func:`deepfeat.formats.cliptable.seeded_subset`), the centred Gram K = X_c X_c' (columns centred
first, never via H K H; one BLAS dsyrk per column chunk, :class:`_GramAcc`) is eigendecomposed, K = U L U' (a block
with p <= m: its p x p covariance instead, U = X_c V L^(-1/2)). Pairs are compared in Gram space when every block's
K fits ``memory_mb`` (:mod:`deepfeat.similarity.gram_space`); otherwise block by block
(:mod:`deepfeat.similarity.gram_blocks`) from the Grams of the blocks wider than m and the principal coordinates B =
U L^(1/2) of the others (:class:`_Factor`; R = B_x'B_y, :func:`_factor_pair`). ``method`` = gram, ``n`` = m.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from scipy.linalg.blas import dsyrk as _dsyrk

from deepfeat.similarity.bootstrap import _cka_psi
from deepfeat.similarity.measures import EIGH_LAPACK_MIN, F64, _eigh_desc, _pair_measures, _set_dims, _Spec

GRAM_STREAM = 7919  # random stream of the Gram subset: seeded_subset(n, m, seed, GRAM_STREAM)


@dataclass
class _Factor:
    """A block on m rows in principal coordinates: B (m x r) with B'B = diag(lam) and BB' = the centred Gram."""

    B: torch.Tensor
    spec: _Spec
    a: torch.Tensor  # squared norms of the centred rows (diag of the Gram)
    q: torch.Tensor | None  # per-row influence self terms x_i'C x_i = sum_j K_ij^2

    def nbytes(self) -> int:
        return int(self.B.numel() + self.a.numel() + (0 if self.q is None else self.q.numel())) * 8 + self.spec.nbytes()


class _LazyFactor(_Factor):
    """A cached factor whose B is read only when first used (Gram-space jobs with a cached Gram never need it)."""

    def __init__(self, load_B: Callable, spec: _Spec, a: torch.Tensor, q: torch.Tensor | None):
        self._load_B, self._B, self.spec, self.a, self.q = load_B, None, spec, a, q

    @property
    def B(self) -> torch.Tensor:
        if self._B is None:
            self._B = self._load_B()
        return self._B

    def release(self) -> None:
        """Drop B (read again when next used)."""
        self._B = None

    def nbytes(self) -> int:  # what it holds now (without reading B)
        held = 0 if self._B is None else int(self._B.numel()) * 8
        return held + int(self.a.numel() + (0 if self.q is None else self.q.numel())) * 8 + self.spec.nbytes()


def _factor_from_gram(K: torch.Tensor, p: int, cfg, need_q: bool, overwrite: bool = False) -> _Factor:
    """Principal coordinates of a block from its centred Gram ``K`` (destroyed when ``overwrite``)."""
    m = K.shape[0]
    a = K.diagonal().clone()
    if m < EIGH_LAPACK_MIN:
        q = (K * K).sum(1) if need_q else None
        fro2 = float((K * K).sum())
    else:  # no m x m temporary
        q = _sq_rows(K)
        fro2 = float(q.sum())
        q = q if need_q else None
    lam, U = _eigh_desc(K, overwrite=overwrite)
    del K
    B = U * lam.sqrt()
    del U
    spec = _set_dims(_Spec(n=m, p=p, trace=float(a.sum()), fro2=fro2, aa=float(a @ a), lam=lam, V=None), cfg)
    return _Factor(B, spec, a, q)


def _sq_rows(K: torch.Tensor, block: int = 1 << 22) -> torch.Tensor:
    """Row sums of K * K; a large K in row blocks (no temporary of its size), each row summed as in one go."""
    if K.numel() <= block:
        return (K * K).sum(1)
    step = max(1, block // K.shape[1])
    return torch.cat([(K[i : i + step] * K[i : i + step]).sum(1) for i in range(0, K.shape[0], step)])


def _factor_from_centred(X: torch.Tensor, cfg, need_q: bool, via: str = "auto", need_eig: bool = True) -> _Factor:
    """Principal coordinates of the centred block X (m x p): via its covariance (p <= m) or its Gram.

    Without ``need_eig`` (only CKA / debiased CKA asked) a block with p <= m keeps B = X itself (BB' is the
    Gram all the same) and skips the eigendecomposition.
    """
    m, p = X.shape
    if via == "gram" or (via == "auto" and p > m):
        return _factor_from_gram(X @ X.T, p, cfg, need_q, overwrite=True)
    C = X.T @ X
    fro2 = float((C * C).sum())
    a = (X * X).sum(1)
    spec = _Spec(n=m, p=p, trace=float(a.sum()), fro2=fro2, aa=float(a @ a), V=None)
    if not need_eig:
        q = ((X @ C) * X).sum(1) if need_q else None
        return _Factor(X, spec, a, q)
    lam, V = _eigh_desc(C, overwrite=True)
    del C
    B = X @ V
    q = (B * B) @ lam if need_q else None
    spec.lam = lam
    _set_dims(spec, cfg)
    return _Factor(B, spec, a, q)


class _GramAcc:
    """Accumulates the centred Gram K = sum over column chunks X X' (m x m, float64): BLAS dsyrk on the CPU (the
    upper triangle only, half the flops of a full product), a plain product on CUDA."""

    def __init__(self, m: int, device, buf: np.ndarray | None = None):
        self.device = torch.device(device)
        if self.device.type == "cpu":
            if buf is not None:  # a reused (m x m) scratch array: no fresh pages to fault in
                self.c = buf.reshape(m, m).T
                self.c.fill(0.0)
            else:
                self.c = np.zeros((m, m), order="F")
        else:
            self.c = torch.zeros(m, m, dtype=F64, device=self.device)

    def add(self, X: torch.Tensor) -> None:
        """K += X X' for X (m x k)."""
        if isinstance(self.c, np.ndarray):
            # a C-ordered (m x k) array's transpose is Fortran-ordered (k x m): dsyrk takes it without a copy
            a = np.ascontiguousarray(X.numpy()).T
            self.c = _dsyrk(1.0, a, beta=1.0, c=self.c, trans=1, lower=0, overwrite_c=1)
        else:
            self.c.addmm_(X, X.T)

    def full(self, out: torch.Tensor | None = None) -> torch.Tensor:
        """The exactly symmetric m x m Gram (written into ``out`` when given)."""
        if isinstance(self.c, np.ndarray):
            T = torch.from_numpy(self.c)  # upper triangle; dsyrk never writes the (zero) strict lower one
            K = torch.add(T, T.T, out=out)
            K.diagonal().sub_(T.diagonal())  # 2d - d = d exactly
            return K
        K = torch.add(self.c, self.c.T, out=out)
        return K.mul_(0.5)


def _mirror_lower(K: torch.Tensor, step: int = 1024) -> None:
    """Copy the lower triangle of the square matrix K onto its upper one, in place (column blocks): the exactly
    symmetric Gram of :meth:`_GramAcc.full` without a second m x m array."""
    m = K.shape[0]
    for i0 in range(0, m, step):
        i1 = min(i0 + step, m)
        d = K[i0:i1, i0:i1]
        d.copy_(d.tril() + d.tril(-1).T)
        if i1 < m:
            K[i0:i1, i1:].copy_(K[i1:, i0:i1].T)


def _crossprod(X: torch.Tensor) -> torch.Tensor:
    """X'X (p x p, exactly symmetric) of a float64 (rows x p) matrix: dsyrk on the CPU (half the flops)."""
    if X.device.type != "cpu":
        C = X.T @ X
        return (C + C.T) / 2
    # a C-ordered (rows x p) array's transpose is Fortran-ordered (p x rows): dsyrk (A A') takes it without a copy
    c = _dsyrk(1.0, np.ascontiguousarray(X.numpy()).T, trans=0, lower=0)
    T = torch.from_numpy(c)  # upper triangle, zero strict lower one
    C = T + T.T
    C.diagonal().sub_(T.diagonal())
    return C


def _factor_pair(fx: _Factor, fy: _Factor, measures, need_psi: bool, parts: bool = False):
    """Measures of two factors on the same rows; plus the CKA influence values when asked (``parts``: the per-row
    r_i = x_i'C_xy y_i instead, when asked)."""
    R = fx.B.T @ fy.B
    vals, flags = _pair_measures(R, fx.spec, fy.spec, float(fx.a @ fy.a), measures, fx.spec.n)
    if parts:
        return vals, flags, (((fx.B @ R) * fy.B).sum(1) if need_psi else None)
    psi = None
    if need_psi and np.isfinite(vals.get("cka", np.nan)):
        r = ((fx.B @ R) * fy.B).sum(1)
        psi = _cka_psi(r, fx.q, fy.q, fx.spec, fy.spec, vals["cka"], fx.spec.n).cpu().numpy()
    return vals, flags, psi
