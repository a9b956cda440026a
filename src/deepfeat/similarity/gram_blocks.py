"""The Gram form block by block: pairs with a wide block when their centred Grams do not all fit ``memory_mb``.

Every block on the m Gram rows is built once into a :class:`_Rep`: a block wider than m as its centred Gram K
(m x m, accumulated in place) with the leading eigenvectors U the measures need; any other block as principal
coordinates B (m x r, B'B = diag(lam), BB' = K; :meth:`~deepfeat.similarity.gram_form._GramForm._make_factor`);
hand-crafted blocks are read from the dataset's cache (never computed), kept while memory allows. A pair is
evaluated from the two representations, with the same parts as every other form (||C_xy||^2 = <K_x, K_y>,
sum_i a_i b_i, LR = <K_x, P_y>, the singular values of U_x'U_y, the bootstrap's r_i = sum_j K_x,ij K_y,ij):

- B, B: R = B_x'B_y, O(m r_x r_y) (:func:`~deepfeat.similarity.gram._factor_pair`);
- K, B: G = K B in column blocks, O(m^2 r): ||C_xy||^2 = sum G o B, r = row sums of G o B, and when the factor is
  the regressor LR = sum_j (G o B)_.j / lam_j over its rank;
- K, K: <K_x, K_y> and r from one pass over the rows, O(m^2); LR = sum U_y o (K_x U_y).

Order and memory: the next block built is the one with most pairs to do against the blocks held (then one whose
columns are in a window already, then most pairs against cached blocks; ties: the first in pair order); a held
block is dropped when its last pair is done. Before a block is built, held blocks are dropped (cached ones first,
then the least recently used computed ones, keeping one partner of the new block) while the held ones and the new
one would exceed ``memory_mb`` less the windows' share (a dropped block is built again if it has pairs left: the
log counts it); the pairs of one Gram block with factor partners are evaluated together (one product for up to
:data:`_BATCH_COLS` partner columns). Time is quadratic in m (cubic for the eigendecompositions of blocks wider
than m) and capped by ``gram_max_clips``.
"""

from __future__ import annotations

import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from deepfeat.similarity.gram import _Factor, _factor_pair
from deepfeat.similarity.measures import F64, _measures, _Spec, _svals

_COLS = 2048  # columns of G = K B formed at once
_BATCH_COLS = 8192  # partner columns evaluated against one Gram block in one product


@dataclass
class _Rep:
    """A block on the m Gram rows: ``K`` (and ``U``, its leading eigenvectors) or the factor ``f``."""

    spec: _Spec
    a: torch.Tensor  # diag K
    q: torch.Tensor | None  # row sums of K * K (bootstrap)
    K: torch.Tensor | None = None
    U: torch.Tensor | None = None
    f: _Factor | None = None
    drop: Callable | None = None  # forgets what a cached block read

    def nbytes(self) -> int:
        ts = (self.a, self.q, self.K, self.U, None if self.f is None else self.f.B)
        return sum(int(t.numel()) * 8 for t in ts if t is not None)

    def Uk(self, k: int) -> torch.Tensor:
        """The first k orthonormal eigenvectors of K (m x k)."""
        if self.K is not None:
            return self.U[:, :k]
        return self.f.B[:, :k] * self.spec.lam[:k].rsqrt()


