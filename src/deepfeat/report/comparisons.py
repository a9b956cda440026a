"""Every comparison the findings state, as a paired difference with an interval over clips and network seeds.

A comparison has two sides A and B (a probe score, a similarity value, chance, a gain ...). Each side is a set of
per-seed values with their B bootstrap replicates (the ``*.boot.h5`` files: replicate b of every value of a dataset
comes from one recording-level resample of the same clips, so replicates of two values are paired). The difference
A - B is summarised by a two-stage bootstrap (:func:`deepfeat.stats.seed_replicates`):

* sides paired by network seed (trained vs untrained, layer vs layer of one network, concatenation vs alone, task
  vs control, two hand-crafted features compared on one network's layer): the per-seed differences of replicate b
  are averaged over a draw of the common seeds with replacement;
* unpaired sides (architecture vs architecture, networks trained on different tasks, deep vs hand-crafted, vs
  chance): each side draws its own seeds (side 0 and side 1 of ``seed_replicates``), then their means are
  subtracted;
* a hand-crafted side averages the replicates of its probe seeds (no seed draw: the probe seeds are not network
  seeds), and chance is one value per resample (the share of the test split's majority class, or the RMSE of
  predicting the training mean, on the resampled test clips).

The interval is the equal-tailed ``stats.level`` percentile interval of the difference's replicates; ``verdict`` is
+1 / -1 when it lies above / below zero, 0 when it holds zero. A side with any missing (NaN) replicate (a value not
computed on all clips, a file without replicates, the networks' own scores) gives NaN bounds: "no interval".
Differences are A - B in the metric's raw units (percentage points of accuracy, RMSE target units, similarity
units), except ``gain_vs_gain`` rows: the difference of two gains in improvement units (accuracy gain, or RMSE
reduction).

:func:`comparisons_table` builds the table ``comparisons`` (columns ``TABLE_COLUMNS["comparisons"]``); the label
functions below name the sides in its ``a`` / ``b`` columns and are how the findings page finds its rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from deepfeat import stats
from deepfeat.formats.cliptable import TEST, read_clip_table
from deepfeat.formats.files import open_h5
from deepfeat.formats.replicates import fingerprint
from deepfeat.report.display import DISTANCES, arch_display, last_layer, order_values

PROBE_KEYS = "feature arch seed layer trained train_task probe_task probe_seed labels metric".split()
SIM_KEYS = "comparison task arch_a seed_a layer_a trained_a arch_b seed_b layer_b trained_b feature_b measure".split()
_SEED_COLUMNS = {"seed", "probe_seed", "seed_a", "seed_b"}


# ----------------------------------------------------------------------------------------------------------
# Side labels (the a / b columns; the findings page looks rows up by them)
# ----------------------------------------------------------------------------------------------------------
def deep_label(arch: str, layer: str, trained: str, train_task: str, probe_task: str) -> str:
    return f"{arch_display(arch)} {layer} ({trained}, {train_task} networks) on {probe_task}"


def hc_label(feature: str, probe_task: str) -> str:
    return f"{feature} on {probe_task}"


def chance_label(task: str) -> str:
    return f"chance on {task}"


def network_label(arch: str, task: str) -> str:
    return f"{arch_display(arch)} network on {task}"


def control_label(label: str) -> str:
    return f"{label} (control task)"


def concat_label(arch: str, layer: str, trained: str, train_task: str, feature: str, probe_task: str) -> str:
    return f"{arch_display(arch)} {layer} + {feature} ({trained}, {train_task} networks) on {probe_task}"


def gain_label(arch: str, layer: str, trained: str, train_task: str, feature: str, probe_task: str) -> str:
    return "gain of " + concat_label(arch, layer, trained, train_task, feature, probe_task)


def sim_label(task: str, arch: str, layer: str, trained: str, feature: str) -> str:
    return f"{arch_display(arch)} {layer} ({trained}, {task} networks) vs {feature}"


def pair_label(task: str, arch_a: str, arch_b: str, layer: str, trained: str) -> str:
    return f"{arch_display(arch_a)} vs {arch_display(arch_b)} {layer} ({trained}, {task} networks)"


def lookup(comparisons: pd.DataFrame, what: str, a: str, b: str) -> int | None:
    """Row (0-based) of the comparison ``what`` of sides ``a`` and ``b``, or None."""
    m = (comparisons["what"] == what) & (comparisons["a"] == a) & (comparisons["b"] == b)
    idx = comparisons.index[m.to_numpy()]
    return int(idx[0]) if len(idx) else None


# ----------------------------------------------------------------------------------------------------------
# Sides and their difference
# ----------------------------------------------------------------------------------------------------------
@dataclass
class Side:
    """Per-seed ``values`` (S,) and their clip replicates ``reps`` (S x B); ``seeds`` names the rows (paired
    comparisons match them); ``drawn``: network seeds, drawn with replacement (False: one row that averages probe
    seeds, or chance); ``count``: the seeds the side holds (None for chance)."""

    values: np.ndarray
    reps: np.ndarray
    seeds: list
    drawn: bool = True
    count: int | None = None

    def __post_init__(self):
        if self.count is None and self.drawn:
            self.count = len(self.values)

    def minus(self, other: Side) -> Side | None:
        """The per-seed difference with ``other`` over their common seeds (None without one)."""
        common = [s for s in self.seeds if s in set(other.seeds)]
        if not common:
            return None
        i = [self.seeds.index(s) for s in common]
        j = [other.seeds.index(s) for s in common]
        drawn = self.drawn and other.drawn
        return Side(
            self.values[i] - other.values[j],
            self.reps[i] - other.reps[j],
            common,
            drawn,
            len(common) if drawn else self.count if self.count is not None else other.count,
        )


def _side_replicates(side: Side, seed: int, which: int) -> np.ndarray:
    if side.drawn:
        return stats.seed_replicates(side.reps, seed, side=which)
    return side.reps.mean(0)


def difference(a: Side, b: Side, *, paired: bool, seed: int, level: float) -> dict:
    """difference (of the means over seeds), ci_low, ci_high, seeds_a, seeds_b, verdict of A - B (module
    docstring); NaN bounds when a replicate is missing."""
    if paired:
        d = a.minus(b)
        if d is None:
            return dict(difference=np.nan, ci_low=np.nan, ci_high=np.nan, seeds_a=a.count, seeds_b=b.count, verdict=0)
        value, reps = float(d.values.mean()), _side_replicates(d, seed, 0)
        seeds_a = seeds_b = d.count
    else:
        value = float(a.values.mean() - b.values.mean())
        reps = _side_replicates(a, seed, 0) - _side_replicates(b, seed, 1)
        seeds_a, seeds_b = a.count, b.count
    if reps.size == 0 or np.isnan(reps).any() or np.isnan(a.reps).any() or np.isnan(b.reps).any():
        lo = hi = np.nan
    else:
        lo, hi = (float(x) for x in stats.interval(reps, level))
    return dict(
        difference=value, ci_low=lo, ci_high=hi, seeds_a=seeds_a, seeds_b=seeds_b, verdict=stats.verdict(lo, hi)
    )


# ----------------------------------------------------------------------------------------------------------
# Replicates attached to the per-job rows
# ----------------------------------------------------------------------------------------------------------
def _key_text(df: pd.DataFrame, cols: list[str]) -> pd.DataFrame:
    """Key columns as comparable text: seeds as integers ('' when missing), the rest as strings."""
    out = {}
    for c in cols:
        v = df[c] if c in df.columns else pd.Series("task" if c == "labels" else "", index=df.index)
        if c in _SEED_COLUMNS:
            num = pd.to_numeric(v.replace("", np.nan), errors="coerce")
            out[c] = num.map(lambda x: "" if pd.isna(x) else str(int(x)))
        else:
            out[c] = v.fillna("").astype(str)
    return pd.DataFrame(out, index=df.index)


@dataclass
class Rows:
    """Per-job rows (a probe or similarity frame) with a ``rep`` column indexing ``reps`` (its last row is NaN:
    rows without replicates point there)."""

    frame: pd.DataFrame
    reps: np.ndarray
    attrs: dict

    @property
    def resamples(self) -> int:
        return self.reps.shape[1]

    def select(self, eq: dict) -> pd.DataFrame:
        """The rows whose columns equal ``eq``; the frame is indexed once by the coarse key columns that ``eq``
        names (every side names them), so a selection filters only the rows of one group."""
        coarse = tuple(c for c in _COARSE if c in eq and c in self.frame.columns)
        groups = self.__dict__.setdefault("_groups", {})
        if coarse not in groups:
            groups[coarse] = (
                {k if isinstance(k, tuple) else (k,): g for k, g in self.frame.groupby(list(coarse), sort=False)}
                if coarse
                else {(): self.frame}
            )
        sub = groups[coarse].get(tuple(eq[c] for c in coarse))
        if sub is None:
            return self.frame.iloc[:0]
        return _select(sub, {k: v for k, v in eq.items() if k not in coarse})


#: columns every side's selection names (probe rows, similarity rows)
_COARSE = ("labels", "split", "probe_task", "arch", "comparison", "task", "measure", "arch_a")


def attach(frame: pd.DataFrame, replicates, key_cols: list[str], scale_accuracy: bool = False) -> Rows:
    """``frame`` with the row of its value in ``replicates`` ((keys, values, reps, attrs) of
    :func:`deepfeat.formats.replicates.read_stacked`, or None). ``scale_accuracy``: replicates of accuracies stored
    as fractions (all values in [0, 1]) are scaled to percent, like the CSV readers scale the values."""
    keys, values, reps, attrs = replicates if replicates is not None else (pd.DataFrame(), np.zeros(0), None, {})
    B = int(attrs.get("resamples", 1)) if reps is not None and reps.size else 1
    reps = np.zeros((0, B)) if reps is None or not len(keys) else np.asarray(reps, np.float64).copy()
    if len(keys) and scale_accuracy and "metric" in keys.columns:
        acc = (keys["metric"] == "accuracy").to_numpy()
        finite = values[acc][np.isfinite(values[acc])]
        if finite.size and finite.max() <= 1.0:
            reps[acc] *= 100.0
    reps = np.vstack([reps, np.full((1, B), np.nan)])
    frame = frame.copy()
    if "feature" in frame.columns:
        frame["concat"] = frame["feature"].astype(str).str.contains(" + ", regex=False)
    if len(key_cols) and "labels" in key_cols and "labels" not in frame.columns:
        frame["labels"] = "task"
    if len(keys):
        k = _key_text(keys, key_cols).assign(rep=np.arange(len(keys)))
        k = k.drop_duplicates(key_cols, keep="first")
        f = _key_text(frame, key_cols)
        merged = f.merge(k, on=key_cols, how="left")
        frame["rep"] = merged["rep"].fillna(len(reps) - 1).astype(np.int64).to_numpy()
    else:
        frame["rep"] = len(reps) - 1
    return Rows(frame.reset_index(drop=True), reps, attrs)


def _select(frame: pd.DataFrame, eq: dict) -> pd.DataFrame:
    m = np.ones(len(frame), dtype=bool)
    for k, v in eq.items():
        m &= (frame[k] == v).to_numpy()
    return frame[m]


def probe_side(P: Rows, **eq) -> Side | None:
    """The test scores of ``eq`` (labels 'task' and a plain layer, not a concatenation, unless given): per network
    seed (probe seeds averaged); a hand-crafted feature (arch '') is one row averaging its probe seeds."""
    eq = {"labels": "task", "split": "test", **({} if "feature" in eq else {"concat": False}), **eq}
    r = P.select(eq)
    if r.empty:
        return None
    reps = P.reps[r["rep"].to_numpy()]
    if (r["arch"] == "").all():
        return Side(
            np.array([r["value"].mean()]), reps.mean(0, keepdims=True), ["probe seeds"], drawn=False, count=len(r)
        )
    seeds = r["seed"].astype("Int64").astype(str).to_numpy()
    order = sorted(set(seeds))
    vals = np.array([r["value"].to_numpy()[seeds == s].mean() for s in order])
    rr = np.stack([reps[seeds == s].mean(0) for s in order])
    return Side(vals, rr, order)


def sim_side(S: Rows, **eq) -> Side | None:
    """Similarity values of ``eq``, one per seed (of side a)."""
    r = S.select(eq)
    r = r[r["value"].notna()]
    if r.empty:
        return None
    reps = S.reps[r["rep"].to_numpy()]
    seeds = r["seed_a"].map(lambda x: "" if pd.isna(x) else str(int(x))).to_numpy()
    order = sorted(set(seeds))
    vals = np.array([r["value"].to_numpy()[seeds == s].mean() for s in order])
    rr = np.stack([reps[seeds == s].mean(0) for s in order])
    return Side(vals, rr, order)


def table_side(mean: float, n, B: int) -> Side:
    """A side known only by its mean over seeds (the networks' own scores): no replicates."""
    return Side(
        np.array([float(mean)]), np.full((1, B), np.nan), ["mean"], drawn=False, count=None if pd.isna(n) else int(n)
    )


def chance_sides(mel_path, chance: pd.DataFrame, attrs: dict, B: int, log=None) -> dict[str, Side]:
    """Chance of every task as a side: its value on the resampled test clips (the probes' resamples, when the
    replicates were drawn over this clip table's test clips), else the value alone (no interval)."""
    with open_h5(mel_path, "mel") as f:
        meta, tasks, _ = read_clip_table(f)
    test = meta["split"].to_numpy() == TEST
    w = None
    if attrs and attrs.get("clips") == fingerprint(meta["clip_id"].to_numpy()[test]):
        w = stats.bootstrap_weights(
            meta["recording"].to_numpy()[test], int(attrs["resamples"]), int(attrs["seed"]), int(attrs["stream"])
        )
    elif attrs and log is not None:
        log.warning("probe replicates were not drawn over this clip table's test clips: chance has no interval")
    out = {}
    for t in tasks:
        row = chance[chance["task"] == t["name"]].iloc[0]
        if w is None:
            reps = np.full((1, B), np.nan)
        elif t["type"] == "classification":
            codes = meta[t["name"] + "_code"].to_numpy()
            major = int(np.bincount(codes[test], minlength=len(t["classes"])).argmax())
            reps = 100.0 * stats.weighted_accuracy(codes[test] == major, w)[None]
        else:
            y = meta[t["name"]].to_numpy(np.float64)
            reps = stats.weighted_rmse(y[test] - y[~test].mean(), w)[None]
        out[t["name"]] = Side(np.array([float(row["value"])]), reps, ["chance"], drawn=False, count=None)
    return out


# ----------------------------------------------------------------------------------------------------------
# The comparisons the findings state
# ----------------------------------------------------------------------------------------------------------
class _Table:
    def __init__(self, seed: int, level: float):
        self.rows: list[dict] = []
        self.seed, self.level = int(seed), float(level)

    def add(self, question, what, a_label, b_label, metric, a: Side | None, b: Side | None, paired: bool):
        if a is None or b is None:
            return
        d = difference(a, b, paired=paired, seed=self.seed, level=self.level)
        self.rows.append(dict(question=question, what=what, a=a_label, b=b_label, metric=metric, level=self.level, **d))


def _probe_comparisons(T: _Table, P: Rows, t: dict, chance: dict[str, Side]) -> None:
    deep = P.frame[(P.frame["arch"] != "") & ~P.frame["concat"]]
    hc = P.frame[P.frame["arch"] == ""]
    B = P.resamples
    best = {}
    hct = t["handcrafted"]
    for pt in order_values(hc["probe_task"], "probe_task"):
        sel = hct[(hct["probe_task"] == pt) & (hct["split"] == "test") & hct["mean"].notna()]
        if len(sel):
            metric = sel["metric"].iloc[0]
            best[pt] = sel.loc[sel["mean"].idxmin() if metric == "rmse" else sel["mean"].idxmax(), "feature"]
        for f in order_values(hc.loc[hc["probe_task"] == pt, "feature"], "feature"):
            a = probe_side(P, feature=f, arch="", probe_task=pt)
            if a is None:
                continue
            metric = _select(hc, dict(feature=f, probe_task=pt))["metric"].iloc[0]
            T.add("q1", "handcrafted_vs_chance", hc_label(f, pt), chance_label(pt), metric, a, chance.get(pt), False)
            ctl = probe_side(P, feature=f, arch="", probe_task=pt, labels="control")
            T.add("q1", "task_vs_control", hc_label(f, pt), control_label(hc_label(f, pt)), metric, a, ctl, True)
    nets = t["networks"]
    keys = ["train_task", "probe_task", "arch", "layer", "trained"]
    groups = deep[(deep["labels"] == "task") & (deep["split"] == "test")].groupby(keys, sort=False)
    for (tt, pt, arch, layer, tr), g in groups:
        metric = g["metric"].iloc[0]
        lab = deep_label(arch, layer, tr, tt, pt)
        a = probe_side(P, train_task=tt, probe_task=pt, arch=arch, layer=layer, trained=tr)
        T.add("q1", "deep_vs_chance", lab, chance_label(pt), metric, a, chance.get(pt), False)
        ctl = probe_side(P, train_task=tt, probe_task=pt, arch=arch, layer=layer, trained=tr, labels="control")
        T.add("q1", "task_vs_control", lab, control_label(lab), metric, a, ctl, True)
        if pt in best:
            f = best[pt]
            T.add(
                "q1",
                "deep_vs_handcrafted",
                lab,
                hc_label(f, pt),
                metric,
                a,
                probe_side(P, feature=f, arch="", probe_task=pt),
                False,
            )
        if tr == "trained":
            u = probe_side(P, train_task=tt, probe_task=pt, arch=arch, layer=layer, trained="untrained")
            T.add("q3", "trained_vs_untrained", lab, deep_label(arch, layer, "untrained", tt, pt), metric, a, u, True)
            if tt != pt:
                m = probe_side(P, train_task=pt, probe_task=pt, arch=arch, layer=layer, trained="trained")
                T.add("q1", "cross_task_vs_matched", lab, deep_label(arch, layer, tr, pt, pt), metric, a, m, False)
            net = nets[(nets["task"] == pt) & (nets["arch"] == arch)]
            if len(net) and pd.notna(net["mean"].iloc[0]):
                side = table_side(net["mean"].iloc[0], net["n"].iloc[0], B)
                T.add("q1", "deep_vs_network", lab, network_label(arch, pt), metric, a, side, False)
            ff = nets[(nets["task"] == pt) & (nets["arch"] == "FeedForward")]
            if len(ff) and pd.notna(ff["mean"].iloc[0]) and arch != "FeedForward":
                side = table_side(ff["mean"].iloc[0], ff["n"].iloc[0], B)
                T.add("q1", "network_vs_deep", network_label("FeedForward", pt), lab, metric, side, a, False)


def _concat_comparisons(T: _Table, P: Rows, t: dict) -> None:
    c = P.frame[P.frame["concat"] & (P.frame["labels"] == "task")]
    c = c[c["split"] == "test"]
    keys = ["train_task", "probe_task", "arch", "layer", "trained"]
    for (tt, pt, arch, layer, tr), g in c.groupby(keys, sort=False):
        metric = g["metric"].iloc[0]
        sign = -1.0 if metric == "rmse" else 1.0
        alone = probe_side(P, train_task=tt, probe_task=pt, arch=arch, layer=layer, trained=tr)
        gains = {}
        for feature in g["feature"].unique():
            hc = feature.split(" + ", 1)[1]
            a = probe_side(P, train_task=tt, probe_task=pt, arch=arch, layer=layer, trained=tr, feature=feature)
            T.add(
                "concat",
                "concat_vs_alone",
                concat_label(arch, layer, tr, tt, hc, pt),
                deep_label(arch, layer, tr, tt, pt),
                metric,
                a,
                alone,
                True,
            )
            if a is not None and alone is not None:
                d = a.minus(alone)
                if d is not None:
                    gains[hc] = Side(sign * d.values, sign * d.reps, d.seeds, d.drawn, d.count)
        if len(gains) > 1:
            ct = t["concat"]
            ct = ct[
                (ct["train_task"] == tt)
                & (ct["probe_task"] == pt)
                & (ct["arch"] == arch)
                & (ct["layer"] == layer)
                & (ct["trained"] == tr)
            ]
            ct = ct[ct["gain_mean"].notna() & ct["feature"].isin(list(gains))]
            if len(ct) > 1:
                hi, lo = ct.loc[ct["gain_mean"].idxmax(), "feature"], ct.loc[ct["gain_mean"].idxmin(), "feature"]
                if hi != lo:
                    T.add(
                        "concat",
                        "gain_vs_gain",
                        gain_label(arch, layer, tr, tt, hi, pt),
                        gain_label(arch, layer, tr, tt, lo, pt),
                        metric,
                        gains[hi],
                        gains[lo],
                        True,
                    )


def _similarity_comparisons(T: _Table, S: Rows, t: dict) -> None:
    best = t["similarity_best"]
    dvh = dict(comparison="deep_vs_handcrafted")
    for (task, arch, tr, measure), b in best.groupby(["task", "arch", "trained", "measure"], sort=False):
        layers = order_values(b["layer"], "layer")
        sides = {}
        for layer in layers:
            r = b[b["layer"] == layer].iloc[0]
            eq = dict(dvh, task=task, arch_a=arch, layer_a=layer, trained_a=tr, measure=measure)
            sides[layer] = (r["feature"], sim_side(S, **eq, feature_b=r["feature"]))
            rnd = sim_side(S, **eq, feature_b="Random")
            T.add(
                "q2",
                "best_vs_random",
                sim_label(task, arch, layer, tr, r["feature"]),
                sim_label(task, arch, layer, tr, "Random"),
                measure,
                sides[layer][1],
                rnd,
                True,
            )
            if tr == "untrained":
                other = sim_side(S, **dict(eq, trained_a="trained"), feature_b=r["feature"])
                T.add(
                    "q3",
                    "untrained_vs_trained",
                    sim_label(task, arch, layer, tr, r["feature"]),
                    sim_label(task, arch, layer, "trained", r["feature"]),
                    measure,
                    sides[layer][1],
                    other,
                    True,
                )
        first, last = layers[0], layers[-1]
        if first != last:
            (fa, sa), (fb, sb) = sides[first], sides[last]
            T.add(
                "q2",
                "first_vs_last_layer",
                sim_label(task, arch, first, tr, fa),
                sim_label(task, arch, last, tr, fb),
                measure,
                sa,
                sb,
                True,
            )
    summ = t["similarity"]
    aa = summ[(summ["comparison"] == "arch_vs_arch") & (summ["layer_a"] == summ["layer_b"]) & summ["mean"].notna()]
    for (task, tr, measure), g in aa.groupby(["task", "trained_a", "measure"], sort=False):
        layer = last_layer(g["layer_a"])
        g = g[g["layer_a"] == layer]
        hi, lo = g.loc[g["mean"].idxmax()], g.loc[g["mean"].idxmin()]
        if measure in DISTANCES:  # smaller = more similar
            hi, lo = lo, hi
        if hi.name == lo.name:
            continue
        eq = dict(comparison="arch_vs_arch", task=task, trained_a=tr, layer_a=layer, layer_b=layer, measure=measure)
        a = sim_side(S, **eq, arch_a=hi["arch_a"], arch_b=hi["arch_b"])
        b = sim_side(S, **eq, arch_a=lo["arch_a"], arch_b=lo["arch_b"])
        T.add(
            "q2",
            "arch_pair_vs_arch_pair",
            pair_label(task, hi["arch_a"], hi["arch_b"], layer, tr),
            pair_label(task, lo["arch_a"], lo["arch_b"], layer, tr),
            measure,
            a,
            b,
            False,
        )


def comparisons_table(t: dict, P: Rows, S: Rows, chance: dict[str, Side], *, seed: int, level: float) -> pd.DataFrame:
    """The comparisons table (module docstring) from the built result tables ``t`` (which rows the findings
    compare: the best hand-crafted feature, the most similar features ...), the probe rows ``P`` and similarity rows
    ``S`` with their replicates, and the chance sides."""
    T = _Table(seed, level)
    _probe_comparisons(T, P, t, chance)
    _concat_comparisons(T, P, t)
    _similarity_comparisons(T, S, t)
    cols = "question what a b metric difference ci_low ci_high level seeds_a seeds_b verdict".split()
    return pd.DataFrame(T.rows, columns=cols)


__all__ = [
    "Rows",
    "Side",
    "attach",
    "chance_label",
    "chance_sides",
    "comparisons_table",
    "concat_label",
    "control_label",
    "deep_label",
    "difference",
    "gain_label",
    "hc_label",
    "lookup",
    "network_label",
    "pair_label",
    "probe_side",
    "sim_label",
    "sim_side",
    "table_side",
]
