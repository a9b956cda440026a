"""Hand-crafted self terms, computed once per dataset (rule ``handcrafted_moments``) and read by every
``similarity_deep`` job.

Everything the measures need of a hand-crafted feature alone - its z-scoring, covariance spectrum (V, lam, trace,
||C_yy||_F^2, sum_i b_i^2) and per-clip q_i on the training clips, and its Gram-subset factor - is computed once
per dataset (:func:`handcrafted_moments`, stored by :mod:`deepfeat.formats.moments`); each ``similarity_deep`` job
then computes only its deep blocks' self terms and the cross terms (per deep block, ONE streamed pass for its
cross-products with all feature-form hand-crafted features, one Gram-space product with all Gram-form ones), through
the engine's view of the file (:func:`engine_cache`). The values equal the uncached computation (tested to 1e-10).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from deepfeat import config
from deepfeat.config import job
from deepfeat.formats.cliptable import check_clip_ids, train_mask
from deepfeat.formats.files import open_h5
from deepfeat.formats.moments import HandcraftedMoments, LazyMap, write_handcrafted_moments
from deepfeat.runtime import pick_device
from deepfeat.similarity.bootstrap import _self_influence
from deepfeat.similarity.feature_form import _split, block_forms
from deepfeat.similarity.gram import _crossprod, _factor_from_gram, _GramAcc, _LazyFactor
from deepfeat.similarity.measures import F64, _eigh_desc, _set_dims, _spec_from_cov, _SpecLazyV, canonical
from deepfeat.similarity.moments import Moments
from deepfeat.similarity.reader import _Reader
from deepfeat.similarity.sources import _Source, handcrafted_source

MOMENT_SETTINGS = ("max_features", "gram_max_clips", "seed")  # the similarity settings the cache depends on


@dataclass
class _EngineCache:
    """Self terms of one source's segments as the engine uses them (see :func:`engine_cache`)."""

    source: str
    label: str
    shift: torch.Tensor
    inv: torch.Tensor
    spec: dict  # segment -> _Spec on the n training rows (feature form)
    q: dict  # segment -> q_i on the n training rows (feature form)
    factor: Mapping  # segment -> _Factor on the m Gram rows (loaded on first use)
    train_rows: np.ndarray
    sub_rows: np.ndarray
    gram_K: Mapping = None  # segment -> its centred m x m Gram, where cached (read on each use)
    forget: Callable = None  # forget(segment): drop what was read of its Gram-subset factor (read again if used)


class _Fresh(Mapping):
    """A read-only mapping that reads its value anew on every access (keeps nothing)."""

    def __init__(self, keys, load: Callable):
        self._keys, self._load = list(keys), load

    def __getitem__(self, k):
        if k not in self._keys:
            raise KeyError(k)
        return self._load(k)

    def __iter__(self) -> Iterator:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, k) -> bool:
        return k in self._keys


def _unload(mapping, key) -> None:
    """Forget a value that a :class:`deepfeat.formats.moments.LazyMap` has read (it keeps what it loaded): the
    block-by-block Gram form reads each hand-crafted factor once per deep block and must not keep them all."""
    got = getattr(mapping, "_got", None)
    if isinstance(got, dict):
        got.pop(key, None)


