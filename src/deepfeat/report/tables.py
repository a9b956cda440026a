"""Aggregate the per-job outputs of one dataset into tidy result tables (CSV + Markdown).

Inputs follow ``docs/formats.md``: probe score and confusion CSVs, similarity CSVs, training histories
(``models/{task}/{arch}/seed{seed}.history.csv``) and ``mel.h5`` (clip table, for chance levels), read through
:mod:`deepfeat.formats.tables`; the result tables (their columns: ``TABLE_COLUMNS`` there) are written by
:func:`build_tables`.

Definitions used throughout (every table carries a ``dataset`` column first):

* Accuracy is reported in percent (0-100). Probe and history files may store it as a fraction in [0, 1]
  (detected per file: a file whose accuracies all lie in [0, 1] is a fraction file) or in percent.
  RMSE is in the target's raw units (MIDI pitch, velocity, ...).
* ``mean`` / ``sd`` are the mean and the sample standard deviation (ddof = 1; NaN for a single value) over
  seeds, ``n`` the number of seeds. Hand-crafted features: over probe seeds. Deep features: over model seeds
  (every model seed is probed with the same probe seed, the first of ``probe.seeds``; older tables with several
  probe seeds per model seed are averaged per model seed first). Networks: over model seeds, the last epoch's
  test metric. Similarities: over every seed (or seed pair) that shares the other keys.
* Chance (``chance.csv``): classification = majority-class share of the test split (%); regression = RMSE of
  predicting the training-split mean on the test split.
* ``gain`` (concatenation table) is an improvement: accuracy(concat) - accuracy(alone) in percentage points,
  or RMSE(alone) - RMSE(concat); positive means the hand-crafted feature helps. Computed per model seed.
* Control task: probe rows with ``labels`` = "control" are the same probe trained and evaluated on the task's
  labels permuted across recordings. Every score above uses the ``labels`` = "task" rows only. ``control_mean`` is
  the mean control score over seeds; ``selectivity`` = accuracy - control accuracy (percentage points), or for
  RMSE control RMSE - RMSE (target units; positive: the task is decoded better than its control), computed per seed
  (hand-crafted: probe seed; deep: model seed) and summarised as ``selectivity_mean`` / ``selectivity_sd``.
  ``control_flag`` (test rows) is "True" when the control is decoded far above chance: control accuracy above
  chance + :data:`CONTROL_FLAG_POINTS` percentage points, or control RMSE more than :data:`CONTROL_FLAG_RMSE`
  (a fraction) below the chance RMSE; "False" otherwise, "" without control rows or on the train split.
* Similarity ``chance`` / ``null_lo`` / ``null_hi``: the means over seeds of the similarity CSVs' columns of the
  same names (the value expected for unrelated features and the band of the permutation null).
* ``comparisons``: every comparison the findings state, a paired difference with its interval
  (:mod:`deepfeat.report.comparisons`), from the ``*.boot.h5`` replicates.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from deepfeat.config import job
from deepfeat.formats.cliptable import TEST, read_clip_table
from deepfeat.formats.files import open_h5
from deepfeat.formats.replicates import read_stacked
from deepfeat.formats.tables import (
    TABLE_COLUMNS,
    as_paths,
    conform,
    read_confusions,
    read_histories,
    read_probe_scores,
    read_similarity,
    write_table,
)
from deepfeat.report import comparisons as cmp
from deepfeat.report.display import (
    DISTANCES,
    PRIMARY_MEASURE,
    arch_display,
    fmt_mean_sd,
    last_layer,
    order_values,
    sort_frame,
)

#: control_flag: a control accuracy this many percentage points above chance, or a control RMSE this fraction below
#: the chance RMSE, is "far above chance"
CONTROL_FLAG_POINTS = 10.0
CONTROL_FLAG_RMSE = 0.10


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
    test = meta["split"].to_numpy() == TEST
    train = ~test
    if not test.any() or not train.any():
        raise ValueError(
            f"{mel_path}: the clip table needs clips in both splits (train {train.sum()}, test {test.sum()})"
        )
    rows = []
    for t in tasks:
        row = dict(
            dataset=dataset,
            task=t["name"],
            type=t["type"],
            is_main=str(t["name"] == main),
            n_train=int(train.sum()),
            n_test=int(test.sum()),
        )
        if t["type"] == "classification":
            codes = meta[t["name"] + "_code"].to_numpy()[test]
            counts = np.bincount(codes, minlength=len(t["classes"]))
            row.update(
                metric="accuracy",
                value=100.0 * counts.max() / counts.sum(),
                majority_class=str(t["classes"][int(counts.argmax())]),
                n_classes=len(t["classes"]),
            )
        else:
            y = meta[t["name"]].to_numpy(dtype=np.float64)
            rmse = float(np.sqrt(np.mean((y[test] - y[train].mean()) ** 2)))
            row.update(metric="rmse", value=rmse, majority_class="", n_classes=pd.NA)
        rows.append(row)
    return pd.DataFrame(rows)


def _split_deep(scores: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(hand-crafted rows, plain deep rows, concatenation rows with column 'hc' = the hand-crafted name); rows of
    one ``labels`` kind (the caller selects task or control rows)."""
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


