"""Figures of one dataset, drawn from its tables folder (see :mod:`deepfeat.tables`), mel.h5 and handcrafted.h5.

Every figure is one PNG in the output folder (``{name}.png``, written atomically), drawn with seaborn on the
matplotlib Agg backend:

* ``sim_<comparison>_<task>_..._<measure>.png``: annotated heatmaps of the mean similarity over seeds for every
  similarity comparison present (deep vs hand-crafted, trained vs untrained, layer vs layer, seed vs seed,
  arch vs arch, channel vs channel) and every measure of ``params["figure_measures"]``.
* ``decoding_<train task>_to_<probe task>.png``: test accuracy (%) or RMSE by layer, trained vs untrained,
  error bars = sd over seeds (none for a single seed), with chance, the best hand-crafted feature and the
  network's own score as reference lines.
* ``robustness_<probe task>.png``: probe task decoded from features of networks trained on each task.
* ``confusion_<...>.png``: row-normalised test confusion matrices (summed over seeds).
* ``pca_spectrograms.png``: the first two principal components of the flattened dB spectrograms.
* ``example_spectrogram.png``: one clip's spectrogram with a few of its hand-crafted features.
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from deepfeat.io import atomic_path, open_h5, read_clip_table  # noqa: E402
from deepfeat.tables import (  # noqa: E402
    MEASURE_DISPLAY,
    best_handcrafted,
    arch_display,
    last_layer,
    natural_key,
    order_values,
    read_tables,
    slug,
)

DEFAULTS = {
    "top_features": 8,
    "figure_measures": ["cka", "cka_debiased"],
    "dpi": 120,
    "seed": 0,
    "pca_max_clips": 2000,
    "example_clip": None,
    "example_features": ["Mean Power (frequency)", "Spectral Centroid", "Time to -70 dB", "Mean Wavelet (25)"],
}
SYMMETRIC = {"cka", "cka_debiased"}
ANNOTATE_MAX = (40, 16)  # annotate heatmaps up to this many rows x columns
TRAINED_STYLE = {"trained": ("-", "o"), "untrained": ("--", "s")}


def _params(params: dict | None) -> dict:
    p = dict(DEFAULTS)
    p.update({k: v for k, v in (params or {}).items() if v is not None or k == "example_clip"})
    return p


def _save(fig, out_dir: Path, name: str, dpi: int, log) -> Path:
    path = out_dir / f"{name}.png"
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight", facecolor="white")
    plt.close(fig)
    log.info(f"figure {path.name}")
    return path


def _rotate_xticks(ax, labels) -> None:
    longest = max((len(str(l)) for l in labels), default=0)
    if longest > 4 or len(labels) > 12:
        ax.tick_params(axis="x", labelrotation=45 if longest <= 20 else 60)
        for t in ax.get_xticklabels():
            t.set_horizontalalignment("right")
            t.set_rotation_mode("anchor")


# ----------------------------------------------------------------------------------------------------------
# Similarity heatmaps
# ----------------------------------------------------------------------------------------------------------
def _pivot(df: pd.DataFrame, row: str, col: str, measure: str, rows=None, order: str | None = None,
           square: bool = False) -> pd.DataFrame:
    """rows x cols matrix of the mean similarity (display order of ``order``, e.g. 'layer', else of the columns).

    ``square``: both axes list the same kind of thing (layers of one net, architectures): use the union of the
    labels on both axes and, for symmetric measures, mirror the triangle that was computed. Cells never
    computed (e.g. the diagonal) stay blank.
    """
    m = df.pivot_table(index=row, columns=col, values="mean", aggfunc="mean", dropna=False, sort=False)
    r = rows if rows is not None else order_values(m.index, order or row)
    c = order_values(m.columns, order or col)
    if square:
        r = c = order_values(set(m.index) | set(m.columns), order or row)
    m = m.reindex(index=r, columns=c)
    if square and measure in SYMMETRIC:
        m = m.combine_first(m.T).reindex(index=r, columns=c)
    return m.astype(np.float64)


def heatmap_figure(panels: list[tuple[str, pd.DataFrame]], measure: str, title: str, xlabel: str,
                   ylabel: str, max_cols: int = 3):
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
    fig, axes = plt.subplots(nrows, ncols, figsize=(max(w, 4.5), max(h, 3.0)), squeeze=False,
                             layout="constrained")
    vals = np.concatenate([m.to_numpy().ravel() for _, m in panels])
    vals = vals[np.isfinite(vals)]
    vmin, vmax = min(0.0, float(vals.min())), max(1.0, float(vals.max()))
    cmap = "vlag" if vmin < 0 else "viridis"
    center = 0.0 if vmin < 0 else None
    for k, ax in enumerate(axes.ravel()):
        if k >= len(panels):
            ax.set_visible(False)
            continue
        t, m = panels[k]
        sns.heatmap(m, ax=ax, vmin=vmin, vmax=vmax, cmap=cmap, center=center, cbar=False, annot=annotate,
                    fmt=".2f", annot_kws={"size": 7}, linewidths=0.4, linecolor="white", square=False,
                    xticklabels=[str(c) for c in m.columns], yticklabels=[str(i) for i in m.index])
        ax.set_title(t, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel if k % ncols == 0 else "")
        ax.tick_params(axis="both", labelsize=8)
        ax.tick_params(axis="y", labelrotation=0)
        _rotate_xticks(ax, m.columns)
    mesh = next(ax.collections[0] for ax in axes.ravel() if ax.get_visible() and ax.collections)
    fig.colorbar(mesh, ax=axes, shrink=min(1.0, 6.0 / max(h, 1.0)),
                 label=f"{MEASURE_DISPLAY.get(measure, measure)} (unitless)")
    fig.suptitle(title, fontsize=11)
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
                    panels = [(f"{tr}", _pivot(a[a["trained_a"] == tr], "feature_b", "layer_a", measure, rows=top))
                              for tr in order_values(a["trained_a"], "trained")]
                    fig = heatmap_figure(panels, measure, f"{arch_display(arch)} (trained on {task}): {mname} "
                                         f"with the {len(top)} most similar hand-crafted features, mean over seeds",
                                         "layer", "hand-crafted feature")
                    if fig is not None:
                        written.append(_save(fig, out_dir, f"sim_deep_vs_handcrafted_{slug(task)}_{slug(arch)}_"
                                             f"{measure}", dpi, log))
                if d["feature_b"].nunique() > len(top):
                    feats = order_values(d["feature_b"], "feature_b")
                    archs = order_values(d["arch_a"], "arch")
                    d = d.assign(column=d["arch_a"].map(arch_display) + " " + d["layer_a"])
                    cols = [f"{arch_display(a)} {l}" for a in archs
                            for l in order_values(d.loc[d["arch_a"] == a, "layer_a"], "layer")]
                    panels = []
                    for tr in order_values(d["trained_a"], "trained"):
                        m = _pivot(d[d["trained_a"] == tr], "feature_b", "column", measure, rows=feats)
                        panels.append((tr, m.reindex(columns=[c for c in cols if c in m.columns])))
                    fig = heatmap_figure(panels, measure, f"All hand-crafted features: {mname} with every layer "
                                         f"(networks trained on {task}), mean over seeds", "architecture and layer",
                                         "hand-crafted feature", max_cols=2)
                    if fig is not None:
                        written.append(_save(fig, out_dir, f"sim_deep_vs_handcrafted_{slug(task)}_all_{measure}",
                                             dpi, log))
            for comp in ("trained_vs_untrained", "layer_vs_layer", "seed_vs_seed", "arch_vs_arch",
                         "channel_vs_channel"):
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
        figs.append((name, heatmap_figure([("", _pivot(c, "arch_a", "layer_a", measure))], measure,
                                          f"Trained vs untrained (same seed): {mname} per layer, mean over seeds",
                                          "layer", "architecture")))
    elif comp == "arch_vs_arch" and matched:
        for tr in trs:
            panels = [(f"{layer}", _pivot(c[(c["trained_a"] == tr) & (c["label_a"] == layer)], "arch_a", "arch_b",
                                          measure, order="arch", square=True))
                      for layer in order_values(c["label_a"], "layer")]
            figs.append((f"{name}_{slug(tr or 'all')}",
                         heatmap_figure(panels, measure, f"Architecture vs architecture ({tr}): {mname} at the same "
                                        "layer, mean over seeds", "architecture", "architecture", max_cols=3)))
    elif comp == "seed_vs_seed" and matched:
        figs.append((name, heatmap_figure(
            [(f"{tr}", _pivot(c[c["trained_a"] == tr], "arch_a", "layer_a", measure)) for tr in trs], measure,
            f"Seed vs seed: {mname} of the same layer across seeds, mean over seed pairs", "layer",
            "architecture")))
    elif comp == "arch_vs_arch":
        for (aa, ab), g in c.groupby(["arch_a", "arch_b"], sort=False):
            panels = [(f"{tr}", _pivot(g[g["trained_a"] == tr], "label_a", "label_b", measure, order="layer"))
                      for tr in trs]
            figs.append((f"{name}_{slug(aa)}_vs_{slug(ab)}", heatmap_figure(
                panels, measure, f"{arch_display(aa)} vs {arch_display(ab)}: {mname}, mean over seeds",
                f"{arch_display(ab)} layer", f"{arch_display(aa)} layer")))
    else:
        what = {"trained_vs_untrained": ("Trained vs untrained", "untrained layer", "trained layer"),
                "layer_vs_layer": ("Layer vs layer", "layer", "layer"),
                "seed_vs_seed": ("Seed vs seed", "layer (other seed)", "layer"),
                "channel_vs_channel": ("Channel vs channel", "channel", "channel")}[comp]
        for arch in archs:
            a = c[c["arch_a"] == arch]
            panels = [(f"{tr}", _pivot(a[a["trained_a"] == tr], "label_a", "label_b", measure, order="layer",
                                       square=comp in ("layer_vs_layer", "channel_vs_channel")))
                      for tr in trs]
            figs.append((f"{name}_{slug(arch)}", heatmap_figure(
                panels, measure, f"{what[0]}: {arch_display(arch)} (trained on {task}), {mname}, mean over seeds",
                what[1], what[2])))
    return [_save(fig, out_dir, f"{n}_{measure}", dpi, log) for n, fig in figs if fig is not None]


# ----------------------------------------------------------------------------------------------------------
# Decoding curves
# ----------------------------------------------------------------------------------------------------------
def _ylabel(metric: str, task: str) -> str:
    return "test accuracy (%)" if metric == "accuracy" else f"test RMSE ({task} units)"


def _errorbar(ax, x, mean, sd, **kw):
    sd = np.asarray(sd, dtype=np.float64)
    yerr = None if not np.isfinite(sd).any() else np.where(np.isfinite(sd), sd, 0.0)
    ax.errorbar(x, mean, yerr=yerr, capsize=3, linewidth=1.6, markersize=5, **kw)


def _ref_line(ax, y, label, style, color):
    if y is not None and np.isfinite(y):
        ax.axhline(y, linestyle=style, color=color, linewidth=1.1, label=label)


def _grid(n: int, cell_w: float, cell_h: float, extra_h: float = 0.0, sharey: bool = False):
    """(fig, the n panels in row order, ncols): at most 3 panels per row, each cell_w x cell_h inches (plus
    extra_h for the whole figure); the unused cells of the last row are hidden."""
    ncols = min(n, 3)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(cell_w * ncols, cell_h * nrows + extra_h), squeeze=False,
                             sharey=sharey, layout="constrained")
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    return fig, axes.ravel()[:n], ncols


def _layer_axis(ax, order, title: str, ylabel: str):
    """x axis = layers in ``order``; the panel's title and (first column only) y label."""
    ax.set_xticks(np.arange(len(order)), order)
    ax.set_xlim(-0.35, len(order) - 0.65)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("layer")
    ax.set_ylabel(ylabel)


