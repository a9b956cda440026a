"""Streamed float64 moments of column blocks: the feature form of the similarity measures.

All measures of a pair of blocks in feature form come from covariance blocks accumulated in ONE streamed float64
pass over the training clips (:class:`Moments`): each block is shifted by a pilot (the mean of its first chunk)
so that the sums barely cancel, then C_xy = M_xy - S_x S_y'/n. The debiased HSIC needs sum_i a_i b_i of the
*centred* rows; it is recovered exactly from sums of the shifted rows (sum alpha_i beta_i, sum alpha_i w_i,
sum beta_i z_i with alpha, beta the shifted squared norms).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import torch
from scipy.linalg.blas import dsyrk as _dsyrk

from deepfeat.similarity.measures import F64, _t64


class Moments:
    """Streamed float64 first and second moments of column blocks, and cross-products of chosen block pairs.

    ``groups``: {group: {segment: width}} (or {group: width} for a one-segment group of the same name). A group
    is a set of columns delivered together to :meth:`update` as one (rows x total width) array; its segments
    are the blocks compared (e.g. group "handcrafted" with one segment per feature). ``cross``: pairs of groups
    whose full cross-product is accumulated (one matmul per chunk for all their segment pairs). ``self_cov``:
    True (all groups), False, or the groups whose per-segment self-covariance is accumulated.

    Per group, rows are shifted by a pilot (the mean of the first chunk) before anything is summed: S = sum z,
    per segment sum alpha, sum alpha^2, sum alpha z (alpha_i = ||z_i||^2 within the segment) and M = sum z z'.
    Per cross pair: M_xy = sum z w', sum alpha beta, sum alpha w, sum beta z. The accessors return exact
    centred quantities: :meth:`cov` (C = M - S S'/n), :meth:`cross_cov`, :meth:`trace`, :meth:`aa`
    (sum_i a_i^2) and :meth:`ab` (sum_i a_i b_i), a_i, b_i the squared norms of the centred rows.

    ``row_norms=False`` skips every sum of row norms (trace, aa, ab then raise): only CKA-type cross-products are
    wanted. ``centred``: groups whose columns already have mean ~0 (e.g. z-scored with the same rows' statistics);
    they get no pilot shift (one pass less over their rows).

    Memory, once the rows are in: :meth:`release` frees a segment's self sums after its spectrum is taken, and
    :meth:`centre_cross` turns every cross sum into the centred C_xy in place (no second copy; :meth:`ab` must be
    read before it).
    """

    def __init__(
        self,
        groups: Mapping,
        cross: Iterable[tuple[str, str]] = (),
        self_cov=True,
        device="cpu",
        row_norms: bool = True,
        centred: Iterable[str] = (),
    ):
        self.row_norms = bool(row_norms)
        self._centred = set(centred)
        self.device = torch.device(device)
        self._syrk = self.device.type == "cpu"
        self._full: dict[str, torch.Tensor] = {}
        self._g: dict[str, dict] = {}
        self._seg: dict[str, tuple[str, int, int, int]] = {}
        for g, segs in groups.items():
            if isinstance(segs, (int, np.integer)):
                segs = {g: int(segs)}
            names = list(segs)
            widths = [int(segs[s]) for s in names]
            if not names or min(widths) < 1:
                raise ValueError(f"Moments: group '{g}' needs segments of width >= 1, got {dict(segs)}")
            off = np.concatenate([[0], np.cumsum(widths)]).astype(np.int64)
            P, ns = int(off[-1]), len(names)
            z = lambda *s: torch.zeros(*s, dtype=F64, device=self.device)  # noqa: E731
            self._g[g] = dict(names=names, off=off, P=P, shift=None, S=z(P), sa=z(ns), saa=z(ns), saz=z(P), M={})
            for i, s in enumerate(names):
                if s in self._seg:
                    raise ValueError(f"Moments: segment name '{s}' is used twice")
                self._seg[s] = (g, i, int(off[i]), int(off[i + 1]))
        if self_cov is True:
            self._self = set(self._g)
        else:
            self._self = set(self_cov or ())
        unknown = self._self - set(self._g)
        if unknown:
            raise ValueError(f"Moments: self_cov names unknown groups {sorted(unknown)}")
        for g in self._self:
            st = self._g[g]
            for i, s in enumerate(st["names"]):
                w = int(st["off"][i + 1] - st["off"][i])
                # on CPU the upper triangle only, updated by BLAS dsyrk (half the flops of a full product)
                st["M"][s] = (
                    np.zeros((w, w), order="F") if self._syrk else torch.zeros(w, w, dtype=F64, device=self.device)
                )
        self._cross: dict[tuple[str, str], dict] = {}
        for a, b in cross:
            if a not in self._g or b not in self._g or a == b:
                raise ValueError(f"Moments: cross pair ({a}, {b}) must name two different groups of {list(self._g)}")
            if (a, b) in self._cross or (b, a) in self._cross:
                continue
            Pa, Pb = self._g[a]["P"], self._g[b]["P"]
            na, nb = len(self._g[a]["names"]), len(self._g[b]["names"])
            self._cross[(a, b)] = dict(
                M=torch.zeros(Pa, Pb, dtype=F64, device=self.device),
                AB=torch.zeros(na, nb, dtype=F64, device=self.device),
                AZ=torch.zeros(na, Pb, dtype=F64, device=self.device),
                ZB=torch.zeros(Pa, nb, dtype=F64, device=self.device),
            )
        self.n = 0
        self._cross_centred = False

    # -- accumulation -------------------------------------------------------------------------------------
    def update(self, batch: Mapping[str, object]) -> None:
        """Add a chunk of rows: {group: (rows x width) array or tensor}, the same rows for every group."""
        if self._cross_centred:
            raise ValueError("Moments.update: the cross sums were centred (centre_cross); no rows can be added")
        rows = None
        z, al = {}, {}
        for g, st in self._g.items():
            if g not in batch:
                raise KeyError(f"Moments.update: no data for group '{g}'")
            x = _t64(batch[g], self.device)
            if x.ndim != 2 or x.shape[1] != st["P"]:
                raise ValueError(f"Moments.update: group '{g}' needs (rows x {st['P']}), got {tuple(x.shape)}")
            if rows is None:
                rows = x.shape[0]
            elif x.shape[0] != rows:
                raise ValueError(f"Moments.update: group '{g}' has {x.shape[0]} rows, others {rows}")
            z[g] = x
        if not rows:
            return
        self._full.clear()
        for g, st in self._g.items():
            if g in self._centred:
                if st["shift"] is None:
                    st["shift"] = torch.zeros(st["P"], dtype=F64, device=self.device)
                zz = z[g]
            else:
                if st["shift"] is None:
                    st["shift"] = z[g].mean(0)
                zz = z[g] - st["shift"]
            a = torch.empty(rows, len(st["names"]), dtype=F64, device=self.device) if self.row_norms else None
            for i, s in enumerate(st["names"]):
                o0, o1 = st["off"][i], st["off"][i + 1]
                zs = zz[:, o0:o1]
                if a is not None:
                    a[:, i] = torch.linalg.vecdot(zs, zs)
                    st["saz"][o0:o1].addmv_(zs.T, a[:, i])
                if g in self._self:
                    if self._syrk:
                        # (C-contiguous rows).T is Fortran-ordered: f2py then passes it without a slow copy
                        zf = np.ascontiguousarray(zs.numpy()).T
                        st["M"][s] = _dsyrk(1.0, zf, beta=1.0, c=st["M"][s], trans=0, lower=0, overwrite_c=1)
                    else:
                        st["M"][s].addmm_(zs.T, zs)
            st["S"] += zz.sum(0)
            if a is not None:
                st["sa"] += a.sum(0)
                st["saa"] += (a * a).sum(0)
            z[g], al[g] = zz, a
        for (ga, gb), c in self._cross.items():
            c["M"].addmm_(z[ga].T, z[gb])
            if self.row_norms:
                c["AB"].addmm_(al[ga].T, al[gb])
                c["AZ"].addmm_(al[ga].T, z[gb])
                c["ZB"].addmm_(z[ga].T, al[gb])
        self.n += rows

    # -- centred statistics -------------------------------------------------------------------------------
    def _selfM(self, g, seg) -> torch.Tensor:
        """The full symmetric sum of products of a segment (cached until the next update)."""
        if seg not in self._full:
            M = self._g[g]["M"][seg]
            if isinstance(M, np.ndarray):  # upper triangle (dsyrk): mirror it
                U = torch.from_numpy(M).triu()
                M = U + U.triu(1).T
            else:
                M = (M + M.T) / 2
            self._full[seg] = M
        return self._full[seg]

    def _loc(self, seg):
        if seg not in self._seg:
            raise KeyError(f"Moments: unknown segment '{seg}'")
        if self.n == 0:
            raise ValueError("Moments: no rows were added")
        return self._seg[seg]

    def _m(self, seg) -> torch.Tensor:
        g, _, o0, o1 = self._loc(seg)
        return self._g[g]["S"][o0:o1] / self.n

    def mean(self, seg) -> torch.Tensor:
        g, _, o0, o1 = self._loc(seg)
        st = self._g[g]
        return st["shift"][o0:o1] + st["S"][o0:o1] / self.n

    def release(self, seg) -> None:
        """Free the self sums of ``seg`` (its :meth:`cov` and :meth:`aa` are then unavailable)."""
        g, *_ = self._loc(seg)
        self._g[g]["M"].pop(seg, None)
        self._full.pop(seg, None)

    def centre_cross(self, step: int = 1024) -> None:
        """Turn every cross sum M_xy into C_xy = M_xy - S_x S_y'/n in place (the same values as :meth:`cross_cov`
        gave before); :meth:`ab` is unavailable afterwards, :meth:`cross_cov` returns views."""
        if self._cross_centred:
            return
        for (ga, gb), c in self._cross.items():
            Sa, Sb, M = self._g[ga]["S"], self._g[gb]["S"], c["M"]
            for r0 in range(0, M.shape[0], step):
                M[r0 : r0 + step].sub_(torch.outer(Sa[r0 : r0 + step], Sb) / self.n)
        self._cross_centred = True

    def _need_norms(self, what):
        if not self.row_norms:
            raise ValueError(f"Moments.{what}: row norms were not accumulated (row_norms=False)")

    def trace(self, seg) -> float:
        """tr C = sum_i a_i (sum of squares of the centred block)."""
        self._need_norms("trace")
        g, i, _, _ = self._loc(seg)
        m = self._m(seg)
        return float(self._g[g]["sa"][i] - self.n * (m @ m))

    def cov(self, seg) -> torch.Tensor:
        """Centred sum of squares and cross-products C = X_c'X_c of one segment (p x p, symmetric)."""
        g, _, o0, o1 = self._loc(seg)
        if g not in self._self:
            raise ValueError(f"Moments: segment '{seg}' has no self-covariance (group '{g}' not in self_cov)")
        S = self._g[g]["S"][o0:o1]
        return self._selfM(g, seg) - torch.outer(S, S) / self.n  # exactly symmetric

    def aa(self, seg) -> float:
        """sum_i a_i^2 with a_i the squared norm of the centred row i (needs the self-covariance)."""
        self._need_norms("aa")
        g, i, o0, o1 = self._loc(seg)
        st = self._g[g]
        if g not in self._self:
            raise ValueError(f"Moments: segment '{seg}' has no self-covariance (group '{g}' not in self_cov)")
        m, n = self._m(seg), self.n
        mm = m @ m
        return float(
            st["saa"][i]
            - 4 * (st["saz"][o0:o1] @ m)
            + 4 * (m @ self._selfM(g, seg) @ m)
            + 2 * mm * st["sa"][i]
            - 3 * n * mm * mm
        )

    def _cross_parts(self, sx, sy):
        """(sum z w', sum alpha beta, sum alpha_x w, sum beta_y z) of two segments of different groups."""
        gx, i, a0, a1 = self._loc(sx)
        gy, j, b0, b1 = self._loc(sy)
        if (gx, gy) in self._cross:
            c = self._cross[(gx, gy)]
            return c["M"][a0:a1, b0:b1], c["AB"][i, j], c["AZ"][i, b0:b1], c["ZB"][a0:a1, j]
        if (gy, gx) in self._cross:
            c = self._cross[(gy, gx)]
            return c["M"][b0:b1, a0:a1].T, c["AB"][j, i], c["ZB"][b0:b1, i], c["AZ"][j, a0:a1]
        raise ValueError(f"Moments: no cross-product accumulated between '{sx}' (group {gx}) and '{sy}' (group {gy})")

    def cross_cov(self, sx, sy) -> torch.Tensor:
        """C_xy = X_c'Y_c (p1 x p2) of two segments (the same segment gives :meth:`cov`)."""
        if sx == sy:
            return self.cov(sx)
        M = self._cross_parts(sx, sy)[0]
        if self._cross_centred:
            return M
        gx, _, a0, a1 = self._loc(sx)
        gy, _, b0, b1 = self._loc(sy)
        return M - torch.outer(self._g[gx]["S"][a0:a1], self._g[gy]["S"][b0:b1]) / self.n

    def ab(self, sx, sy) -> float:
        """sum_i a_i b_i, a_i and b_i the squared norms of the centred rows of the two segments."""
        if sx == sy:
            return self.aa(sx)
        self._need_norms("ab")
        if self._cross_centred:
            raise ValueError("Moments.ab: read it before centre_cross")
        M, sab, axw, byz = self._cross_parts(sx, sy)
        gx, i, _, _ = self._loc(sx)
        gy, j, _, _ = self._loc(sy)
        mx, my, n = self._m(sx), self._m(sy), self.n
        mxx, myy = mx @ mx, my @ my
        return float(
            sab
            - 2 * (axw @ my)
            - 2 * (byz @ mx)
            + 4 * (mx @ M @ my)
            + myy * self._g[gx]["sa"][i]
            + mxx * self._g[gy]["sa"][j]
            - 3 * n * mxx * myy
        )
