"""Aggregate the per-job outputs of one dataset into tidy result tables (CSV + Markdown).

Inputs follow ``docs/formats.md``: probe score and confusion CSVs, similarity CSVs, training histories
(``models/{task}/{arch}/seed{seed}.history.csv``) and ``mel.h5`` (clip table, for chance levels).

Definitions used throughout (every table carries a ``dataset`` column first):

* Accuracy is reported in percent (0-100). Probe and history files may store it as a fraction in [0, 1]
  (detected per file: a file whose accuracies all lie in [0, 1] is a fraction file) or in percent.
  RMSE is in the target's raw units (MIDI pitch, velocity, ...).
* ``mean`` / ``sd`` are the mean and the sample standard deviation (ddof = 1; NaN for a single value) over
  seeds, ``n`` the number of seeds. Hand-crafted features: over probe seeds. Deep features: over model seeds,
  after averaging the probe seeds of each model seed. Networks: over model seeds, the last epoch's test metric.
  Similarities: over every seed (or seed pair) that shares the other keys.
* Chance (``chance.csv``): classification = majority-class share of the test split (%); regression = RMSE of
  predicting the training-split mean on the test split.
* ``gain`` (concatenation table) is an improvement: accuracy(concat) - accuracy(alone) in percentage points,
  or RMSE(alone) - RMSE(concat); positive means the hand-crafted feature helps. Computed per model seed.
"""
from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from deepfeat.io import open_h5, read_clip_table, write_csv

LAYER_ORDER = ["conv1", "pool1", "conv2", "pool2", "conv3", "fc1"]
ARCH_ORDER = ["Regular", "Deformable", "Dilated", "1dF", "1dT", "FeedForward"]
TRAINED_ORDER = ["trained", "untrained", ""]
MEASURE_ORDER = ["cka", "cka_debiased", "r2_lr", "r2_cca", "rho_cca", "r2_svcca", "rho_svcca"]
COMPARISONS = [
    "deep_vs_handcrafted",
    "trained_vs_untrained",
    "layer_vs_layer",
    "seed_vs_seed",
    "arch_vs_arch",
    "channel_vs_channel",
]
PRIMARY_MEASURE = "cka"
ARCH_DISPLAY = {"FeedForward": "Feed Forward"}
MEASURE_DISPLAY = {
    "cka": "linear CKA",
    "cka_debiased": "debiased CKA",
    "r2_lr": "R² (linear regression)",
    "r2_cca": "R² CCA",
    "rho_cca": "ρ CCA",
    "r2_svcca": "R² SVCCA",
    "rho_svcca": "ρ SVCCA",
}
METRIC_UNIT = {"accuracy": "%", "rmse": "target units"}

PROBE_COLUMNS = ["dataset", "feature", "arch", "seed", "layer", "trained", "train_task", "probe_task",
                 "probe_seed", "metric", "split", "value"]
CONFUSION_COLUMNS = [c for c in PROBE_COLUMNS if c not in ("metric", "value")] + ["true", "predicted", "count"]
SIMILARITY_COLUMNS = ["dataset", "comparison", "task", "arch_a", "seed_a", "layer_a", "trained_a", "arch_b",
                      "seed_b", "layer_b", "trained_b", "feature_b", "measure", "value", "ci_low", "ci_high", "n",
                      "p_a", "p_b", "method", "flag"]
HISTORY_COLUMNS = ["epoch", "train_loss", "test_loss", "train_metric", "test_metric", "metric", "clips_per_s"]
_NA = ["", "nan", "NaN", "NA", "<NA>", "None", "null"]

