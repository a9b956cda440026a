"""Gram space: every pair of the Gram form from the centred Grams of its blocks, all held at once.

Pairs are evaluated in Gram space, all blocks' K held at once: ||C_xy||_F^2 = <K_x, K_y>, sum_i a_i b_i from the
diagonals, LR = <K_x, P_y> / tr K_x with P_y = U_r U_r' the projector on b's leading ``rank`` directions, CCA and
SVCCA from the singular values of U_x'U_y over the rank / SVCCA subspaces (one product per left block against all
partners), the bootstrap's r_i = sum_j K_x,ij K_y,ij (one batched product): O(m^2) per pair instead of
O(m p_x p_y). The engine takes this path when the Grams fit ``memory_mb`` (:meth:`_GramSpace._gram_space_bytes`).

Held-out measures (``*_test``, :meth:`_GramSpace._ho_values`): each block's columns are read on the m Gram rows and
on t test clips together (one forward pass of a features source for both; t = every clip outside the training
split, at most ``gram_max_clips``: a seeded subset, :data:`HELDOUT_STREAM`), and the same column-chunk pass that
accumulates K accumulates G = X_c X_te,c' (m x t, test rows centred by the training mean), tr K_te and ||1'X_te,c||^2
(hand-crafted blocks read from the cache: their columns are read for G alone). The fit uses the m Gram clips.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

from deepfeat.formats.cliptable import seeded_subset
from deepfeat.formats.files import index_runs
from deepfeat.similarity.gram import GRAM_STREAM, _GramAcc, _mirror_lower, _sq_rows
from deepfeat.similarity.measures import F64, HELDOUT_MEASURES, _eigh_desc, _measures, _set_dims, _Spec, _svals

#: random stream of the capped test clips of the Gram-form held-out measures
HELDOUT_STREAM = GRAM_STREAM + 1
_HO_LR = {"r2_lr_test", "r2_cca_test", "rho_cca_test"}  # held-out measures over the ranks
_HO_SV = {"r2_svcca_test", "rho_svcca_test"}  # ... over the SVCCA dimensions


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

    def _gram_space_bytes(self, pairs, segs, m, heldout: bool = False) -> int:
        """Upper bound of the memory :meth:`_gram_space` holds: the centred Grams, projectors and eigenvectors of
        every block (each <= m x m), the per-row products of the bootstrap and a few m x m temporaries; with
        ``heldout`` also the held-out measures' cross Grams and test scores (when asked)."""
        nl = len({a for a, _ in pairs})
        lr = "r2_lr" in self.ms
        per = 1 + lr + (lr or bool({"r2_cca", "rho_cca", "r2_svcca", "rho_svcca"} & set(self.ms)))
        per += "procrustes" in self.ms
        ho = 0
        if heldout and set(HELDOUT_MEASURES) & set(self.ms):  # G (m x t) and test scores (t x m) of every block
            t = min(int((~self.train).sum()), self.cfg["gram_max_clips"])
            ho = 2 * len(segs) * m * t + 2 * m * max(m, t)
        return 8 * (len(segs) * per * m * m + (m * nl * len(segs) if self.boot else 0) + 3 * m * m + ho)

    def _gblock_needs(self, spec: _Spec, m: int) -> int:
        """Leading eigenvectors a block must keep: its SVCCA dimension, or its rank when CCA (or LR on it as
        the regressor) is asked and defined (rank < m - 1)."""
        k = 0
        if {"r2_svcca", "rho_svcca"} & set(self.ms) and spec.d < m - 1:
            k = max(k, spec.d)
        if {"r2_cca", "rho_cca", "r2_lr"} & set(self.ms) and spec.rank < m - 1:
            k = max(k, spec.rank)
        if getattr(self, "_ho_G", None):  # held-out measures in Gram space: defined at any rank
            if _HO_LR & set(self.ms):
                k = max(k, spec.rank)
            if _HO_SV & set(self.ms):
                k = max(k, spec.d)
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
            if seg in getattr(self, "_ho_G", {}):  # the cache has no test rows: read the block's columns here
                src = self.seg_src[seg]
                for Xc, Xt in self._sub_test_blocks(src, *src.offsets[seg]):
                    self._ho_add(seg, Xc, Xt)
            return _GBlock(Kout, spec, f.a, f.q if f.q is not None else (Kout * Kout).sum(1), U, Bp)
        src = self.seg_src[seg]
        c0, c1 = src.offsets[seg]
        p = c1 - c0
        own = inplace and self.device.type == "cpu"
        cpu = self.device.type == "cpu"
        acc = _GramAcc(m, self.device, Kout.numpy() if own else self._buf("gram", (m, m), np.float64) if cpu else None)
        X = None
        step = max(p, 1) if p <= m else 4096
        if seg in getattr(self, "_ho_G", {}):  # test rows in the same pass (one forward pass for both)
            blocks = self._sub_test_blocks(src, c0, c1, step=step)
        else:
            blocks = ((Xc, None) for Xc in self._sub_blocks(src, c0, c1, step=step))
        for Xc, Xt in blocks:
            acc.add(Xc)
            if Xt is not None:
                self._ho_add(seg, Xc, Xt)
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

    def _gram_space(self, pairs, segs, m, heldout: bool = True):
        """Every pair from the centred Grams K and projectors P of its blocks, all held at once:
        ||C_xy||^2 = <K_x, K_y>, LR = <K_x, P_y> / tr K_x, the bootstrap's r_i = sum_j K_x,ij K_y,ij (one batched
        product for all pairs), CCA/SVCCA from the singular values of U_x'U_y (one product per left block)."""
        ms = self.ms
        t0 = time.perf_counter()
        left = list(dict.fromkeys(a for a, _ in pairs))
        order = left + [s for s in segs if s not in set(left)]
        idx = {s: i for i, s in enumerate(order)}
        nl = len(left)
        self._ho_setup(order, idx, m, heldout)
        Kst, blk = self._gblocks(order, idx, m, t0)
        Kf = Kst.reshape(len(order), m * m)
        pidx, LR = self._lr_products(pairs, blk, Kf, nl, m)
        r3, F = self._cka_products(Kst, Kf, nl, m)
        T = self._cc_products(pairs, blk, order, m)
        HO = self._ho_values(pairs, blk, Kf, idx, nl, m)
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
            for k, (v, fl) in HO.get((a, b), {}).items():
                vals[k] = v
                if fl is None:
                    flags.pop(k, None)
                else:
                    flags[k] = fl
            self._result((a, b), vals, flags, m, "gram", (ga.spec, gb.spec))
            if r3 is not None and self._wants_influence(vals):
                self._keep((a, b), "gram", r3[:, ia, ib], ga.q, gb.q, ga.spec, gb.spec, m, vals)
        self._ho_G, self._ho_Gall = {}, None
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

    # ------------------------------------------------------------------------------------------------------
    # Held-out measures in Gram space (see :meth:`_ho_values`)
    # ------------------------------------------------------------------------------------------------------
    def _ho_setup(self, order, idx, m, enabled: bool = True) -> None:
        """The test clips of the held-out measures (every clip outside the training split, at most
        ``gram_max_clips`` of them: a seeded subset, :data:`HELDOUT_STREAM`) and, per block, the zeroed cross Gram
        G = X_c X_te,c' (m x t) that :meth:`_make_gblock` accumulates with K."""
        self._ho_G, self._ho_t = {}, {}
        self.t, self._ho_off = 0, not enabled
        if not set(HELDOUT_MEASURES) & set(self.ms):
            return
        if not enabled:  # their cross Grams would not fit memory_mb: NaN, flag gram_form
            self.log.info("  held-out measures: not computed (their cross Grams exceed memory_mb; flag gram_form)")
            return
        test = np.flatnonzero(~self.train)
        cap = self.cfg["gram_max_clips"]
        if len(test) > cap:
            test = test[seeded_subset(len(test), cap, self.cfg["seed"], HELDOUT_STREAM)]
        self.t = len(test)
        if self.t < 2:
            return
        self.test_mask = np.zeros(self.N, bool)
        self.test_mask[test] = True
        G = torch.zeros(len(order), m, self.t, dtype=F64, device=self.device)
        self._ho_Gall = G
        self._ho_G = {s: G[idx[s]] for s in order}
        self._ho_t = {s: [0.0, 0.0] for s in order}
        self.log.info(
            f"  held-out measures: {self.t} of {int((~self.train).sum())} test clips"
            + (" (seeded subset)" if self.t < int((~self.train).sum()) else "")
            + f", fitted on the {m} Gram clips"
        )

    def _ho_add(self, seg, Xc: torch.Tensor, Xt: torch.Tensor) -> None:
        """Accumulate one column chunk: G += X_c X_te,c', tr K_te += ||X_te,c||^2, ||1'X_te,c||^2."""
        self._ho_G[seg].addmm_(Xc, Xt.T)
        acc = self._ho_t[seg]
        acc[0] += float((Xt * Xt).sum())
        acc[1] += float(Xt.sum(0).square().sum())

    def _sub_test_blocks(self, src, c0: int, c1: int, step: int = 4096):
        """Like :meth:`_sub_blocks`, but pairs (X_c, X_te,c): columns [c0, c1) on the Gram rows centred by their
        mean and on the held-out test rows centred by that same (training) mean; both row sets are read (or
        computed: one forward pass of a features source) together."""
        union = self.sub_mask | self.test_mask
        urows = np.flatnonzero(union)
        isub, itest = np.flatnonzero(self.sub_mask[urows]), np.flatnonzero(self.test_mask[urows])
        wc = max(1, min(c1 - c0, int(self.budget / (16 * len(urows)))))
        for r0 in range(c0, c1, wc):
            r1 = min(r0 + wc, c1)
            if src.take is not None:
                src.columns.purpose = "subset"
                try:
                    raw = np.array(src.take(urows, r0, r1), np.float64)
                finally:
                    src.columns.purpose = "chunk"
            else:
                raw = self._rows_read(src, r0, r1, union)
            if src.shift is not None:
                raw -= src.shift[r0:r1].cpu().numpy()
                raw *= src.inv[r0:r1].cpu().numpy()
            if not np.isfinite(raw).all():
                bad = int(urows[np.flatnonzero(~np.isfinite(raw).all(1))[0]])
                raise ValueError(f"{src.label}: non-finite value in clip row {bad} (columns {r0}:{r1})")
            for j0 in range(0, r1 - r0, step):
                blk = raw[:, j0 : j0 + step]
                xs, xt = blk[isub], blk[itest]
                mean = xs.mean(0)
                xs -= mean
                xt -= mean
                yield torch.from_numpy(xs).to(self.device), torch.from_numpy(xt).to(self.device)

    def _rows_read(self, src, r0: int, r1: int, mask) -> np.ndarray:
        """Columns [r0, r1) of a file source on the rows of ``mask`` (float64, a new array)."""
        w = r1 - r0
        out, pos = np.empty((int(mask.sum()), w), np.float64), 0
        for i0, i1, sel in self._chunks(mask, max(1, int(64e6 / (4 * w)))):
            x = np.asarray(src.read(i0, i1, r0, r1))
            if x.shape != (i1 - i0, w):
                raise ValueError(f"{src.label}: expected rows {i0}:{i1} x columns {r0}:{r1}, read shape {x.shape}")
            for a, b in index_runs(sel):
                out[pos : pos + b - a] = x[a:b]
                pos += b - a
        return out

    def _ho_values(self, pairs, blk, Kf, idx, nl, m) -> dict:
        """{pair: {held-out measure: (value, flag or None)}} in Gram space, from K and the cross Gram G = X_c X_te,c'
        of each block (m training rows centred by their mean; t test rows centred by the same training mean).

        With U_r (m x r) the leading orthonormal eigenvectors of the regressor's K_y (eigenvalues L_r) its
        training and test scores are Z = U_r and Z_te = G_y' U_r L_r^-1 (= Y_te,c V_r L_r^-1/2, the feature form's
        whitened test rows). ``r2_lr_test`` = 1 - SSE/SST, SSE = tr K_te - 2 <G_x, U_r Z_te'> + <K_x, U_r Z_te'Z_te
        U_r'>, SST = tr K_te - ||1'X_te,c||^2 / t (around the test mean): the feature form's value on the same
        clips. CCA/SVCCA: canonical directions from the SVD of U_x'U_y over the ranks / SVCCA dimensions, applied
        to the test scores; correlations of the test-centred canonical variates."""
        held = [x for x in HELDOUT_MEASURES if x in self.ms]
        if not held or self._ho_off:  # off: the flag gram_form of :func:`_measures` stays
            return {}
        if not self._ho_G:
            fl = f"test_clips={self.t}<2"
            return {p: {x: (float("nan"), fl) for x in held} for p in pairs}
        t = self.t
        ok = [(a, b) for a, b in pairs if blk[a].spec.fro2 > 0 and blk[b].spec.fro2 > 0]
        out = {
            p: {x: (float("nan"), "zero_variance" if p not in set(ok) else "heldout_undefined") for x in held}
            for p in pairs
        }
        Z = {}  # test scores of every block: G' U L^-1 (t x k)
        for s in dict.fromkeys(x for p in ok for x in p):
            g = blk[s]
            if g.U is not None:
                k = g.U.shape[1]
                Z[s] = (self._ho_G[s].T @ g.U) / g.spec.lam[:k]
        if "r2_lr_test" in held:
            Gf = self._ho_Gall[:nl].reshape(nl, -1)
            for b in dict.fromkeys(b for _, b in ok):
                r = blk[b].spec.rank
                if r >= m - 1:  # the training fit interpolates every training clip: NaN, as the in-sample r2_lr
                    for a, bb in ok:
                        if bb == b:
                            out[(a, b)]["r2_lr_test"] = (float("nan"), f"rank_b={r}>=n-1={m - 1}")
                    continue
                if b not in Z or r == 0:
                    continue
                Ub, Zb = blk[b].U[:, :r], Z[b][:, :r]
                quad = Kf[:nl] @ (Ub @ (Zb.T @ Zb) @ Ub.T).reshape(-1)  # <K_a, U Z'Z U'> for every left a
                cross = Gf @ (Ub @ Zb.T).reshape(-1)  # <G_a, U Z'>
                for a, bb in ok:
                    if bb != b:
                        continue
                    tte, ssq = self._ho_t[a]
                    sst = tte - ssq / t
                    ia = idx[a]
                    sse = tte - 2 * float(cross[ia]) + float(quad[ia])
                    v = 1 - sse / sst if sst > 0 else float("nan")
                    out[(a, b)]["r2_lr_test"] = (v, None if np.isfinite(v) else "heldout_undefined")
        for (r2, rho), dim in ((("r2_cca_test", "rho_cca_test"), "rank"), (("r2_svcca_test", "rho_svcca_test"), "d")):
            if r2 not in held and rho not in held:
                continue
            for a, b in ok:
                ka, kb = getattr(blk[a].spec, dim), getattr(blk[b].spec, dim)
                if ka + kb > m - 1:  # the subspaces intersect: tied unit canonical correlations, no unique pairs
                    lab = "rank" if dim == "rank" else "svcca_dim"
                    for x in (r2, rho):
                        if x in held:
                            out[(a, b)][x] = (float("nan"), f"{lab}_a+{lab}_b={ka + kb}>n-1={m - 1}")
                    continue
                if a not in Z or b not in Z or min(ka, kb) == 0:
                    continue
                U, _, Vh = torch.linalg.svd(blk[a].U[:, :ka].T @ blk[b].U[:, :kb], full_matrices=False)
                K = min(ka, kb)
                A = Z[a][:, :ka] @ U[:, :K]
                B = Z[b][:, :kb] @ Vh[:K].T
                A = A - A.mean(0)
                B = B - B.mean(0)
                corr = (A * B).sum(0) / torch.sqrt((A * A).sum(0) * (B * B).sum(0))
                for x, v in ((r2, float((corr * corr).mean())), (rho, float(corr.mean()))):
                    if x in held:
                        out[(a, b)][x] = (v, None if np.isfinite(v) else "heldout_undefined")
        return out
