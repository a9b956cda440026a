"""Heatmap figures: the similarity heatmaps (mean over seeds, one figure per comparison, task and measure) and the
row-normalised test confusion matrices (counts summed over seeds).

* ``sim_<comparison>_<task>_..._<measure>.png``: annotated heatmaps on one shared colour scale for every
  similarity comparison present (deep vs hand-crafted, trained vs untrained, layer vs layer, seed vs seed,
  arch vs arch, channel vs channel) and every measure of the ``figure_measures`` setting. Square comparisons
  (layer vs layer, channel vs channel, arch vs arch at one layer) list the same labels on both axes and, for the
  symmetric measures (CKA), mirror the triangle that was computed; cells never computed stay blank. A cell whose
  mean lies within the band of the permutation null (the similarity table's ``null_lo`` .. ``null_hi``: what
  unrelated features give) carries a white-edged dot in its upper right corner (legend note in the title).
* ``confusion_<main task>_<who>.png``: % of each true class predicted as each class, test split, for the best
  hand-crafted features (Table 1 order) and the last conv layer of every architecture, trained and untrained.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from deepfeat.formats.cliptable import natural_key
from deepfeat.report.display import MEASURE_DISPLAY, arch_display, last_layer, order_values, slug
from deepfeat.report.drawing import plt, rotate_xticks, save_figure, sns

SYMMETRIC = {"cka", "cka_debiased"}
ANNOTATE_MAX = (40, 16)  # annotate heatmaps up to this many rows x columns


# ----------------------------------------------------------------------------------------------------------
# Similarity heatmaps
# ----------------------------------------------------------------------------------------------------------
def in_null_band(df: pd.DataFrame) -> pd.Series:
    """1.0 where a row's mean lies within [null_lo, null_hi], 0.0 outside, NaN without a band."""
    if "null_lo" not in df.columns or "null_hi" not in df.columns:
        return pd.Series(np.nan, index=df.index)
    lo, hi, m = (df[c].astype(np.float64) for c in ("null_lo", "null_hi", "mean"))
    inside = ((m >= lo) & (m <= hi)).astype(np.float64)
    return inside.where(lo.notna() & hi.notna() & m.notna())


def _pivot(
    df: pd.DataFrame,
    row: str,
    col: str,
    measure: str,
    rows=None,
    order: str | None = None,
    square: bool = False,
    values: str = "mean",
) -> pd.DataFrame:
    """rows x cols matrix of the mean similarity (display order of ``order``, e.g. 'layer', else of the columns).

    ``square``: both axes list the same kind of thing (layers of one net, architectures): use the union of the
    labels on both axes and, for symmetric measures, mirror the triangle that was computed. Cells never
    computed (e.g. the diagonal) stay blank. The matrix of :func:`in_null_band` (same layout) is in
    ``.attrs["null"]``.
    """
    if values == "mean":
        out = _pivot(df.assign(_null=in_null_band(df)), row, col, measure, rows, order, square, values="_null")
        null = out
    m = df.pivot_table(index=row, columns=col, values=values, aggfunc="mean", dropna=False, sort=False)
    r = rows if rows is not None else order_values(m.index, order or row)
    c = order_values(m.columns, order or col)
    if square:
        r = c = order_values(set(m.index) | set(m.columns), order or row)
    m = m.reindex(index=r, columns=c)
    if square and measure in SYMMETRIC:
        m = m.combine_first(m.T).reindex(index=r, columns=c)
    m = m.astype(np.float64)
    if values == "mean":
        m.attrs["null"] = null
    return m


