"""Running the probes of a feature by its plan (:mod:`deepfeat.probe.plan`): a batch of equal-width features
held in memory (:func:`run_resident`) or one feature computed on demand (:func:`run_streamed`), every task,
the scores and confusions into the job's tables, one log line per probe.

The training Gram matrix of held features is computed once when a dual form needs it and shared by their
logistic and regression probes (float64 when the regression is in the Gram form; float32 when only the
logistic dual wants it). Regression probes beyond ``probe.dual_max_clips`` / ``probe.covariance_max_width``
(:func:`deepfeat.probe.plan.regression_route`) are fitted on a seeded subset of the training clips
(:func:`deepfeat.formats.cliptable.seeded_subset` of the first probe seed, stream :data:`SUBSET_STREAM`), and
the log line says so.

Control tasks (:mod:`deepfeat.probe.control`): a task dict carrying ``control`` labels gets its control probes
in the same batch as its task probes (extra classification tasks of the batched SGD model, extra target columns
of the regression: the rows, Gram matrices and eigendecompositions are shared); the logistic form is chosen for
the task probes alone, so the task probes are exactly those of a run without controls. The estimated extra
multiply-adds are counted in :attr:`Context.control` (one log line per job).
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
from deepfeat.probe.plan import Plan, Work, _costs
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
    #: the control probes fitted, their estimated extra multiply-adds and those of all probes, and the estimated
    #: seconds of the logistic fits spent on them
    control: dict = field(default_factory=lambda: {"probes": 0, "extra": 0.0, "total": 0.0, "seconds": 0.0})

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
    ctrl = [t for t in cls if "control" in t]  # their control probes: extra tasks of the same batched model
    label = f"{F} feature(s) of width {d} x {len(cls)} task(s) (+ {len(ctrl)} control) x {len(seeds)} seed(s)"
    Ytr = np.stack([t["y"][ctx.tr] for t in cls] + [t["control"][ctx.tr] for t in ctrl]).astype(np.int64)
    Yte = np.stack([t["y"][ctx.te] for t in cls] + [t["control"][ctx.te] for t in ctrl]).astype(np.int64)
    g = None if grams is None else [x.to(device=ctx.dev, dtype=torch.float32) for x in grams]
    n_classes = [len(t["classes"]) for t in cls]
    n_all = n_classes + [len(t["classes"]) for t in ctrl]
    gram_cols = 0 if g is not None else None
    c = _costs(tr[0].n, te[0].n, d, n_classes, len(seeds), ctx.sgd, gram_cols)  # the task probes alone
    form = form or ctx.form
    form = c["form"] if form == "auto" else form  # chosen without the controls: the task probes stay the same
    r = fit_logistic_rows(
        tr, Ytr, te, Yte, n_all, seeds, ctx.sgd, log=ctx.log, label=label, form=form, gram=g, gram_width=gram_width
    )
    del g
    if ctrl:
        c_all = _costs(tr[0].n, te[0].n, d, n_all, len(seeds), ctx.sgd, gram_cols)[form]
        _count_control(ctx, F * len(ctrl) * len(seeds), F * (c_all - c[form]), F * c_all)
        ctx.control["seconds"] += r["seconds"] * (1.0 - c[form] / c_all)
    per = r["seconds"] / (F * len(n_all) * len(seeds))
    ctx.log.info(
        f"trained {label} = {F * len(n_all) * len(seeds)} logistic probes in {r['seconds']:.1f} s, "
        f"{r['form']} form (estimated multiply-adds per feature of the task probes: primal {c['primal'] / 1e9:.2f} G, "
        f"dual {c['dual'] / 1e9:.2f} G{' with the Gram matrix given' if grams is not None else ''})"
    )
    K = len(cls)
    for fi, ft in enumerate(feats):
        for k, t in enumerate(cls + ctrl):
            labels = "task" if k < K else "control"
            for si, s in enumerate(seeds):
                keys = ft["keys"](t["name"], s)
                a_tr, a_te = r["train_acc"][si, fi, k], r["test_acc"][si, fi, k]
                correct = r["pred_test"][si, fi, k] == Yte[k]
                ctx.tables.add_scores(keys, "accuracy", a_tr, a_te, correct, labels)
                if k < K:
                    ctx.tables.add_confusion(keys, t["classes"], r["confusion"][si][fi][k])
                chance = t["chance"] if k < K else t["control_chance"]
                ctx.log.info(
                    f"probe {ft['label']} | task {t['name']}{'' if k < K else ' (control)'} | seed {s} | "
                    f"{per:.2f} s (batched) | accuracy train {a_tr:.4f} test {a_te:.4f} (majority {chance:.4f})"
                )


def _count_control(ctx: Context, probes: int, extra: float, total: float) -> None:
    ctx.control["probes"] += probes
    ctx.control["extra"] += extra
    ctx.control["total"] += total


def control_note(ctx: Context) -> str:
    """The job's log line on what its control probes cost."""
    c = ctx.control
    share = 100.0 * c["extra"] / c["total"] if c["total"] > 0 else 0.0
    return (
        f"control tasks: {c['probes']} control probe(s) fitted in the batches of their task probes (the same rows, "
        f"Gram matrices, eigendecompositions and passes over the features); estimated extra multiply-adds "
        f"{c['extra'] / 1e9:.3g} G = {share:.0f}% of the {c['total'] / 1e9:.3g} G of the probes they join, about "
        f"{c['seconds']:.1f} s of logistic SGD"
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
    ctrl = [t for t in reg if "control" in t]  # their control targets: extra columns of the same fits
    Y = np.stack([t["y"][ctx.tr] for t in reg] + [t["control"][ctx.tr] for t in ctrl], 1)
    Yt = np.stack([t["y"][ctx.te] for t in reg] + [t["control"][ctx.te] for t in ctrl], 1)
    T = len(reg)
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
        sec = (time.perf_counter() - t0) / Y.shape[1]
        e2 = np.square(r["pred"] - Yt)  # (test clips x targets) squared errors: the replicates' input
        if ctrl:
            _count_control(ctx, len(ctrl), *_regression_extra(r, X.n, te[fi].n, X.d, T, len(ctrl)))
        for k, t in enumerate(reg + ctrl):
            labels = "task" if k < T else "control"
            keys = ft["keys"](t["name"], "")
            ctx.tables.add_scores(keys, "rmse", r["train_rmse"][k], r["test_rmse"][k], e2[:, k], labels)
            ctx.log.info(
                f"probe {ft['label']} | task {t['name']}{'' if k < T else ' (control)'} | {sec:.2f} s | "
                f"{how(r, k, X.d, X.n, n_tr)} | rmse train {r['train_rmse'][k]:.4f} test {r['test_rmse'][k]:.4f}"
            )


def _regression_extra(r: dict, n: int, t: int, d: int, T: int, C: int) -> tuple[float, float]:
    """(extra, total) estimated multiply-adds of C control targets joining T task targets in one regression fit:
    the per-target work (the leave-one-out scan over the ridge grid, the coefficients and predictions) next to
    the shared decomposition (of the k x k covariance or Gram matrix, k = min(n, d))."""
    k = min(n, d)
    G = len(RIDGE_GRID) if r["method"] == "ridge_loo" else 1
    per_target = 2.0 * n * k * G + (n + t) * d + k * k
    shared = n * k * k + 10.0 * k**3
    return C * per_target, shared + (T + C) * per_target


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