def engine_cache(hm: HandcraftedMoments, hc: _Source, cfg: dict, device, label: str) -> _EngineCache:
    """The engine's view of the cache ``hm`` for the hand-crafted source ``hc`` (segments ``hc:<key>``), ranks and
    SVCCA dimensions from ``cfg``; checks that both describe the same features and settings."""
    bad = {k: (hm.settings.get(k), cfg[k]) for k in MOMENT_SETTINGS if hm.settings.get(k) != cfg[k]}
    if bad:
        raise ValueError(f"{label}: built with other similarity settings {bad} (cache, now); rebuild it")
    want = {f"hc:{k}": hm.widths[k] for k in hm.keys}
    if dict(hc.segments) != want:
        diff = sorted(set(want.items()) ^ set(hc.segments.items()))[:4]
        raise ValueError(f"{label}: its features differ from {hc.label} (e.g. {diff}); rebuild it")
    dev = torch.device(device)
    t = lambda x: torch.as_tensor(x).to(device=dev, dtype=F64)  # noqa: E731

    def spec(d, n, p, load_V=None, mean=None):
        lam = t(d["lam"])
        s = _SpecLazyV(
            load_V,
            n=n,
            p=p,
            trace=float(d["trace"]),
            fro2=float(d["fro2"]),
            aa=float(d["aa"]),
            lam=lam,
            mean=None if mean is None else t(mean),
        )
        return _set_dims(s, cfg)

    specs, qs = {}, {}
    for k in hm.keys:
        seg, p = f"hc:{k}", hm.widths[k]
        if k in hm.feature:
            d = hm.feature[k]
            specs[seg] = spec(d, hm.n, p, load_V=lambda k=k: t(hm.feature_V[k]), mean=d["mean"])
            qs[seg] = np.asarray(d["q"], np.float64)

    def load_B(k):
        if k in hm.gram_B:
            return t(hm.gram_B[k])
        return _coords(t(_sub_rows(hc, hm, k, int(cfg["chunk_size"]))).sub_(t(hm.gram[k]["mean"])), t(hm.gram_V[k]))

    def factor(seg):
        k = seg[3:]
        g = hm.gram[k]
        return _LazyFactor(lambda: load_B(k), spec(g, hm.m, hm.widths[k]), t(g["a"]), t(g["q"]))

    factors = LazyMap([f"hc:{k}" for k in hm.keys], factor)
    grams = _Fresh([f"hc:{k}" for k in (hm.gram_K or {})], lambda seg: t(hm.gram_K[seg[3:]]))

    def forget(seg):
        factors[seg].release()
        for m in (hm.gram_B, hm.gram_K, hm.gram_V):
            _unload(m, seg[3:])

    shift = t(np.concatenate([hm.shift[k] for k in hm.keys]))
    inv = t(np.concatenate([hm.inv[k] for k in hm.keys]))
    return _EngineCache(hc.name, label, shift, inv, specs, qs, factors, hm.train_rows, hm.sub_rows, grams, forget)


