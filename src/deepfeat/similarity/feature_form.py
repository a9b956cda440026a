"""The feature form of the engine: covariance blocks accumulated in streamed passes over the training clips.

Which blocks (:func:`block_forms`): a block is in feature form when it has at most ``max_features`` columns (the
user's cap), fewer columns than training clips, and its p x p float64 self-covariance fits ``memory_mb``
(:data:`SELF_BYTES` p^2 bytes at its peak); every other block is in Gram form (:mod:`deepfeat.similarity.gram_form`).
Its cost is linear in the clips: one streamed pass per group of pairs, O(n p_x p_y) per pair, O(p^3) per block for
its eigendecomposition (p <= ``max_features``).

Pairs whose blocks are both in feature form are computed from :class:`~deepfeat.similarity.moments.Moments`. The
pairs are cut into items (a run of left blocks x the partners they share, split so that every item's cross sums,
:data:`CROSS_BYTES` per entry, take at most :data:`ITEM_SHARE` of the budget) and the items packed into passes: each
pass plans at most ``memory_mb`` less what is already resident (the spectra kept for pairs still to come), counting
its cross sums, the self sums of its new blocks (8 p^2 bytes each, replaced by their eigenvectors) and the largest
one's transient (16 p^2); a block's spectrum is dropped as soon as its last pair is done. Each pass accumulates its
items' cross-products and the self-covariances of the blocks seen for the first time, then spectra and measures,
and, for the bootstrap, one more pass for the per-row influence values (over rows kept in memory when they fit a
quarter of the budget). ``method`` = feature, ``n`` = the number of training clips.
"""

from __future__ import annotations

import math
import time
from collections import Counter, OrderedDict, deque

import numpy as np
import torch

from deepfeat.similarity.bootstrap import _self_influence
from deepfeat.similarity.measures import (
    HELDOUT_MEASURES,
    _pair_measures,
    _Spec,
    _spec_from_cov,
    _SpecLazyV,
    heldout_measures,
)
from deepfeat.similarity.moments import Moments

SELF_BYTES = 24  # bytes per entry of a block's p x p self-covariance at its peak (sums, mirrored sums, centred)
CROSS_BYTES = 8  # bytes per entry of a pair's cross sums (centred in place: one copy)
ITEM_SHARE = 0.5  # an item's cross sums take at most this share of memory_mb


def block_forms(widths: dict, n: int, cfg: dict) -> dict:
    """{segment: "feature" | "gram"} of blocks of these widths on n training clips (see the module docstring)."""
    mf, budget = cfg["max_features"], cfg["memory_mb"] * 1e6
    return {s: ("gram" if w > mf or w >= n or SELF_BYTES * w * w > budget else "feature") for s, w in widths.items()}


