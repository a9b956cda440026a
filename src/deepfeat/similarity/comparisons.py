"""The similarity jobs of deep features: one model against the hand-crafted features and itself
(:func:`similarity_deep`), and models against each other (:func:`similarity_cross`).

Deep features come from the model files: the layers of the trained and untrained networks are computed on the
rows each pass needs, batch by batch, on ``similarity.device`` (:class:`deepfeat.nets.features.ModelFeatures`);
nothing proportional to clips x layer width is written. ``deep=`` (exported deep-feature files,
:class:`deepfeat.formats.deep.StoredFeatures`) replaces the models as the source of the same values. Each job
writes a tidy CSV (columns :data:`deepfeat.formats.tables.SIMILARITY_COLUMNS`, docs/formats.md; one row per pair and
measure, measures in the order of :data:`~deepfeat.formats.tables.MEASURES`) and returns it.
"""

from __future__ import annotations

import contextlib
import logging
import time
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd

from deepfeat.config import job
from deepfeat.formats.cliptable import check_clip_ids, train_mask
from deepfeat.formats.deep import KIND as DEEP_KIND
from deepfeat.formats.deep import STATES, StoredFeatures
from deepfeat.formats.files import open_h5, write_csv
from deepfeat.formats.moments import read_handcrafted_moments
from deepfeat.formats.tables import SIMILARITY_COLUMNS, similarity_row
from deepfeat.nets.features import ModelFeatures
from deepfeat.runtime import pick_device
from deepfeat.similarity.cache import engine_cache
from deepfeat.similarity.engine import _Engine
from deepfeat.similarity.measures import canonical
from deepfeat.similarity.reader import window_pool
from deepfeat.similarity.sources import feature_sources, handcrafted_source

# the order of deepfeat.nets.models.ARCHS (a test checks it; not imported, so that editing the networks' code does
# not rerun the similarity jobs): arch_vs_arch compares a = the earlier architecture with b = the later one
ARCH_ORDER = ("Regular", "Deformable", "Dilated", "1dF", "1dT", "FeedForward")


#: the declaration of both model-vs-model jobs (the same settings change their results)
_MODEL_JOB = job(
    reads={
        "similarity": (
            "measures",
            "svcca_variance",
            "max_features",
            "gram_max_clips",
            "bootstrap",
            "seed",
            "rank_rtol",
        ),
        "deep": ("layers", "point", "average_channels"),
        "stats": ("seed", "resamples", "level", "chance_permutations", "chance_max_clips"),
    },
    tunes={"similarity": ("device", "chunk_size", "memory_mb"), "deep": ("batch_size",)},
)


def _row(dataset, comparison, task, a: dict, b: dict, measure, res) -> dict:
    nan = float("nan")
    ci = res["ci"] if measure == "cka" and res["ci"] is not None else (nan, nan)
    return similarity_row(
        dataset,
        comparison,
        task,
        a,
        b,
        measure,
        res["values"][measure],
        ci,
        res["n"],
        res["p_a"],
        res["p_b"],
        res["method"],
        res["flags"].get(measure, ""),
        chance=res.get("chance", {}).get(measure, nan),
        null=res.get("null", {}).get(measure, (nan, nan)),
    )


#: the key columns of the similarity replicate files (docs/formats.md)
BOOT_KEYS = (
    "dataset comparison task arch_a seed_a layer_a trained_a arch_b seed_b layer_b trained_b feature_b measure"
).split()


def _write_boot(rows: list[dict], res_of: list, boot, stats: dict, train_ids, log) -> None:
    """The replicates file ``boot`` (formats.replicates): one row per cka / cka_debiased row of the table, its
    stats.resamples replicates (NaN for a row not computed on every training clip)."""
    from deepfeat.formats.replicates import fingerprint, write_replicates
    from deepfeat.stats import SIMILARITY_STREAM

    B = int(stats["resamples"])
    keep = [i for i, r in enumerate(rows) if r["measure"] in ("cka", "cka_debiased")]
    keys = pd.DataFrame([{k: rows[i][k] for k in BOOT_KEYS} for i in keep], columns=BOOT_KEYS)
    # strings as the CSV writes them (integers without a decimal point, NaN as "")
    keys = keys.map(lambda v: "" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v))
    values = np.array([rows[i]["value"] for i in keep], np.float64)
    reps = np.full((len(keep), B), np.nan)
    for j, i in enumerate(keep):
        got = res_of[i].get("reps", {}).get(rows[i]["measure"])
        if got is not None:
            reps[j] = got
    write_replicates(
        boot,
        keys,
        values,
        reps,
        seed=stats["seed"],
        stream=SIMILARITY_STREAM,
        unit="training clips",
        clips=fingerprint(train_ids),
    )
    log.info(f"wrote {boot} ({len(keep)} rows x {B} replicates, {int(np.isfinite(reps).all(1).sum())} computed)")