def heatmap_figure(
    panels: list[tuple[str, pd.DataFrame]], measure: str, title: str, xlabel: str, ylabel: str, max_cols: int = 3
):
    """Annotated heatmaps on one shared colour scale (one panel per (title, matrix)); returns the figure."""
    panels = [(t, m) for t, m in panels if m.size and np.isfinite(m.to_numpy()).any()]
    if not panels:
        return None
    nr = max(m.shape[0] for _, m in panels)
    nc = max(m.shape[1] for _, m in panels)
    annotate = nr <= ANNOTATE_MAX[0] and nc <= ANNOTATE_MAX[1]
    ncols = min(len(panels), max_cols)
    nrows = math.ceil(len(panels) / ncols)
    cw, ch = (0.62, 0.34) if annotate else (0.28, 0.2)
    lab = max(len(str(v)) for _, m in panels for v in m.index)
    w = ncols * (nc * cw + 0.075 * lab + 0.6) + 1.2
    h = nrows * (nr * ch + 1.3) + 0.8
    fig, axes = plt.subplots(nrows, ncols, figsize=(max(w, 4.5), max(h, 3.0)), squeeze=False, layout="constrained")
    vals = np.concatenate([m.to_numpy().ravel() for _, m in panels])
    vals = vals[np.isfinite(vals)]
    vmin, vmax = min(0.0, float(vals.min())), max(1.0, float(vals.max()))
    cmap = "vlag" if vmin < 0 else "viridis"
    center = 0.0 if vmin < 0 else None
    marked = False
    for k, ax in enumerate(axes.ravel()):
        if k >= len(panels):
            ax.set_visible(False)
            continue
        t, m = panels[k]
        sns.heatmap(
            m,
            ax=ax,
            vmin=vmin,
            vmax=vmax,
            cmap=cmap,
            center=center,
            cbar=False,
            annot=annotate,
            fmt=".2f",
            annot_kws={"size": 7},
            linewidths=0.4,
            linecolor="white",
            square=False,
            xticklabels=[str(c) for c in m.columns],
            yticklabels=[str(i) for i in m.index],
        )
        null = m.attrs.get("null")
        if null is not None:
            inside = null.reindex(index=m.index, columns=m.columns).to_numpy() == 1.0
            ii, jj = np.nonzero(inside & np.isfinite(m.to_numpy()))
            if len(ii):
                marked = True
                ax.scatter(jj + 0.82, ii + 0.22, s=9, c="black", edgecolors="white", linewidths=0.6, zorder=3)
        ax.set_title(t, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel if k % ncols == 0 else "")
        ax.tick_params(axis="both", labelsize=8)
        ax.tick_params(axis="y", labelrotation=0)
        rotate_xticks(ax, m.columns)
    mesh = next(ax.collections[0] for ax in axes.ravel() if ax.get_visible() and ax.collections)
    fig.colorbar(
        mesh, ax=axes, shrink=min(1.0, 6.0 / max(h, 1.0)), label=f"{MEASURE_DISPLAY.get(measure, measure)} (unitless)"
    )
    fig.suptitle(
        title + ("\n(dot: within the permutation null band of unrelated features)" if marked else ""), fontsize=11
    )
    return fig


def _label(df: pd.DataFrame, side: str) -> pd.Series:
    """Display label of the a/b side of a similarity row: layer, else the hand-crafted feature."""
    if side == "b":
        return df["layer_b"].where(df["layer_b"] != "", df["feature_b"])
    return df["layer_a"]


def _top_features(sim: pd.DataFrame, n: int) -> list[str]:
    """The ``n`` hand-crafted features with the highest mean similarity to any layer (ties: natural order)."""
    best = sim.groupby("feature_b")["mean"].max().dropna()
    names = sorted(best.index, key=lambda f: (-best[f], natural_key(f)))
    return names[:n]


def similarity_figures(sim: pd.DataFrame, out_dir: Path, p: dict, log) -> list[Path]:
    """Heatmaps for every comparison x measure present in the similarity summary table."""
    written = []
    measures = [m for m in p["figure_measures"] if m in set(sim["measure"])]
    if sim.empty or not measures:
        log.info("no similarity values to plot")
        return written
    dpi = p["dpi"]
    for measure in measures:
        s_m = sim[sim["measure"] == measure]
        for task in order_values(s_m["task"], "task"):
            s = s_m[s_m["task"] == task]
            mname = MEASURE_DISPLAY.get(measure, measure)
            # deep vs hand-crafted: per arch, top features x layers, trained | untrained
            d = s[s["comparison"] == "deep_vs_handcrafted"]
            if not d.empty:
                top = _top_features(d, int(p["top_features"]))
                for arch in order_values(d["arch_a"], "arch"):
                    a = d[(d["arch_a"] == arch) & d["feature_b"].isin(top)]
                    panels = [
                        (f"{tr}", _pivot(a[a["trained_a"] == tr], "feature_b", "layer_a", measure, rows=top))
                        for tr in order_values(a["trained_a"], "trained")
                    ]
                    fig = heatmap_figure(
                        panels,
                        measure,
                        f"{arch_display(arch)} (trained on {task}): {mname} "
                        f"with the {len(top)} most similar hand-crafted features, mean over seeds",
                        "layer",
                        "hand-crafted feature",
                    )
                    if fig is not None:
                        written.append(
                            save_figure(
                                fig, out_dir, f"sim_deep_vs_handcrafted_{slug(task)}_{slug(arch)}_{measure}", dpi, log
                            )
                        )
                if d["feature_b"].nunique() > len(top):
                    feats = order_values(d["feature_b"], "feature_b")
                    archs = order_values(d["arch_a"], "arch")
                    d = d.assign(column=d["arch_a"].map(arch_display) + " " + d["layer_a"])
                    cols = [
                        f"{arch_display(a)} {lay}"
                        for a in archs
                        for lay in order_values(d.loc[d["arch_a"] == a, "layer_a"], "layer")
                    ]
                    panels = []
                    for tr in order_values(d["trained_a"], "trained"):
                        m = _pivot(d[d["trained_a"] == tr], "feature_b", "column", measure, rows=feats)
                        panels.append((tr, m.reindex(columns=[c for c in cols if c in m.columns])))
                    fig = heatmap_figure(
                        panels,
                        measure,
                        f"All hand-crafted features: {mname} with every layer "
                        f"(networks trained on {task}), mean over seeds",
                        "architecture and layer",
                        "hand-crafted feature",
                        max_cols=2,
                    )
                    if fig is not None:
                        written.append(
                            save_figure(fig, out_dir, f"sim_deep_vs_handcrafted_{slug(task)}_all_{measure}", dpi, log)
                        )
            for comp in (
                "trained_vs_untrained",
                "layer_vs_layer",
                "seed_vs_seed",
                "arch_vs_arch",
                "channel_vs_channel",
            ):
                c = s[s["comparison"] == comp].copy()
                if c.empty:
                    continue
                c["label_a"], c["label_b"] = _label(c, "a"), _label(c, "b")
                written += _comparison_figures(comp, c, task, measure, out_dir, dpi, log)
    return written


