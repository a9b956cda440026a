"""The probe jobs: how well a feature (hand-crafted or a CNN layer) decodes each task of a dataset.

* :func:`probe_handcrafted`: every hand-crafted feature x every task x the probe seeds (``probe.seeds``;
  regression is deterministic, so it has no probe seed).
* :func:`probe_deep`: every layer of one model, trained and untrained, computed batch by batch from the model
  file and mel.h5 (:class:`deepfeat.nets.features.ModelFeatures`; or read from an exported deep-feature file),
  on every task with ONE probe seed for every model seed (the first of ``probe.seeds``: the same initial weights
  and batch order for the five network seeds of an architecture, as the method does, so the spread over
  network seeds holds no probe-initialisation variance), plus the trained ``conv3`` concatenated with each
  ``probe.concat_features`` hand-crafted feature on the main task (each block standardised separately, columns
  concatenated).

Every feature is probed by its plan (:mod:`deepfeat.probe.plan`, logged): held in memory when it fits
``probe.memory_mb`` (features of equal width batched as one model, :func:`deepfeat.probe.logistic
.fit_logistic_many`; the layers held together computed in one forward pass per weight state), else computed on
demand. The training Gram matrix of a held feature is computed once when a dual form needs it and shared by its
logistic and regression probes (and, for conv3, by its concatenations: the Gram matrix of separately
standardised blocks is the sum of the blocks' ones). Tables follow docs/formats.md
(:mod:`deepfeat.probe.tables`).

Every probe is also fitted and evaluated on its task's control labels (:mod:`deepfeat.probe.control`: the labels
permuted by recording with ``stats.seed``), in the batch of its task probe; the ``labels`` column tells the rows
apart. Each job also writes the bootstrap replicates of every test score (``boot``, ``*.boot.h5``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import h5py
import numpy as np
import torch

from deepfeat import config
from deepfeat.formats.cliptable import TEST, TRAIN, read_labels
from deepfeat.formats.deep import STATES, StoredFeatures
from deepfeat.formats.files import open_h5, write_csv
from deepfeat.formats.handcrafted import feature_index
from deepfeat.probe.control import clip_meta, control_tasks, write_probe_replicates
from deepfeat.probe.linear import RIDGE_GRID
from deepfeat.probe.loading import SlabPool, fill_layers, groups, load_split
from deepfeat.probe.plan import Plan, logistic_costs, plan, plan_streamed
from deepfeat.probe.rows import FLOAT_COST, ConcatSource, DatasetSource, LayerSource, forward_cost
from deepfeat.probe.runner import Context, control_note, run_resident, run_streamed
from deepfeat.probe.standardisation import gram_matrix
from deepfeat.probe.tables import ProbeTables
from deepfeat.runtime import pick_device

CONCAT_LAYER = "conv3"
FORM = "auto"  # logistic probes of the jobs: auto (the plan's form, fewer estimated multiply-adds) | primal | dual


@dataclass
class _Unit:
    """One layer of the model, the weight states probed together, and their plan."""

    layer: str
    states: tuple[str, ...]
    plan: Plan
    cost: float  # multiply-adds of one clip's row


# ----------------------------------------------------------------------------------------------------------
# Shared by both jobs
# ----------------------------------------------------------------------------------------------------------
def _labels(mel, seed: int) -> tuple[np.ndarray, list[dict], str, np.ndarray, np.ndarray]:
    """(split, tasks with ``y``, ``control`` (the control labels, stats seed ``seed``) and, for
    classification, ``chance`` / ``control_chance`` (the test split's majority fractions), main task, clip ids,
    recording ids) of mel.h5."""
    split, tasks, main = read_labels(mel)
    clip_ids, recordings = clip_meta(mel)
    te = split == TEST
    for t in tasks:
        if t["type"] == "classification":
            counts = np.bincount(t["y"][te], minlength=len(t["classes"]))
            t["chance"] = counts.max() / max(1, counts.sum())
    control_tasks(tasks, recordings, split, seed)
    return split, tasks, main, clip_ids, recordings


def _finish(ctx: Context, frames, features, tasks, meta, st: dict, paths: dict, log) -> tuple:
    """Log the controls' cost, write the replicates file and the tables; returns the frames."""
    log.info(control_note(ctx))
    t0 = time.perf_counter()
    write_probe_replicates(paths["boot"], ctx.tables, features, tasks, *meta, ctx.split, st, log)
    log.info(f"replicates in {time.perf_counter() - t0:.2f} s")
    return _write(frames, paths["scores"], paths["confusion"], log)


def _ridge_note(hp: dict) -> str:
    """How the regression probes set their penalty (one log line per run)."""
    cap = (
        f"the Gram form beyond probe.dual_max_clips = {hp['dual_max_clips']} training clips, or the covariance form "
        f"of a feature wider than probe.covariance_max_width = {hp['covariance_max_width']}: fitted on a seeded "
        f"subset of {hp['dual_max_clips']} training clips"
    )
    if hp["ridge"] != "auto":
        return (
            f"regression probes: OLS when features + 1 < training clips, else dual ridge with penalty "
            f"{hp['ridge']:g} x trace(K)/n; {cap}"
        )
    return (
        f"regression probes: ridge for every width, penalty per task by exact leave-one-out on the training "
        f"split over lam / (trace(K)/n) in {np.array2string(RIDGE_GRID, precision=3, max_line_width=10**4)} "
        f"({len(RIDGE_GRID)} values, one eigendecomposition: of the width x width covariance when the feature is "
        f"narrower than the training split, else of the n_train x n_train Gram matrix K); {cap}"
    )


def _write(frames, scores, confusion, log: logging.Logger):
    """Write the (scores, confusion) frames to their CSVs (atomically); returns the frames."""
    write_csv(frames[0], scores)
    write_csv(frames[1], confusion)
    log.info(f"wrote {scores} ({len(frames[0])} rows) and {confusion} ({len(frames[1])} rows)")
    return frames


def _load_group(ctx: Context, sources: list[tuple[h5py.Dataset, str]]) -> tuple[list, list]:
    """Read and standardise the (N x d) datasets of one group into the pool's slabs: (Ztr, Zte) lists.
    ``sources``: (dataset, name for messages) per feature."""
    n, n_tr = len(ctx.split), len(ctx.tr)
    Ztr, Zte = [], []
    for i, (ds, what) in enumerate(sources):
        a, b = load_split(ds, ctx.split, what, ctx.pool.pair(i, n_tr, n - n_tr, int(ds.shape[1])))
        Ztr.append(a)
        Zte.append(b)
    return Ztr, Zte


def _batches(ctx: Context, items: list, w):
    """(items, plan) batches of equal-width items: all of them held together when they fit, else one by one."""
    whole = plan(w, ctx.hp, F=len(items)) if len(items) > 1 else None
    if whole is not None:
        return [(items, whole)]
    single = plan(w, ctx.hp)
    return [([it], single) for it in items]


# ----------------------------------------------------------------------------------------------------------
# Hand-crafted features
# ----------------------------------------------------------------------------------------------------------
@config.job(
    reads={
        "probe": ("epochs", "lr", "momentum", "batch_size", "seeds", "ridge", "dual_max_clips", "covariance_max_width"),
        "stats": ("seed", "resamples"),
    },
    tunes={"probe": ("device", "memory_mb")},
)
def probe_handcrafted(
    *, features, mel, scores, confusion, boot, settings, dataset: str, log: logging.Logger | None = None
):
    """Every hand-crafted feature of ``features`` (handcrafted.h5) x every task of ``mel`` (mel.h5) and its
    control x the probe seeds (classification; regression is deterministic). Writes the tidy ``scores`` and
    ``confusion`` CSVs and the replicates ``boot`` (docs/formats.md) and returns (scores, confusion)."""
    log = log or logging.getLogger(__name__)
    hp = settings["probe"]
    seeds = [int(s) for s in hp["seeds"]]  # distinct: the schema's uniqueItems
    split, tasks, _, *meta = _labels(mel, int(settings["stats"]["seed"]))
    ctx = Context(ProbeTables(dataset), split, hp, pick_device(hp["device"]), log, FORM)
    n, n_tr = len(split), len(ctx.tr)
    t0 = time.perf_counter()
    with open_h5(features, "handcrafted") as f:
        index = feature_index(f, features, n)
        log.info(
            f"{dataset}: {len(index)} hand-crafted features, {n} clips ({n_tr} train, {n - n_tr} test), "
            f"tasks {[t['name'] for t in tasks]}, seeds {seeds}, {hp['epochs']} epochs, device {ctx.dev}, "
            f"memory budget {hp['memory_mb']:g} MB"
        )
        if any(t["type"] == "regression" for t in tasks):
            log.info(_ridge_note(hp))
        items = [{"name": name, **v} for name, v in index.items()]
        for group in groups(items, n):
            d = group[0]["d"]
            w = ctx.work(d, tasks, seeds, FLOAT_COST * d)
            for batch, p in _batches(ctx, group, w):
                _handcrafted_batch(ctx, f, str(features), batch, p, tasks, seeds)
    log.info(f"{dataset}: hand-crafted probes done in {time.perf_counter() - t0:.1f} s")
    names = [t["name"] for t in tasks]
    frames = ctx.tables.frames(list(index), names)
    paths = {"scores": scores, "confusion": confusion, "boot": boot}
    return _finish(ctx, frames, list(index), names, meta, settings["stats"], paths, log)


def _handcrafted_batch(ctx: Context, f, path: str, batch: list[dict], p: Plan, tasks, seeds) -> None:
    """Probe a batch of equal-width hand-crafted features by its plan."""
    feats = [
        {"label": it["name"], "keys": lambda task, s, name=it["name"]: ctx.tables.keys(name, task, s)} for it in batch
    ]
    what = [f"{path}: features/{it['key']}" for it in batch]
    ctx.log.info(f"{len(batch)} feature(s) of width {batch[0]['d']} ({batch[0]['name']}, ...): {p.describe()}")
    if p.mode == "resident":
        Ztr, Zte = _load_group(ctx, [(f["features"][it["key"]], w) for it, w in zip(batch, what)])
        run_resident(ctx, feats, Ztr, Zte, tasks, seeds, p)
    else:
        run_streamed(ctx, feats[0], DatasetSource(f["features"][batch[0]["key"]], what[0], ctx.dev), tasks, seeds, p)


# ----------------------------------------------------------------------------------------------------------
# Deep features
# ----------------------------------------------------------------------------------------------------------
@config.job(
    reads={
        "probe": (
            "epochs",
            "lr",
            "momentum",
            "batch_size",
            "seeds",
            "ridge",
            "dual_max_clips",
            "covariance_max_width",
            "concat_features",
        ),
        "deep": ("layers", "point", "average_channels"),
        "stats": ("seed", "resamples"),
    },
    tunes={"probe": ("device", "memory_mb"), "deep": ("batch_size",)},
)
def probe_deep(
    *,
    model,
    features,
    mel,
    scores,
    confusion,
    boot,
    settings,
    dataset: str,
    deep=None,
    log: logging.Logger | None = None,
):
    """Probe one model: every layer of ``deep.layers``, trained and untrained, on EVERY task (probe seed: the
    first of ``probe.seeds``, whatever the model seed), plus trained ``conv3`` concatenated with each
    ``probe.concat_features`` hand-crafted feature of ``features`` on the main task. The layers are computed from
    ``model`` and ``mel`` (mel.h5) batch by batch on ``probe.device``, or read from the exported deep-feature file
    ``deep`` when given. Every probe is also fitted on its task's control. Writes the tidy ``scores`` and
    ``confusion`` CSVs and the replicates ``boot`` (docs/formats.md) and returns (scores, confusion)."""
    log = log or logging.getLogger(__name__)
    hp, dp = settings["probe"], settings["deep"]
    split, tasks, main, *meta = _labels(mel, int(settings["stats"]["seed"]))
    n, dev = len(split), pick_device(hp["device"])
    main_task = [t for t in tasks if t["name"] == main]
    if not main_task or main_task[0]["type"] != "classification":
        raise ValueError(f"{mel}: main task {main!r} is not a classification task of the clip table")
    t0 = time.perf_counter()
    with _open_layers(model, mel, deep, dp, dev, n) as feats, open_h5(features, "handcrafted") as hf:
        seeds = [int(hp["seeds"][0])]  # one probe seed for every model seed (and the regression subsets' seed)
        ctx = Context(ProbeTables(dataset), split, {**hp, "seeds": seeds}, dev, log, FORM)
        n_tr = len(ctx.tr)
        names = list(hp["concat_features"])
        index = feature_index(hf, features, n)
        _check_concat(names, index, str(features), feats)
        log.info(
            f"{dataset}: {feats.arch} seed {feats.seed} trained on {feats.task}: layers {list(feats.layers)} "
            f"{'read from ' + str(deep) if deep else 'computed from ' + str(model)}, {n} clips ({n_tr} train), "
            f"probe tasks {[t['name'] for t in tasks]}, {hp['epochs']} epochs, device {ctx.dev}, memory budget "
            f"{hp['memory_mb']:g} MB"
        )
        if any(t["type"] == "regression" for t in tasks):
            log.info(_ridge_note(hp))
        units = _units(ctx, feats, tasks, seeds)
        conv3 = _probe_units(ctx, feats, units, tasks, seeds, keep=bool(names))
        if names:
            _run_concat(ctx, feats, hf, index, str(features), names, main_task, conv3)
    log.info(f"{dataset}: deep probes of {feats.arch} seed {feats.seed} done in {time.perf_counter() - t0:.1f} s")
    order = [f"{feats.arch} {layer}" for layer in feats.layers] + [f"{feats.arch} {CONCAT_LAYER} + {c}" for c in names]
    task_names = [t["name"] for t in tasks]
    paths = {"scores": scores, "confusion": confusion, "boot": boot}
    return _finish(ctx, ctx.tables.frames(order, task_names), order, task_names, meta, settings["stats"], paths, log)


def _open_layers(model, mel, deep, dp: dict, device, n: int):
    """The deep features of the job: computed from the model (ModelFeatures) or read from ``deep``, with the
    ``deep`` settings' layers (and point) checked against an exported file."""
    if deep is None:
        from deepfeat.nets.features import ModelFeatures

        if model is None:
            raise ValueError("probe_deep: give the model file (model) or an exported deep-feature file (deep)")

        return ModelFeatures(
            model, mel, dp["layers"], dp["point"], dp["average_channels"], device=device, batch_size=dp["batch_size"]
        )
    feats = StoredFeatures(deep, n, batch_size=dp["batch_size"])
    missing = [a for a in dp["layers"] if a not in feats.layers]
    if missing or feats.point != dp["point"]:
        feats.close()
        raise ValueError(
            f"{deep}: holds layers {list(feats.layers)} at the {feats.point!r} point; deep.layers asks for "
            f"{list(dp['layers'])} at {dp['point']!r}"
        )
    feats.layers = tuple(dp["layers"])
    return feats


def _check_concat(names: list[str], index: dict, path: str, feats) -> None:
    """The concatenation features exist in handcrafted.h5, and the model has the concatenation layer."""
    missing = [c for c in names if c not in index]
    if missing:
        raise ValueError(
            f"probe.concat_features: {missing} not found in {path}; available display names: {sorted(index)}"
        )
    if names and CONCAT_LAYER not in feats.layers:
        raise ValueError(
            f"{feats.label}: the concatenation experiment needs layer {CONCAT_LAYER!r}, the layers are "
            f"{list(feats.layers)}; add it to deep.layers or set probe.concat_features: []"
        )


def _keys(ctx: Context, feats, layer: str, state: str) -> dict:
    return {
        "label": f"{feats.arch} {layer} ({state})",
        "keys": lambda task, s: ctx.tables.keys(
            f"{feats.arch} {layer}", task, s, feats.arch, feats.seed, layer, state, feats.task
        ),
    }


def _units(ctx: Context, feats, tasks, seeds) -> list[_Unit]:
    """The plan of every layer: both weight states held together when they fit, else state by state."""
    units = []
    for layer in feats.layers:
        cost = forward_cost(feats, STATES[0], layer)
        w = ctx.work(feats.widths[layer], tasks, seeds, cost)
        for states, p in _batches(ctx, list(STATES), w):
            units.append(_Unit(layer, tuple(states), p, cost))
            ctx.log.info(f"{feats.arch} {layer} ({' + '.join(states)}), width {w.d}: {p.describe()}")
    return units


def _passes(ctx: Context, units: list[_Unit], reserve: float) -> list[list[_Unit]]:
    """The held units packed, in order, into forward passes whose rows and largest working set fit the budget
    (``reserve``: bytes kept aside, e.g. conv3 kept for the concatenations)."""
    budget = float(ctx.hp["memory_mb"]) * 2**20 - reserve
    out, cur, rows, work = [], [], 0.0, 0.0
    for u in units:
        if u.plan.mode != "resident":
            continue
        r = u.plan.rows
        wk = max(0.0, u.plan.memory - r)
        if cur and rows + r + max(work, wk) > budget:
            out.append(cur)
            cur, rows, work = [], 0.0, 0.0
        cur.append(u)
        rows, work = rows + r, max(work, wk)
    return out + ([cur] if cur else [])


def _probe_units(ctx: Context, feats, units: list[_Unit], tasks, seeds, keep: bool):
    """Probe every unit: the held ones pass by pass (one forward pass per weight state computing all the
    pass's layers), the others on demand. Returns (Ztr, Zte, Gram or None) of trained conv3 when it was held
    and ``keep`` (the concatenations reuse it), else None."""
    conv3_held = any(u.layer == CONCAT_LAYER and "trained" in u.states and u.plan.mode == "resident" for u in units)
    reserve = 4.0 * len(ctx.split) * feats.widths[CONCAT_LAYER] if keep and conv3_held else 0.0
    passes = _passes(ctx, units, reserve)
    kept = None
    for pi, group in enumerate(passes):
        if len(passes) > 1:
            ctx.pool = SlabPool()  # slabs sized for another pass could exceed this one's budget
        kept = _run_pass(ctx, feats, group, tasks, seeds, keep, pi, len(passes)) or kept
    for u in units:
        if u.plan.mode != "resident":
            src = LayerSource(feats, u.states[0], u.layer, ctx.dev, cost=u.cost)
            run_streamed(ctx, _keys(ctx, feats, u.layer, u.states[0]), src, tasks, seeds, u.plan)
    return kept


def _run_pass(ctx: Context, feats, group: list[_Unit], tasks, seeds, keep: bool, pi: int, n_passes: int):
    """One forward pass per weight state filling the pass's layers, then their probes."""
    n_tr, n_te = len(ctx.tr), len(ctx.te)
    outs, slots = {}, {}
    t0 = time.perf_counter()
    for state in STATES:
        layers = [u.layer for u in group if state in u.states]
        if not layers:
            continue
        dest = {}
        for a in layers:
            slots[state, a] = len(slots)
            dest[a] = outs[state, a] = ctx.pool.pair(slots[state, a], n_tr, n_te, feats.widths[a])
        fill_layers(feats, state, layers, ctx.split, dest)
    mb = sum(x.nbytes + y.nbytes for x, y in outs.values()) / 2**20
    ctx.log.info(
        f"pass {pi + 1}/{n_passes}: layers {[u.layer for u in group]} of {len(outs)} (state, layer) pair(s) computed "
        f"and standardised in {time.perf_counter() - t0:.1f} s, {mb:.0f} MB held"
    )
    kept = None
    for u in group:
        Ztr = [outs[s, u.layer][0] for s in u.states]
        Zte = [outs[s, u.layer][1] for s in u.states]
        concat = keep and u.layer == CONCAT_LAYER and "trained" in u.states
        fts = [_keys(ctx, feats, u.layer, s) for s in u.states]
        grams = run_resident(ctx, fts, Ztr, Zte, tasks, seeds, u.plan, consume=not concat)
        if concat:
            i = u.states.index("trained")
            kept = (Ztr[i], Zte[i], None if grams is None else grams[i])
            ctx.pool.release((slots["trained", u.layer], TRAIN))  # the slabs leave the pool: kept
            ctx.pool.release((slots["trained", u.layer], TEST))
        del Ztr, Zte, grams
    return kept


# ----------------------------------------------------------------------------------------------------------
# conv3 + hand-crafted concatenations
# ----------------------------------------------------------------------------------------------------------
def _concat_keys(ctx: Context, feats, name: str) -> dict:
    label = f"{feats.arch} {CONCAT_LAYER} + {name}"
    return {
        "label": label,
        "keys": lambda task, s: ctx.tables.keys(
            label, task, s, feats.arch, feats.seed, CONCAT_LAYER, "trained", feats.task
        ),
    }


def _run_concat(ctx: Context, feats, hf, index: dict, path: str, names: list[str], task: list[dict], conv3) -> None:
    """Trained conv3 + each hand-crafted feature (each standardised separately, columns concatenated), held when
    they fit (with conv3 held: its Gram matrix reused), else computed on demand."""
    d3, seeds = feats.widths[CONCAT_LAYER], ctx.hp["seeds"]
    cost3 = forward_cost(feats, "trained", CONCAT_LAYER)
    items = [{"name": name, "d": d3 + index[name]["d"]} for name in names]
    for group in groups(items, len(ctx.split)):
        d = group[0]["d"]
        w = ctx.work(d, task, seeds, cost3 + FLOAT_COST * (d - d3))
        for batch, p in _batches(ctx, group, w):
            if p.mode == "resident" and conv3 is not None:
                what = ", ".join(it["name"] for it in batch)
                ctx.log.info(f"{feats.arch} {CONCAT_LAYER} + {what}, width {d}: {p.describe()}")
                _concat_held(ctx, feats, hf, index, path, batch, task, conv3, p)
                continue
            for it in batch:
                key = index[it["name"]]["key"]
                hc = DatasetSource(hf["features"][key], f"{path}: features/{key}", ctx.dev)
                src = ConcatSource([LayerSource(feats, "trained", CONCAT_LAYER, ctx.dev, cost=cost3), hc], it["name"])
                q = p if p.mode != "resident" else plan_streamed(w, ctx.hp)  # conv3 is not held
                ctx.log.info(f"{feats.arch} {CONCAT_LAYER} + {it['name']}: {q.describe()}")
                run_streamed(ctx, _concat_keys(ctx, feats, it["name"]), src, task, seeds, q)


def _concat_held(ctx: Context, feats, hf, index, path: str, group, task, conv3, p: Plan) -> None:
    """The concatenations of one width with conv3 held: blocks standardised separately make the
    concatenation's Gram matrix the sum of the blocks' ones, so conv3's (computed once, or kept from its own
    probes) is reused and only the hand-crafted block's is new."""
    c_tr, c_te, K3 = conv3
    n_tr, n_te, d3 = len(c_tr), len(c_te), c_tr.shape[1]
    d = group[0]["d"]
    dual = _concat_dual(ctx, d, d3, n_tr, n_te, task, K3)
    if dual and K3 is None:
        K3 = gram_matrix(c_tr, torch.float32, ctx.dev)
    Ztr, Zte, fts, grams = [], [], [], []
    for i, it in enumerate(group):
        key = index[it["name"]]["key"]
        ztr, zte = ctx.pool.pair(i, n_tr, n_te, d)
        ztr[:, :d3], zte[:, :d3] = c_tr, c_te
        a, _ = load_split(hf["features"][key], ctx.split, f"{path}: features/{key}", (ztr[:, d3:], zte[:, d3:]))
        Ztr.append(ztr)
        Zte.append(zte)
        if dual:
            grams.append(K3 + gram_matrix(a, K3.dtype, ctx.dev))
        fts.append(_concat_keys(ctx, feats, it["name"]))
    run_resident(ctx, fts, Ztr, Zte, task, ctx.hp["seeds"], p, grams if dual else None)


def _concat_dual(ctx: Context, d: int, d3: int, n_tr: int, n_te: int, task, K3) -> bool:
    """Whether the concatenations' logistic probes want Gram matrices (the dual form cheaper, counting only the
    columns whose Gram matrix is new)."""
    if ctx.form != "auto":
        return ctx.form == "dual"
    cols = d - d3 + (d3 if K3 is None else 0)
    n_classes = [len(t["classes"]) for t in task]
    return logistic_costs(n_tr, n_te, d, n_classes, 1, ctx.hp, cols)["form"] == "dual"


__all__ = ["CONCAT_LAYER", "TRAIN", "probe_deep", "probe_handcrafted"]