def _coords(X: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """Principal coordinates B = X V of the centred subset rows X (m x p) and the eigenvectors V of X'X: the one
    product behind both the cache's writer and :func:`engine_cache`'s recomputation, with both operands
    C-ordered (BLAS rounds differently for a transposed layout, and V comes Fortran-ordered from the
    eigensolver but C-ordered from the file), so that the reader's B is bit for bit the writer's."""
    return X.contiguous() @ V.contiguous()


def _sub_rows(hc: _Source, hm: HandcraftedMoments, k: str, chunk: int) -> np.ndarray:
    """float64 (m x p): feature ``k`` of ``hc`` on the Gram-subset clips ``hm.sub_rows``, z-scored with the cache's
    training statistics, read ``chunk`` clips at a time (the same element-wise arithmetic as the writer's read)."""
    if hc.read_rows is None:
        raise ValueError(f"{hc.label}: reading Gram-subset rows needs a source with read_rows")
    c0, c1 = hc.offsets[f"hc:{k}"]
    rows = np.asarray(hm.sub_rows, np.int64)
    out, n_clips = [], int(rows[-1]) + 1 if len(rows) else 0
    for i0 in range(0, n_clips, chunk):
        lo, hi = np.searchsorted(rows, [i0, i0 + chunk])
        if hi > lo:
            out.append(hc.read_rows(i0, min(i0 + chunk, n_clips), rows[lo:hi] - i0, c0, c1, hm.shift[k], hm.inv[k]))
    return np.concatenate(out, 0) if out else np.empty((0, c1 - c0))


@job(
    reads={"similarity": ("max_features", "gram_max_clips", "seed")},
    tunes={"similarity": ("device", "chunk_size", "memory_mb")},
)
def handcrafted_moments(*, features, mel, moments, settings, log=None) -> HandcraftedMoments:
    """Compute the :class:`~deepfeat.formats.moments.HandcraftedMoments` of ``handcrafted.h5`` (``features``) on
    the training clips of ``mel.h5``, write them to ``moments`` and return them.

    One pass for the z-scoring; when the Gram subset is a strict subset of the training clips, streamed float64
    passes for the feature-form covariances (dsyrk; groups of features within ``memory_mb``) and for q, first,
    while nothing else is held; then per feature its Gram-subset factor (covariance form when p <= m, else Gram
    form). Every part any measure needs is computed, eigendecompositions and the bootstrap's q_i included (as for
    ``measures`` = all and ``bootstrap`` > 0), so that the file serves every job. Which features are in feature form:
    :func:`~deepfeat.similarity.feature_form.block_forms` (a job that decides otherwise computes what is missing).

    Cost: the streamed passes O(n sum p^2) time, O(p^3) per eigendecomposition (p <= ``max_features``); the factors
    O(m min(p, m)^2) each on the m = min(n, ``gram_max_clips``) subset clips; memory: the factors and spectra it
    writes (8 m sum min(p, m) + 8 sum p^2 bytes), capped by ``gram_max_clips`` and ``max_features``, not by n.
    """
    log = log or logging.getLogger(__name__)
    # rank_rtol and svcca_variance shape only ranks and dimensions, which the file does not store
    cfg = canonical(
        {**settings["similarity"], **{k: config.default("similarity", k) for k in ("rank_rtol", "svcca_variance")}}
    )
    device = pick_device(cfg["device"])
    t0 = time.perf_counter()
    train, clip_ids = train_mask(mel, minimum=4)
    with open_h5(features, "handcrafted") as fh:
        check_clip_ids(fh, features, clip_ids, mel)
        hc, names = handcrafted_source(fh, features, len(train))
        rd = _Reader([hc], train, cfg, device, log)
        rd._standardize(hc)
        n = rd.n
        pick = rd._gram_subset()
        m = rd.m
        forms = block_forms(hc.segments, n, cfg)
        feat = [s for s in hc.segments if forms[s] == "feature"]
        log.info(
            f"hand-crafted self terms: {len(hc.segments)} features ({hc.P} columns), {n} training clips; "
            f"{len(feat)} in feature form; Gram-subset factors on {m} clips"
            + (" (all)" if m == n else " (seeded subset)")
            + f", device {device}"
        )
        feature, gram, gram_K = {}, {}, {}
        if m < n and feat:  # first, while nothing else is held: the streamed covariances of every training clip
            feature.update(_feature_moments(rd, hc, feat, cfg, log))
        nxt = 30.0
        for i, seg in enumerate(hc.segments, 1):
            gram[seg], f_part, K = _subset_terms(rd, hc, seg, cfg, device, m == n and seg in feat)
            if f_part is not None:  # the subset is every training clip: the same spectrum serves both
                feature[seg] = f_part
            if K is not None:
                gram_K[seg] = K
            el = time.perf_counter() - t0
            if el >= nxt or i == len(hc.segments):
                log.info(f"  Gram-subset factors: {i}/{len(hc.segments)} features, {el:.0f} s")
                nxt = el + 30.0
    out = _assemble(rd, hc, names, pick, cfg, feature, gram, gram_K, clip_ids, t0)
    log.info(f"hand-crafted self terms in {out.seconds:.1f} s")
    write_handcrafted_moments(out, moments, features)
    log.info(f"wrote {moments} ({len(out.keys)} features, {out.n} training clips, Gram subset {out.m})")
    return out


def _subset_terms(rd: _Reader, hc: _Source, seg: str, cfg: dict, device, also_feature: bool):
    """(Gram-subset part, feature-form part or None, centred Gram or None) of one feature: from its p x p
    covariance when p <= m (the feature-form part too when ``also_feature``: the subset is every training clip),
    else from the m x m Gram (kept: the jobs compare in Gram space)."""
    c0, c1 = hc.offsets[seg]
    p, m = c1 - c0, rd.m
    if p <= m:
        X = rd._read_sub(hc, c0, c1)
        mean = X.mean(0)
        X -= mean
        C = _crossprod(X)
        lam, V = _eigh_desc(C)
        a = (X * X).sum(1)
        B = _coords(X, V)
        q = (B * B) @ lam
        parts = dict(trace=float(a.sum()), fro2=float((C * C).sum()), aa=float(a @ a))
        f_part = dict(mean=mean, lam=lam, V=V, q=q, **parts) if also_feature else None
        return dict(V=V, mean=mean, lam=lam, a=a, q=q, **parts), f_part, None
    acc = _GramAcc(m, device)
    for Xc in rd._sub_blocks(hc, c0, c1):
        acc.add(Xc)
    K = acc.full()
    f = _factor_from_gram(K, p, cfg, True)
    return dict(B=f.B, lam=f.spec.lam, a=f.a, q=f.q, trace=f.spec.trace, fro2=f.spec.fro2, aa=f.spec.aa), None, K


def _np(v):
    return v.cpu().numpy() if isinstance(v, torch.Tensor) else v


def _assemble(rd: _Reader, hc: _Source, names, pick, cfg, feature, gram, gram_K, clip_ids, t0) -> HandcraftedMoments:
    """The :class:`HandcraftedMoments` (numpy arrays, keys of handcrafted.h5) of the computed parts."""
    return HandcraftedMoments(
        clip_ids=np.asarray(clip_ids),
        train_rows=rd.rows.copy(),
        sub_rows=rd.rows[pick].copy(),
        settings={k: cfg[k] for k in MOMENT_SETTINGS},
        keys=[s[3:] for s in hc.segments],
        names={s[3:]: names[s] for s in hc.segments},
        widths={s[3:]: w for s, w in hc.segments.items()},
        shift={s[3:]: hc.shift[slice(*hc.offsets[s])].cpu().numpy() for s in hc.segments},
        inv={s[3:]: hc.inv[slice(*hc.offsets[s])].cpu().numpy() for s in hc.segments},
        feature={s[3:]: {k: _np(v) for k, v in d.items() if k != "V"} for s, d in feature.items()},
        feature_V={s[3:]: _np(d["V"]) for s, d in feature.items()},
        gram={s[3:]: {k: _np(v) for k, v in d.items() if k not in ("B", "V")} for s, d in gram.items()},
        gram_K={s[3:]: _np(K) for s, K in gram_K.items()},
        gram_B={s[3:]: _np(d["B"]) for s, d in gram.items() if "B" in d},
        gram_V={s[3:]: _np(d["V"]) for s, d in gram.items() if "V" in d},
        n_const=int((hc.inv == 0).sum()),
        seconds=time.perf_counter() - t0,
    )


def _feature_moments(eng: _Reader, hc: _Source, segs: list, cfg: dict, log) -> dict:
    """Feature-form self terms of ``segs`` on all n training clips: streamed float64 covariances (dsyrk, passes
    split to fit the memory budget), eigendecompositions, then one pass for q_i = y_i'C y_i."""
    out = {}
    width = {s: hc.segments[s] for s in segs}
    groups = _split(segs, {s: 24 * w * w for s, w in width.items()}, eng.budget)
    for k, grp in enumerate(groups, 1):
        view = ("v", hc.name, grp)
        mom = Moments(eng._view_groups([view]), device=eng.device)
        for data, *_ in eng._stream([view], f"feature-form covariances {k}/{len(groups)}"):
            mom.update(data)
        specs = {
            s: _spec_from_cov(mom.cov(f"v|{s}"), eng.n, mom.aa(f"v|{s}"), cfg, True, mean=mom.mean(f"v|{s}"))
            for s in grp
        }
        del mom
        q = {s: [] for s in grp}
        cols, o = {}, 0
        for s in grp:
            cols[s] = slice(o, o + width[s])
            o += width[s]
        for data, *_ in eng._stream([view], f"feature-form q {k}/{len(groups)}"):
            for s in grp:
                q[s].append(_self_influence(data["v"][:, cols[s]] - specs[s].mean, specs[s]))
        for s in grp:
            sp = specs[s]
            out[s] = dict(mean=sp.mean, lam=sp.lam, V=sp.V, q=torch.cat(q[s]), trace=sp.trace, fro2=sp.fro2, aa=sp.aa)
    return out
