"""The similarity jobs of deep-feature files: one model against the hand-crafted features and itself
(:func:`similarity_deep`), and models against each other (:func:`similarity_cross`).

Each writes a tidy CSV (columns :data:`deepfeat.formats.tables.SIMILARITY_COLUMNS`, docs/formats.md; one row per
pair and measure, measures in the order of :data:`~deepfeat.formats.tables.MEASURES`) and returns it.
"""

from __future__ import annotations

import logging
import time
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd

from deepfeat.config import job
from deepfeat.formats.cliptable import check_clip_ids, train_mask
from deepfeat.formats.deep import KIND as DEEP_KIND
from deepfeat.formats.deep import STATES, deep_info
from deepfeat.formats.files import open_h5, write_csv
from deepfeat.formats.moments import read_handcrafted_moments
from deepfeat.formats.tables import SIMILARITY_COLUMNS, similarity_row
from deepfeat.runtime import pick_device
from deepfeat.similarity.cache import engine_cache
from deepfeat.similarity.engine import _Engine
from deepfeat.similarity.measures import canonical
from deepfeat.similarity.sources import dataset_source, handcrafted_source

# the order of deepfeat.nets.models.ARCHS (a test checks it; not imported, so that editing the networks' code does
# not rerun the similarity jobs): arch_vs_arch compares a = the earlier architecture with b = the later one
ARCH_ORDER = ("Regular", "Deformable", "Dilated", "1dF", "1dT", "FeedForward")


def _row(dataset, comparison, task, a: dict, b: dict, measure, res) -> dict:
    ci = res["ci"] if measure == "cka" and res["ci"] is not None else (float("nan"), float("nan"))
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
    )


def _start(settings, mel, log):
    """(logger, engine settings, device, start time, training-row mask, clip ids) of a job on the clips of mel.h5."""
    log = log or logging.getLogger(__name__)
    cfg = canonical(settings["similarity"])
    device = pick_device(cfg["device"])
    return (log, cfg, device, time.perf_counter(), *train_mask(mel, minimum=4))


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


@job(
    reads={
        "similarity": ("measures", "svcca_variance", "max_features", "gram_max_clips", "bootstrap", "seed", "rank_rtol")
    },
    tunes={"similarity": ("device", "chunk_size", "memory_mb")},
)
def similarity_deep(*, deep, features, mel, table, settings, dataset, moments=None, log=None) -> pd.DataFrame:
    """Similarity table of one model (``deep/{task}/{arch}/seed{seed}.h5``) on the training clips of ``mel.h5``,
    written to ``table`` and returned.

    Rows: every layer (trained and untrained) vs every hand-crafted feature of ``features`` (``deep_vs_handcrafted``,
    z-scored features, incl. Random); trained vs untrained per layer (``trained_vs_untrained``, a = trained); every
    pair of layers of the same weights (``layer_vs_layer``, a = the earlier layer). ``moments``: the dataset's
    ``handcrafted_moments.h5`` (:func:`deepfeat.similarity.handcrafted_moments`); with it the hand-crafted self terms
    (z-scoring, spectra, Gram factors) are read instead of computed, and the job computes only its deep blocks' self
    terms and the cross terms (same values).
    """
    log, cfg, device, t0, train, clip_ids = _start(settings, mel, log)
    N = len(train)
    with open_h5(deep, DEEP_KIND) as fd, open_h5(features, "handcrafted") as fh:
        info = deep_info(fd, deep)
        check_clip_ids(fd, deep, clip_ids, mel)
        check_clip_ids(fh, features, clip_ids, mel)
        sources = [dataset_source(f"{s}/{a}", fd[s][a], N, f"{deep}:{s}/{a}") for s in STATES for a in info.layers]
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
            f"similarity of {info.arch} seed {info.seed} ({info.task}): {len(sources)} deep blocks "
            f"x {len(names)} hand-crafted features on {int(train.sum())} training clips, device {device}"
        )
        pairs, keys = _deep_pairs(info.layers, hc.segments, names)
        res = _Engine(sources + [hc], train, cfg, device, log, cache=cache).run(pairs)
    rows = []
    model = dict(arch=info.arch, seed=info.seed)
    for p in pairs:
        comp, a, b = keys[p]
        a = {**model, **a}
        if comp != "deep_vs_handcrafted":
            b = {**model, **b}
        rows += [_row(dataset, comp, info.task, a, b, m, res[p]) for m in cfg["measures"]]
    log.info(f"similarity_deep: {len(rows)} rows in {time.perf_counter() - t0:.1f} s")
    return _write(pd.DataFrame(rows, columns=SIMILARITY_COLUMNS), table, log)


