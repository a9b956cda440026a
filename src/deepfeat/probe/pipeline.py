"""The probe jobs: how well a feature (hand-crafted or a frozen CNN layer) decodes each task of a dataset.

* :func:`probe_handcrafted`: every hand-crafted feature x every task x the probe seeds (``probe.seeds``;
  regression is deterministic, so it has no probe seed).
* :func:`probe_deep`: every layer of one model file, trained and untrained, on every task with the probe seed
  equal to the model seed, plus the trained ``conv3`` concatenated with each ``probe.concat_features``
  hand-crafted feature on the main task (each block standardised separately, columns concatenated).

Features of equal width are probed as one batched model (:func:`deepfeat.probe.logistic.fit_logistic_many`);
the training Gram matrix of a feature is computed once when a dual form needs it and shared by its logistic
and regression probes (and, for conv3, by its concatenations: the Gram matrix of separately standardised
blocks is the sum of the blocks' ones). Tables follow docs/formats.md (:mod:`deepfeat.probe.tables`).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import h5py
import numpy as np
import torch

from deepfeat import config
from deepfeat.formats.cliptable import TEST, TRAIN, read_labels
from deepfeat.formats.deep import STATES, DeepInfo, deep_info
from deepfeat.formats.files import open_h5, write_csv
from deepfeat.formats.handcrafted import feature_index
from deepfeat.probe.linear import RIDGE_GRID, fit_linear
from deepfeat.probe.loading import SlabPool, groups, load_split
from deepfeat.probe.logistic import fit_logistic_many, logistic_costs
from deepfeat.probe.standardisation import GRAM_BYTES, gram_matrix
from deepfeat.probe.tables import ProbeTables
from deepfeat.runtime import pick_device

CONCAT_LAYER = "conv3"
FORM = "auto"  # logistic probes of the pipelines: auto (fewer estimated multiply-adds) | primal | dual


@dataclass
class _Context:
    """What every probe group of one job shares."""

    tables: ProbeTables
    split: np.ndarray  # (N,) TRAIN / TEST
    hp: dict  # the job's probe settings
    dev: torch.device
    log: logging.Logger
    pool: SlabPool = field(default_factory=SlabPool)


@dataclass
class _Concat:
    """The concatenation experiment of one deep file: trained conv3 + each hand-crafted feature, main task."""

    ctx: _Context
    hf: h5py.File  # the open handcrafted.h5
    index: dict  # its feature index (display name -> key, d)
    path: str  # its path (for messages)
    names: list[str]  # probe.concat_features
    task: list[dict]  # [the main task]
    info: DeepInfo  # the deep file


# ----------------------------------------------------------------------------------------------------------
# Probing a group of equal-width standardised features
# ----------------------------------------------------------------------------------------------------------
def _gram_plan(
    d: int, n_tr: int, n_te: int, tasks: list[dict], n_seeds: int, hp: dict, gram_columns: int | None = None
) -> torch.dtype | None:
    """The training Gram matrix a group of width ``d`` needs: float64 when a regression probe is a dual ridge
    (d + 1 >= n_train, float64 sums as in :func:`fit_linear`; the logistic probes then reuse it), float32 when
    only the logistic probes want it (dual form cheaper, :func:`logistic_costs`), None when neither does."""
    if any(t["type"] == "regression" for t in tasks) and d + 1 >= n_tr:
        return torch.float64
    cls = [len(t["classes"]) for t in tasks if t["type"] == "classification"]
    if cls and FORM != "primal":
        if FORM == "dual" or logistic_costs(n_tr, n_te, d, cls, n_seeds, hp, gram_columns)["form"] == "dual":
            return torch.float32
    return None


def _run_group(
    ctx: _Context,
    feats: list[dict],
    Ztr: list[np.ndarray],
    Zte: list[np.ndarray],
    tasks: list[dict],
    seeds: list[int],
    grams: list[torch.Tensor] | None = None,
) -> list[torch.Tensor] | None:
    """Probe F equal-width standardised features (``feats[i]['keys']`` -> table keys) on the given tasks.

    ``grams``: the features' training Gram matrices when already known; otherwise they are computed here when
    :func:`_gram_plan` asks for them. Returns the Gram matrices used (None if none).
    """
    tr, te = ctx.split == TRAIN, ctx.split == TEST
    F, d = len(feats), Ztr[0].shape[1]
    if grams is None:
        dtype = _gram_plan(d, int(tr.sum()), int(te.sum()), tasks, len(seeds), ctx.hp)
        if dtype is not None:
            t0 = time.perf_counter()
            grams = [gram_matrix(z, dtype, ctx.dev) for z in Ztr]
            ctx.log.info(
                f"training Gram matrices ({str(dtype)[6:]}) of {F} feature(s) of width {d} in "
                f"{time.perf_counter() - t0:.1f} s"
            )
    cls = [t for t in tasks if t["type"] == "classification"]
    if cls:
        _logistic_probes(ctx, feats, Ztr, Zte, cls, seeds, grams)
    reg = [t for t in tasks if t["type"] == "regression"]
    if reg:
        _linear_probes(ctx, feats, Ztr, Zte, reg, grams)
    return grams


def _logistic_probes(ctx: _Context, feats: list[dict], Ztr, Zte, cls: list[dict], seeds: list[int], grams) -> None:
    """The classification tasks of :func:`_run_group`: one batched model, scores, confusions, a log line each."""
    tr, te = ctx.split == TRAIN, ctx.split == TEST
    F, d = len(feats), Ztr[0].shape[1]
    n_classes = [len(t["classes"]) for t in cls]
    label = f"{F} feature(s) of width {d} x {len(cls)} task(s) x {len(seeds)} seed(s)"
    r = fit_logistic_many(
        Ztr,
        np.stack([t["y"][tr] for t in cls]),
        Zte,
        np.stack([t["y"][te] for t in cls]),
        n_classes,
        seeds,
        ctx.hp,
        device=ctx.dev,
        log=ctx.log,
        label=label,
        form=FORM,
        gram=grams,
    )
    per = r["seconds"] / (F * len(cls) * len(seeds))
    c = r["costs"]
    ctx.log.info(
        f"trained {label} = {F * len(cls) * len(seeds)} logistic probes in {r['seconds']:.1f} s, "
        f"{r['form']} form (estimated multiply-adds per feature: primal {c['primal'] / 1e9:.2f} G, "
        f"dual {c['dual'] / 1e9:.2f} G{' with the Gram matrix given' if grams is not None else ''})"
    )
    for fi, ft in enumerate(feats):
        for k, t in enumerate(cls):
            for si, s in enumerate(seeds):
                keys = ft["keys"](t["name"], s)
                a_tr, a_te = r["train_acc"][si, fi, k], r["test_acc"][si, fi, k]
                ctx.tables.add_scores(keys, "accuracy", a_tr, a_te)
                ctx.tables.add_confusion(keys, t["classes"], r["confusion"][si][fi][k])
                ctx.log.info(
                    f"probe {ft['label']} | task {t['name']} | seed {s} | {per:.2f} s (batched) | "
                    f"accuracy train {a_tr:.4f} test {a_te:.4f} (majority {t['chance']:.4f})"
                )


def _linear_probes(ctx: _Context, feats: list[dict], Ztr, Zte, reg: list[dict], grams) -> None:
    """The regression tasks of :func:`_run_group`: all tasks of a feature in one fit (the float64 Gram matrix
    reused when there is one), scores and a log line each."""
    tr, te = ctx.split == TRAIN, ctx.split == TEST
    d, n_tr = Ztr[0].shape[1], int(tr.sum())
    Ytr = np.stack([t["y"][tr] for t in reg], 1)
    Yte = np.stack([t["y"][te] for t in reg], 1)
    for fi, ft in enumerate(feats):
        t0 = time.perf_counter()
        g = grams[fi] if grams is not None and grams[fi].dtype == torch.float64 else None
        r = fit_linear(Ztr[fi], Ytr, Zte[fi], Yte, ctx.hp["ridge"], device=ctx.dev, gram=g)  # all tasks at once
        sec = (time.perf_counter() - t0) / len(reg)
        for k, t in enumerate(reg):
            ctx.tables.add_scores(ft["keys"](t["name"], ""), "rmse", r["train_rmse"][k], r["test_rmse"][k])
            ctx.log.info(
                f"probe {ft['label']} | task {t['name']} | {sec:.2f} s | {_how(r, k, d, n_tr)} | "
                f"rmse train {r['train_rmse'][k]:.4f} test {r['test_rmse'][k]:.4f}"
            )


def _how(r: dict, k: int, d: int, n_tr: int) -> str:
    """How regression target ``k`` of the :func:`fit_linear` result ``r`` was fitted (for its log line)."""
    if r["method"] == "ols":
        return "OLS"
    if r["method"] != "ridge_loo":
        return f"{d} features >= {n_tr} - 1 training clips: dual ridge, penalty {r['ridge_used']:.4g}"
    rel = r["ridge_rel"][k]
    edge = " (grid edge)" if rel in (RIDGE_GRID[0], RIDGE_GRID[-1]) else ""
    return (
        f"{d} features, {n_tr} training clips: {r['form']} ridge, penalty {r['ridge_used'][k]:.4g} = "
        f"{rel:.3g}{edge} x trace(K)/n by leave-one-out (LOO rmse {math.sqrt(r['loo_mse'][:, k].min()):.4f})"
    )


def _load_group(ctx: _Context, sources: list[tuple[h5py.Dataset, str]]) -> tuple[list, list]:
    """Read and standardise the (N x d) datasets of one group into the pool's slabs: (Ztr, Zte) lists.
    ``sources``: (dataset, name for messages) per feature."""
    n, n_tr = len(ctx.split), int((ctx.split == TRAIN).sum())
    Ztr, Zte = [], []
    for i, (ds, what) in enumerate(sources):
        a, b = load_split(ds, ctx.split, what, ctx.pool.pair(i, n_tr, n - n_tr, int(ds.shape[1])))
        Ztr.append(a)
        Zte.append(b)
    return Ztr, Zte


# ----------------------------------------------------------------------------------------------------------
# Shared by both jobs
# ----------------------------------------------------------------------------------------------------------
def _labels(mel) -> tuple[np.ndarray, list[dict], str]:
    """(split, tasks with ``y`` and, for classification, ``chance`` (the test split's majority fraction),
    main task) of mel.h5."""
    split, tasks, main = read_labels(mel)
    te = split == TEST
    for t in tasks:
        if t["type"] == "classification":
            counts = np.bincount(t["y"][te], minlength=len(t["classes"]))
            t["chance"] = counts.max() / max(1, counts.sum())
    return split, tasks, main


def _ridge_note(hp: dict) -> str:
    """How the regression probes set their penalty (one log line per run)."""
    if hp["ridge"] != "auto":
        return (
            f"regression probes: OLS when features + 1 < training clips, else dual ridge with penalty "
            f"{hp['ridge']:g} x trace(K)/n"
        )
    return (
        f"regression probes: ridge for every width, penalty per task by exact leave-one-out on the training "
        f"split over lam / (trace(K)/n) in {np.array2string(RIDGE_GRID, precision=3, max_line_width=10**4)} "
        f"({len(RIDGE_GRID)} values, one eigendecomposition of the n_train x n_train Gram matrix K; the p x p "
        f"covariance instead when n_train x n_train float64 exceeds {GRAM_BYTES / 2**30:g} GiB and p < n_train)"
    )


def _write(frames, scores, confusion, log: logging.Logger):
    """Write the (scores, confusion) frames to their CSVs (atomically); returns the frames."""
    write_csv(frames[0], scores)
    write_csv(frames[1], confusion)
    log.info(f"wrote {scores} ({len(frames[0])} rows) and {confusion} ({len(frames[1])} rows)")
    return frames


# ----------------------------------------------------------------------------------------------------------
# The jobs
# ----------------------------------------------------------------------------------------------------------
@config.job(reads={"probe": ("epochs", "lr", "momentum", "batch_size", "seeds", "ridge")}, tunes={"probe": ("device",)})
def probe_handcrafted(*, features, mel, scores, confusion, settings, dataset: str, log: logging.Logger | None = None):
    """Every hand-crafted feature of ``features`` (handcrafted.h5) x every task of ``mel`` (mel.h5) x the probe
    seeds (classification; regression is deterministic). Writes the tidy ``scores`` and ``confusion`` CSVs
    (docs/formats.md) and returns them as (scores, confusion) DataFrames."""
    log = log or logging.getLogger(__name__)
    hp = settings["probe"]
    seeds = [int(s) for s in hp["seeds"]]  # distinct: the schema's uniqueItems
    split, tasks, _ = _labels(mel)
    ctx = _Context(ProbeTables(dataset), split, hp, pick_device(hp["device"]), log)
    n, n_tr = len(split), int((split == TRAIN).sum())
    t0 = time.perf_counter()
    with open_h5(features, "handcrafted") as f:
        index = feature_index(f, features, n)
        log.info(
            f"{dataset}: {len(index)} hand-crafted features, {n} clips ({n_tr} train, {n - n_tr} test), "
            f"tasks {[t['name'] for t in tasks]}, seeds {seeds}, {hp['epochs']} epochs, device {ctx.dev}"
        )
        if any(t["type"] == "regression" for t in tasks):
            log.info(_ridge_note(hp))
        items = [{"name": name, **v} for name, v in index.items()]
        for group in groups(items, n):
            Ztr, Zte = _load_group(
                ctx, [(f["features"][it["key"]], f"{features}: features/{it['key']}") for it in group]
            )
            feats = [
                {"label": it["name"], "keys": lambda task, s, name=it["name"]: ctx.tables.keys(name, task, s)}
                for it in group
            ]
            _run_group(ctx, feats, Ztr, Zte, tasks, seeds)
    log.info(f"{dataset}: hand-crafted probes done in {time.perf_counter() - t0:.1f} s")
    return _write(ctx.tables.frames(list(index), [t["name"] for t in tasks]), scores, confusion, log)


@config.job(
    reads={"probe": ("epochs", "lr", "momentum", "batch_size", "ridge", "concat_features")},
    tunes={"probe": ("device",)},
)
def probe_deep(*, deep, features, mel, scores, confusion, settings, dataset: str, log: logging.Logger | None = None):
    """Probe one model file ``deep``: every layer, trained and untrained, on EVERY task (probe seed = model seed),
    plus trained ``conv3`` concatenated with each ``probe.concat_features`` hand-crafted feature of ``features``
    on the main task. Writes the tidy ``scores`` and ``confusion`` CSVs (docs/formats.md) and returns them as
    (scores, confusion) DataFrames."""
    log = log or logging.getLogger(__name__)
    hp = settings["probe"]
    split, tasks, main = _labels(mel)
    ctx = _Context(ProbeTables(dataset), split, hp, pick_device(hp["device"]), log)
    n, n_tr = len(split), int((split == TRAIN).sum())
    main_task = [t for t in tasks if t["name"] == main]
    if not main_task or main_task[0]["type"] != "classification":
        raise ValueError(f"{mel}: main task {main!r} is not a classification task of the clip table")
    t0 = time.perf_counter()
    with open_h5(deep, "deep") as f, open_h5(features, "handcrafted") as hf:
        info = deep_info(f, deep, n)
        cc = _Concat(
            ctx, hf, feature_index(hf, features, n), str(features), list(hp["concat_features"]), main_task, info
        )
        _check_concat(cc)
        log.info(
            f"{dataset}: {info.arch} seed {info.seed} trained on {info.task}: layers {list(info.layers)}, "
            f"{n} clips ({n_tr} train), probe tasks {[t['name'] for t in tasks]}, {hp['epochs']} epochs, "
            f"device {ctx.dev}"
        )
        if any(t["type"] == "regression" for t in tasks):
            log.info(_ridge_note(hp))
        for layer in info.layers:
            conv3 = _probe_layer(ctx, f, info, layer, tasks)
            if conv3 is not None and cc.names:
                _run_concat(cc, conv3)
            del conv3
    log.info(f"{dataset}: deep probes of {info.arch} seed {info.seed} done in {time.perf_counter() - t0:.1f} s")
    order = [f"{info.arch} {layer}" for layer in info.layers] + [f"{info.arch} {CONCAT_LAYER} + {c}" for c in cc.names]
    return _write(ctx.tables.frames(order, [t["name"] for t in tasks]), scores, confusion, log)


def _check_concat(cc: _Concat) -> None:
    """The concatenation features exist in handcrafted.h5, and the deep file has the concatenation layer."""
    missing = [c for c in cc.names if c not in cc.index]
    if missing:
        raise ValueError(
            f"probe.concat_features: {missing} not found in {cc.path}; available display names: {sorted(cc.index)}"
        )
    if cc.names and CONCAT_LAYER not in cc.info.layers:
        raise ValueError(
            f"{cc.info.path}: the concatenation experiment needs layer {CONCAT_LAYER!r}, the file has "
            f"{list(cc.info.layers)}; add it to deep.layers or set probe.concat_features: []"
        )


def _probe_layer(ctx: _Context, f: h5py.File, info: DeepInfo, layer: str, tasks: list[dict]):
    """Probe one layer of the open deep file ``f``, trained and untrained, on every task (probe seed = model
    seed). Returns (Ztr, Zte, Gram matrix or None) of the trained layer when it is the concatenation layer
    (its slabs leave the pool), else None."""
    items = [{"which": which, "d": info.widths[layer]} for which in STATES]
    keep = None
    for group in groups(items, len(ctx.split)):
        Ztr, Zte = _load_group(ctx, [(f[it["which"]][layer], f"{info.path}: {it['which']}/{layer}") for it in group])
        feats = [
            {
                "label": f"{info.arch} {layer} ({it['which']})",
                "keys": lambda task, s, w=it["which"]: ctx.tables.keys(
                    f"{info.arch} {layer}", task, s, info.arch, info.seed, layer, w, info.task
                ),
            }
            for it in group
        ]
        grams = _run_group(ctx, feats, Ztr, Zte, tasks, [info.seed])
        for i, it in enumerate(group):
            if layer == CONCAT_LAYER and it["which"] == "trained":
                keep = (Ztr[i], Zte[i], None if grams is None else grams[i])
                ctx.pool.release((i, TRAIN))
                ctx.pool.release((i, TEST))
        del Ztr, Zte, grams
    return keep


def _run_concat(cc: _Concat, conv3) -> None:
    """Trained conv3 + each hand-crafted feature (each standardised separately, columns concatenated).

    Blocks standardised separately make the concatenation's Gram matrix the sum of the blocks' ones, so
    conv3's (computed once, or kept from its own probes) is reused and only the hand-crafted block's is new.
    """
    ctx, info = cc.ctx, cc.info
    c_tr, c_te, K3 = conv3
    n_tr, n_te, d3 = len(c_tr), len(c_te), c_tr.shape[1]
    items = [{"name": name, "d": d3 + cc.index[name]["d"]} for name in cc.names]
    for group in groups(items, len(ctx.split)):
        d = group[0]["d"]
        dtype = _gram_plan(d, n_tr, n_te, cc.task, 1, ctx.hp, gram_columns=d - d3 + (d3 if K3 is None else 0))
        if dtype is not None and K3 is None:
            K3 = gram_matrix(c_tr, dtype, ctx.dev)
        Ztr, Zte, feats, grams = [], [], [], []
        for i, it in enumerate(group):
            key = cc.index[it["name"]]["key"]
            ztr, zte = ctx.pool.pair(i, n_tr, n_te, d)
            ztr[:, :d3], zte[:, :d3] = c_tr, c_te
            a, _ = load_split(
                cc.hf["features"][key], ctx.split, f"{cc.path}: features/{key}", (ztr[:, d3:], zte[:, d3:])
            )
            Ztr.append(ztr)
            Zte.append(zte)
            if dtype is not None:
                grams.append(K3 + gram_matrix(a, K3.dtype, ctx.dev))
            label = f"{info.arch} {CONCAT_LAYER} + {it['name']}"
            feats.append(
                {
                    "label": label,
                    "keys": lambda task, s, lab=label: ctx.tables.keys(
                        lab, task, s, info.arch, info.seed, CONCAT_LAYER, "trained", info.task
                    ),
                }
            )
        _run_group(ctx, feats, Ztr, Zte, cc.task, [info.seed], grams if dtype else None)