def _comparison_figures(comp, c, task, measure, out_dir, dpi, log) -> list[Path]:
    mname = MEASURE_DISPLAY.get(measure, measure)
    matched = bool((c["label_a"] == c["label_b"]).all())
    name = f"sim_{comp}_{slug(task)}"
    figs: list[tuple[str, object]] = []
    archs = order_values(c["arch_a"], "arch")
    trs = order_values(c["trained_a"], "trained")
    if comp == "trained_vs_untrained" and matched:
        figs.append(
            (
                name,
                heatmap_figure(
                    [("", _pivot(c, "arch_a", "layer_a", measure))],
                    measure,
                    f"Trained vs untrained (same seed): {mname} per layer, mean over seeds",
                    "layer",
                    "architecture",
                ),
            )
        )
    elif comp == "arch_vs_arch" and matched:
        for tr in trs:
            panels = [
                (
                    f"{layer}",
                    _pivot(
                        c[(c["trained_a"] == tr) & (c["label_a"] == layer)],
                        "arch_a",
                        "arch_b",
                        measure,
                        order="arch",
                        square=True,
                    ),
                )
                for layer in order_values(c["label_a"], "layer")
            ]
            figs.append(
                (
                    f"{name}_{slug(tr or 'all')}",
                    heatmap_figure(
                        panels,
                        measure,
                        f"Architecture vs architecture ({tr}): {mname} at the same layer, mean over seeds",
                        "architecture",
                        "architecture",
                        max_cols=3,
                    ),
                )
            )
    elif comp == "seed_vs_seed" and matched:
        figs.append(
            (
                name,
                heatmap_figure(
                    [(f"{tr}", _pivot(c[c["trained_a"] == tr], "arch_a", "layer_a", measure)) for tr in trs],
                    measure,
                    f"Seed vs seed: {mname} of the same layer across seeds, mean over seed pairs",
                    "layer",
                    "architecture",
                ),
            )
        )
    elif comp == "arch_vs_arch":
        for (aa, ab), g in c.groupby(["arch_a", "arch_b"], sort=False):
            panels = [
                (f"{tr}", _pivot(g[g["trained_a"] == tr], "label_a", "label_b", measure, order="layer")) for tr in trs
            ]
            figs.append(
                (
                    f"{name}_{slug(aa)}_vs_{slug(ab)}",
                    heatmap_figure(
                        panels,
                        measure,
                        f"{arch_display(aa)} vs {arch_display(ab)}: {mname}, mean over seeds",
                        f"{arch_display(ab)} layer",
                        f"{arch_display(aa)} layer",
                    ),
                )
            )
    else:
        what = {
            "trained_vs_untrained": ("Trained vs untrained", "untrained layer", "trained layer"),
            "layer_vs_layer": ("Layer vs layer", "layer", "layer"),
            "seed_vs_seed": ("Seed vs seed", "layer (other seed)", "layer"),
            "channel_vs_channel": ("Channel vs channel", "channel", "channel"),
        }[comp]
        for arch in archs:
            a = c[c["arch_a"] == arch]
            panels = [
                (
                    f"{tr}",
                    _pivot(
                        a[a["trained_a"] == tr],
                        "label_a",
                        "label_b",
                        measure,
                        order="layer",
                        square=comp in ("layer_vs_layer", "channel_vs_channel"),
                    ),
                )
                for tr in trs
            ]
            figs.append(
                (
                    f"{name}_{slug(arch)}",
                    heatmap_figure(
                        panels,
                        measure,
                        f"{what[0]}: {arch_display(arch)} (trained on {task}), {mname}, mean over seeds",
                        what[1],
                        what[2],
                    ),
                )
            )
    return [save_figure(fig, out_dir, f"{n}_{measure}", dpi, log) for n, fig in figs if fig is not None]


