"""How the probes of one feature run within the job's memory budget (``probe.memory_mb``): the plan.

For a feature (or a batch of F equal-width features) with n training and t test clips of width d, the planner
estimates the bytes each way holds and the multiply-adds it costs, and picks:

* ``resident`` -- the standardised train + test rows in memory (4 (n + t) d F bytes) plus the working set of
  the probes (Gram matrices, the regression's eigenproblem): the plain code path, whenever it fits;
* ``gram`` -- nothing proportional to n x d held: the logistic probes run in the exact dual form from the
  training Gram matrix K (n x n float32, 4 n^2 bytes; it must fit), accumulated over column groups of the
  feature (one pass over its rows each, as wide as the budget allows), with the initial logits W0 Z', the final
  W = W0 + A Z and the test logits in streamed passes;
* ``recompute`` -- the primal SGD with every batch's rows computed when it is drawn (epochs x n rows).

Without a classification task the non-resident plan is ``recompute`` (the regression's passes). Between gram
and recompute the cheaper by estimated multiply-adds runs: a pass over the rows costs the source's per-clip
cost (``cost``: a forward pass of the network up to the layer, or the values read from a stage file), the
dual and primal SGD cost what :func:`logistic_costs` says.

Regression probes (:mod:`deepfeat.probe.linear`) run in the d x d covariance form when d < n (O(n d^2 + d^3)
time, 16 d^2 bytes: linear in clips, never an n x n eigendecomposition) and in the n x n Gram form otherwise
(O(n^2 d + n^3) time, 16-24 n^2 bytes: quadratic and cubic in clips by nature). Both are capped
(:func:`regression_route`): the Gram form by ``probe.dual_max_clips`` training clips, the covariance form by
``probe.covariance_max_width``; beyond a cap the probe is fitted on a seeded subset of ``dual_max_clips``
training clips (the Gram form). This choice depends on n, d and the caps only, never on the budget (the budget
changes how a probe is computed, not what it computes); a regression working set larger than the budget is
logged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from deepfeat import config
from deepfeat.probe.linear import RIDGE_GRID, solver
from deepfeat.probe.standardisation import CHUNK_BYTES, gram_block

COST_KEYS = ("epochs", "batch_size", "memory_mb")  # the probe settings the logistic cost estimate reads
EIGEN_COST = 10.0  # multiply-adds per k^3 of a full symmetric eigendecomposition (tridiagonalisation + vectors)
FORCE = None  # tests: "gram" or "recompute" plans every feature that way (never held)


def _slack(w: Work) -> float:
    """Bytes of the row blocks in flight during a pass: a float64 block (at most ``CHUNK_BYTES``) and two
    copies of it."""
    return 3.0 * min(CHUNK_BYTES, 8.0 * (w.n + w.t) * w.d)


# ----------------------------------------------------------------------------------------------------------
# The logistic probes' forms
# ----------------------------------------------------------------------------------------------------------
def logistic_costs(
    n_train: int,
    n_test: int,
    d: int,
    n_classes: Sequence[int],
    n_seeds: int,
    params: dict | None,
    gram_columns: int | None = None,
) -> dict:
    """Estimated multiply-adds of training and evaluating one feature's S x K logistic probes in each form.

    With R = S * K * Cmax weight rows (padded), E epochs, b = ceil(n_train / batch) batches per epoch:
    * ``primal`` = 3 E n_train d R (forward, gradient, gather and update traffic) + R (n_train + n_test) d;
    * ``dual`` = ``gram`` + R d (2 n_train + n_test) (initial logits W0 Z', final W = W0 + A Z, test logits)
      + E R n_train^2 (batch logits A K_b) + 3 E b R n_train (velocity and A updates);
    * ``gram`` = n_train (n_train + 1) / 2 x ``gram_columns`` (the columns whose K still has to be computed:
      d by default, 0 when K is given, the new block's width when a concatenation reuses a block's K).
    ``form`` is the cheaper one, except that the dual needs n_train x n_train matrices: only when they fit the
    memory budget (:func:`dual_bytes` <= ``memory_mb``; n_train <= ~11,000 at the default 4,000 MB).
    ``params``: the probe settings (``epochs``, ``batch_size``, ``memory_mb``).
    """
    hp = config.settings("probe", params, COST_KEYS)
    return _costs(n_train, n_test, d, n_classes, n_seeds, hp, gram_columns)


def _costs(
    n_train: int, n_test: int, d: int, n_classes: Sequence[int], n_seeds: int, hp: dict, gram_columns: int | None
) -> dict:
    """:func:`logistic_costs` with resolved settings ``hp``."""
    E, R = int(hp["epochs"]), n_seeds * len(n_classes) * max(n_classes)
    batches = math.ceil(n_train / int(hp["batch_size"]))
    g = n_train * (n_train + 1) / 2 * (d if gram_columns is None else gram_columns)
    primal = 3.0 * E * n_train * d * R + R * (n_train + n_test) * d
    dual = g + R * d * (2 * n_train + n_test) + E * R * n_train**2 + 3.0 * E * batches * R * n_train
    fits = dual_bytes(n_train) <= float(hp["memory_mb"]) * 2**20
    return {"primal": primal, "dual": dual, "gram": g, "form": "dual" if fits and dual < primal else "primal"}


def dual_bytes(n_train: int, F: int = 1, given64: bool = False) -> int:
    """Bytes of the dual form's n_train x n_train matrices for F features: the float32 Gram matrices and their
    batched stack (F > 1), plus the float64 ones they were converted from when given (``given64``)."""
    return F * n_train**2 * (4 + (4 if F > 1 else 0) + (8 if given64 else 0))


# ----------------------------------------------------------------------------------------------------------
# Plans
# ----------------------------------------------------------------------------------------------------------
@dataclass
class Work:
    """What the probes of one feature are: the sizes and the tasks."""

    n: int  # training clips
    t: int  # test clips
    d: int  # width
    classes: list[int]  # class counts of the classification tasks
    targets: int  # regression tasks
    seeds: int  # probe seeds of the classification tasks
    cost: float  # multiply-adds of one clip's row (0 when the rows are already in memory)


@dataclass
class Plan:
    """The way one feature (or F features of one width, resident only) is probed, and why."""

    mode: str  # resident | gram | recompute
    F: int
    memory: float  # bytes planned (features + working set)
    costs: dict  # estimated multiply-adds of the feasible modes
    logistic: str | None  # primal | dual (None: no classification task)
    regression: str | None  # covariance | gram | ols | fixed (linear.solver), None: no regression task
    subset: int | None = None  # training clips of the regression beyond a cap (regression_route)
    width: int | None = None  # columns per Gram pass (gram mode)
    rows: float = 0.0  # bytes of the held rows (resident)
    reg_width: int | None = None  # columns per Gram pass of the regression (its own Gram matrix, streamed rows)
    share: bool = False  # the float64 Gram matrix serves the regression and the logistic probes
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        mb = self.memory / 2**20
        cost = ", ".join(f"{k} {v / 1e9:.3g} G" for k, v in self.costs.items() if v is not None)
        how = {
            "resident": "rows held",
            "gram": "dual from a Gram matrix over column groups",
            "recompute": "rows recomputed per pass",
        }
        parts = [f"plan {self.mode} ({how[self.mode]}), {mb:.0f} MB planned, estimated multiply-adds: {cost}"]
        if self.logistic:
            parts.append(f"logistic {self.logistic}")
        if self.regression:
            sub = f" on a seeded subset of {self.subset} training clips" if self.subset else ""
            parts.append(f"regression {self.regression}{sub}")
        if self.width:
            parts.append(f"Gram passes of {self.width} columns")
        return "; ".join(parts + self.notes)


def regression_route(n: int, d: int, ridge, hp: dict) -> tuple[str, int | None]:
    """(solver, subset size or None) of a regression of d features on n training clips: the exact solver
    (:func:`deepfeat.probe.linear.solver`) within the caps (``hp``: ``dual_max_clips`` for the Gram forms,
    ``covariance_max_width`` for the covariance forms), else the Gram form on a subset of ``dual_max_clips``
    training clips. Independent of the memory budget."""
    kind = solver(n, d, ridge)
    m = int(hp["dual_max_clips"])
    if kind in ("covariance", "ols"):
        if d <= int(hp["covariance_max_width"]):
            return kind, None
    elif n <= m:
        return kind, None
    return ("gram" if isinstance(ridge, str) else "fixed"), min(m, n)


def _regression(w: Work, route: str, m: int, given: bool, consume: bool = True) -> tuple[float, float, int]:
    """(bytes beyond the rows, multiply-adds, passes over the training rows) of the regression probes on m
    training clips. ``given``: the float64 Gram matrix is computed elsewhere (shared, not counted here);
    ``consume``: it may be centred and decomposed in place."""
    d, T, G = w.d, w.targets, len(RIDGE_GRID)
    fits = 8.0 * m * G * T
    if route == "covariance":
        return 16.0 * d * d + fits, 2.0 * m * d * d + EIGEN_COST * d**3, 3
    if route == "ols":
        return 16.0 * d * d, m * d * d + d**3 / 3, 3
    groups = 0 if given else math.ceil(d / max(1, min(d, gram_block(m))))
    gram = 0.0 if given else m * m * d / 2
    own = 0.0 if given and consume else 8.0 * m * m  # the centred K (the given one, or a copy of it)
    if route == "gram":
        return own + 8.0 * m * m + fits, gram + EIGEN_COST * m**3 + m * m * G * T + m * d, groups + 1
    return own + 16.0 * m * m, gram + m**3 / 3 + m * d, groups + 1


def _gram_width(w: Work, spare: float) -> int | None:
    """Columns per Gram pass that fit ``spare`` bytes (a multiple of the Gram block), None if not one block."""
    if spare <= 0:
        return None
    blk = gram_block(w.n)
    cols = int(spare // (4 * max(1, w.n)))
    if cols >= w.d:
        return w.d
    return (cols // blk) * blk or None


def plan(w: Work, hp: dict, F: int = 1, consume: bool = True) -> Plan | None:
    """The plan of F features of the work ``w`` under the settings ``hp`` (``memory_mb``, ``ridge``,
    ``dual_max_clips``, ``covariance_max_width``, ``epochs``, ``batch_size``): resident when the F features and
    their working set fit the budget; else None for F > 1 (plan them one by one) and the cheaper streamed plan
    for one feature.
    ``consume``: a shared Gram matrix may be decomposed in place (it is not needed afterwards)."""
    budget = float(hp["memory_mb"]) * 2**20
    route, m = (None, None) if not w.targets else regression_route(w.n, w.d, hp["ridge"], hp)
    res = _resident(w, hp, F, route, m, consume)
    if FORCE is not None:
        return None if F > 1 else _streamed(w, hp, route, m, budget, res.costs, FORCE)
    if res.memory <= budget:
        return res
    if F > 1:
        return None  # the caller plans one feature at a time
    return _streamed(w, hp, route, m, budget, res.costs)


def plan_streamed(w: Work, hp: dict) -> Plan:
    """The cheaper plan of one feature that does not hold its rows (gram or recompute), fit or not."""
    budget = float(hp["memory_mb"]) * 2**20
    route, m = (None, None) if not w.targets else regression_route(w.n, w.d, hp["ridge"], hp)
    return _streamed(w, hp, route, m, budget, {})


def _resident(w: Work, hp: dict, F: int, route, m, consume: bool) -> Plan:
    """The resident plan: rows held, the cheaper logistic form (the dual only where its matrices fit). A float64
    Gram matrix per feature is computed once when the regression is in the Gram form (not a subset) and shared
    with the logistic probes."""
    rows = 4.0 * (w.n + w.t) * w.d * F
    share = bool(route in ("gram", "fixed") and m is None)
    held = 8.0 * w.n * w.n * F if share else 0.0
    cost = F * ((w.n + w.t) * w.cost + (w.n * w.n * w.d / 2 if share else 0.0))
    log_form, log_mem = None, 0.0
    if w.classes:
        c = _costs(w.n, w.t, w.d, w.classes, w.seeds, hp, 0 if share else None)
        log_form = c["form"]
        cost += F * c[log_form]
        log_mem = dual_bytes(w.n, F) if log_form == "dual" else (4.0 * w.n * w.d * F if F > 1 else 0.0)
    reg_mem = 0.0
    if route:
        n_fit = m or w.n
        reg_mem, reg_cost, _ = _regression(w, route, n_fit, share, consume)
        reg_mem += 4.0 * n_fit * w.d if m else 0.0  # the subset's rows
        cost += F * reg_cost
    memory = rows + held + max(log_mem, reg_mem) + _slack(w)
    return Plan("resident", F, memory, {"resident": cost}, log_form, route, m, share=share, rows=rows)


def _streamed(w: Work, hp: dict, route, m, budget: float, costs: dict, force: str | None = None) -> Plan:
    """Gram or recompute, the cheaper by estimated cost (gram only when its matrices and one block fit; a
    mode ``force`` names)."""
    n, t, d = w.n, w.t, w.d
    stats = n * w.cost
    reg_mem = reg_cost = 0.0
    reg_passes, reg_width = 0, None
    if route:
        n_fit = m or n
        reg_mem, reg_cost, reg_passes = _regression(w, route, n_fit, False)
        if route in ("gram", "fixed"):
            reg_width = _gram_width(Work(n_fit, t, d, [], 1, 0, w.cost), budget - reg_mem - _slack(w)) or gram_block(
                n_fit
            )
            reg_mem += 4.0 * n_fit * min(d, reg_width)
            reg_passes = math.ceil(d / reg_width) + 1
        reg_cost += reg_passes * n_fit * w.cost + t * w.cost
    costs = dict(costs)
    if not w.classes:
        memory = reg_mem + _slack(w)
        costs["recompute"] = stats + reg_cost
        notes = _over(memory, budget)
        return Plan("recompute", 1, memory, costs, None, route, m, notes=notes, reg_width=reg_width)
    E = int(hp["epochs"])
    c = _costs(n, t, d, w.classes, w.seeds, hp, None)
    costs["recompute"] = stats + c["primal"] + (E * w.seeds * n + n + t) * w.cost + reg_cost
    rec_mem = reg_mem + _slack(w)
    share = route in ("gram", "fixed") and m is None
    K = dual_bytes(n, 1, share)
    width = _gram_width(w, budget - K - _slack(w))
    if force == "gram":
        width = width or gram_block(n)
    if width is not None and force != "recompute":
        passes = math.ceil(d / width)
        g_reg = _regression(w, route, n, True)[1] + (n + t) * w.cost if share else reg_cost
        costs["gram"] = stats + c["dual"] + (passes * n + n + t + (n if share else 0)) * w.cost + g_reg
        gram_mem = K + 4.0 * n * width + _slack(w)
        if costs["gram"] < costs["recompute"] or force == "gram":
            memory = max(gram_mem, 8.0 * n * n + _regression(w, route, n, True)[0] if share else reg_mem)
            return Plan(
                "gram",
                1,
                memory,
                costs,
                "dual",
                route,
                m,
                width=width,
                share=share,
                notes=_over(memory, budget),
                reg_width=reg_width,
            )
    return Plan("recompute", 1, rec_mem, costs, "primal", route, m, notes=_over(rec_mem, budget), reg_width=reg_width)


def _over(memory: float, budget: float) -> list[str]:
    if memory <= budget:
        return []
    return [
        f"the regression's eigenproblem needs {memory / 2**20:.0f} MB, above probe.memory_mb "
        f"({budget / 2**20:.0f} MB); lower probe.dual_max_clips or probe.covariance_max_width to bound it"
    ]


__all__ = ["Plan", "Work", "plan", "plan_streamed", "regression_route"]
