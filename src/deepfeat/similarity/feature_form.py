"""The feature form of the engine: covariance blocks accumulated in streamed passes over the training clips.

Pairs whose blocks both have at most ``max_features`` columns and fewer columns than training clips are computed
from :class:`~deepfeat.similarity.moments.Moments`: each pass accumulates the cross-products of its items (pairs of
sources, split to fit ``memory_mb``) and the self-covariances of the blocks seen for the first time; then
spectra, measures and, for the bootstrap, one more pass for the per-row influence values. ``method`` = feature,
``n`` = the number of training clips.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict

import numpy as np
import torch

from deepfeat.similarity.bootstrap import _cka_psi, _self_influence
from deepfeat.similarity.measures import _pair_measures, _Spec, _spec_from_cov
from deepfeat.similarity.moments import Moments


class _FeatureForm:
    """The feature-form passes of :class:`~deepfeat.similarity.engine._Engine` (a mixin: it uses the engine's
    reader methods, settings and results)."""

    def _feature_path(self, pairs):
        """Covariance blocks in passes over the training clips: each pass accumulates the cross-products of
        its items (pairs of sources, split to fit the memory budget) and the self-covariances of the blocks
        seen for the first time; then spectra, measures and (bootstrap) a pass for the influence values."""
        self.spec: dict[str, _Spec] = {}
        self.q: dict[str, np.ndarray] = {}
        if self.cache is not None:  # hand-crafted self terms (covariance spectra, q_i) computed once per dataset
            self.spec.update(self.cache.spec)
            self.q.update(self.cache.q)
        seen, packed = set(self.spec), []
        for it in self._cross_items(pairs):
            new = [s for s in dict.fromkeys(s for p in it["pairs"] for s in p) if s not in seen]
            seen.update(new)
            it["new"] = new
            packed.append((it, None, it["bytes"] + sum(24 * self.seg_src[s].segments[s] ** 2 for s in new)))
        passes = _pack(packed, self.budget)
        for k, batch in enumerate(passes, 1):
            self._cross_pass([b[0] for b in batch], k, len(passes))

    def _cross_items(self, pairs):
        groups: dict[tuple[str, str], list] = OrderedDict()
        for a, b in pairs:
            groups.setdefault((self.seg_src[a].name, self.seg_src[b].name), []).append((a, b))
        items = []
        for (na, nb), prs in groups.items():
            A = list(dict.fromkeys(a for a, _ in prs))
            Bs = list(dict.fromkeys(b for _, b in prs))
            wa = {s: self.seg_src[s].segments[s] for s in A}
            wb = {s: self.seg_src[s].segments[s] for s in Bs}
            # split a then b so that every item's cross block (2 copies: sums and covariance) fits the budget
            lim_a = max(max(wa.values()), int(math.sqrt(self.budget / 16)))
            for ca in _split(A, wa, lim_a):
                Pa = sum(wa[s] for s in ca)
                lim_b = max(max(wb.values()), int(self.budget / (16 * Pa)))
                for cb in _split(Bs, wb, lim_b):
                    sub = [(a, b) for a, b in prs if a in set(ca) and b in set(cb)]
                    if sub:
                        Pb = sum(wb[s] for s in cb)
                        items.append(dict(a=(na, ca), b=(nb, cb), pairs=sub, bytes=16 * Pa * Pb))
        return items

    def _cross_pass(self, items, k, K):
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

        cross = []
        for it in items:
            it["va"] = view(*it["a"])
            it["vb"] = view(*it["b"], fresh=it["a"] == it["b"])  # same segments on both sides: b gets a copy
            cross.append((it["va"], it["vb"]))
        new = list(dict.fromkeys(s for it in items for s in it["new"]))
        home = {}  # new segment -> a view holding it
        for tag, _, segs in views:
            for s in segs:
                if s in new and s not in home:
                    home[s] = tag
        npairs = sum(len(it["pairs"]) for it in items)
        self.log.info(
            f"feature form, pass {k}/{K}: {npairs} pairs over "
            + "; ".join(f"{it['a'][0]} x {it['b'][0]} ({len(it['pairs'])})" for it in items)
            + (f"; self-covariance of {len(new)} blocks" if new else "")
        )
        debiased = "cka_debiased" in self.ms
        centred = {v[0] for v in views if self.src[v[1]].shift is not None}  # z-scored on these very rows
        mom = Moments(
            self._view_groups(views),
            cross=cross,
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
        t0 = time.perf_counter()
        for s in new:
            key = f"{home[s]}|{s}"
            self.spec[s] = _spec_from_cov(
                mom.cov(key),
                self.n,
                mom.aa(key) if debiased else float("nan"),
                self.cfg,
                self.need_eig,
                mean=mom.mean(key),
            )
        if self.need_eig and new:
            self.log.info(f"  eigendecompositions of {len(new)} blocks: {time.perf_counter() - t0:.1f} s")
        C = {}
        for it in items:
            for a, b in it["pairs"]:
                ka, kb = f"{it['va']}|{a}", f"{it['vb']}|{b}"
                cxy = mom.cross_cov(ka, kb)
                ab = mom.ab(ka, kb) if debiased else float("nan")
                vals, flags = _pair_measures(cxy, self.spec[a], self.spec[b], ab, self.ms, self.n)
                self._result((a, b), vals, flags, self.n, "feature")
                if self.boot and np.isfinite(vals["cka"]):
                    C[(a, b)] = cxy
        means = {v[0]: torch.cat([mom.mean(f"{v[0]}|{s}") for s in v[2]]) for v in views}
        del mom
        if C:
            self._influence_pass(items, views, means, C, k, K, kept)

    def _influence_pass(self, items, views, means, C, k, K, kept=None):
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
            cka_ab = self.res[(a, b)]["values"]["cka"]
            psi = _cka_psi(rv, self.q[a], self.q[b], self.spec[a], self.spec[b], cka_ab, self.n)
            self.psi[(a, b)] = ("feature", psi)
        self.log.info(f"  influence values for {len(C)} pairs (bootstrap) in {time.perf_counter() - t0:.1f} s")


def _pack(items, budget):
    """Greedy consecutive packing of (key, payload, bytes) items into batches of total bytes <= budget."""
    out, cur, tot = [], [], 0
    for it in items:
        if cur and tot + it[2] > budget:
            out.append(cur)
            cur, tot = [], 0
        cur.append(it)
        tot += it[2]
    if cur:
        out.append(cur)
    return out


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