def _selectivity(task: pd.DataFrame, control: pd.DataFrame, keys: list[str], seed: str) -> pd.DataFrame:
    """control_mean, selectivity_mean, selectivity_sd per ``keys`` from per-seed task and control values (the
    seed column ``seed``); selectivity per seed = task - control (accuracy) or control - task (RMSE)."""
    cols = keys + ["control_mean", "selectivity_mean", "selectivity_sd"]
    if task.empty or control.empty:
        return pd.DataFrame(columns=cols)
    t = task.groupby(keys + [seed], sort=False, dropna=False)["value"].mean().rename("task")
    c = control.groupby(keys + [seed], sort=False, dropna=False)["value"].mean().rename("control")
    j = pd.concat([t, c], axis=1, join="inner").reset_index()
    if j.empty:
        return pd.DataFrame(columns=cols)
    j["sel"] = np.where(j["metric"] == "rmse", j["control"] - j["task"], j["task"] - j["control"])
    g = j.groupby(keys, sort=False, dropna=False)
    out = g.agg(control_mean=("control", "mean"), selectivity_mean=("sel", "mean"), selectivity_sd=("sel", "std"))
    return out.reset_index()[cols]


def control_flag(df: pd.DataFrame, chance: pd.DataFrame | None, task_col: str = "probe_task") -> pd.Series:
    """ "True" / "False" per test row: is the control decoded far above chance (module docstring); "" otherwise."""
    if chance is None or df.empty or "control_mean" not in df.columns:
        return pd.Series("", index=df.index, dtype=object)
    ch = df[task_col].map(chance.set_index("task")["value"]).astype(np.float64)
    c = df["control_mean"].astype(np.float64)
    far = np.where(df["metric"] == "rmse", c < (1.0 - CONTROL_FLAG_RMSE) * ch, c > ch + CONTROL_FLAG_POINTS)
    ok = c.notna() & ch.notna() & (df["split"] == "test")
    return pd.Series(np.where(ok, np.where(far, "True", "False"), ""), index=df.index, dtype=object)


def handcrafted_table(
    hc: pd.DataFrame, control: pd.DataFrame | None = None, chance: pd.DataFrame | None = None
) -> pd.DataFrame:
    keys = ["feature", "probe_task", "metric", "split"]
    out = mean_sd(hc, keys)
    if control is not None:
        out = out.merge(_selectivity(hc, control, keys, "probe_seed"), on=keys, how="left")
        out["control_flag"] = control_flag(out, chance)
    return sort_frame(out, ["probe_task", "metric", "split", "feature"])


def layers_table(
    deep: pd.DataFrame, control: pd.DataFrame | None = None, chance: pd.DataFrame | None = None
) -> pd.DataFrame:
    per_seed = _per_model_seed(deep, _DEEP_KEYS)
    out = mean_sd(per_seed, _DEEP_KEYS)
    if control is not None:
        ctrl = _per_model_seed(control, _DEEP_KEYS)
        out = out.merge(_selectivity(per_seed, ctrl, _DEEP_KEYS, "seed"), on=_DEEP_KEYS, how="left")
        out["control_flag"] = control_flag(out, chance)
    return sort_frame(out, _DEEP_KEYS)


def networks_table(hist: pd.DataFrame) -> pd.DataFrame:
    if hist.empty:
        return pd.DataFrame(columns=["task", "arch", "metric", "mean", "sd", "n", "train_mean", "epochs"])
    out = mean_sd(hist, ["task", "arch", "metric"], "test_metric")
    extra = (
        hist.groupby(["task", "arch", "metric"], sort=False)
        .agg(train_mean=("train_metric", "mean"), epochs=("epoch", "max"))
        .reset_index()
    )
    out = out.merge(extra, on=["task", "arch", "metric"], how="left")
    return sort_frame(out, ["task", "arch"])


