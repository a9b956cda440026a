"""Line figures: decoding scores by layer, mean ± sd over seeds (error bars only where the sd is defined).

* ``decoding_<train task>_to_<probe task>.png``: test accuracy (%) or RMSE of the probes of every layer, one
  panel per architecture, trained vs untrained, each with its control-task score (the same probe on the task's
  labels permuted across recordings; thin dotted line of the same colour: the gap between the two lines is the
  selectivity), with chance (or the RMSE of predicting the training mean), the best hand-crafted feature and
  (same task) the network's own score as reference lines.
* ``robustness_<probe task>.png``: a probe task decoded from the trained features of networks trained on each
  task (one line per train task), for probe tasks that some network was not trained on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from deepfeat.report.display import arch_display, order_values, slug
from deepfeat.report.drawing import panel_grid, save_figure
from deepfeat.report.tables import best_handcrafted

TRAINED_STYLE = {"trained": ("-", "o"), "untrained": ("--", "s")}


# ----------------------------------------------------------------------------------------------------------
# Decoding curves
# ----------------------------------------------------------------------------------------------------------
def _ylabel(metric: str, task: str) -> str:
    return "test accuracy (%)" if metric == "accuracy" else f"test RMSE ({task} units)"


def _errorbar(ax, x, mean, sd, **kw):
    sd = np.asarray(sd, dtype=np.float64)
    yerr = None if not np.isfinite(sd).any() else np.where(np.isfinite(sd), sd, 0.0)
    return ax.errorbar(x, mean, yerr=yerr, capsize=3, linewidth=1.6, markersize=5, **kw)


def _ref_line(ax, y, label, style, color):
    if y is not None and np.isfinite(y):
        ax.axhline(y, linestyle=style, color=color, linewidth=1.1, label=label)


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
        fig, panels, ncols = panel_grid(len(archs), 4.2, 3.4, extra_h=0.6, sharey=True)  # a panel per arch
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
                bars = _errorbar(ax, np.arange(len(order)), r["mean"], r["sd"], linestyle=ls, marker=mk, label=tr)
                if "control_mean" in r.columns and r["control_mean"].notna().any():
                    ax.plot(
                        np.arange(len(order)),
                        r["control_mean"].to_numpy(np.float64),
                        linestyle=":",
                        marker=mk,
                        markersize=3,
                        linewidth=1.1,
                        color=bars.lines[0].get_color(),
                        alpha=0.8,
                        label=f"{tr}: control task",
                    )
            _ref_line(
                ax, chance.get(pt, np.nan), "chance" if metric == "accuracy" else "predict train mean", ":", "0.4"
            )
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
        written.append(save_figure(fig, out_dir, f"decoding_{slug(tt)}_to_{slug(pt)}", p["dpi"], log))
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
        fig, panels, ncols = panel_grid(len(archs), 4.2, 3.4, extra_h=0.6, sharey=True)  # a panel per arch
        for k, ax in enumerate(panels):
            a = g[g["arch"] == archs[k]]
            order = order_values(a["layer"], "layer")
            for i, tt in enumerate(order_values(a["train_task"], "train_task")):
                r = a[a["train_task"] == tt].set_index("layer").reindex(order)
                _errorbar(
                    ax,
                    np.arange(len(order)),
                    r["mean"],
                    r["sd"],
                    marker="os^vD"[i % 5],
                    label=f"trained on {tt}" + (" (own task)" if tt == pt else ""),
                )
            _ref_line(ax, a["chance"].iloc[0], "chance" if metric == "accuracy" else "predict train mean", ":", "0.4")
            _ref_line(ax, a["network_mean"].iloc[0], f"network trained on {pt}", (0, (1, 3)), "tab:red")
            _ref_line(
                ax,
                a["handcrafted_mean"].iloc[0],
                f"best hand-crafted ({a['handcrafted_best'].iloc[0]})",
                "-.",
                "tab:green",
            )
            _layer_axis(ax, order, arch_display(archs[k]), _ylabel(metric, pt) if k % ncols == 0 else "")
        handles, labels = panels[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 4), fontsize=8)
        fig.suptitle(
            f"Robustness: decoding {pt} from trained features of networks trained on each task (mean ± sd over seeds)",
            fontsize=11,
        )
        written.append(save_figure(fig, out_dir, f"robustness_{slug(pt)}", p["dpi"], log))
    return written


__all__ = ["decoding_figures", "robustness_figures"]