def decoding_figures(t: dict, out_dir: Path, p: dict, log) -> list[Path]:
    """Accuracy/RMSE by layer per (train task, probe task): one panel per architecture, trained vs untrained."""
    layers = t["layers"][t["layers"]["split"] == "test"]
    written = []
    chance = t["chance"].set_index("task")["value"]
    hc = best_handcrafted(t["handcrafted"])
    for (tt, pt), g in layers.groupby(["train_task", "probe_task"], sort=False):
        archs = order_values(g["arch"], "arch")
        metric = g["metric"].iloc[0]
        fig, panels, ncols = _grid(len(archs), 4.2, 3.4, extra_h=0.6, sharey=True)  # a panel per arch
        best = hc[(hc["probe_task"] == pt)]
        hc_name = best["handcrafted_best"].iloc[0] if len(best) else ""
        hc_mean = best["handcrafted_mean"].iloc[0] if len(best) else np.nan
        for k, ax in enumerate(panels):
            arch = archs[k]
            a = g[g["arch"] == arch]
            order = order_values(a["layer"], "layer")
            for tr in order_values(a["trained"], "trained"):
                r = a[a["trained"] == tr].set_index("layer").reindex(order)
                ls, mk = TRAINED_STYLE.get(tr, ("-", "o"))
                _errorbar(ax, np.arange(len(order)), r["mean"], r["sd"], linestyle=ls, marker=mk, label=tr)
            _ref_line(ax, chance.get(pt, np.nan), "chance" if metric == "accuracy" else "predict train mean",
                      ":", "0.4")
            if hc_name:
                _ref_line(ax, hc_mean, f"best hand-crafted ({hc_name})", "-.", "tab:green")
            if tt == pt:
                net = t["networks"][(t["networks"]["task"] == pt) & (t["networks"]["arch"] == arch)]
                if len(net):
                    _ref_line(ax, net["mean"].iloc[0], "network's own score", (0, (1, 3)), "tab:red")
            _layer_axis(ax, order, arch_display(arch), _ylabel(metric, pt) if k % ncols == 0 else "")
        handles, labels = panels[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 5), fontsize=8)
        src = f"features of networks trained on {tt}" if tt else "features"
        fig.suptitle(f"Decoding {pt} from {src}, by layer (mean ± sd over seeds)", fontsize=11)
        written.append(_save(fig, out_dir, f"decoding_{slug(tt)}_to_{slug(pt)}", p["dpi"], log))
    if not written:
        log.info("no deep probe scores: no decoding-by-layer figure")
    return written