class _GramBlocks:
    """The block-by-block Gram path of :class:`~deepfeat.similarity.engine._Engine` (a mixin: it uses the
    engine's reader methods, the Gram-space block builder, settings and results)."""

    def _gram_blocked(self, pairs, segs):
        """Every pair of the Gram form, blocks built once each and held while they have pairs to do."""
        self._gb_t0, self._gb_next = time.perf_counter(), 30.0
        cheap = {s for s in segs if self.cache is not None and s in self.cache.factor}
        pend: dict[str, set] = {s: set() for s in segs}
        for i, (a, b) in enumerate(pairs):
            pend[a].add(i)
            pend[b].add(i)
        first = {s: i for i, s in enumerate(segs)}
        held: OrderedDict[str, _Rep] = OrderedDict()
        built: Counter = Counter()
        todo, peak = set(range(len(pairs))), 0
        while todo:
            ready = sorted(i for i in todo if all(s in held or s in cheap for s in pairs[i]))
            if not ready:
                new = self._next_block(pairs, todo, pend, held, cheap, first)
                self._make_room(new, held, pend, pairs, cheap)
                held[new] = self._build_rep(new)
                built[new] += 1
                peak = max(peak, sum(r.nbytes() for r in held.values()))
                continue
            for group in self._batches(ready, pairs, held, cheap):
                if not all(s in held or s in cheap for i in group for s in pairs[i]):
                    break  # a block this group needs was dropped for memory meanwhile: plan again
                self._do_pairs(group, pairs, held, cheap, pend)
                todo.difference_update(group)
                peak = max(peak, sum(r.nbytes() for r in held.values()))
                self._gb_progress(len(pairs) - len(todo), len(pairs), built)
        again = sum(c - 1 for c in built.values())
        self.log.info(
            f"  Gram form, block by block: {len(built)} blocks built in {time.perf_counter() - self._gb_t0:.1f} s"
            + (f" ({again} built again after being dropped for memory)" if again else "")
            + f"; at most {peak / 1e6:.0f} MB of blocks held"
        )

    def _gb_progress(self, done: int, total: int, built) -> None:
        el = time.perf_counter() - self._gb_t0
        if el >= self._gb_next or done == total:
            self.log.info(
                f"  Gram form, block by block: {done}/{total} pairs, {sum(built.values())} blocks built, {el:.0f} s"
            )
            self._gb_next = el + 30.0

    def _batches(self, ready, pairs, held, cheap) -> list[list[int]]:
        """The ready pairs in groups: the pairs of one held Gram (K) block with factor partners, at most
        :data:`_BATCH_COLS` partner columns a group (one product for them all); every other pair alone."""
        groups, rest = OrderedDict(), []
        for i in ready:
            a, b = pairs[i]
            ka, kb = self._is_gram(a, held, cheap), self._is_gram(b, held, cheap)
            if ka != kb:
                groups.setdefault(a if ka else b, []).append(i)
            else:
                rest.append([i])
        out = []
        for k, idx in groups.items():
            cur, width = [], 0
            for i in idx:
                o = pairs[i][1] if pairs[i][0] == k else pairs[i][0]
                w = min(self.seg_src[o].segments[o], self.m)
                if cur and width + w > _BATCH_COLS:
                    out.append(cur)
                    cur, width = [], 0
                cur.append(i)
                width += w
            out.append(cur)
        return out + rest

    def _is_gram(self, s, held, cheap) -> bool:
        """Whether block ``s`` is (or, read from the cache, will be) held as its Gram."""
        if s in held:
            return held[s].K is not None
        if s in cheap:
            return self.cache.gram_K is not None and s in self.cache.gram_K
        return self.seg_src[s].segments[s] > self.m

    def _do_pairs(self, group, pairs, held, cheap, pend) -> None:
        """Evaluate a group of ready pairs (see :meth:`_batches`), then drop the blocks that are done."""
        need = list(dict.fromkeys(s for i in group for s in pairs[i]))
        for s in need:
            if s not in held:
                self._make_room(s, held, pend, pairs, cheap, keep=set(need))
                held[s] = self._cheap_rep(s)
            held.move_to_end(s)
        if len(group) == 1:
            a, b = pairs[group[0]]
            out = {group[0]: self._rep_pair(held[a], held[b])}
        else:
            out = self._rep_batch(group, pairs, held)
        for i, (vals, flags, parts) in out.items():
            a, b = pairs[i]
            self._result((a, b), vals, flags, self.m, "gram", (held[a].spec, held[b].spec))
            if parts is not None:
                self._keep((a, b), "gram", *parts, held[a].spec, held[b].spec, self.m, vals)
            for s in (a, b):
                pend[s].discard(i)
                if s in held and not pend[s]:
                    r = held.pop(s)
                    if r.drop is not None:
                        r.drop()

    def _next_block(self, pairs, todo, pend, held, cheap, first) -> str:
        """The block to build next: most pairs to do against held blocks; then one whose columns a features
        source holds on the Gram rows already (no forward pass); then most pairs against cached blocks."""

        def score(s):
            others = [o for i in pend[s] & todo for o in pairs[i] if o != s]
            src = self.seg_src[s]
            live = src.columns is not None and src.columns.covers(self.m, *src.offsets[s])
            return (sum(o in held for o in others), live, sum(o in cheap for o in others), -first[s])

        cand = [s for s, idx in pend.items() if s not in held and s not in cheap and idx & todo]
        return max(cand, key=score)

    def _make_room(self, new, held, pend, pairs, cheap, keep=()) -> None:
        """Drop held blocks (never those in ``keep``) while they and ``new`` would exceed the budget less the
        windows' share: cached ones first (read again when needed); for a computed ``new``, then the others that are
        not its partners, then its partners but the most recently used one (so that ``new`` has a pair to do),
        least recently used first; a dropped block with pairs left is built again later."""
        p, m = self.seg_src[new].segments[new], self.m
        need = 8 * m * (m * (1 + self.need_eig) if p > m else min(p, m))  # its Gram (and eigenvectors) or factor
        room = self.budget - (0 if self.pool is None else self.pool.limit)
        victims = [s for s in held if s in cheap and s not in keep]
        if new not in cheap:  # a cached block read for a pair never drops a computed one
            partners = {s for i in pend[new] for s in pairs[i]}
            mine = [s for s in held if s in partners and s not in cheap]
            victims += [s for s in held if s not in cheap and s not in partners and s not in keep]
            victims += [s for s in mine[:-1] if s not in keep]
        for s in victims:
            if sum(r.nbytes() for r in held.values()) + need <= room:
                break
            r = held.pop(s)
            if r.drop is not None:
                r.drop()

    def _build_rep(self, seg) -> _Rep:
        t0 = time.perf_counter()
        p, m = self.seg_src[seg].segments[seg], self.m
        if p > m:
            g = self._make_gblock(seg, torch.empty(m, m, dtype=F64, device=self.device), inplace=True)
            rep = _Rep(g.spec, g.a, g.q, K=g.K, U=g.U)
        else:
            f = self._make_factor(seg)
            rep = _Rep(f.spec, f.a, f.q, f=f)
        el = time.perf_counter() - t0
        if el > 2:
            self.log.info(
                f"  {seg}: {p} columns on {m} clips as {'its Gram' if p > m else 'principal coordinates'} "
                f"({rep.nbytes() / 1e6:.0f} MB) in {el:.1f} s"
            )
        return rep

    def _cheap_rep(self, seg) -> _Rep:
        """A cached (hand-crafted) block: its Gram when the cache holds it (features wider than m), else its
        principal coordinates; dropped again after the pair."""
        f, cache = self.cache.factor[seg], self.cache
        drop = lambda: cache.forget(seg)  # noqa: E731
        if cache.gram_K is not None and seg in cache.gram_K:
            k = self._gblock_needs(f.spec, self.m) if self.need_eig else 0
            U = f.B[:, :k] * f.spec.lam[:k].rsqrt() if k else None
            K = cache.gram_K[seg]
            q = f.q if f.q is not None else (K * K).sum(1)
            return _Rep(f.spec, f.a, q, K=K, U=U, drop=drop)
        return _Rep(f.spec, f.a, f.q, f=f, drop=drop)

    def _rep_batch(self, group, pairs, held) -> dict:
        """{pair index: (values, flags, influence values or None)} of pairs that share one Gram block, whose
        partners are factors: G = K [B_1 ... B_k] and U'[B_1 ... B_k] once for the group."""
        shared = set(pairs[group[0]])
        for i in group[1:]:
            shared &= set(pairs[i])
        k = next(s for s in shared if held[s].K is not None)
        rk = held[k]
        other = [pairs[i][1] if pairs[i][0] == k else pairs[i][0] for i in group]
        Bs = [held[o].f.B for o in other]
        offs = np.concatenate([[0], np.cumsum([B.shape[1] for B in Bs])])
        Bcat = torch.cat(Bs, 1)
        rows, cols = _gram_times(rk.K, Bcat, offs)
        W = rk.U.T @ Bcat if rk.U is not None else None
        del Bcat
        out = {}
        for j, i in enumerate(group):
            ro = held[other[j]]
            Wj = None if W is None else W[:, offs[j] : offs[j + 1]]
            k_left = pairs[i][0] == k
            ra, rb = (rk, ro) if k_left else (ro, rk)
            out[i] = self._kb_measures(ra, rb, rk, ro, k_left, rows[j], cols[j], Wj)
        return out

    def _kb_measures(self, ra, rb, rk, ro, k_left, r, col, W):
        """A Gram block rk and a factor ro (the pair is (ra, rb)) from r = row sums and col = column sums of
        (K B) o B and W = U'B: <K_a, P_b> from col (the factor is the regressor) or from W (the Gram is)."""

        def lr():
            kb = rb.spec.rank
            if k_left:
                return float((col[:kb] / rb.spec.lam[:kb]).sum())
            return float((W[:kb] ** 2).sum())

        def sv(dim):
            kk, kf = getattr(rk.spec, dim), getattr(ro.spec, dim)
            return _svals(W[:kk, :kf] * ro.spec.lam[:kf].rsqrt())

        vals, flags = _measures(
            float(r.sum()),
            float(ra.a @ rb.a),
            ra.spec,
            rb.spec,
            self.ms,
            self.m,
            lr=lr,
            cca_sv=lambda: sv("rank"),
            svcca_sv=lambda: sv("d"),
        )
        parts = (r, ra.q, rb.q) if self._wants_influence(vals) else None
        return vals, flags, parts

    def _rep_pair(self, ra: _Rep, rb: _Rep):
        """(values, flags, influence values or None) of one pair from the two representations."""
        ms, m = self.ms, self.m
        if ra.K is None and rb.K is None:
            vals, flags, r = _factor_pair(ra.f, rb.f, ms, self.boot, parts=True)
            return vals, flags, ((r, ra.f.q, rb.f.q) if r is not None and self._wants_influence(vals) else None)
        if ra.K is not None and rb.K is not None:
            r = _rowdot(ra.K, rb.K)

            def lr():
                Ub = rb.Uk(rb.spec.rank)
                return float(
                    sum(
                        (Ub[:, j0 : j0 + _COLS] * (ra.K @ Ub[:, j0 : j0 + _COLS])).sum()
                        for j0 in range(0, Ub.shape[1], _COLS)
                    )
                )

        else:  # one Gram block, one factor
            rk, ro, k_left = (ra, rb, True) if ra.K is not None else (rb, ra, False)
            off = np.array([0, ro.f.B.shape[1]])
            rows, cols = _gram_times(rk.K, ro.f.B, off)
            W = rk.U.T @ ro.f.B if rk.U is not None else None
            return self._kb_measures(ra, rb, rk, ro, k_left, rows[0], cols[0], W)

        vals, flags = _measures(
            float(r.sum()),
            float(ra.a @ rb.a),
            ra.spec,
            rb.spec,
            ms,
            m,
            lr=lr,
            cca_sv=lambda: _svals(ra.Uk(ra.spec.rank).T @ rb.Uk(rb.spec.rank)),
            svcca_sv=lambda: _svals(ra.Uk(ra.spec.d).T @ rb.Uk(rb.spec.d)),
        )
        parts = (r, ra.q, rb.q) if self._wants_influence(vals) else None
        return vals, flags, parts


