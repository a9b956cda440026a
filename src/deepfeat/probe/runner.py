"""Running the probes of a feature by its plan (:mod:`deepfeat.probe.plan`): a batch of equal-width features
held in memory (:func:`run_resident`) or one feature computed on demand (:func:`run_streamed`), every task,
the scores and confusions into the job's tables, one log line per probe.

The training Gram matrix of held features is computed once when a dual form needs it and shared by their
logistic and regression probes (float64 when the regression is in the Gram form; float32 when only the
logistic dual wants it). Regression probes beyond ``probe.dual_max_clips`` / ``probe.covariance_max_width``
(:func:`deepfeat.probe.plan.regression_route`) are fitted on a seeded subset of the training clips
(:func:`deepfeat.formats.cliptable.seeded_subset` of the first probe seed, stream :data:`SUBSET_STREAM`), and
the log line says so.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from deepfeat import config
from deepfeat.formats.cliptable import TRAIN, seeded_subset
from deepfeat.probe.linear import RIDGE_GRID, fit_linear_rows, targets
from deepfeat.probe.loading import SlabPool
from deepfeat.probe.logistic import SGD_KEYS, fit_logistic_rows
from deepfeat.probe.plan import Plan, Work
from deepfeat.probe.rows import ResidentRows, StreamedRows, gram_of, training_stats
from deepfeat.probe.standardisation import gram_matrix
from deepfeat.probe.tables import ProbeTables

SUBSET_STREAM = 1  # the seeded_subset stream of the regression subsets (independent of other draws of the seed)


@dataclass
class Context:
    """What every probe of one job shares."""

    tables: ProbeTables
    split: np.ndarray  # (N,) TRAIN / TEST
    hp: dict  # the job's probe settings
    dev: torch.device
    log: logging.Logger
    form: str = "auto"  # logistic probes: auto (the plan's form) | primal | dual (forced)
    pool: SlabPool = field(default_factory=SlabPool)

    def __post_init__(self):
        self.tr = np.flatnonzero(self.split == TRAIN)
        self.te = np.flatnonzero(self.split != TRAIN)
        self.sgd = config.settings("probe", self.hp, SGD_KEYS)

    def work(self, d: int, tasks: list[dict], seeds: list[int], cost: float) -> Work:
        cls = [len(t["classes"]) for t in tasks if t["type"] == "classification"]
        reg = sum(t["type"] == "regression" for t in tasks)
        return Work(len(self.tr), len(self.te), int(d), cls, reg, len(seeds), float(cost))


# ----------------------------------------------------------------------------------------------------------
# Held features
# ----------------------------------------------------------------------------------------------------------
def resident_grams(ctx: Context, plan: Plan, Ztr: list[np.ndarray]) -> list[torch.Tensor] | None:
    """The training Gram matrices the plan of held features wants: float64 when shared with the regression,
    float32 when only the logistic dual uses them, None when neither does."""
    dual = ctx.form == "dual" or (ctx.form == "auto" and plan.logistic == "dual")
    dtype = torch.float64 if plan.share else (torch.float32 if dual and plan.logistic else None)
    if dtype is None:
        return None
    t0 = time.perf_counter()
    grams = [gram_matrix(z, dtype, ctx.dev) for z in Ztr]
    ctx.log.info(
        f"training Gram matrices ({str(dtype)[6:]}) of {len(Ztr)} feature(s) of width {Ztr[0].shape[1]} in "
        f"{time.perf_counter() - t0:.1f} s"
    )
    return grams


def run_resident(ctx: Context, feats, Ztr, Zte, tasks, seeds, plan: Plan, grams=None, consume: bool = True):
    """Probe F equal-width standardised features held in memory (``feats[i]['keys']`` -> table keys) on the
    given tasks. ``grams``: their training Gram matrices when already known. Returns the Gram matrices used."""
    if grams is None:
        grams = resident_grams(ctx, plan, Ztr)
    tr = [ResidentRows(torch.from_numpy(z).to(ctx.dev)) for z in Ztr]
    te = [ResidentRows(torch.from_numpy(z).to(ctx.dev)) for z in Zte]
    cls = [t for t in tasks if t["type"] == "classification"]
    if cls:
        logistic_probes(ctx, feats, tr, te, cls, seeds, grams)
    reg = [t for t in tasks if t["type"] == "regression"]
    if reg:
        g = grams if grams is not None and grams[0].dtype == torch.float64 else None
        regression_probes(ctx, feats, tr, te, reg, g, plan, consume)
    return grams


# ----------------------------------------------------------------------------------------------------------
# One feature computed on demand
# ----------------------------------------------------------------------------------------------------------
def run_streamed(ctx: Context, feat: dict, source, tasks: list[dict], seeds: list[int], plan: Plan) -> None:
    """Probe one feature whose rows are never held (plan ``gram`` or ``recompute``): training statistics from a
    streamed float64 pass, then every probe over streamed passes (counted in the log)."""
    t0 = time.perf_counter()
    stats = training_stats(source, ctx.tr)
    tr = StreamedRows(source, ctx.tr, stats)
    te = StreamedRows(source, ctx.te, stats)
    K64 = None
    if plan.share and plan.mode == "gram":
        K64 = gram_of(tr, torch.float64, plan.width)
    cls = [t for t in tasks if t["type"] == "classification"]
    if cls:
        grams = None if K64 is None else [K64.to(torch.float32)]
        form = plan.logistic if ctx.form == "auto" else ctx.form
        logistic_probes(ctx, [feat], [tr], [te], cls, seeds, grams, form=form, gram_width=plan.width)
        del grams
    reg = [t for t in tasks if t["type"] == "regression"]
    if reg:
        regression_probes(ctx, [feat], [tr], [te], reg, None if K64 is None else [K64], plan, True)
    ctx.log.info(
        f"{feat['label']}: computed on demand in {time.perf_counter() - t0:.1f} s, {1 + tr.passes} pass(es) over "
        f"the {tr.n} training clips and {te.passes} over the {te.n} test clips"
    )


# ----------------------------------------------------------------------------------------------------------
# The probes of one batch of features
# ----------------------------------------------------------------------------------------------------------
def logistic_probes(ctx: Context, feats, tr, te, cls, seeds, grams, form: str | None = None, gram_width=None):
    """The classification tasks: one batched model, scores, confusions, a log line each."""
    F, d = len(feats), tr[0].d
    label = f"{F} feature(s) of width {d} x {len(cls)} task(s) x {len(seeds)} seed(s)"
    Ytr = np.stack([t["y"][ctx.tr] for t in cls]).astype(np.int64)
    Yte = np.stack([t["y"][ctx.te] for t in cls]).astype(np.int64)
    g = None if grams is None else [x.to(device=ctx.dev, dtype=torch.float32) for x in grams]
    n_classes = [len(t["classes"]) for t in cls]
    form = form or ctx.form
    r = fit_logistic_rows(
        tr, Ytr, te, Yte, n_classes, seeds, ctx.sgd, log=ctx.log, label=label, form=form, gram=g, gram_width=gram_width
    )
    del g
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


def _subset(rows, pos: np.ndarray):
    """The training rows at sorted positions ``pos`` (a copy of held rows; the same source when streamed)."""
    if rows.resident:
        return ResidentRows(rows.Z.index_select(0, torch.from_numpy(pos).to(rows.device)))
    return rows.subset(pos)


def regression_probes(ctx: Context, feats, tr, te, reg, grams, plan: Plan, consume: bool) -> None:
    """The regression tasks: all tasks of a feature in one fit (the float64 Gram matrix reused when given, on a
    seeded subset when the plan says so), scores and a log line each."""
    n_tr = len(ctx.tr)
    Y = np.stack([t["y"][ctx.tr] for t in reg], 1)
    Yt = np.stack([t["y"][ctx.te] for t in reg], 1)
    for fi, ft in enumerate(feats):
        t0 = time.perf_counter()
        X, y, g = tr[fi], Y, (grams[fi] if grams is not None else None)
        if plan.subset:
            pos = seeded_subset(n_tr, plan.subset, int(ctx.hp["seeds"][0]), SUBSET_STREAM)
            X, y, g = _subset(X, pos), Y[pos], None
        Yd, Ytd, _ = targets(y, Yt, X.n, te[fi].n, ctx.dev)
        form = "dual" if plan.subset else "auto"
        r = fit_linear_rows(
            X, te[fi], Yd, Ytd, ctx.hp["ridge"], gram=g, form=form, consume=consume, gram_width=plan.reg_width
        )
        sec = (time.perf_counter() - t0) / len(reg)
        for k, t in enumerate(reg):
            ctx.tables.add_scores(ft["keys"](t["name"], ""), "rmse", r["train_rmse"][k], r["test_rmse"][k])
            ctx.log.info(
                f"probe {ft['label']} | task {t['name']} | {sec:.2f} s | {how(r, k, X.d, X.n, n_tr)} | "
                f"rmse train {r['train_rmse'][k]:.4f} test {r['test_rmse'][k]:.4f}"
            )


def how(r: dict, k: int, d: int, n_fit: int, n_tr: int) -> str:
    """How regression target ``k`` of the fit ``r`` was fitted (for its log line)."""
    sub = (
        f" (a seeded subset of the {n_tr}: beyond probe.dual_max_clips / covariance_max_width)" if n_fit < n_tr else ""
    )
    if r["method"] == "ols":
        return "OLS"
    if r["method"] != "ridge_loo":
        return f"{d} features >= {n_fit} - 1 training clips{sub}: dual ridge, penalty {r['ridge_used']:.4g}"
    rel = r["ridge_rel"][k]
    edge = " (grid edge)" if rel in (RIDGE_GRID[0], RIDGE_GRID[-1]) else ""
    return (
        f"{d} features, {n_fit} training clips{sub}: {r['form']} ridge, penalty {r['ridge_used'][k]:.4g} = "
        f"{rel:.3g}{edge} x trace(K)/n by leave-one-out (LOO rmse {math.sqrt(r['loo_mse'][:, k].min()):.4f})"
    )


__all__ = ["Context", "logistic_probes", "regression_probes", "run_resident", "run_streamed"]