def _recordings(mel) -> np.ndarray:
    """The recording of every clip of mel.h5's clip table."""
    with open_h5(mel, "mel") as f:
        return f["meta"]["recording"].asstr()[:]


def _start(settings, mel, log):
    """(logger, engine settings, device, start time, training-row mask, clip ids) of a job on the clips of mel.h5."""
    log = log or logging.getLogger(__name__)
    cfg = canonical(settings["similarity"])
    device = pick_device(cfg["device"])
    return (log, cfg, device, time.perf_counter(), *train_mask(mel, minimum=4))


def _stored(path, mel, d: dict, clip_ids, n_clips: int) -> StoredFeatures:
    """The exported deep-feature file ``path`` as a features object, checked against mel.h5 and the ``deep``
    settings ``d`` (its rows are mel.h5's clips; it holds ``layers`` at ``point``, averaged as ``average_channels``
    asks)."""
    with open_h5(path, DEEP_KIND) as f:
        for state in STATES:
            for a in d["layers"]:
                if state in f and a in f[state] and f[state][a].shape[0] != n_clips:
                    raise ValueError(
                        f"{path}:{state}/{a}: {f[state][a].shape[0]} rows but the clip table of mel.h5 has "
                        f"{n_clips} clips"
                    )
        check_clip_ids(f, path, clip_ids, mel)
    feats = StoredFeatures(path, n_clips=n_clips, batch_size=d["batch_size"])
    try:
        missing = [a for a in d["layers"] if a not in feats.layers]
        if missing:
            raise ValueError(
                f"{path}: no layer(s) {missing} (it holds {list(feats.layers)}); deep.layers asks for them"
            )
        if feats.point != d["point"]:
            raise ValueError(f"{path}: activations at the {feats.point} point, but deep.point is {d['point']}")
        avg = set(d["average_channels"])
        wrong = [a for a in d["layers"] if a != "fc1" and (len(feats.shapes[a]) == 2) != (a in avg)]
        if wrong:
            raise ValueError(f"{path}: layer(s) {wrong} are not averaged over channels as deep.average_channels says")
    except Exception:
        feats.close()
        raise
    return feats


def _features(model, deep, mel, d: dict, device, clip_ids, n_clips: int):
    """The features object of one model: computed from the model file, or read from ``deep`` when given."""
    if deep is not None:
        return _stored(deep, mel, d, clip_ids, n_clips)
    if model is None:
        raise ValueError("similarity: give a model file (model=) or an exported deep-feature file (deep=)")
    return ModelFeatures(model, mel, d["layers"], d["point"], d["average_channels"], device, d["batch_size"])


def _write(df: pd.DataFrame, table, log) -> pd.DataFrame:
    write_csv(df, table)
    log.info(f"wrote {table} ({len(df)} rows)")
    return df


def _deep_pairs(layers, segments, names) -> tuple[list, dict]:
    """(pairs, {pair: (comparison, a, b)}) of one model: every layer of both weight states vs every hand-crafted
    segment, trained vs untrained per layer, and every pair of layers of the same weights (a = the earlier)."""
    pairs, keys = [], {}
    for s in STATES:
        for a in layers:
            for seg in segments:
                p = (f"{s}/{a}", seg)
                pairs.append(p)
                keys[p] = ("deep_vs_handcrafted", dict(layer=a, trained=s), dict(feature=names[seg]))
    for a in layers:
        p = (f"trained/{a}", f"untrained/{a}")
        pairs.append(p)
        keys[p] = ("trained_vs_untrained", dict(layer=a, trained="trained"), dict(layer=a, trained="untrained"))
    for s in STATES:
        for la, lb in combinations(layers, 2):
            p = (f"{s}/{la}", f"{s}/{lb}")
            pairs.append(p)
            keys[p] = ("layer_vs_layer", dict(layer=la, trained=s), dict(layer=lb, trained=s))
    return pairs, keys


