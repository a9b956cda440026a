"""Gram space: every pair of the Gram form from the centred Grams of its blocks, all held at once.

Pairs are evaluated in Gram space, all blocks' K held at once: ||C_xy||_F^2 = <K_x, K_y>, sum_i a_i b_i from the
diagonals, LR = <K_x, P_y> / tr K_x with P_y = U_r U_r' the projector on b's leading ``rank`` directions, CCA and
SVCCA from the singular values of U_x'U_y over the rank / SVCCA subspaces (one product per left block against all
partners), the bootstrap's r_i = sum_j K_x,ij K_y,ij (one batched product): O(m^2) per pair instead of
O(m p_x p_y). The engine takes this path when the Grams fit ``memory_mb`` (:meth:`_GramSpace._gram_space_bytes`).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

from deepfeat.similarity.gram import _GramAcc, _mirror_lower, _sq_rows
from deepfeat.similarity.measures import F64, _eigh_desc, _measures, _set_dims, _Spec, _svals


@dataclass
class _GBlock:
    """A block on m rows in Gram space: K = X_c X_c' (m x m), a = diag K, q = row sums of K * K (bootstrap),
    U = leading eigenvectors of K (m x k, orthonormal; k from :meth:`_GramSpace._gblock_needs`)."""

    K: torch.Tensor
    spec: _Spec
    a: torch.Tensor
    q: torch.Tensor
    U: torch.Tensor | None
    B: torch.Tensor | None = None  # principal coordinates (m x r, BB' = K), kept only for ``procrustes``


class _GramSpace:
    """The Gram-space path of :class:`~deepfeat.similarity.engine._Engine` (a mixin: it uses the engine's reader
    methods, settings and results)."""

    def _gram_space_bytes(self, pairs, segs, m) -> int:
        """Upper bound of the memory :meth:`_gram_space` holds: the centred Grams, projectors and eigenvectors of
        every block (each <= m x m), the per-row products of the bootstrap and a few m x m temporaries."""
        nl = len({a for a, _ in pairs})
        lr = "r2_lr" in self.ms
        per = 1 + lr + (lr or bool({"r2_cca", "rho_cca", "r2_svcca", "rho_svcca"} & set(self.ms)))
        per += "procrustes" in self.ms
        return 8 * (len(segs) * per * m * m + (m * nl * len(segs) if self.boot else 0) + 3 * m * m)

    def _gblock_needs(self, spec: _Spec, m: int) -> int:
        """Leading eigenvectors a block must keep: its SVCCA dimension, or its rank when CCA (or LR on it as
        the regressor) is asked and defined (rank < m - 1)."""
        k = 0
        if {"r2_svcca", "rho_svcca"} & set(self.ms) and spec.d < m - 1:
            k = max(k, spec.d)
        if {"r2_cca", "rho_cca", "r2_lr"} & set(self.ms) and spec.rank < m - 1:
            k = max(k, spec.rank)
        return k

    def _outer(self, B: torch.Tensor, out: torch.Tensor) -> None:
        """out = B B' (m x m) for B (m x r): one product when r is small (no symmetrising pass; only used in inner
        products, where its last-bit asymmetry is harmless), else dsyrk."""
        m, r = B.shape
        if 4 * r <= m or self.device.type != "cpu":
            torch.mm(B, B.T, out=out)
        else:
            acc = _GramAcc(m, self.device, self._buf("gram", (m, m), np.float64))
            acc.add(B.contiguous())
            acc.full(out=out)

    def _make_gblock(self, seg, Kout: torch.Tensor, inplace: bool = False) -> _GBlock:
        """The block ``seg`` on the m Gram rows in Gram space, its centred Gram written into ``Kout``
        (``inplace``: accumulated in ``Kout`` itself, no m x m scratch kept; the same values)."""
        m = self.m
        if self.cache is not None and seg in self.cache.factor:
            f = self.cache.factor[seg]
            if self.cache.gram_K is not None and seg in self.cache.gram_K:
                Kout.copy_(self.cache.gram_K[seg])
            else:
                self._outer(f.B, Kout)
            spec = f.spec
            k = self._gblock_needs(spec, m) if self.need_eig else 0
            U = f.B[:, :k] * spec.lam[:k].rsqrt() if k else None
            Bp = f.B if "procrustes" in self.ms else None
            return _GBlock(Kout, spec, f.a, f.q if f.q is not None else (Kout * Kout).sum(1), U, Bp)
        src = self.seg_src[seg]
        c0, c1 = src.offsets[seg]
        p = c1 - c0
        own = inplace and self.device.type == "cpu"
        cpu = self.device.type == "cpu"
        acc = _GramAcc(m, self.device, Kout.numpy() if own else self._buf("gram", (m, m), np.float64) if cpu else None)
        X = None
        for Xc in self._sub_blocks(src, c0, c1, step=max(p, 1) if p <= m else 4096):
            acc.add(Xc)
            if p <= m:
                X = Xc.clone()
        if own:
            if not np.shares_memory(acc.c, Kout.numpy()):  # BLAS wrote to a copy after all
                Kout.numpy()[...] = acc.c.T
            _mirror_lower(Kout)  # dsyrk filled the upper triangle of Kout's transpose: its lower one
        else:
            acc.full(out=Kout)
        del acc
        a = Kout.diagonal().clone()
        q = _sq_rows(Kout)
        spec = _Spec(n=m, p=p, trace=float(a.sum()), fro2=float(q.sum()), aa=float(a @ a))
        U = Bp = None
        want_b = "procrustes" in self.ms
        if want_b and X is not None:
            Bp = X  # the centred block itself: X X' = K
        if self.need_eig:
            if X is not None:  # p <= m: spectrum from the p x p covariance, eigenvectors of K = X V / sqrt(lam)
                lam, V = _eigh_desc(X.T @ X)
            else:
                lam, V = _eigh_desc(Kout)
            spec.lam = lam
            _set_dims(spec, self.cfg)
            k = self._gblock_needs(spec, m)
            if k:
                U = (X @ V[:, :k]) * lam[:k].rsqrt() if X is not None else V[:, :k].clone()
            if want_b and Bp is None:
                Bp = V * lam.sqrt()
            del V
        elif want_b and Bp is None:
            lam, V = _eigh_desc(Kout.clone())
            Bp = V * lam.sqrt()
            del V
        return _GBlock(Kout, spec, a, q, U, Bp)

    def _gram_space(self, pairs, segs, m):
        """Every pair from the centred Grams K and projectors P of its blocks, all held at once:
        ||C_xy||^2 = <K_x, K_y>, LR = <K_x, P_y> / tr K_x, the bootstrap's r_i = sum_j K_x,ij K_y,ij (one batched
        product for all pairs), CCA/SVCCA from the singular values of U_x'U_y (one product per left block)."""
        ms = self.ms
        t0 = time.perf_counter()
        left = list(dict.fromkeys(a for a, _ in pairs))
        order = left + [s for s in segs if s not in set(left)]
        idx = {s: i for i, s in enumerate(order)}
        nl = len(left)
        Kst, blk = self._gblocks(order, idx, m, t0)
        Kf = Kst.reshape(len(order), m * m)
        pidx, LR = self._lr_products(pairs, blk, Kf, nl, m)
        r3, F = self._cka_products(Kst, Kf, nl, m)
        T = self._cc_products(pairs, blk, order, m)
        for a, b in pairs:
            ga, gb = blk[a], blk[b]
            ia, ib = idx[a], idx[b]
            vals, flags = _measures(
                float(F[ia, ib]),
                float(ga.a @ gb.a),
                ga.spec,
                gb.spec,
                ms,
                m,
                lr=lambda ia=ia, b=b: float(LR[ia, pidx[b]]),
                cca_sv=lambda a=a, b=b: _svals(T[("cca", a, b)]),
                svcca_sv=lambda a=a, b=b: _svals(T[("svcca", a, b)]),
                nuc=lambda ga=ga, gb=gb: float(torch.linalg.svdvals(ga.B.T @ gb.B).sum()),
            )
            self._result((a, b), vals, flags, m, "gram", (ga.spec, gb.spec))
            if r3 is not None and self._wants_influence(vals):
                self._keep((a, b), "gram", r3[:, ia, ib], ga.q, gb.q, ga.spec, gb.spec, m, vals)
        if getattr(self, "stats", None) is not None and m == self.n:  # the chance band may reuse these Grams
            self._chance_grams = (Kst, idx)
        self.log.info(f"  Gram space: {len(pairs)} pairs of {len(order)} blocks in {time.perf_counter() - t0:.1f} s")

    def _gblocks(self, order, idx, m, t0):
        """(K stack (nb, m, m), {segment: _GBlock}) of every block, stacked in ``order``; built source by source in
        column order (a features source then computes each window of its columns once)."""
        nb = len(order)
        Kst = torch.empty(nb, m, m, dtype=F64, device=self.device)
        blk: dict[str, _GBlock] = {}
        nxt = 30.0
        rank = {name: i for i, name in enumerate(self.src)}
        build = sorted(order, key=lambda s: (rank[self.seg_src[s].name], self.seg_src[s].offsets[s][0]))
        for i, s in enumerate(build, 1):
            blk[s] = self._make_gblock(s, Kst[idx[s]])
            el = time.perf_counter() - t0
            if el >= nxt or i == nb:
                self.log.info(f"  Gram space: {i}/{nb} blocks built, {el:.0f} s")
                nxt = el + 30.0
        return Kst, blk

    def _lr_products(self, pairs, blk, Kf, nl, m):
        """({regressor: column}, LR (nl, nP) = <K_a, P_b>): the projectors of the regressors (b) for LR, where LR
        is defined (rank < m - 1); (.., None) when there is none."""
        pidx: dict[str, int] = {}
        if "r2_lr" in self.ms:
            for _, b in pairs:
                sb = blk[b].spec
                if b not in pidx and sb.fro2 > 0 and sb.rank < m - 1:
                    pidx[b] = len(pidx)
        LR = None
        if pidx:
            Pst = torch.empty(len(pidx), m, m, dtype=F64, device=self.device)
            for b, j in pidx.items():
                self._outer(blk[b].U[:, : blk[b].spec.rank], Pst[j])
            LR = Kf[:nl] @ Pst.reshape(len(pidx), m * m).T  # (nl, nP): <K_a, P_b>
            del Pst
        return pidx, LR

    def _cka_products(self, Kst, Kf, nl, m):
        """(r, F): F (nl, nb) = <K_a, K_b>; with the bootstrap also r[i, a, b] = sum_j K_a,ij K_b,ij (m, nl, nb),
        F = sum_i r_i (else r is None)."""
        if not self.boot:
            return None, Kf[:nl] @ Kf.T
        nb = Kst.shape[0]
        r3 = torch.empty(m, nl, nb, dtype=F64, device=self.device)
        step = max(1, int(32e6 / (8 * m * (nl + nb))))
        for i0 in range(0, m, step):
            i1 = min(i0 + step, m)
            torch.bmm(Kst[:nl, i0:i1].permute(1, 0, 2), Kst[:, i0:i1].permute(1, 2, 0), out=r3[i0:i1])
        return r3, r3.sum(0)

    def _cc_products(self, pairs, blk, order, m) -> dict:
        """CCA / SVCCA: {(kind, a, b): U_a'U_b} of every pair of a left block over the rank (kind "cca") or SVCCA
        (kind "svcca") subspaces, where the measure is defined; one product per left block and subspace kind."""
        ms = self.ms
        cca_ms = {"r2_cca", "rho_cca"} & set(ms)
        sv_ms = {"r2_svcca", "rho_svcca"} & set(ms)
        by_left: dict[str, list] = OrderedDict()
        for a, b in pairs:
            by_left.setdefault(a, []).append(b)
        T: dict = {}
        for kind, want, dim in (("cca", cca_ms, "rank"), ("svcca", sv_ms, "d")):
            if not (want and self.need_eig):
                continue
            # the subspaces of every block where the measure is defined, side by side (one copy for all pairs)
            dims = {
                b: getattr(blk[b].spec, dim)
                for b in order
                if blk[b].spec.fro2 > 0 and 0 < getattr(blk[b].spec, dim) < m - 1
            }
            if not dims:
                continue
            col, o = {}, 0
            for b, kb in dims.items():
                col[b] = (o, o + kb)
                o += kb
            Ucat = torch.cat([blk[b].U[:, :kb] for b, kb in dims.items()], 1)
            for a, bs in by_left.items():
                if a not in dims:
                    continue
                ok = sorted((b for b in dict.fromkeys(bs) if b in dims), key=lambda b: col[b][0])
                Ua = blk[a].U[:, : dims[a]].T
                while ok:  # one product per run of partners whose columns are (nearly) adjacent
                    run = [ok.pop(0)]
                    while ok and col[ok[0]][0] - col[run[-1]][1] <= 64:
                        run.append(ok.pop(0))
                    lo, hi = col[run[0]][0], col[run[-1]][1]
                    W = Ua @ Ucat[:, lo:hi]
                    for b in run:
                        T[(kind, a, b)] = W[:, col[b][0] - lo : col[b][1] - lo]
            del Ucat
        return T