# ----------------------------------------------------------------------------------------------------------
# Confusion matrices
# ----------------------------------------------------------------------------------------------------------
def _class_order(labels, classes: list[str] | None) -> tuple[list[str], dict]:
    """Display order of class labels and a map label -> display name (codes are mapped to class names)."""
    labels = sorted(set(labels), key=natural_key)
    if classes:
        if set(labels) <= set(classes):
            return [c for c in classes if c in set(labels)], {lab: lab for lab in labels}
        if all(lab.lstrip("-").isdigit() and 0 <= int(lab) < len(classes) for lab in labels):
            m = {lab: classes[int(lab)] for lab in labels}
            return [classes[i] for i in sorted(int(lab) for lab in labels)], m
    return labels, {lab: lab for lab in labels}


def confusion_figures(
    t: dict, classes: dict[str, list[str]], main_task: str, out_dir: Path, p: dict, log
) -> list[Path]:
    """Row-normalised test confusion of the best hand-crafted features and the last layer of each arch."""
    conf = t["confusion"]
    conf = conf[
        (conf["split"] == "test") & (conf["probe_task"] == main_task) & conf["train_task"].isin([main_task, ""])
    ]
    if conf.empty:
        log.info("no confusion counts for the main task")
        return []
    t1 = t["table1"]
    picks = [(f, "", "", "") for f in t1.loc[t1["kind"] == "handcrafted", "feature"][: int(p["top_features"])]]
    deep = conf[conf["arch"] != ""]
    for arch in order_values(deep["arch"], "arch"):
        d = deep[deep["arch"] == arch]
        layer = last_layer(d["layer"])
        for tr in order_values(d.loc[d["layer"] == layer, "trained"], "trained"):
            picks.append((f"{arch} {layer}", arch, layer, tr))
    written = []
    for feature, arch, layer, tr in picks:
        c = conf[
            (conf["feature"] == feature) & (conf["arch"] == arch) & (conf["layer"] == layer) & (conf["trained"] == tr)
        ]
        if c.empty:
            continue
        order, names = _class_order(pd.concat([c["true"], c["predicted"]]), classes.get(main_task))
        c = c.assign(true=c["true"].map(names), predicted=c["predicted"].map(names))
        m = c.pivot_table(index="true", columns="predicted", values="count", aggfunc="sum", fill_value=0.0)
        m = m.reindex(index=order, columns=order, fill_value=0.0)
        pct = 100.0 * m.div(m.sum(axis=1).replace(0, np.nan), axis=0)
        acc = 100.0 * np.trace(m.to_numpy()) / max(m.to_numpy().sum(), 1.0)
        k = len(order)
        size = max(4.8, 0.55 * k + 2.6)
        fig, ax = plt.subplots(figsize=(size + 1.0, size), layout="constrained")
        sns.heatmap(
            pct,
            ax=ax,
            annot=k <= 20,
            fmt=".0f",
            cmap="Blues",
            vmin=0,
            vmax=100,
            square=True,
            linewidths=0.4,
            linecolor="white",
            annot_kws={"size": 8},
            cbar_kws={"label": "% of the true class", "shrink": 0.8},
        )
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        ax.tick_params(axis="both", labelsize=8)
        ax.tick_params(axis="y", labelrotation=0)
        rotate_xticks(ax, order)
        who = feature if not arch else f"{'untrained ' if tr == 'untrained' else ''}{arch_display(arch)} {layer}"
        runs = int(c["runs"].max())
        ax.set_title(
            f"{who}: {main_task}, test split\n(summed over {runs} run{'s' * (runs != 1)}; accuracy {acc:.1f}%)",
            fontsize=10,
        )
        name = f"confusion_{slug(main_task)}_{slug(who)}"
        written.append(save_figure(fig, out_dir, name, p["dpi"], log))
    return written


__all__ = ["confusion_figures", "heatmap_figure", "similarity_figures"]