def _arch_key(a):
    return (ARCH_ORDER.index(a) if a in ARCH_ORDER else len(ARCH_ORDER), a)


def _cross_pairs(infos: dict) -> tuple[list, dict, dict]:
    """(pairs, {pair: (comparison, key a, key b)}, {key: segment}) of the models ``infos`` ({(arch, seed): DeepInfo}),
    keys (arch, seed, state, layer): seed vs seed (same architecture and layer) and architecture vs architecture
    (same seed and layer), ordered so that the Gram-form cache reuses blocks: by layer, then seed/arch groups."""
    seg_of = {}
    for (arch, seed), info in infos.items():
        for s in STATES:
            for a in info.layers:
                seg_of[(arch, seed, s, a)] = f"{arch}|{seed}|{s}|{a}"
    archs = sorted({a for a, _ in infos}, key=_arch_key)
    seeds = sorted({s for _, s in infos})
    layers = list(dict.fromkeys(a for i in infos.values() for a in i.layers))
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


@job(
    reads={
        "similarity": ("measures", "svcca_variance", "max_features", "gram_max_clips", "bootstrap", "seed", "rank_rtol")
    },
    tunes={"similarity": ("device", "chunk_size", "memory_mb")},
)
def similarity_cross(*, deep, mel, table, settings, dataset, log=None) -> pd.DataFrame:
    """Seed vs seed (same architecture and layer) and architecture vs architecture (same seed and layer), trained
    and untrained, over the deep-feature files ``deep`` (a list of paths) of one training task, on the training
    clips of ``mel.h5``; written to ``table`` and returned."""
    log, cfg, device, t0, train, clip_ids = _start(settings, mel, log)
    N = len(train)
    files = [Path(p) for p in ([deep] if isinstance(deep, (str, Path)) else deep)]
    if len(files) < 2:
        log.info(f"similarity_cross: {len(files)} deep-feature file(s), nothing to compare")
        return _write(pd.DataFrame([], columns=SIMILARITY_COLUMNS), table, log)
    handles = []
    try:
        infos, handle = {}, {}
        for path in files:
            f = open_h5(path, DEEP_KIND)
            handles.append(f)
            info = deep_info(f, path)
            check_clip_ids(f, path, clip_ids, mel)
            key = (info.arch, info.seed)
            if key in infos:
                raise ValueError(f"{path}: {info.arch} seed {info.seed} also in {infos[key].path}")
            infos[key], handle[key] = info, f
        tasks = {i.task for i in infos.values()}
        if len(tasks) > 1:
            raise ValueError(f"similarity_cross: the deep-feature files mix training tasks {sorted(tasks)}")
        task = tasks.pop()
        pairs, keys, seg_of = _cross_pairs(infos)
        sources = [
            dataset_source(name, handle[k[:2]][k[2]][k[3]], N, f"{infos[k[:2]].path}:{k[2]}/{k[3]}")
            for k, name in seg_of.items()
        ]
        archs = sorted({a for a, _ in infos}, key=_arch_key)
        log.info(
            f"similarity_cross ({task}): {len(infos)} models ({', '.join(archs)}; seeds "
            f"{sorted({s for _, s in infos})}), {len(pairs)} block pairs on {int(train.sum())} training clips, "
            f"device {device}"
        )
        res = _Engine(sources, train, cfg, device, log).run(pairs) if pairs else {}
    finally:
        for f in handles:
            f.close()
    rows = []
    for p in pairs:
        comp, ka, kb = keys[p]
        a = dict(arch=ka[0], seed=ka[1], trained=ka[2], layer=ka[3])
        b = dict(arch=kb[0], seed=kb[1], trained=kb[2], layer=kb[3])
        rows += [_row(dataset, comp, task, a, b, m, res[p]) for m in cfg["measures"]]
    log.info(f"similarity_cross: {len(rows)} rows in {time.perf_counter() - t0:.1f} s")
    return _write(pd.DataFrame(rows, columns=SIMILARITY_COLUMNS), table, log)