# Every written table: column -> "s" (string), "f" (float) or "i" (nullable integer). Order = column order.
TABLE_COLUMNS: dict[str, dict[str, str]] = {
    "chance": dict(dataset="s", task="s", type="s", is_main="s", metric="s", value="f", majority_class="s",
                   n_classes="i", n_train="i", n_test="i"),
    "table1": dict(dataset="s", task="s", feature="s", kind="s", arch="s", layer="s", metric="s", mean="f",
                   sd="f", n="i", text="s"),
    "handcrafted": dict(dataset="s", feature="s", probe_task="s", metric="s", split="s", mean="f", sd="f",
                        n="i"),
    "layers": dict(dataset="s", train_task="s", probe_task="s", arch="s", layer="s", trained="s", metric="s",
                   split="s", mean="f", sd="f", n="i"),
    "networks": dict(dataset="s", task="s", arch="s", metric="s", mean="f", sd="f", n="i", train_mean="f",
                     epochs="i"),
    "robustness": dict(dataset="s", train_task="s", probe_task="s", arch="s", layer="s", metric="s", mean="f",
                       sd="f", n="i", matched_mean="f", matched_sd="f", network_mean="f", network_sd="f",
                       handcrafted_best="s", handcrafted_mean="f", handcrafted_sd="f", chance="f"),
    "concat": dict(dataset="s", train_task="s", probe_task="s", arch="s", layer="s", trained="s", feature="s",
                   metric="s", alone_mean="f", alone_sd="f", concat_mean="f", concat_sd="f", gain_mean="f",
                   gain_sd="f", n="i", feature_mean="f", cka="f"),
    "similarity": dict(dataset="s", comparison="s", task="s", arch_a="s", layer_a="s", trained_a="s",
                       arch_b="s", layer_b="s", trained_b="s", feature_b="s", measure="s", mean="f", sd="f",
                       n="i", p_a="f", p_b="f", method="s", flag="s"),
    "similarity_best": dict(dataset="s", task="s", arch="s", layer="s", trained="s", measure="s", feature="s",
                            mean="f", sd="f", n="i", random_mean="f"),
    "confusion": dict(dataset="s", feature="s", arch="s", layer="s", trained="s", train_task="s",
                      probe_task="s", split="s", true="s", predicted="s", count="f", runs="i"),
}


# ----------------------------------------------------------------------------------------------------------
# Small helpers: ordering, formatting
# ----------------------------------------------------------------------------------------------------------
def arch_display(arch: str) -> str:
    return ARCH_DISPLAY.get(arch, arch)


def slug(s: str) -> str:
    """File-name-safe version of a display name: lower case, runs of other characters -> '_'."""
    return re.sub(r"[^a-z0-9]+", "_", str(s).lower()).strip("_") or "x"


def natural_key(s) -> tuple:
    parts = re.split(r"(\d+)", str(s))
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts)


def _rank(values: Iterable, order: list[str]) -> dict:
    """A sort rank for every value: known ones by ``order``, the rest after them in natural order."""
    vals = sorted(set(values), key=natural_key)
    known = {v: i for i, v in enumerate(order)}
    rest = [v for v in vals if v not in known]
    return {**{v: known[v] for v in vals if v in known}, **{v: len(order) + i for i, v in enumerate(rest)}}


_ORDERS = {
    "layer": LAYER_ORDER, "layer_a": LAYER_ORDER, "layer_b": LAYER_ORDER,
    "arch": ARCH_ORDER, "arch_a": ARCH_ORDER, "arch_b": ARCH_ORDER,
    "trained": TRAINED_ORDER, "trained_a": TRAINED_ORDER, "trained_b": TRAINED_ORDER,
    "measure": MEASURE_ORDER, "comparison": COMPARISONS,
}


def order_values(values: Iterable, column: str) -> list:
    """Distinct values of a column in display order (layers conv1..conv3, architectures as in the paper ...)."""
    r = _rank(values, _ORDERS.get(column, []))
    return sorted(r, key=lambda v: r[v])


def sort_frame(df: pd.DataFrame, cols: list[str]) -> pd.DataFrame:
    """Sort by ``cols`` using the display orders of layers/architectures/measures, natural order otherwise."""
    cols = [c for c in cols if c in df.columns]
    if df.empty or not cols:
        return df.reset_index(drop=True)
    keys = {}
    for c in cols:
        if df[c].dtype.kind in "fiub":
            keys[c] = df[c]
        else:
            r = _rank(df[c].astype(str), _ORDERS.get(c, []))
            keys[c] = df[c].astype(str).map(r)
    tmp = pd.DataFrame(keys)
    idx = tmp.sort_values(cols, kind="stable").index
    return df.loc[idx].reset_index(drop=True)


def fmt_number(x: float, digits: int) -> str:
    """Fixed-point text of a number (what findings quote and what the Markdown tables show)."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.{digits}f}"


def fmt_mean_sd(mean: float, sd: float, digits: int) -> str:
    """'mean ± sd' at ``digits`` decimals; just the mean when sd is undefined (a single seed)."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "n/a"
    if sd is None or (isinstance(sd, float) and math.isnan(sd)) or pd.isna(sd):
        return fmt_number(mean, digits)
    return f"{fmt_number(mean, digits)} ± {fmt_number(sd, digits)}"


def metric_digits(metric: str) -> int:
    """Decimals used for a metric: accuracy (%) 1, RMSE 2, similarities 2."""
    return {"accuracy": 1, "rmse": 2}.get(metric, 2)