_CONTROL_CELLS = ("control_mean", "selectivity_mean", "selectivity_sd", "control_flag")


def _control_cells(r: pd.Series) -> dict:
    """The control/selectivity cells of a handcrafted or layers table row (NaN / "" when absent)."""
    return {c: r.get(c, "" if c == "control_flag" else np.nan) for c in _CONTROL_CELLS}


def table1(
    chance: pd.DataFrame, hc: pd.DataFrame, layers: pd.DataFrame, networks: pd.DataFrame, main_task: str
) -> pd.DataFrame:
    """The method's Table 1: main-task test accuracy (%) of chance, hand-crafted features, conv3 of every
    architecture (trained on the main task) and the Feed Forward network's own accuracy."""
    rows = []
    ch = chance[chance["task"] == main_task]
    if ch.empty:
        raise ValueError(f"main task '{main_task}' not in the clip table's tasks {list(chance['task'])}")
    rows.append(
        dict(
            feature="Chance (majority class)",
            kind="chance",
            arch="",
            layer="",
            mean=float(ch["value"].iloc[0]),
            sd=np.nan,
            n=pd.NA,
        )
    )
    sel = (hc["probe_task"] == main_task) & (hc["metric"] == "accuracy") & (hc["split"] == "test")
    for _, r in hc[sel].sort_values("mean", ascending=False, kind="stable").iterrows():
        rows.append(
            dict(feature=r["feature"], kind="handcrafted", arch="", layer="", mean=r["mean"], sd=r["sd"], n=r["n"])
            | _control_cells(r)
        )
    sel = (
        (layers["train_task"] == main_task)
        & (layers["probe_task"] == main_task)
        & (layers["trained"] == "trained")
        & (layers["metric"] == "accuracy")
        & (layers["split"] == "test")
    )
    deep = layers[sel]
    for arch in order_values(deep["arch"], "arch"):
        d = deep[deep["arch"] == arch]
        layer = last_layer(d["layer"])
        r = d[d["layer"] == layer].iloc[0]
        rows.append(
            dict(
                feature=f"{arch_display(arch)} ({layer})",
                kind="deep",
                arch=arch,
                layer=layer,
                mean=r["mean"],
                sd=r["sd"],
                n=r["n"],
            )
            | _control_cells(r)
        )
    ff = networks[(networks["task"] == main_task) & (networks["arch"] == "FeedForward")]
    for r in ff.itertuples():
        rows.append(
            dict(
                feature="Feed Forward (network)",
                kind="network",
                arch="FeedForward",
                layer="",
                mean=r.mean,
                sd=r.sd,
                n=r.n,
            )
        )
    out = pd.DataFrame(rows)
    out.insert(0, "task", main_task)
    out["metric"] = "accuracy"
    out["text"] = [fmt_mean_sd(m, s, 2) for m, s in zip(out["mean"], out["sd"])]
    return out


def table1_markdown(t1: pd.DataFrame) -> pd.DataFrame:
    """Display form of Table 1 (what table1.md and the findings page show)."""
    task = t1["task"].iloc[0] if len(t1) else ""
    kinds = {"chance": "baseline", "handcrafted": "hand-crafted", "deep": "deep features", "network": "network"}
    out = pd.DataFrame(
        {
            "feature": t1["feature"],
            "type": [kinds.get(k, k) for k in t1["kind"]],
            f"{task} test accuracy (%), mean ± sd": t1["text"],
            "seeds": [("" if pd.isna(n) else str(int(n))) for n in t1["n"]],
        }
    )
    if "selectivity_mean" in t1.columns and t1["selectivity_mean"].notna().any():
        sel = [
            "" if pd.isna(m) else fmt_mean_sd(m, s, 2) + (" (control far above chance)" if f == "True" else "")
            for m, s, f in zip(t1["selectivity_mean"], t1["selectivity_sd"], t1["control_flag"])
        ]
        out.insert(3, "selectivity (accuracy - control, points), mean ± sd", sel)
    return out