@_MODEL_JOB
def similarity_deep(*, model, features, mel, table, settings, dataset, boot=None, moments=None, deep=None, log=None):
    """Similarity table of one model (the model file ``model``; or the exported deep-feature file ``deep``, which
    then replaces it) on the training clips of ``mel.h5``, written to ``table`` and returned.

    Rows: every layer of ``deep.layers`` (trained and untrained) vs every hand-crafted feature of ``features``
    (``deep_vs_handcrafted``, z-scored features, incl. Random); trained vs untrained per layer
    (``trained_vs_untrained``, a = trained); every pair of layers of the same weights (``layer_vs_layer``, a = the
    earlier layer). ``moments``: the dataset's ``handcrafted_moments.h5``
    (:func:`deepfeat.similarity.handcrafted_moments`); with it the hand-crafted self terms (z-scoring, spectra,
    Gram factors) are read instead of computed, and the job computes only its deep blocks' self terms and the
    cross terms (same values). ``boot``: where to write the replicates of its CKA and debiased CKA values
    (``*.boot.h5``, docs/formats.md).
    """
    log, cfg, device, t0, train, clip_ids = _start(settings, mel, log)
    N, d = len(train), settings["deep"]
    pool = window_pool(cfg, log)
    with _features(model, deep, mel, d, device, clip_ids, N) as feats, open_h5(features, "handcrafted") as fh:
        check_clip_ids(fh, features, clip_ids, mel)
        sources = feature_sources(feats, pool, layers=d["layers"])
        hc, names = handcrafted_source(fh, features, N)
        cache = None
        if moments is not None:
            hm = read_handcrafted_moments(moments)
            if len(hm.clip_ids) != N or not np.array_equal(hm.clip_ids, clip_ids):
                raise ValueError(f"{moments}: built for other clips than {mel}; rebuild it")
            cache = engine_cache(hm, hc, cfg, device, str(moments))
            log.info(
                f"hand-crafted self terms read from {moments} ({len(hm.feature)} feature-form spectra, "
                f"{len(hm.gram)} Gram-subset factors on {hm.m} clips)"
            )
        log.info(
            f"similarity of {feats.arch} seed {feats.seed} ({feats.task}): {len(d['layers'])} layers x 2 weight "
            f"states ({'read from ' + str(deep) if deep is not None else 'computed from ' + str(model)}) "
            f"x {len(names)} hand-crafted features on {int(train.sum())} training clips, device {device}"
        )
        pairs, keys = _deep_pairs(d["layers"], hc.segments, names)
        rec = _recordings(mel)
        eng = _Engine(
            sources + [hc],
            train,
            cfg,
            device,
            log,
            cache=cache,
            pool=pool,
            stats=settings["stats"],
            recordings=rec,
            replicates=boot is not None,
        )
        res = eng.run(pairs)
        arch, seed, task = feats.arch, int(feats.seed), feats.task
    rows, res_of = [], []
    who = dict(arch=arch, seed=seed)
    for p in pairs:
        comp, a, b = keys[p]
        a = {**who, **a}
        if comp != "deep_vs_handcrafted":
            b = {**who, **b}
        rows += [_row(dataset, comp, task, a, b, m, res[p]) for m in cfg["measures"]]
        res_of += [res[p]] * len(cfg["measures"])
    if boot is not None:
        _write_boot(rows, res_of, boot, settings["stats"], clip_ids[train], log)
    log.info(f"similarity_deep: {len(rows)} rows in {time.perf_counter() - t0:.1f} s")
    return _write(pd.DataFrame(rows, columns=SIMILARITY_COLUMNS), table, log)


def _arch_key(a):
    return (ARCH_ORDER.index(a) if a in ARCH_ORDER else len(ARCH_ORDER), a)