# ----------------------------------------------------------------------------------------------------------
# Readers of the stage outputs (validated against docs/formats.md)
# ----------------------------------------------------------------------------------------------------------
def _as_list(x) -> list[str]:
    if x is None:
        return []
    if isinstance(x, (str, Path)):
        return [str(x)]
    return [str(p) for p in x]


def _read_csv(path: str | Path, required: list[str], numeric: list[str], what: str) -> pd.DataFrame:
    """Read one CSV: string columns as str ('' for empty), numeric columns as float; clear errors."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} file not found")
    try:
        header = list(pd.read_csv(path, nrows=0).columns)
    except pd.errors.EmptyDataError:
        raise ValueError(f"{path}: empty file, expected a {what} CSV with columns {required} (docs/formats.md)")
    missing = [c for c in required if c not in header]
    if missing:
        raise ValueError(f"{path}: {what} CSV lacks columns {missing}; expected {required} (docs/formats.md)")
    df = pd.read_csv(
        path,
        dtype={c: str for c in header if c not in numeric},
        keep_default_na=False,
        na_values={c: _NA for c in numeric if c in header},
    )
    for c in numeric:
        if c in df.columns and df[c].dtype.kind not in "fiub" and len(df):
            bad = df[c][pd.to_numeric(df[c], errors="coerce").isna() & ~df[c].isin(_NA)].unique()[:3]
            raise ValueError(f"{path}: column '{c}' must be numeric, found {list(bad)}")
        if c in df.columns:
            df[c] = df[c].astype(np.float64)
    return df


def _check_dataset(df: pd.DataFrame, path, dataset: str | None) -> None:
    if dataset is None or df.empty:
        return
    other = sorted(set(df["dataset"]) - {dataset})
    if other:
        raise ValueError(f"{path}: rows of dataset(s) {other} in the inputs of dataset '{dataset}'")


def _check_values(df: pd.DataFrame, col: str, allowed: set, path) -> None:
    bad = sorted(set(df[col]) - allowed)
    if bad:
        raise ValueError(f"{path}: column '{col}' has {bad}; expected one of {sorted(allowed)} (docs/formats.md)")


def _accuracy_to_percent(df: pd.DataFrame, cols: list[str], is_acc: pd.Series, path, units: dict) -> pd.DataFrame:
    """Scale accuracy values of one file to percent when the file stores fractions (all values in [0, 1]).

    ``units`` counts the files read as 'fraction' / 'percent' (for one summary log line)."""
    vals = df.loc[is_acc, cols].to_numpy(dtype=np.float64)
    finite = vals[np.isfinite(vals)]
    if finite.size == 0:
        return df
    if finite.min() < 0 or finite.max() > 100:
        raise ValueError(f"{path}: accuracy values outside [0, 100] (min {finite.min()}, max {finite.max()})")
    if finite.max() <= 1.0:
        df.loc[is_acc, cols] = vals * 100.0
        units["fraction"] = units.get("fraction", 0) + 1
    else:
        units["percent"] = units.get("percent", 0) + 1
    return df


def _log_units(units: dict, what: str, log) -> None:
    if log is not None and units:
        log.info(f"{what}: accuracy stored as a fraction in {units.get('fraction', 0)} file(s), as percent in "
                 f"{units.get('percent', 0)} file(s); all reported in percent")


def read_probe_scores(paths, dataset: str | None = None, log=None) -> pd.DataFrame:
    """All probe score rows of ``paths`` (columns PROBE_COLUMNS), accuracy in percent, seeds as Int64."""
    frames, units = [], {}
    for p in _as_list(paths):
        df = _read_csv(p, PROBE_COLUMNS, ["seed", "probe_seed", "value"], "probe score")[PROBE_COLUMNS]
        _check_dataset(df, p, dataset)
        _check_values(df, "metric", {"accuracy", "rmse"}, p)
        _check_values(df, "split", {"train", "test"}, p)
        _check_values(df, "trained", {"trained", "untrained", ""}, p)
        df = _accuracy_to_percent(df, ["value"], df["metric"] == "accuracy", p, units)
        frames.append(df)
    _log_units(units, "probe scores", log)
    out = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=PROBE_COLUMNS)
    for c in ("seed", "probe_seed"):
        out[c] = pd.to_numeric(out[c]).astype("Int64")
    out["value"] = out["value"].astype(np.float64)
    return out


def read_confusions(paths, dataset: str | None = None) -> pd.DataFrame:
    frames = []
    for p in _as_list(paths):
        df = _read_csv(p, CONFUSION_COLUMNS, ["seed", "probe_seed", "count"], "confusion")[CONFUSION_COLUMNS]
        _check_dataset(df, p, dataset)
        frames.append(df)
    out = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=CONFUSION_COLUMNS)
    for c in ("seed", "probe_seed"):
        out[c] = pd.to_numeric(out[c]).astype("Int64")
    out["count"] = out["count"].astype(np.float64)
    return out


def read_similarity(paths, dataset: str | None = None) -> pd.DataFrame:
    numeric = ["seed_a", "seed_b", "value", "ci_low", "ci_high", "n", "p_a", "p_b"]
    frames = []
    for p in _as_list(paths):
        df = _read_csv(p, SIMILARITY_COLUMNS, numeric, "similarity")[SIMILARITY_COLUMNS]
        _check_dataset(df, p, dataset)
        _check_values(df, "comparison", set(COMPARISONS), p)
        _check_values(df, "measure", set(MEASURE_ORDER), p)
        frames.append(df)
    out = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=SIMILARITY_COLUMNS)
    for c in numeric:
        out[c] = out[c].astype(np.float64)
    return out


_HISTORY_RE = re.compile(r"models/(?P<task>[^/]+)/(?P<arch>[^/]+)/seed(?P<seed>\d+)\.history\.csv$")


def read_histories(paths, log=None) -> pd.DataFrame:
    """The last epoch of every training history: task, arch, seed (from the path), epoch, metric, scores."""
    rows, units = [], {}
    for p in _as_list(paths):
        m = _HISTORY_RE.search(Path(p).as_posix())
        if m is None:
            raise ValueError(f"{p}: history path must end in models/<task>/<arch>/seed<seed>.history.csv")
        df = _read_csv(p, HISTORY_COLUMNS, [c for c in HISTORY_COLUMNS if c != "metric"], "training history")
        if df.empty:
            raise ValueError(f"{p}: training history has no rows")
        _check_values(df, "metric", {"accuracy", "rmse"}, p)
        df = _accuracy_to_percent(df, ["train_metric", "test_metric"], df["metric"] == "accuracy", p, units)
        last = df.loc[df["epoch"].idxmax()]
        rows.append(dict(task=m["task"], arch=m["arch"], seed=int(m["seed"]), epoch=int(last["epoch"]),
                         metric=last["metric"], train_metric=float(last["train_metric"]),
                         test_metric=float(last["test_metric"])))
    _log_units(units, "training histories", log)
    cols = ["task", "arch", "seed", "epoch", "metric", "train_metric", "test_metric"]
    return pd.DataFrame(rows, columns=cols)


# ----------------------------------------------------------------------------------------------------------
# Aggregations
# ----------------------------------------------------------------------------------------------------------
def mean_sd(df: pd.DataFrame, keys: list[str], value: str = "value") -> pd.DataFrame:
    """Group by ``keys``: mean, sample sd (ddof 1, NaN for one value) and count of non-NaN ``value``s."""
    if df.empty:
        return pd.DataFrame(columns=keys + ["mean", "sd", "n"])
    g = df.groupby(keys, sort=False, dropna=False)[value]
    out = g.agg(["mean", "std", "count"]).reset_index()
    return out.rename(columns={"std": "sd", "count": "n"})


def chance_table(mel_path, dataset: str) -> pd.DataFrame:
    """Chance level of every task from the clip table of ``mel.h5`` (see module docstring)."""
    with open_h5(mel_path, "mel") as f:
        meta, tasks, main = read_clip_table(f)
    test = meta["split"].to_numpy() == 1
    train = ~test
    if not test.any() or not train.any():
        raise ValueError(f"{mel_path}: the clip table needs clips in both splits (train {train.sum()}, "
                         f"test {test.sum()})")
    rows = []
    for t in tasks:
        row = dict(dataset=dataset, task=t["name"], type=t["type"], is_main=str(t["name"] == main),
                   n_train=int(train.sum()), n_test=int(test.sum()))
        if t["type"] == "classification":
            codes = meta[t["name"] + "_code"].to_numpy()[test]
            counts = np.bincount(codes, minlength=len(t["classes"]))
            row.update(metric="accuracy", value=100.0 * counts.max() / counts.sum(),
                       majority_class=str(t["classes"][int(counts.argmax())]), n_classes=len(t["classes"]))
        else:
            y = meta[t["name"]].to_numpy(dtype=np.float64)
            rmse = float(np.sqrt(np.mean((y[test] - y[train].mean()) ** 2)))
            row.update(metric="rmse", value=rmse, majority_class="", n_classes=pd.NA)
        rows.append(row)
    return pd.DataFrame(rows)


def _split_deep(scores: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(hand-crafted rows, plain deep rows, concatenation rows with column 'hc' = the hand-crafted name)."""
    hc = scores[scores["arch"] == ""]
    deep = scores[scores["arch"] != ""].copy()
    is_concat = deep["feature"].str.contains(" + ", regex=False)
    concat = deep[is_concat].copy()
    concat["hc"] = concat["feature"].str.split(" + ", n=1, regex=False).str[1]
    return hc, deep[~is_concat], concat