def best_handcrafted(hc_table: pd.DataFrame) -> pd.DataFrame:
    """Best hand-crafted feature per probe task on the test split (max accuracy / min RMSE)."""
    t = hc_table[(hc_table["split"] == "test") & hc_table["mean"].notna()]
    if t.empty:
        return pd.DataFrame(columns=["probe_task", "metric", "handcrafted_best", "handcrafted_mean", "handcrafted_sd"])
    score = np.where(t["metric"] == "rmse", -t["mean"], t["mean"])
    t = t.assign(_s=score).sort_values("_s", ascending=False, kind="stable")
    best = t.groupby(["probe_task", "metric"], sort=False).head(1)
    return best.rename(columns={"feature": "handcrafted_best", "mean": "handcrafted_mean", "sd": "handcrafted_sd"})[
        ["probe_task", "metric", "handcrafted_best", "handcrafted_mean", "handcrafted_sd"]
    ]


def robustness_table(
    layers: pd.DataFrame, networks: pd.DataFrame, hc_table: pd.DataFrame, chance: pd.DataFrame
) -> pd.DataFrame:
    """Trained features of a net trained on ``train_task`` probed on ``probe_task`` (test split), beside the
    same arch/layer trained on the probe task itself (matched), the network trained on it, the best
    hand-crafted feature and chance."""
    t = layers[(layers["trained"] == "trained") & (layers["split"] == "test")].drop(columns=["trained", "split"])
    m = t[t["train_task"] == t["probe_task"]].rename(columns={"mean": "matched_mean", "sd": "matched_sd"})
    t = t.merge(
        m[["probe_task", "arch", "layer", "metric", "matched_mean", "matched_sd"]],
        on=["probe_task", "arch", "layer", "metric"],
        how="left",
    )
    nets = networks.rename(columns={"task": "probe_task", "mean": "network_mean", "sd": "network_sd"})
    t = t.merge(
        nets[["probe_task", "arch", "metric", "network_mean", "network_sd"]],
        on=["probe_task", "arch", "metric"],
        how="left",
    )
    t = t.merge(best_handcrafted(hc_table), on=["probe_task", "metric"], how="left")
    ch = chance.rename(columns={"task": "probe_task", "value": "chance"})[["probe_task", "chance"]]
    t = t.merge(ch, on="probe_task", how="left")
    t["handcrafted_best"] = t["handcrafted_best"].fillna("")
    return sort_frame(t, ["train_task", "probe_task", "arch", "layer"])


def concat_table(
    concat: pd.DataFrame, deep: pd.DataFrame, hc_table: pd.DataFrame, sim_summary: pd.DataFrame
) -> pd.DataFrame:
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
    out = (
        g.agg(
            alone_mean=("alone", "mean"),
            alone_sd=("alone", "std"),
            concat_mean=("concat", "mean"),
            concat_sd=("concat", "std"),
            gain_mean=("gain", "mean"),
            gain_sd=("gain", "std"),
            n=("gain", "count"),
        )
        .reset_index()
        .rename(columns={"hc": "feature"})
    )
    hcm = hc_table[hc_table["split"] == "test"].rename(columns={"mean": "feature_mean"})
    out = out.merge(
        hcm[["feature", "probe_task", "metric", "feature_mean"]], on=["feature", "probe_task", "metric"], how="left"
    )
    s = sim_summary[(sim_summary["comparison"] == "deep_vs_handcrafted") & (sim_summary["measure"] == PRIMARY_MEASURE)]
    s = s.rename(
        columns={
            "task": "train_task",
            "arch_a": "arch",
            "layer_a": "layer",
            "trained_a": "trained",
            "feature_b": "feature",
            "mean": "cka",
        }
    )
    out = out.merge(
        s[["train_task", "arch", "layer", "trained", "feature", "cka"]],
        on=["train_task", "arch", "layer", "trained", "feature"],
        how="left",
    )
    return sort_frame(out[cols], ["train_task", "probe_task", "arch", "layer", "trained", "feature"])


_SIM_KEYS = "comparison task arch_a layer_a trained_a arch_b layer_b trained_b feature_b measure".split()
_NULL_COLUMNS = ("chance", "null_lo", "null_hi")


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
    null = sim.assign(**{c: pd.to_numeric(sim[c]) if c in sim.columns else np.nan for c in _NULL_COLUMNS})
    null = null.groupby(_SIM_KEYS, sort=False, dropna=False)[list(_NULL_COLUMNS)].mean().reset_index(drop=True)
    out = pd.concat([out, dims, txt, null], axis=1)
    order = "comparison task measure arch_a trained_a layer_a arch_b trained_b layer_b feature_b"
    return sort_frame(out[cols], order.split())