def _rowdot(K: torch.Tensor, L: torch.Tensor, step: int = 1024) -> torch.Tensor:
    """Row sums of K * L (m), in row blocks."""
    return torch.cat([(K[i : i + step] * L[i : i + step]).sum(1) for i in range(0, K.shape[0], step)])


def _gram_times(K: torch.Tensor, B: torch.Tensor, offs) -> tuple[list, list]:
    """Per block of columns [offs[j], offs[j+1]) of B: (row sums, column sums) of (K B) o B, with K B formed
    :data:`_COLS` columns at a time."""
    nb = len(offs) - 1
    rows = [torch.zeros(K.shape[0], dtype=F64, device=K.device) for _ in range(nb)]
    col = torch.empty(B.shape[1], dtype=F64, device=K.device)
    for j0 in range(0, B.shape[1], _COLS):
        j1 = min(j0 + _COLS, B.shape[1])
        Bj = B[:, j0:j1]
        GB = (K @ Bj).mul_(Bj)
        col[j0:j1] = GB.sum(0)
        for j in range(nb):
            lo, hi = max(j0, int(offs[j])), min(j1, int(offs[j + 1]))
            if lo < hi:
                rows[j] += GB[:, lo - j0 : hi - j0].sum(1)
    return rows, [col[int(offs[j]) : int(offs[j + 1])] for j in range(nb)]