def _cross_pairs(layers_of: dict) -> tuple[list, dict, dict]:
    """(pairs, {pair: (comparison, key a, key b)}, {key: segment}) of the models ``layers_of`` ({(arch, seed):
    layers}), keys (arch, seed, state, layer): seed vs seed (same architecture and layer) and architecture vs
    architecture (same seed and layer), ordered so that the Gram-form cache reuses blocks: by layer, then seed/arch
    groups. Segment names are those of :func:`~deepfeat.similarity.sources.feature_sources` with the prefix
    ``{arch}|{seed}|``."""
    seg_of = {}
    for (arch, seed), layers in layers_of.items():
        for s in STATES:
            for a in layers:
                seg_of[(arch, seed, s, a)] = f"{arch}|{seed}|{s}/{a}"
    archs = sorted({a for a, _ in layers_of}, key=_arch_key)
    seeds = sorted({s for _, s in layers_of})
    layers = list(dict.fromkeys(a for ls in layers_of.values() for a in ls))
    pairs, keys = [], {}

    def add(comp, ka, kb):
        if ka in seg_of and kb in seg_of:
            p = (seg_of[ka], seg_of[kb])
            pairs.append(p)
            keys[p] = (comp, ka, kb)

    for s in STATES:
        for a in layers:
            for arch in archs:
                for s1, s2 in combinations(seeds, 2):
                    add("seed_vs_seed", (arch, s1, s, a), (arch, s2, s, a))
            for seed in seeds:
                for a1, a2 in combinations(archs, 2):
                    add("arch_vs_arch", (a1, seed, s, a), (a2, seed, s, a))
    return pairs, keys, seg_of


@_MODEL_JOB
def similarity_cross(*, models, mel, table, settings, dataset, boot=None, deep=(), log=None) -> pd.DataFrame:
    """Seed vs seed (same architecture and layer) and architecture vs architecture (same seed and layer), trained
    and untrained, of the model files ``models`` of one training task (or of the exported deep-feature files
    ``deep``, which then replace them), on the training clips of ``mel.h5``; written to ``table`` and returned.
    ``boot``: where to write the replicates of its CKA and debiased CKA values (``*.boot.h5``)."""
    log, cfg, device, t0, train, clip_ids = _start(settings, mel, log)
    N, d = len(train), settings["deep"]
    stored = [Path(p) for p in ([deep] if isinstance(deep, (str, Path)) else (deep or ()))]
    files = stored or [Path(p) for p in ([models] if isinstance(models, (str, Path)) else (models or ()))]
    if len(files) < 2:
        log.info(f"similarity_cross: {len(files)} model(s), nothing to compare")
        if boot is not None:
            _write_boot([], [], boot, settings["stats"], clip_ids[train], log)
        return _write(pd.DataFrame([], columns=SIMILARITY_COLUMNS), table, log)
    pool = window_pool(cfg, log)
    with contextlib.ExitStack() as stack:
        feats = {}
        for path in files:
            f = stack.enter_context(
                _features(None if stored else path, path if stored else None, mel, d, device, clip_ids, N)
            )
            key = (f.arch, int(f.seed))
            if key in feats:
                raise ValueError(f"{path}: {f.arch} seed {f.seed} also in {feats[key].label}")
            feats[key] = f
        tasks = {f.task for f in feats.values()}
        if len(tasks) > 1:
            raise ValueError(f"similarity_cross: the models mix training tasks {sorted(tasks)}")
        task = tasks.pop()
        pairs, keys, _ = _cross_pairs({k: d["layers"] for k in feats})
        sources = [
            s for (arch, seed), f in feats.items() for s in feature_sources(f, pool, f"{arch}|{seed}|", d["layers"])
        ]
        archs = sorted({a for a, _ in feats}, key=_arch_key)
        log.info(
            f"similarity_cross ({task}): {len(feats)} models ({', '.join(archs)}; seeds "
            f"{sorted({s for _, s in feats})}; {'read from deep-feature files' if stored else 'computed'}), "
            f"{len(pairs)} block pairs on {int(train.sum())} training clips, device {device}"
        )
        rec = _recordings(mel)
        eng = _Engine(
            sources,
            train,
            cfg,
            device,
            log,
            pool=pool,
            stats=settings["stats"],
            recordings=rec,
            replicates=boot is not None,
        )
        res = eng.run(pairs) if pairs else {}
    rows, res_of = [], []
    for p in pairs:
        comp, ka, kb = keys[p]
        a = dict(arch=ka[0], seed=ka[1], trained=ka[2], layer=ka[3])
        b = dict(arch=kb[0], seed=kb[1], trained=kb[2], layer=kb[3])
        rows += [_row(dataset, comp, task, a, b, m, res[p]) for m in cfg["measures"]]
        res_of += [res[p]] * len(cfg["measures"])
    if boot is not None:
        _write_boot(rows, res_of, boot, settings["stats"], clip_ids[train], log)
    log.info(f"similarity_cross: {len(rows)} rows in {time.perf_counter() - t0:.1f} s")
    return _write(pd.DataFrame(rows, columns=SIMILARITY_COLUMNS), table, log)