def similarity_best(summary: pd.DataFrame) -> pd.DataFrame:
    """Most similar hand-crafted feature per (task, arch, layer, trained, measure), with the Random baseline."""
    cols = list(TABLE_COLUMNS["similarity_best"])[1:]
    s = summary[(summary["comparison"] == "deep_vs_handcrafted") & summary["mean"].notna()]
    if s.empty:
        return pd.DataFrame(columns=cols)
    keys = ["task", "arch_a", "layer_a", "trained_a", "measure"]
    rnd = s[s["feature_b"] == "Random"][keys + ["mean"]].rename(columns={"mean": "random_mean"})
    real = s[s["feature_b"] != "Random"]
    real = real.assign(_s=np.where(real["measure"].isin(DISTANCES), -real["mean"], real["mean"]))
    best = real.sort_values("_s", ascending=False, kind="stable").groupby(keys, sort=False).head(1)
    best = best.merge(rnd, on=keys, how="left")
    best = best.rename(columns={"arch_a": "arch", "layer_a": "layer", "trained_a": "trained", "feature_b": "feature"})
    return sort_frame(best[cols], ["task", "measure", "arch", "trained", "layer"])


def confusion_table(conf: pd.DataFrame) -> pd.DataFrame:
    """Confusion counts summed over seeds and probe seeds; ``runs`` = number of (seed, probe_seed) summed."""
    cols = list(TABLE_COLUMNS["confusion"])[1:]
    if conf.empty:
        return pd.DataFrame(columns=cols)
    keys = ["feature", "arch", "layer", "trained", "train_task", "probe_task", "split"]
    run = (
        conf["seed"].fillna(-1).astype(np.int64).astype(str)
        + "/"
        + conf["probe_seed"].fillna(-1).astype(np.int64).astype(str)
    )
    conf = conf.assign(_run=run)
    runs = conf.groupby(keys, sort=False)["_run"].nunique().rename("runs").reset_index()
    out = conf.groupby(keys + ["true", "predicted"], sort=False)["count"].sum().reset_index()
    out = out.merge(runs, on=keys, how="left")
    return out[cols]


# ----------------------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------------------
def _read_inputs(files: dict, dataset: str, log) -> tuple:
    """(all probe score rows, histories, similarities, confusions) of one dataset's per-job files; probe rows
    carry ``labels`` ("task" for files written before the control task)."""
    probe_paths = as_paths(files["probe_handcrafted"]) + as_paths(files["probe_deep"])
    scores = read_probe_scores(probe_paths, dataset, log)
    if "labels" not in scores.columns:
        scores["labels"] = "task"
    bad = sorted(set(scores["labels"]) - {"task", "control"})
    if bad:
        raise ValueError(f"probe scores: column 'labels' has {bad}; expected task or control (docs/formats.md)")
    log.info(
        f"read {len(probe_paths)} probe files: {int((scores['labels'] == 'task').sum())} task rows, "
        f"{int((scores['labels'] == 'control').sum())} control rows"
    )
    hist = read_histories(files["histories"], log)
    log.info(f"read {len(hist)} training histories")
    sim_paths = sum((as_paths(files[k]) for k in ("similarity_deep", "similarity_channels", "similarity_cross")), [])
    sim = read_similarity(sim_paths, dataset)
    log.info(f"read {len(sim_paths)} similarity files: {len(sim)} rows")
    conf_paths = as_paths(files["confusion_handcrafted"]) + as_paths(files["confusion_deep"])
    conf = read_confusions(conf_paths, dataset)
    if "labels" in conf.columns:
        conf = conf[conf["labels"].isin(["task", ""])]
    log.info(f"read {len(conf_paths)} confusion files: {len(conf)} rows")
    return scores, hist, sim, conf


def _read_replicates(paths, what: str, log):
    """read_stacked of ``paths`` (None when there are none)."""
    paths = as_paths(paths)
    if not paths:
        log.info(f"no {what} replicates: the comparisons of {what} values have no intervals")
        return None
    out = read_stacked(paths)
    log.info(f"read {len(paths)} {what} replicate files: {len(out[0])} rows x {out[2].shape[1]} resamples")
    return out