def robustness_figures(t: dict, out_dir: Path, p: dict, log) -> list[Path]:
    """A probe task decoded from trained features of networks trained on each task (one line per train task)."""
    rob = t["robustness"]
    written = []
    for pt, g in rob.groupby("probe_task", sort=False):
        if set(g["train_task"]) == {pt}:
            continue  # only the network's own task: already in decoding_<pt>_to_<pt>
        archs = order_values(g["arch"], "arch")
        metric = g["metric"].iloc[0]
        fig, panels, ncols = _grid(len(archs), 4.2, 3.4, extra_h=0.6, sharey=True)  # a panel per arch
        for k, ax in enumerate(panels):
            a = g[g["arch"] == archs[k]]
            order = order_values(a["layer"], "layer")
            for i, tt in enumerate(order_values(a["train_task"], "train_task")):
                r = a[a["train_task"] == tt].set_index("layer").reindex(order)
                _errorbar(ax, np.arange(len(order)), r["mean"], r["sd"], marker="os^vD"[i % 5],
                          label=f"trained on {tt}" + (" (own task)" if tt == pt else ""))
            _ref_line(ax, a["chance"].iloc[0], "chance" if metric == "accuracy" else "predict train mean", ":", "0.4")
            _ref_line(ax, a["network_mean"].iloc[0], f"network trained on {pt}", (0, (1, 3)), "tab:red")
            _ref_line(ax, a["handcrafted_mean"].iloc[0], f"best hand-crafted ({a['handcrafted_best'].iloc[0]})",
                      "-.", "tab:green")
            _layer_axis(ax, order, arch_display(archs[k]), _ylabel(metric, pt) if k % ncols == 0 else "")
        handles, labels = panels[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 4), fontsize=8)
        fig.suptitle(f"Robustness: decoding {pt} from trained features of networks trained on each task "
                     "(mean ± sd over seeds)", fontsize=11)
        written.append(_save(fig, out_dir, f"robustness_{slug(pt)}", p["dpi"], log))
    return written


