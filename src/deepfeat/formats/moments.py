"""``similarity/handcrafted_moments.h5`` (kind ``handcrafted_moments``): the hand-crafted features' similarity
self terms on the training clips, computed once per dataset (:func:`deepfeat.similarity.handcrafted_moments`) and
read by every ``similarity_deep`` job (see :class:`HandcraftedMoments` for what each part is).

Layout (docs/formats.md): root attributes ``n_clips``, ``n_train``, ``m`` (Gram subset size), ``settings`` (JSON of
the similarity settings the file depends on: ``max_features``, ``gram_max_clips``, ``seed``), ``n_const``,
``seconds``, ``features_file``; ``meta/clip_id`` (str, N), ``train_rows`` / ``sub_rows`` (int64 clip indices of the
n training clips and of the seeded m-clip Gram subset). ``features`` attribute ``order`` (JSON keys, the column
order of handcrafted.h5); per ``features/<key>`` (attributes ``name``, ``p``, ``form`` feature|gram): ``shift``,
``inv``; ``feature/`` (feature form only; attributes ``trace``, ``fro2``, ``aa``): ``mean``, ``lam``, ``V``, ``q``;
``gram/`` (every feature; attributes ``trace``, ``fro2``, ``aa``): ``B``, ``lam``, ``a``, ``q`` and, for features
wider than m, ``K``. float64 throughout.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deepfeat.formats.files import STR, decode, open_h5, write_h5

KIND = "handcrafted_moments"


class LazyMap(Mapping):
    """A read-only mapping whose values are computed (e.g. read from a file) on first access, then kept."""

    def __init__(self, keys, load: Callable):
        self._keys, self._load, self._got = list(keys), load, {}

    def __getitem__(self, k):
        if k not in self._got:
            if k not in self._keys:
                raise KeyError(k)
            self._got[k] = self._load(k)
        return self._got[k]

    def __iter__(self):
        return iter(self._keys)

    def __len__(self):
        return len(self._keys)

    def __contains__(self, k):
        return k in self._keys


@dataclass
class HandcraftedMoments:
    """Everything the similarity measures need of each hand-crafted feature alone, on the training clips.

    Computed once per dataset (:func:`deepfeat.similarity.handcrafted_moments`, rule ``handcrafted_moments``) and
    read by every ``similarity_deep`` job, which then only computes its deep blocks' self terms and the cross terms.
    Per feature (key of ``handcrafted.h5``; y = the z-scored columns, centred over the rows used):

    - ``shift``, ``inv``: the z-scoring, y = (x - shift) * inv with the training mean and 1/std (ddof 0; 0 for
      constant columns).
    - ``feature`` (features in feature form, p <= max_features and p < n; on the n training clips): ``mean``
      (of y, ~0), ``lam`` and (``feature_V``) ``V``: the eigendecomposition of C_yy = y'y (descending),
      ``trace`` = tr C_yy,
      ``fro2`` = ||C_yy||_F^2, ``aa`` = sum_i b_i^2 (b_i = ||y_i||^2, the debiased-HSIC self piece), ``q`` =
      y_i'C_yy y_i per training clip (the bootstrap's influence self term).
    - ``gram`` (every feature; on the m Gram-subset clips, re-centred there): ``lam`` (from the p x p covariance
      when p <= m, else from the m x m Gram: the cheaper of the two forms), ``a`` = diag K_y, ``q`` = row sums of
      K_y * K_y, ``trace``, ``fro2`` = ||K_y||_F^2 = ||C_yy||_F^2, ``aa``, and what gives the principal coordinates
      B (m x r, B'B = diag(lam), BB' = the centred Gram K_y): for features wider than m ``gram_B`` holds B itself
      and ``gram_K`` the Gram K_y (no larger than B; jobs comparing in Gram space need not rebuild it); for the
      others ``gram_V`` holds the p x p eigenvectors V of the subset's covariance and ``gram`` its column ``mean``
      (p): B = (y_sub - mean) V is recomputed from handcrafted.h5 by the reading job
      (:func:`deepfeat.similarity.cache.engine_cache`; O(m p^2), bit for bit the writer's product), which keeps
      the file at O(p^2) per feature instead of O(m p). When the subset is every training clip, ``gram/V`` is a
      hard link to ``feature/V`` (stored once).
    Ranks and SVCCA dimensions are derived from ``lam`` by the reading job (they depend on rank_rtol and
    svcca_variance); the cache depends only on the similarity settings recorded in ``settings``.
    """

    clip_ids: np.ndarray
    train_rows: np.ndarray
    sub_rows: np.ndarray
    settings: dict
    keys: list
    names: dict
    widths: dict
    shift: dict
    inv: dict
    feature: dict
    gram: Mapping
    gram_K: Mapping = None
    gram_B: Mapping = None
    feature_V: Mapping = None
    gram_V: Mapping = None
    n_const: int = 0
    seconds: float = 0.0

    @property
    def n(self) -> int:
        return len(self.train_rows)

    @property
    def m(self) -> int:
        return len(self.sub_rows)


def _read_part(gp, skip=()) -> dict:
    return {**{a: float(v) for a, v in gp.attrs.items()}, **{d: gp[d][:] for d in gp if d not in skip}}


def _loader(path, part: str, name: str | None = None, skip=()) -> Callable:
    """k -> ``features/<k>/<part>/<name>`` of the file (or the whole part without ``skip``), opened per call."""

    def load(k):
        with open_h5(path, KIND) as g:
            gp = g["features"][k][part]
            return gp[name][:] if name else _read_part(gp, skip)

    return load


def write_handcrafted_moments(hm: HandcraftedMoments, path, features_h5=None) -> None:
    """Write ``handcrafted_moments.h5`` (kind ``handcrafted_moments``; layout in docs/formats.md), atomically."""
    with write_h5(path, KIND) as f:
        f.attrs.update(
            n_clips=len(hm.clip_ids),
            n_train=hm.n,
            m=hm.m,
            settings=json.dumps(hm.settings),
            n_const=hm.n_const,
            seconds=hm.seconds,
            features_file="" if features_h5 is None else Path(features_h5).name,
        )
        f.create_group("meta").create_dataset("clip_id", data=np.asarray(hm.clip_ids, dtype=object), dtype=STR)
        f.create_dataset("train_rows", data=hm.train_rows.astype(np.int64))
        f.create_dataset("sub_rows", data=hm.sub_rows.astype(np.int64))
        g = f.create_group("features")
        g.attrs["order"] = json.dumps(hm.keys)
        for k in hm.keys:
            gk = g.create_group(k)
            gk.attrs.update(name=hm.names[k], p=hm.widths[k], form="feature" if k in hm.feature else "gram")
            gk.create_dataset("shift", data=hm.shift[k])
            gk.create_dataset("inv", data=hm.inv[k])
            for part, d in (("feature", hm.feature.get(k)), ("gram", hm.gram[k])):
                if d is None:
                    continue
                gp = gk.create_group(part)
                for name, v in d.items():
                    if np.ndim(v) == 0:
                        gp.attrs[name] = float(v)
                    else:
                        gp.create_dataset(name, data=np.asarray(v, np.float64))
                if part == "feature":
                    gp.create_dataset("V", data=np.asarray(hm.feature_V[k], np.float64))
                if part == "gram":
                    if hm.gram_B and k in hm.gram_B:
                        gp.create_dataset("B", data=np.asarray(hm.gram_B[k], np.float64))
                    if hm.gram_K and k in hm.gram_K:
                        gp.create_dataset("K", data=np.asarray(hm.gram_K[k], np.float64))
                    if hm.gram_V and k in hm.gram_V:
                        V = np.asarray(hm.gram_V[k], np.float64)
                        if k in hm.feature_V and np.array_equal(hm.feature_V[k], V):
                            gp["V"] = gk["feature"]["V"]  # the subset is every training clip: one copy
                        else:
                            gp.create_dataset("V", data=V)


def read_handcrafted_moments(path) -> HandcraftedMoments:
    """Inverse of :func:`write_handcrafted_moments` (refuses unfinished or foreign files)."""
    with open_h5(path, KIND) as f:
        keys = json.loads(f["features"].attrs["order"])
        feature, shift, inv, names, widths = {}, {}, {}, {}, {}
        for k in keys:
            gk = f["features"][k]
            names[k], widths[k] = decode(gk.attrs["name"]), int(gk.attrs["p"])
            shift[k], inv[k] = gk["shift"][:], gk["inv"][:]
            if "feature" in gk:
                feature[k] = _read_part(gk["feature"], skip=("V",))
            if "gram" not in gk:
                raise ValueError(f"{path}: features/{k} lacks its Gram-subset factor; rebuild the file")

        held = {k: set(f["features"][k]["gram"]) for k in keys}
        if any(not ({"B", "V"} & h) for h in held.values()):
            raise ValueError(f"{path}: a Gram-subset factor lacks both B and V (a damaged file); rebuild it")
        gram = LazyMap(keys, _loader(path, "gram", skip=("B", "K", "V")))  # read when a Gram-form pair needs it
        gram_B = LazyMap([k for k in keys if "B" in held[k]], _loader(path, "gram", "B"))
        gram_V = LazyMap([k for k in keys if "V" in held[k] and "B" not in held[k]], _loader(path, "gram", "V"))
        feature_V = LazyMap(list(feature), _loader(path, "feature", "V"))
        gram_K = LazyMap([k for k in keys if "K" in held[k]], _loader(path, "gram", "K"))
        return HandcraftedMoments(
            clip_ids=f["meta"]["clip_id"].asstr()[:],
            train_rows=f["train_rows"][:],
            sub_rows=f["sub_rows"][:],
            settings=json.loads(f.attrs["settings"]),
            keys=keys,
            names=names,
            widths=widths,
            shift=shift,
            inv=inv,
            feature=feature,
            feature_V=feature_V,
            gram=gram,
            gram_K=gram_K,
            gram_B=gram_B,
            gram_V=gram_V,
            n_const=int(f.attrs["n_const"]),
            seconds=float(f.attrs["seconds"]),
        )