class _FeatureForm:
    """The feature-form passes of :class:`~deepfeat.similarity.engine._Engine` (a mixin: it uses the engine's
    reader methods, settings and results)."""

    def _feature_path(self, pairs):
        """Every feature-form pair, in passes over the training clips (see the module docstring)."""
        self.spec: dict[str, _Spec] = {}
        self.q: dict[str, np.ndarray] = {}
        if self.cache is not None:  # hand-crafted self terms (covariance spectra, q_i) computed once per dataset
            self.spec.update({s: sp for s, sp in self.cache.spec.items() if s in self.seg_src})
            self.q.update(self.cache.q)
        items = self._cross_items(pairs)
        seen = set(self.spec)
        for it in items:
            new = [s for s in dict.fromkeys(s for p in it["pairs"] for s in p) if s not in seen]
            seen.update(new)
            it["new"] = new
            sq = [self.seg_src[s].segments[s] ** 2 for s in new]
            it["bytes"] += 8 * sum(sq)
            it["peak"] = (SELF_BYTES - 8) * max(sq, default=0)
        self._pending = Counter(s for p in pairs for s in p)
        todo, k = deque(items), 0
        while todo:
            room = max(self.budget - self._resident_bytes(), self.budget / 4)
            batch = [todo.popleft()]
            total, peak = batch[0]["bytes"], batch[0]["peak"]
            while todo and total + todo[0]["bytes"] + max(peak, todo[0]["peak"]) <= room:
                total += todo[0]["bytes"]
                peak = max(peak, todo[0]["peak"])
                batch.append(todo.popleft())
            total += peak
            k += 1
            self._cross_pass(batch, k, len(todo), total, room)
            for it in batch:
                for p in it["pairs"]:
                    self._pending.subtract(p)
            for s in [s for s, c in self._pending.items() if c <= 0]:
                self._release(s)
                del self._pending[s]
        for s in list(self.spec):
            self._release(s)

    def _resident_bytes(self) -> int:
        """Bytes the kept spectra and per-row self terms hold, counting the eigenvectors of cached spectra that
        pairs still to come will read."""
        held = sum(8 * len(q) for q in self.q.values())
        for s, sp in self.spec.items():
            held += sp.nbytes()
            if isinstance(sp, _SpecLazyV) and sp._V is None and self.need_eig and self._pending.get(s):
                held += 8 * sp.p * sp.p
        return held

    def _release(self, s) -> None:
        """Drop what the feature form keeps of block ``s`` (its last pair is done)."""
        sp = self.spec.pop(s, None)
        if isinstance(sp, _SpecLazyV):  # a cached spectrum: its V is read from the file again when needed
            sp.release()
        self.q.pop(s, None)

    def _cross_items(self, pairs):
        """Items {a: (source, left segments), b: (source, right segments), pairs, bytes}: per pair of sources, runs
        of left segments that share their partners (a deep layer x every hand-crafted feature is one run; trained
        vs untrained per layer, one run per layer), each split so that its cross sums fit the budget."""
        groups: dict[tuple[str, str], list] = OrderedDict()
        for a, b in pairs:
            groups.setdefault((self.seg_src[a].name, self.seg_src[b].name), []).append((a, b))
        items = []
        for (na, nb), prs in groups.items():
            partners: dict[str, list] = OrderedDict()
            for a, b in prs:
                partners.setdefault(a, []).append(b)
            runs: list[tuple[list, list]] = []
            for a, bs in partners.items():
                if runs and runs[-1][1] == bs:
                    runs[-1][0].append(a)
                else:
                    runs.append(([a], bs))
            limit = ITEM_SHARE * self.budget
            for A, Bs in runs:
                wa = {s: self.seg_src[s].segments[s] for s in A}
                wb = {s: self.seg_src[s].segments[s] for s in Bs}
                lim_a = max(max(wa.values()), int(math.sqrt(limit / CROSS_BYTES)))
                for ca in _split(A, wa, lim_a):
                    Pa = sum(wa[s] for s in ca)
                    lim_b = max(max(wb.values()), int(limit / (CROSS_BYTES * Pa)))
                    for cb in _split(Bs, wb, lim_b):
                        Pb = sum(wb[s] for s in cb)
                        sub = [(a, b) for a in ca for b in cb]
                        items.append(dict(a=(na, ca), b=(nb, cb), pairs=sub, bytes=CROSS_BYTES * Pa * Pb))
        return items

    def _pass_views(self, items):
        """(views, {new segment: the view holding it}) of a pass: one view per distinct (source, segments) side."""
        views, vid = [], {}

        def view(src_name, segs, fresh=False):
            key = (src_name, tuple(segs))
            if fresh or key not in vid:
                tag = f"v{len(views)}"
                views.append((tag, src_name, list(segs)))
                if not fresh:
                    vid[key] = tag
                return tag
            return vid[key]

        for it in items:
            it["va"] = view(*it["a"])
            it["vb"] = view(*it["b"], fresh=it["a"] == it["b"])  # same segments on both sides: b gets a copy
        new = list(dict.fromkeys(s for it in items for s in it["new"]))
        home = {}  # new segment -> a view holding it
        for tag, _, segs in views:
            for s in segs:
                if s in new and s not in home:
                    home[s] = tag
        return views, home

    def _cross_pass(self, items, k, left, planned, room):
        views, home = self._pass_views(items)
        new = list(home)
        npairs = sum(len(it["pairs"]) for it in items)
        srcs = list(dict.fromkeys(it[side][0] for it in items for side in ("a", "b")))
        self.log.info(
            f"feature form, pass {k} ({left} items left): {npairs} pairs of {len(items)} items over "
            + ", ".join(srcs)
            + (f"; self-covariance of {len(new)} blocks" if new else "")
            + f"; planned {planned / 1e6:.0f} MB of {room / 1e6:.0f} MB, {self._chunk_rows(views)} clips per chunk"
        )
        debiased = "cka_debiased" in self.ms
        centred = {v[0] for v in views if self.src[v[1]].shift is not None}  # z-scored on these very rows
        mom = Moments(
            self._view_groups(views),
            cross=[(it["va"], it["vb"]) for it in items],
            self_cov=set(home.values()),
            device=self.device,
            row_norms=debiased,
            centred=centred,
        )
        # the bootstrap's influence pass needs the rows again: keep them when they are small, else re-read
        width = sum(self.src[v[1]].segments[sg] for v in views for sg in v[2])
        kept = [] if self.boot and 8 * self.n * width <= self.budget / 4 else None
        for chunk in self._stream(views, f"pass {k}"):
            mom.update(chunk[0])
            if kept is not None:
                kept.append(chunk)
        self._new_spectra(mom, new, home, debiased)
        ab = {}
        if debiased:
            for it in items:
                for a, b in it["pairs"]:
                    ab[(a, b)] = mom.ab(f"{it['va']}|{a}", f"{it['vb']}|{b}")
        mom.centre_cross()
        C, H = {}, {}
        held = [m for m in HELDOUT_MEASURES if m in self.ms]
        for it in items:
            for a, b in it["pairs"]:
                cxy = mom.cross_cov(f"{it['va']}|{a}", f"{it['vb']}|{b}")
                vals, flags = _pair_measures(
                    cxy, self.spec[a], self.spec[b], ab.get((a, b), float("nan")), self.ms, self.n
                )
                self._result((a, b), vals, flags, self.n, "feature", (self.spec[a], self.spec[b]))
                if self._wants_influence(vals):
                    C[(a, b)] = cxy
                if held and self.spec[a].fro2 > 0 and self.spec[b].fro2 > 0:
                    H[(a, b)] = (it, cxy)
        means = {v[0]: torch.cat([mom.mean(f"{v[0]}|{s}") for s in v[2]]) for v in views}
        if C:
            self._influence_pass(items, views, means, C, k, kept)
        if H:
            self._heldout_pass(items, views, H, k)
        del mom, C, H

    def _heldout_pass(self, items, views, H, k) -> None:
        """The held-out measures of the pairs ``H`` ({pair: (item, training C_xy)}): one streamed pass over the
        test clips (every clip outside the training split) for their test-centred sums of products, then
        :func:`~deepfeat.similarity.measures.heldout_measures` with the training fit."""
        t0 = time.perf_counter()
        test = ~self.train
        mom = None
        if test.sum() >= 2:
            mom = Moments(
                self._view_groups(views),
                cross=[(it["va"], it["vb"]) for it in items],
                self_cov=True,
                device=self.device,
                row_norms=False,
            )
            for data, *_ in self._stream(views, f"test pass {k}", mask=test):
                mom.update(data)
        for (a, b), (it, cxy) in H.items():
            res = self.res[(a, b)]
            if mom is None:
                for m in HELDOUT_MEASURES:
                    if m in self.ms:
                        res["flags"][m] = f"test_clips={int(test.sum())}<2"
                continue
            ka, kb = f"{it['va']}|{a}", f"{it['vb']}|{b}"
            tm = dict(
                n=mom.n,
                mean_x=mom.mean(ka),
                mean_y=mom.mean(kb),
                cxx=mom.cov(ka),
                cyy=mom.cov(kb),
                cxy=mom.cross_cov(ka, kb),
            )
            for m, v in heldout_measures(cxy, self.spec[a], self.spec[b], tm, self.ms).items():
                res["values"][m] = v
                if np.isfinite(v):
                    res["flags"].pop(m, None)
                else:
                    res["flags"][m] = "heldout_undefined"
        self.log.info(
            f"  held-out measures of {len(H)} pairs on {int(test.sum())} test clips in {time.perf_counter() - t0:.1f} s"
        )

    def _new_spectra(self, mom: Moments, new, home, debiased: bool) -> None:
        """Spectra of the blocks first seen in this pass, freeing each one's self sums as soon as it is taken."""
        t0 = time.perf_counter()
        for s in new:
            key = f"{home[s]}|{s}"
            aa = mom.aa(key) if debiased else float("nan")
            mean, C = mom.mean(key), mom.cov(key)
            mom.release(key)
            self.spec[s] = _spec_from_cov(C, self.n, aa, self.cfg, self.need_eig, mean=mean, overwrite=True)
            del C
        if self.need_eig and new:
            self.log.info(f"  eigendecompositions of {len(new)} blocks: {time.perf_counter() - t0:.1f} s")

    def _influence_pass(self, items, views, means, C, k, kept=None):
        """r_i = u_i'C_xy v_i for every pair with a CKA value, q_i = u_i'C_xx u_i for every block, per row."""
        t0 = time.perf_counter()
        r = {p: np.empty(self.n) for p in C}
        need_q = {s for it in items for p in it["pairs"] if p in C for s in p if s not in self.q}
        q = {s: np.empty(self.n) for s in need_q}
        cols = {}  # (view tag, segment) -> column slice within the view
        for tag, src_name, segs in views:
            o = 0
            for s in segs:
                w = self.src[src_name].segments[s]
                cols[(tag, s)] = slice(o, o + w)
                o += w
        pos = 0
        for data, _, _, sel in kept if kept is not None else self._stream(views, f"influence pass {k}"):
            nb = len(sel)
            U = {tag: data[tag] - means[tag] for tag in data}
            done_q = set()
            for it in items:
                for a, b in it["pairs"]:
                    for tag, s in ((it["va"], a), (it["vb"], b)):
                        if s in need_q and s not in done_q:
                            qs = _self_influence(U[tag][:, cols[(tag, s)]], self.spec[s])
                            q[s][pos : pos + nb] = qs.cpu().numpy()
                            done_q.add(s)
                    if (a, b) in C:
                        ua = U[it["va"]][:, cols[(it["va"], a)]]
                        vb = U[it["vb"]][:, cols[(it["vb"], b)]]
                        r[(a, b)][pos : pos + nb] = ((ua @ C[(a, b)]) * vb).sum(1).cpu().numpy()
            pos += nb
        self.q.update(q)
        for (a, b), rv in r.items():
            vals = self.res[(a, b)]["values"]
            self._keep((a, b), "feature", rv, self.q[a], self.q[b], self.spec[a], self.spec[b], self.n, vals)
        self.log.info(f"  influence values for {len(C)} pairs (bootstrap) in {time.perf_counter() - t0:.1f} s")


def _split(segs, width, limit):
    """Consecutive groups of segments with total width <= limit (a wider segment stays alone)."""
    out, cur, tot = [], [], 0
    for s in segs:
        if cur and tot + width[s] > limit:
            out.append(cur)
            cur, tot = [], 0
        cur.append(s)
        tot += width[s]
    if cur:
        out.append(cur)
    return out