# ----------------------------------------------------------------------------------------------------------
# Confusion matrices
# ----------------------------------------------------------------------------------------------------------
def _class_order(labels, classes: list[str] | None) -> tuple[list[str], dict]:
    """Display order of class labels and a map label -> display name (codes are mapped to class names)."""
    labels = sorted(set(labels), key=natural_key)
    if classes:
        if set(labels) <= set(classes):
            return [c for c in classes if c in set(labels)], {l: l for l in labels}
        if all(l.lstrip("-").isdigit() and 0 <= int(l) < len(classes) for l in labels):
            m = {l: classes[int(l)] for l in labels}
            return [classes[i] for i in sorted(int(l) for l in labels)], m
    return labels, {l: l for l in labels}


def confusion_figures(t: dict, classes: dict[str, list[str]], main_task: str, out_dir: Path, p: dict,
                      log) -> list[Path]:
    """Row-normalised test confusion of the best hand-crafted features and the last layer of each arch."""
    conf = t["confusion"]
    conf = conf[(conf["split"] == "test") & (conf["probe_task"] == main_task)
                & conf["train_task"].isin([main_task, ""])]
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
        c = conf[(conf["feature"] == feature) & (conf["arch"] == arch) & (conf["layer"] == layer)
                 & (conf["trained"] == tr)]
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
        sns.heatmap(pct, ax=ax, annot=k <= 20, fmt=".0f", cmap="Blues", vmin=0, vmax=100, square=True,
                    linewidths=0.4, linecolor="white", annot_kws={"size": 8},
                    cbar_kws={"label": "% of the true class", "shrink": 0.8})
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        ax.tick_params(axis="both", labelsize=8)
        ax.tick_params(axis="y", labelrotation=0)
        _rotate_xticks(ax, order)
        who = feature if not arch else f"{'untrained ' if tr == 'untrained' else ''}{arch_display(arch)} {layer}"
        runs = int(c["runs"].max())
        ax.set_title(f"{who}: {main_task}, test split\n(summed over {runs} run{'s' * (runs != 1)}; "
                     f"accuracy {acc:.1f}%)", fontsize=10)
        name = f"confusion_{slug(main_task)}_{slug(who)}"
        written.append(_save(fig, out_dir, name, p["dpi"], log))
    return written


