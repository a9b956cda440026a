"""The similarity engine: the measures of many block pairs over the training rows of column sources.

:class:`_Engine` reads its sources (deep features computed from a model or read from a file, hand-crafted features
from ``handcrafted.h5``: :mod:`deepfeat.similarity.sources`) through :class:`~deepfeat.similarity.reader._Reader`
and computes each pair in one of two forms, chosen per block (:func:`~deepfeat.similarity.feature_form.block_forms`):
the feature form (streamed covariance blocks: :mod:`deepfeat.similarity.feature_form`) or the Gram form (on a seeded
subset of at most ``gram_max_clips`` clips: :mod:`deepfeat.similarity.gram_form`, :mod:`deepfeat.similarity.gram_space`,
:mod:`deepfeat.similarity.gram_blocks`); then the bootstrap intervals of CKA (:mod:`deepfeat.similarity.bootstrap`).
With an engine cache (the hand-crafted self terms of :mod:`deepfeat.similarity.cache`) one source's self terms are
read instead of computed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from deepfeat.similarity.bootstrap import _bootstrap_ci, _cka_psi, _dcka_psi, _replicates, _Resampler
from deepfeat.similarity.chance import _Chance, cka_chance, eig_chance
from deepfeat.similarity.feature_form import _FeatureForm, block_forms
from deepfeat.similarity.gram_blocks import _GramBlocks
from deepfeat.similarity.gram_form import _GramForm
from deepfeat.similarity.gram_space import _GramSpace
from deepfeat.similarity.measures import EIG_MEASURES
from deepfeat.similarity.reader import _Reader
from deepfeat.similarity.sources import _Source


class _Engine(_Chance, _FeatureForm, _GramForm, _GramBlocks, _GramSpace, _Reader):
    """Computes the measures of many segment pairs over the training rows of column sources (see module docstring).

    ``cache``: a :class:`~deepfeat.similarity.cache._EngineCache` (self terms of one source read, not computed);
    ``pool``: the window pool the features sources were made with (:func:`~deepfeat.similarity.reader.window_pool`).
    ``stats``: the ``stats`` settings and ``recordings`` (the recording of each of the N clips): with them the
    replicates of CKA and debiased CKA (recording-level resamples of the training clips, SIMILARITY_STREAM) and the
    permutation band of the chance level (:mod:`deepfeat.similarity.chance`) are computed too (the replicates only
    with ``replicates``).
    ``run(pairs)`` returns {pair: {values, flags, n, method, p_a, p_b, ci, chance, null, reps}}: ``chance``
    {measure: expected value for unrelated sets}, ``null`` {measure: (lo, hi)}, ``reps`` {measure: (B,)
    replicates} (only rows computed on every training clip)."""

    def __init__(
        self,
        sources: Sequence[_Source],
        train: np.ndarray,
        cfg: dict,
        device,
        log,
        cache=None,
        pool=None,
        stats: dict | None = None,
        recordings=None,
        replicates: bool = True,
    ):
        super().__init__(sources, train, cfg, device, log, pool)
        self.ms = cfg["measures"]
        self.need_eig = bool(EIG_MEASURES & set(self.ms))
        self.ci = cfg["bootstrap"] > 0 and "cka" in self.ms
        self.stats = stats
        self.recordings = None if recordings is None else np.asarray(recordings).astype(str)
        if stats is not None and self.recordings is None:
            raise ValueError("similarity: the stats settings need the clips' recordings")
        self.resampler = None
        if stats is not None and replicates and {"cka", "cka_debiased"} & set(self.ms):
            from deepfeat.stats import SIMILARITY_STREAM

            self.resampler = _Resampler(
                self.recordings[self.rows], stats["resamples"], stats["seed"], SIMILARITY_STREAM
            )
        # the per-row influence values are computed for the intervals and for the replicates
        self.boot = self.ci or self.resampler is not None
        self.cache = cache
        if cache is not None:
            if cache.source not in self.src:
                raise ValueError(f"similarity: the cached self terms describe source '{cache.source}', not given")
            if not np.array_equal(cache.train_rows, self.rows):
                raise ValueError(
                    f"{cache.label}: built on other training clips than {cache.source} has here "
                    f"({len(cache.train_rows)} vs {self.n}); rebuild it"
                )
            src = self.src[cache.source]
            missing = sorted(set(src.segments) - set(cache.spec) - set(cache.factor))
            if missing:
                raise ValueError(f"{cache.label}: no self terms for {missing[:5]}; rebuild it")
            src.shift, src.inv = cache.shift.to(device), cache.inv.to(device)

    def run(self, pairs: Sequence[tuple[str, str]]) -> dict:
        for a, b in pairs:
            for s in (a, b):
                if s not in self.seg_src:
                    raise KeyError(f"similarity: unknown block '{s}'")
        if self.n < 4:
            raise ValueError(f"similarity: only {self.n} training clips; at least 4 are needed")
        for s in self.src.values():
            if s.standardize and s.shift is None:
                self._standardize(s)
        used = list(dict.fromkeys(s for p in pairs for s in p))
        self.form = block_forms({s: self.seg_src[s].segments[s] for s in used}, self.n, self.cfg)
        feat = [p for p in pairs if self.form[p[0]] == "feature" and self.form[p[1]] == "feature"]
        gram = [p for p in pairs if not (self.form[p[0]] == "feature" and self.form[p[1]] == "feature")]
        nf = sum(f == "feature" for f in self.form.values())
        self.log.info(
            f"forms: {nf} of {len(used)} blocks in feature form (at most max_features = {self.cfg['max_features']} "
            f"columns, fewer than {self.n} clips, p x p within memory_mb), {len(used) - nf} in Gram form; "
            f"{len(feat)} feature-form pairs, {len(gram)} Gram-form pairs"
        )
        self.res: dict = {}
        self.psi: dict = {}
        if feat:
            self._feature_path(feat)
        if gram:
            self._gram_path(gram)
        if self.pool is not None:
            self.pool.release()
            got = self.pool.passes
            self.log.info(
                "deep features: "
                + (
                    f"every training clip's layers kept in memory ({4 * self.n * sum(self._widths_fs()) / 1e6:.0f} "
                    f"MB, within {self.pool.limit / 1e6:.0f} MB): {got['resident']} passes of the network(s)"
                    + (f" (+{got['subset']} over the Gram and test clips)" if got["subset"] else "")
                    if self.resident
                    else f"{got['chunk']} chunks and {got['subset']} Gram-subset windows computed"
                )
                + f", {self.pool.seconds:.1f} s"
            )
        if self.ci:
            self._bootstrap()
        if self.stats is not None:
            self._chance_path(pairs)
        return self.res

    def _widths_fs(self) -> list[int]:
        return [s.P for s in self.src.values() if s.take is not None]

    def _result(self, pair, vals, flags, n, method, specs=None):
        a, b = pair
        chance = {}
        if specs is not None:
            if "cka" in vals and np.isfinite(vals["cka"]):
                chance["cka"] = cka_chance(specs[0], specs[1], n)
            if "cka_debiased" in vals and np.isfinite(vals["cka_debiased"]):
                chance["cka_debiased"] = 0.0  # exactly, under a uniform permutation of one side's rows
            for m in ("r2_lr", "r2_cca", "r2_svcca"):
                if m in vals and np.isfinite(vals[m]):
                    chance[m] = eig_chance(specs[0], specs[1], n, m)
        self.res[pair] = dict(
            values=vals,
            flags=flags,
            n=n,
            method=method,
            p_a=self.seg_src[a].segments[a],
            p_b=self.seg_src[b].segments[b],
            ci=None,
            chance=chance,
            null={},
            reps={},
        )

    def _wants_influence(self, vals) -> bool:
        """Whether a pair with these values needs its per-row influence values (CKA or debiased CKA finite)."""
        return self.boot and any(np.isfinite(vals.get(m, np.nan)) for m in ("cka", "cka_debiased"))

    def _keep(self, pair, method, r, qa, qb, sa, sb, n, vals) -> None:
        """Store what the intervals and the replicates need of one pair from its per-row parts r_i = x_i'C_xy y_i,
        q^a_i, q^b_i over its n rows: the CKA influence values (for ``ci_low``/``ci_high``, exactly as before) and,
        for a pair computed on every training clip, the first-order changes under the recording-level resamples."""
        cka_v = vals.get("cka", np.nan)
        if self.ci and np.isfinite(cka_v):
            psi = _cka_psi(r, qa, qb, sa, sb, cka_v, n)
            self.psi[pair] = (method, psi.cpu().numpy() if hasattr(psi, "cpu") else psi)
        if self.resampler is None or n != self.n:
            return
        reps = self.res[pair]["reps"]
        if np.isfinite(cka_v):
            psi = self.psi[pair][1] if pair in self.psi else _cka_psi(r, qa, qb, sa, sb, cka_v, n)
            reps["cka"] = _replicates("cka", cka_v, self.resampler.delta(psi))
        d_v = vals.get("cka_debiased", np.nan)
        if np.isfinite(d_v):
            reps["cka_debiased"] = _replicates(
                "cka_debiased", d_v, self.resampler.delta(_dcka_psi(r, qa, qb, sa, sb, d_v, n))
            )

    def _bootstrap(self):
        B, seed = self.cfg["bootstrap"], self.cfg["seed"]
        for tag, method in enumerate(("feature", "gram")):
            keys = [p for p, (mth, _) in self.psi.items() if mth == method]
            if not keys:
                continue
            values = np.array([self.res[p]["values"]["cka"] for p in keys])
            psi = np.stack([np.asarray(self.psi[p][1], np.float64) for p in keys], 1)
            lo, hi = _bootstrap_ci(values, psi, B, seed, tag)
            for p, lo_p, hi_p in zip(keys, lo, hi):
                self.res[p]["ci"] = (float(lo_p), float(hi_p))
        self.log.info(f"bootstrap: {B} resamples of the clips for {len(self.psi)} CKA values")