_DEEP_KEYS = ["train_task", "probe_task", "arch", "layer", "trained", "metric", "split"]


def _per_model_seed(deep: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Average the probe seeds of each model seed (one value per model seed and key)."""
    if deep.empty:
        return pd.DataFrame(columns=keys + ["seed", "value"])
    return deep.groupby(keys + ["seed"], sort=False, dropna=False)["value"].mean().reset_index()


def handcrafted_table(hc: pd.DataFrame) -> pd.DataFrame:
    out = mean_sd(hc, ["feature", "probe_task", "metric", "split"])
    return sort_frame(out, ["probe_task", "metric", "split", "feature"])


def layers_table(deep: pd.DataFrame) -> pd.DataFrame:
    out = mean_sd(_per_model_seed(deep, _DEEP_KEYS), _DEEP_KEYS)
    return sort_frame(out, _DEEP_KEYS)


def networks_table(hist: pd.DataFrame) -> pd.DataFrame:
    if hist.empty:
        return pd.DataFrame(columns=["task", "arch", "metric", "mean", "sd", "n", "train_mean", "epochs"])
    out = mean_sd(hist, ["task", "arch", "metric"], "test_metric")
    extra = hist.groupby(["task", "arch", "metric"], sort=False).agg(
        train_mean=("train_metric", "mean"), epochs=("epoch", "max")).reset_index()
    out = out.merge(extra, on=["task", "arch", "metric"], how="left")
    return sort_frame(out, ["task", "arch"])


def last_layer(layers: Iterable[str]) -> str:
    """The deepest convolutional layer present (conv3 normally)."""
    present = [l for l in order_values(layers, "layer") if l.startswith("conv")]
    if not present:
        present = order_values(layers, "layer")
    return present[-1]


def table1(chance: pd.DataFrame, hc: pd.DataFrame, layers: pd.DataFrame, networks: pd.DataFrame,
           main_task: str) -> pd.DataFrame:
    """The method's Table 1: main-task test accuracy (%) of chance, hand-crafted features, conv3 of every
    architecture (trained on the main task) and the Feed Forward network's own accuracy."""
    rows = []
    ch = chance[chance["task"] == main_task]
    if ch.empty:
        raise ValueError(f"main task '{main_task}' not in the clip table's tasks {list(chance['task'])}")
    rows.append(dict(feature="Chance (majority class)", kind="chance", arch="", layer="",
                     mean=float(ch["value"].iloc[0]), sd=np.nan, n=pd.NA))
    sel = (hc["probe_task"] == main_task) & (hc["metric"] == "accuracy") & (hc["split"] == "test")
    for r in hc[sel].sort_values("mean", ascending=False, kind="stable").itertuples():
        rows.append(dict(feature=r.feature, kind="handcrafted", arch="", layer="", mean=r.mean, sd=r.sd, n=r.n))
    sel = ((layers["train_task"] == main_task) & (layers["probe_task"] == main_task)
           & (layers["trained"] == "trained") & (layers["metric"] == "accuracy") & (layers["split"] == "test"))
    deep = layers[sel]
    for arch in order_values(deep["arch"], "arch"):
        d = deep[deep["arch"] == arch]
        layer = last_layer(d["layer"])
        r = d[d["layer"] == layer].iloc[0]
        rows.append(dict(feature=f"{arch_display(arch)} ({layer})", kind="deep", arch=arch, layer=layer,
                         mean=r["mean"], sd=r["sd"], n=r["n"]))
    ff = networks[(networks["task"] == main_task) & (networks["arch"] == "FeedForward")]
    for r in ff.itertuples():
        rows.append(dict(feature="Feed Forward (network)", kind="network", arch="FeedForward", layer="",
                         mean=r.mean, sd=r.sd, n=r.n))
    out = pd.DataFrame(rows)
    out.insert(0, "task", main_task)
    out["metric"] = "accuracy"
    out["text"] = [fmt_mean_sd(m, s, 2) for m, s in zip(out["mean"], out["sd"])]
    return out


def table1_markdown(t1: pd.DataFrame) -> pd.DataFrame:
    """Display form of Table 1 (what table1.md and the findings page show)."""
    task = t1["task"].iloc[0] if len(t1) else ""
    kinds = {"chance": "baseline", "handcrafted": "hand-crafted", "deep": "deep features", "network": "network"}
    return pd.DataFrame({
        "feature": t1["feature"],
        "type": [kinds.get(k, k) for k in t1["kind"]],
        f"{task} test accuracy (%), mean ± sd": t1["text"],
        "seeds": [("" if pd.isna(n) else str(int(n))) for n in t1["n"]],
    })


def best_handcrafted(hc_table: pd.DataFrame) -> pd.DataFrame:
    """Best hand-crafted feature per probe task on the test split (max accuracy / min RMSE)."""
    t = hc_table[(hc_table["split"] == "test") & hc_table["mean"].notna()]
    if t.empty:
        return pd.DataFrame(columns=["probe_task", "metric", "handcrafted_best", "handcrafted_mean",
                                     "handcrafted_sd"])
    score = np.where(t["metric"] == "rmse", -t["mean"], t["mean"])
    t = t.assign(_s=score).sort_values("_s", ascending=False, kind="stable")
    best = t.groupby(["probe_task", "metric"], sort=False).head(1)
    return best.rename(columns={"feature": "handcrafted_best", "mean": "handcrafted_mean",
                                "sd": "handcrafted_sd"})[["probe_task", "metric", "handcrafted_best",
                                                          "handcrafted_mean", "handcrafted_sd"]]


def robustness_table(layers: pd.DataFrame, networks: pd.DataFrame, hc_table: pd.DataFrame,
                     chance: pd.DataFrame) -> pd.DataFrame:
    """Trained features of a net trained on ``train_task`` probed on ``probe_task`` (test split), beside the
    same arch/layer trained on the probe task itself (matched), the network trained on it, the best
    hand-crafted feature and chance."""
    t = layers[(layers["trained"] == "trained") & (layers["split"] == "test")].drop(columns=["trained", "split"])
    m = t[t["train_task"] == t["probe_task"]].rename(columns={"mean": "matched_mean", "sd": "matched_sd"})
    t = t.merge(m[["probe_task", "arch", "layer", "metric", "matched_mean", "matched_sd"]],
                on=["probe_task", "arch", "layer", "metric"], how="left")
    nets = networks.rename(columns={"task": "probe_task", "mean": "network_mean", "sd": "network_sd"})
    t = t.merge(nets[["probe_task", "arch", "metric", "network_mean", "network_sd"]],
                on=["probe_task", "arch", "metric"], how="left")
    t = t.merge(best_handcrafted(hc_table), on=["probe_task", "metric"], how="left")
    ch = chance.rename(columns={"task": "probe_task", "value": "chance"})[["probe_task", "chance"]]
    t = t.merge(ch, on="probe_task", how="left")
    t["handcrafted_best"] = t["handcrafted_best"].fillna("")
    return sort_frame(t, ["train_task", "probe_task", "arch", "layer"])


def concat_table(concat: pd.DataFrame, deep: pd.DataFrame, hc_table: pd.DataFrame,
                 sim_summary: pd.DataFrame) -> pd.DataFrame:
    """Deep layer alone vs deep layer + hand-crafted feature, paired per model seed (test split)."""
    cols = list(TABLE_COLUMNS["concat"])[1:]
    c = concat[concat["split"] == "test"]
    if c.empty:
        return pd.DataFrame(columns=cols)
    keys = ["train_task", "probe_task", "arch", "layer", "trained", "metric"]
    cs = _per_model_seed(c, keys + ["hc"]).rename(columns={"value": "concat"})
    al = _per_model_seed(deep[deep["split"] == "test"], keys).rename(columns={"value": "alone"})
    j = cs.merge(al, on=keys + ["seed"], how="inner")
    sign = np.where(j["metric"] == "rmse", -1.0, 1.0)
    j["gain"] = sign * (j["concat"] - j["alone"])
    g = j.groupby(keys + ["hc"], sort=False, dropna=False)
    out = g.agg(alone_mean=("alone", "mean"), alone_sd=("alone", "std"), concat_mean=("concat", "mean"),
                concat_sd=("concat", "std"), gain_mean=("gain", "mean"), gain_sd=("gain", "std"),
                n=("gain", "count")).reset_index().rename(columns={"hc": "feature"})
    hcm = hc_table[hc_table["split"] == "test"].rename(columns={"mean": "feature_mean"})
    out = out.merge(hcm[["feature", "probe_task", "metric", "feature_mean"]],
                    on=["feature", "probe_task", "metric"], how="left")
    s = sim_summary[(sim_summary["comparison"] == "deep_vs_handcrafted") & (sim_summary["measure"] == PRIMARY_MEASURE)]
    s = s.rename(columns={"task": "train_task", "arch_a": "arch", "layer_a": "layer", "trained_a": "trained",
                          "feature_b": "feature", "mean": "cka"})
    out = out.merge(s[["train_task", "arch", "layer", "trained", "feature", "cka"]],
                    on=["train_task", "arch", "layer", "trained", "feature"], how="left")
    return sort_frame(out[cols], ["train_task", "probe_task", "arch", "layer", "trained", "feature"])


_SIM_KEYS = ["comparison", "task", "arch_a", "layer_a", "trained_a", "arch_b", "layer_b", "trained_b",
             "feature_b", "measure"]


def similarity_summary(sim: pd.DataFrame) -> pd.DataFrame:
    """Mean/sd over seeds (or seed pairs) of every similarity value, per comparison and measure."""
    cols = list(TABLE_COLUMNS["similarity"])[1:]
    if sim.empty:
        return pd.DataFrame(columns=cols)
    g = sim.groupby(_SIM_KEYS, sort=False, dropna=False)
    out = g["value"].agg(["mean", "std", "count"]).reset_index().rename(columns={"std": "sd", "count": "n"})
    dims = g[["p_a", "p_b"]].first().reset_index(drop=True)
    join = lambda s: ";".join(sorted({v for v in s if v}))  # noqa: E731
    txt = g[["method", "flag"]].agg(join).reset_index(drop=True)
    out = pd.concat([out, dims, txt], axis=1)
    return sort_frame(out[cols], ["comparison", "task", "measure", "arch_a", "trained_a", "layer_a", "arch_b",
                                  "trained_b", "layer_b", "feature_b"])


def similarity_best(summary: pd.DataFrame) -> pd.DataFrame:
    """Most similar hand-crafted feature per (task, arch, layer, trained, measure), with the Random baseline."""
    cols = list(TABLE_COLUMNS["similarity_best"])[1:]
    s = summary[(summary["comparison"] == "deep_vs_handcrafted") & summary["mean"].notna()]
    if s.empty:
        return pd.DataFrame(columns=cols)
    keys = ["task", "arch_a", "layer_a", "trained_a", "measure"]
    rnd = s[s["feature_b"] == "Random"][keys + ["mean"]].rename(columns={"mean": "random_mean"})
    real = s[s["feature_b"] != "Random"]
    best = real.sort_values("mean", ascending=False, kind="stable").groupby(keys, sort=False).head(1)
    best = best.merge(rnd, on=keys, how="left")
    best = best.rename(columns={"arch_a": "arch", "layer_a": "layer", "trained_a": "trained", "feature_b": "feature"})
    return sort_frame(best[cols], ["task", "measure", "arch", "trained", "layer"])


def confusion_table(conf: pd.DataFrame) -> pd.DataFrame:
    """Confusion counts summed over seeds and probe seeds; ``runs`` = number of (seed, probe_seed) summed."""
    cols = list(TABLE_COLUMNS["confusion"])[1:]
    if conf.empty:
        return pd.DataFrame(columns=cols)
    keys = ["feature", "arch", "layer", "trained", "train_task", "probe_task", "split"]
    run = conf["seed"].fillna(-1).astype(np.int64).astype(str) + "/" + conf["probe_seed"].fillna(-1).astype(
        np.int64).astype(str)
    conf = conf.assign(_run=run)
    runs = conf.groupby(keys, sort=False)["_run"].nunique().rename("runs").reset_index()
    out = conf.groupby(keys + ["true", "predicted"], sort=False)["count"].sum().reset_index()
    out = out.merge(runs, on=keys, how="left")
    return out[cols]


# ----------------------------------------------------------------------------------------------------------
# Writing and reading the tables folder
# ----------------------------------------------------------------------------------------------------------
def _finish(df: pd.DataFrame, name: str, dataset: str) -> pd.DataFrame:
    spec = TABLE_COLUMNS[name]
    df = df.copy()
    df["dataset"] = dataset
    for c, kind in spec.items():
        if c not in df.columns:
            df[c] = "" if kind == "s" else np.nan
        if kind == "s":
            df[c] = df[c].fillna("").astype(str)
        elif kind == "i":
            df[c] = pd.to_numeric(df[c]).astype("Int64")
        else:
            df[c] = pd.to_numeric(df[c]).astype(np.float64)
    return df[list(spec)].reset_index(drop=True)


def write_table(df: pd.DataFrame, out_dir, name: str, markdown: pd.DataFrame | None = None) -> None:
    """``{name}.csv`` (tidy) and ``{name}.md`` (the same, or the given display frame), both atomic."""
    out_dir = Path(out_dir)
    write_csv(df, out_dir / f"{name}.csv")
    write_csv(df if markdown is None else markdown, out_dir / f"{name}.md", floatfmt=".4g")


def read_tables(tables_dir) -> dict[str, pd.DataFrame]:
    """Read back every table of TABLE_COLUMNS from a tables folder (strings '' not NaN, Int64 counts)."""
    tables_dir = Path(tables_dir)
    out = {}
    for name, spec in TABLE_COLUMNS.items():
        p = tables_dir / f"{name}.csv"
        if not p.is_file():
            raise FileNotFoundError(f"{p}: table missing (run the 'tables' rule)")
        numeric = [c for c, k in spec.items() if k != "s"]
        df = _read_csv(p, list(spec), numeric, f"'{name}' table")
        for c, k in spec.items():
            if k == "i":
                df[c] = df[c].astype("Int64")
        out[name] = df[list(spec)]
    return out


def build_tables(inputs: dict, out_dir, dataset: str, log: logging.Logger | None = None) -> dict[str, pd.DataFrame]:
    """Aggregate one dataset's stage outputs into the tables of TABLE_COLUMNS, written to ``out_dir``.

    ``inputs`` keys (paths or lists of paths; only ``mel`` is required): ``mel``, ``probe_handcrafted``,
    ``probe_deep``, ``histories``, ``similarity_deep``, ``similarity_channels``, ``similarity_cross``,
    ``confusion_handcrafted``, ``confusion_deep``. Returns the tables by name.
    """
    log = log or logging.getLogger("deepfeat")
    if "mel" not in inputs:
        raise ValueError("build_tables: inputs need 'mel' (the dataset's mel.h5, for the chance levels)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    chance = chance_table(inputs["mel"], dataset)
    main_task = chance.loc[chance["is_main"] == "True", "task"].iloc[0]
    log.info(f"{dataset}: main task '{main_task}', {len(chance)} tasks, chance levels computed")

    probe_paths = _as_list(inputs.get("probe_handcrafted")) + _as_list(inputs.get("probe_deep"))
    scores = read_probe_scores(probe_paths, dataset, log)
    hc, deep, concat = _split_deep(scores)
    log.info(f"read {len(probe_paths)} probe files: {len(hc)} hand-crafted, {len(deep)} deep, "
             f"{len(concat)} concatenation rows")
    hist = read_histories(inputs.get("histories"), log)
    log.info(f"read {len(hist)} training histories")
    sim_paths = sum((_as_list(inputs.get(k)) for k in ("similarity_deep", "similarity_channels",
                                                         "similarity_cross")), [])
    sim = read_similarity(sim_paths, dataset)
    log.info(f"read {len(sim_paths)} similarity files: {len(sim)} rows")
    conf_paths = _as_list(inputs.get("confusion_handcrafted")) + _as_list(inputs.get("confusion_deep"))
    conf = read_confusions(conf_paths, dataset)
    log.info(f"read {len(conf_paths)} confusion files: {len(conf)} rows")

    t = {"chance": chance}
    t["handcrafted"] = handcrafted_table(hc)
    t["layers"] = layers_table(deep)
    t["networks"] = networks_table(hist)
    t["table1"] = table1(chance, t["handcrafted"], t["layers"], t["networks"], main_task)
    t["robustness"] = robustness_table(t["layers"], t["networks"], t["handcrafted"], chance)
    t["similarity"] = similarity_summary(sim)
    t["concat"] = concat_table(concat, deep, t["handcrafted"], t["similarity"])
    t["similarity_best"] = similarity_best(t["similarity"])
    t["confusion"] = confusion_table(conf)
    for name in TABLE_COLUMNS:
        t[name] = _finish(t[name], name, dataset)
        md = table1_markdown(t[name]) if name == "table1" else None
        write_table(t[name], out_dir, name, md)
        log.info(f"wrote {out_dir / name}.csv/.md ({len(t[name])} rows)")
    return t