# ----------------------------------------------------------------------------------------------------------
# Spectrogram figures
# ----------------------------------------------------------------------------------------------------------
def _subset(n: int, k: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=min(n, k), replace=False))


def pca_figure(mel_h5, out_dir: Path, p: dict, log) -> list[Path]:
    """First two principal components of the flattened dB spectrograms (seeded subset), coloured by label."""
    from sklearn.utils.extmath import randomized_svd

    with open_h5(mel_h5, "mel") as f:
        meta, tasks, main = read_clip_table(f)
        n = f["mel"].shape[0]
        idx = _subset(n, int(p["pca_max_clips"]), int(p["seed"]))
        x = f["mel"][idx].reshape(len(idx), -1).astype(np.float64)
    if len(idx) < 3:
        log.info(f"{mel_h5}: {len(idx)} clips, too few for a PCA")
        return []
    log.info(f"PCA of {len(idx)} of {n} spectrograms ({x.shape[1]} values each)")
    x -= x.mean(axis=0)
    u, s, _ = randomized_svd(x, n_components=2, n_iter=7, random_state=int(p["seed"]))
    z = u * s
    pct = 100.0 * s**2 / float(np.einsum("ij,ij->", x, x))
    tasks = sorted(tasks, key=lambda t: t["name"] != main)
    fig, axes, _ = _grid(len(tasks), 5.6, 4.6)
    sub = meta.iloc[idx]
    for tk, ax in zip(tasks, axes):
        if tk["type"] == "classification":
            hue = sub[tk["name"]].astype(str).to_numpy()
            order = [c for c in tk["classes"] if c in set(hue)]
            sns.scatterplot(x=z[:, 0], y=z[:, 1], hue=hue, hue_order=order, s=12, alpha=0.75, linewidth=0,
                            ax=ax, palette="tab10" if len(order) <= 10 else "husl")
            ax.legend(title=tk["name"], fontsize=7, title_fontsize=8, markerscale=1.5,
                      loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
        else:
            sc = ax.scatter(z[:, 0], z[:, 1], c=sub[tk["name"]].to_numpy(np.float64), s=12, alpha=0.75,
                            cmap="viridis", linewidths=0)
            fig.colorbar(sc, ax=ax, label=tk["name"])
        ax.set_title(f"coloured by {tk['name']}" + (" (main task)" if tk["name"] == main else ""), fontsize=10)
        ax.set_xlabel(f"PC 1 ({pct[0]:.1f}% of variance, dB)")
        ax.set_ylabel(f"PC 2 ({pct[1]:.1f}% of variance, dB)")
    fig.suptitle(f"PCA of {len(idx)} mel spectrograms (dB, centred)", fontsize=11)
    return [_save(fig, out_dir, "pca_spectrograms", p["dpi"], log)]


_UNITS = [("Spectral Flatness", "ratio"), ("Spectral", "Hz"), ("RMS", "linear amplitude"), ("Power", "dB"),
          ("Time to", "s"), ("Random", "a.u.")]


def _unit(name: str) -> str:
    return next((u for k, u in _UNITS if name.startswith(k) or k in name), "a.u.")


def feature_axis(name: str, dim: int, n_mels: int, n_frames: int) -> str | None:
    """'frame' (one value per frame), 'band' (one per mel band) or None, from the display name and size.

    Summaries over frequency (spectral features, RMS, '... (frequency)', '... over frequency') give one value
    per frame; summaries over time ('... (time)', 'Time to ...', wavelet statistics) one per band. The name
    decides when n_mels == n_frames (128 x 128 spectrograms)."""
    per_frame = (name == "RMS" or name.startswith("Spectral ") or name.endswith("(frequency)")
                 or name.endswith("over frequency"))
    per_band = name.endswith("(time)") or name.startswith("Time to") or (
        "Wavelet (" in name and not name.endswith("over frequency"))
    if per_frame and dim == n_frames:
        return "frame"
    if per_band and dim == n_mels:
        return "band"
    if not (per_frame or per_band) and n_mels != n_frames:
        return "band" if dim == n_mels else "frame" if dim == n_frames else None
    return None


def example_figure(mel_h5, features_h5, out_dir: Path, p: dict, log) -> list[Path]:
    """One clip's spectrogram with some of its hand-crafted features: per-band features on the right (sharing
    the mel axis), per-frame features below (sharing the time axis)."""
    import librosa

    with open_h5(mel_h5, "mel") as f:
        meta, _, main = read_clip_table(f)
        ds = f["mel"]
        attrs = {k: (v.item() if hasattr(v, "item") else v) for k, v in ds.attrs.items()}
        attrs.setdefault("sr", f.attrs.get("sample_rate", 22050))
        n, n_mels, n_frames = ds.shape
        i = p["example_clip"]
        if i is None:
            test = np.flatnonzero(meta["split"].to_numpy() == 1)
            i = int(test[0]) if len(test) else 0
        if not 0 <= int(i) < n:
            raise ValueError(f"report.example_clip: {i} is not a clip index of {mel_h5} (0..{n - 1})")
        i = int(i)
        mel = ds[i].astype(np.float64)
    sr = float(attrs.get("sr", 22050))
    hop = float(attrs.get("hop_length", 512))
    fmax = float(attrs.get("fmax", sr / 2))
    sec = hop / sr
    per_band, per_frame = [], []
    if features_h5 is not None:
        with open_h5(features_h5, "handcrafted") as f:
            names = {str(d.attrs.get("name", k)): k for k, d in f["features"].items()}
            for want in p["example_features"]:
                if want not in names:
                    log.info(f"example figure: feature '{want}' not in {features_h5}; skipped")
                    continue
                v = f["features"][names[want]][i].astype(np.float64)
                if want.startswith("Time to"):
                    v = v * sec
                axis = feature_axis(want, v.size, n_mels, n_frames)
                if axis == "band":
                    per_band.append((want, v))
                elif axis == "frame":
                    per_frame.append((want, v))
                else:
                    log.info(f"example figure: '{want}' ({v.size} values) is neither one value per mel band "
                             f"({n_mels}) nor per frame ({n_frames}); skipped")
    nb, nf = len(per_band), len(per_frame)
    fig = plt.figure(figsize=(7.5 + 2.3 * nb, 4.4 + 1.7 * nf), layout="constrained")
    gs = fig.add_gridspec(1 + nf, 2 + nb, width_ratios=[6, 0.25] + [2] * nb, height_ratios=[4] + [1.4] * nf)
    ax = fig.add_subplot(gs[0, 0])
    t_edges = np.arange(n_frames + 1) * sec
    im = ax.pcolormesh(t_edges, np.arange(n_mels + 1), mel, cmap="magma", shading="flat", rasterized=True)
    fig.colorbar(im, cax=fig.add_subplot(gs[0, 1]), label="power (dB re clip max)")
    centres = librosa.mel_frequencies(n_mels=n_mels + 2, fmin=0.0, fmax=fmax, htk=bool(attrs.get("htk", False)))[1:-1]
    ticks = np.linspace(0, n_mels - 1, 6).round().astype(int)
    ax.set_yticks(ticks + 0.5, [f"{centres[b]:.0f}" for b in ticks])
    ax.set_ylabel("mel band centre (Hz)")
    ax.set_xlabel("time (s)")
    label = meta[main].iloc[i] if main in meta else ""
    ax.set_title(f"clip {meta['clip_id'].iloc[i]} ({main}: {label})", fontsize=10)
    for k, (name, v) in enumerate(per_band):
        b = fig.add_subplot(gs[0, 2 + k], sharey=ax)
        b.plot(v, np.arange(n_mels) + 0.5, color="tab:blue", linewidth=1.2)
        b.set_xlabel(f"{name}\n({_unit(name)})", fontsize=8)
        b.tick_params(axis="y", labelleft=False)
        b.tick_params(axis="x", labelsize=7)
        b.set_ylim(0, n_mels)
    for k, (name, v) in enumerate(per_frame):
        b = fig.add_subplot(gs[1 + k, 0], sharex=ax)
        b.plot((np.arange(n_frames) + 0.5) * sec, v, color="tab:orange", linewidth=1.2)
        b.set_ylabel(f"{name}\n({_unit(name)})", fontsize=8)
        b.set_xlabel("time (s)")
        b.tick_params(axis="y", labelsize=7)
    ax.set_xlim(0, n_frames * sec)
    fig.suptitle("Example spectrogram and some of its hand-crafted features", fontsize=11)
    return [_save(fig, out_dir, "example_spectrogram", p["dpi"], log)]


# ----------------------------------------------------------------------------------------------------------
def make_figures(tables_dir, mel_h5, features_h5, out_dir, params: dict | None, log=None) -> list[Path]:
    """Draw every figure of one dataset into ``out_dir`` (created); returns the PNG paths written.

    ``params`` is the config's ``report`` section (keys of DEFAULTS; missing keys take the defaults).
    ``features_h5`` may be None (the example figure then shows the spectrogram alone).
    """
    log = log or logging.getLogger("deepfeat")
    p = _params(params)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sns.set_theme(style="whitegrid", context="notebook", font_scale=0.85)
    plt.rcParams.update({"figure.dpi": p["dpi"], "savefig.dpi": p["dpi"]})
    t = read_tables(tables_dir)
    main_task = t["chance"].loc[t["chance"]["is_main"] == "True", "task"].iloc[0]
    with open_h5(mel_h5, "mel") as f:
        classes = {}
        for name in f["labels"]:
            if "classes" in f["labels"][name].attrs:
                classes[name] = json.loads(f["labels"][name].attrs["classes"])
    written = []
    written += similarity_figures(t["similarity"], out_dir, p, log)
    written += decoding_figures(t, out_dir, p, log)
    written += robustness_figures(t, out_dir, p, log)
    written += confusion_figures(t, classes, main_task, out_dir, p, log)
    written += pca_figure(mel_h5, out_dir, p, log)
    written += example_figure(mel_h5, features_h5, out_dir, p, log)
    log.info(f"{len(written)} figures in {out_dir}")
    return written