@job(reads={"stats": ("seed", "level")})
def build_tables(
    *,
    mel,
    tables,
    settings,
    dataset: str,
    log: logging.Logger | None = None,
    probe_handcrafted=None,
    confusion_handcrafted=None,
    probe_deep=(),
    confusion_deep=(),
    histories=(),
    similarity_deep=(),
    similarity_channels=(),
    similarity_cross=(),
    boot_probe_handcrafted=(),
    boot_probe_deep=(),
    boot_similarity_deep=(),
    boot_similarity_cross=(),
) -> dict[str, pd.DataFrame]:
    """Aggregate one dataset's stage outputs into the tables of ``TABLE_COLUMNS``, written to the folder ``tables``
    as ``{name}.csv`` and ``{name}.md``.

    ``mel``: the dataset's mel.h5 (its clip table gives the chance levels); the other inputs are paths or lists
    of paths of the per-job CSVs and of their ``*.boot.h5`` replicates (docs/formats.md; without replicates the
    comparisons have no intervals). ``settings["stats"]``: ``seed`` (the network-seed draws of the intervals) and
    ``level``. Returns the tables by name.
    """
    log = log or logging.getLogger(__name__)
    out_dir = Path(tables)
    out_dir.mkdir(parents=True, exist_ok=True)

    chance = chance_table(mel, dataset)
    main_task = chance.loc[chance["is_main"] == "True", "task"].iloc[0]
    log.info(f"{dataset}: main task '{main_task}', {len(chance)} tasks, chance levels computed")
    files = dict(
        probe_handcrafted=probe_handcrafted,
        probe_deep=probe_deep,
        histories=histories,
        similarity_deep=similarity_deep,
        similarity_channels=similarity_channels,
        similarity_cross=similarity_cross,
        confusion_handcrafted=confusion_handcrafted,
        confusion_deep=confusion_deep,
    )
    scores, hist, sim, conf = _read_inputs(files, dataset, log)
    hc, deep, concat = _split_deep(scores[scores["labels"] == "task"])
    hc_ctl, deep_ctl, _ = _split_deep(scores[scores["labels"] == "control"])

    t = {"chance": chance}
    t["handcrafted"] = handcrafted_table(hc, hc_ctl, chance)
    t["layers"] = layers_table(deep, deep_ctl, chance)
    t["networks"] = networks_table(hist)
    t["table1"] = table1(chance, t["handcrafted"], t["layers"], t["networks"], main_task)
    t["robustness"] = robustness_table(t["layers"], t["networks"], t["handcrafted"], chance)
    t["similarity"] = similarity_summary(sim)
    t["concat"] = concat_table(concat, deep, t["handcrafted"], t["similarity"])
    t["similarity_best"] = similarity_best(t["similarity"])
    t["confusion"] = confusion_table(conf)

    probe_reps = _read_replicates(as_paths(boot_probe_handcrafted) + as_paths(boot_probe_deep), "probe", log)
    sim_reps = _read_replicates(as_paths(boot_similarity_deep) + as_paths(boot_similarity_cross), "similarity", log)
    P = cmp.attach(scores, probe_reps, cmp.PROBE_KEYS, scale_accuracy=True)
    S = cmp.attach(sim, sim_reps, cmp.SIM_KEYS)
    chance_sides = cmp.chance_sides(mel, chance, P.attrs, P.resamples, log)
    st = settings["stats"]
    t["comparisons"] = cmp.comparisons_table(t, P, S, chance_sides, seed=st["seed"], level=st["level"])
    n_ci = int(t["comparisons"]["ci_low"].notna().sum())
    log.info(f"{len(t['comparisons'])} comparisons, {n_ci} with an interval")
    for name in TABLE_COLUMNS:
        t[name] = conform(t[name], name, dataset)
        md = table1_markdown(t[name]) if name == "table1" else None
        write_table(t[name], out_dir, name, md)
        log.info(f"wrote {out_dir / name}.csv/.md ({len(t[name])} rows)")
    return t


__all__ = [
    "best_handcrafted",
    "build_tables",
    "chance_table",
    "concat_table",
    "confusion_table",
    "control_flag",
    "handcrafted_table",
    "layers_table",
    "mean_sd",
    "networks_table",
    "robustness_table",
    "similarity_best",
    "similarity_summary",
    "table1",
    "table1_markdown",
]
