"""The findings page of one dataset (Markdown + HTML): the method's three questions answered in sentences.

Every number in a sentence is a cell of a table in the dataset's tables folder
(:func:`deepfeat.report.tables.build_tables`), printed with :func:`deepfeat.report.display.fmt_number`. In the
HTML page each number is a ``<span class="num" data-table=... data-row=... data-column=... data-digits=...>``
naming the CSV row (0-based data row) and column it was read from; hovering it shows the source. Words that
compare numbers are decided by the ``comparisons`` table (:mod:`deepfeat.report.comparisons`): a sentence says
which way a comparison goes only when the interval of the paired difference excludes zero, and calls the two sides
indistinguishable otherwise, quoting the difference and its interval either way. Nothing is hard-coded.
"""

from __future__ import annotations

import html
import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from deepfeat import config
from deepfeat.config import job
from deepfeat.formats.files import write_text
from deepfeat.formats.tables import read_tables
from deepfeat.report import comparisons as cmp
from deepfeat.report.display import (
    DISTANCES,
    MEASURE_DISPLAY,
    arch_display,
    fmt_number,
    last_layer,
    metric_digits,
    order_values,
)
from deepfeat.report.tables import table1_markdown

#: the one formula in the prose (no quoted number): how many distinct seed draws S seeds allow
SEED_DRAWS_FORMULA = "C(2S − 1, S)"


# ----------------------------------------------------------------------------------------------------------
# A tiny document model: sentences are lists of strings and Num (a table cell with its provenance)
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Num:
    """One number quoted from a table: ``tables/<table>.csv``, data row ``row`` (0-based), ``column``."""

    value: float
    digits: int
    table: str
    row: int
    column: str
    suffix: str = ""
    scale: float = 1.0  # printed as value x scale (a level 0.95 as 95 %)

    @property
    def text(self) -> str:
        return fmt_number(self.value * self.scale, self.digits)


class Doc:
    def __init__(self, tables: dict[str, pd.DataFrame]):
        self.t = tables
        self.blocks: list[tuple] = []

    # quoting -------------------------------------------------------------------------------------------
    def num(self, table: str, row: int, column: str, digits: int, suffix: str = "", scale: float = 1.0) -> Num:
        v = self.t[table].iloc[row][column]
        return Num(float(v), digits, table, int(row), column, suffix, scale)

    def compare(self, what: str, a: str, b: str, x: str, y: str, more: str, less: str, digits: int) -> list:
        """The clause of comparison ``what`` of sides ``a`` / ``b`` (the comparisons table's labels), naming them
        ``x`` and ``y``: "x <more> y (difference d, 95 % CI [lo, hi])" when the interval lies above zero,
        "<less>" below it, "x and y are indistinguishable (...)" when it holds zero, "difference d (no interval)"
        without one."""
        c = self.t.get("comparisons")
        i = None if c is None else cmp.lookup(c, what, a, b)
        if i is None:
            return [f"{x} and {y} were not compared"]
        r = c.iloc[i]
        diff = self.num("comparisons", i, "difference", digits)
        if pd.isna(r["ci_low"]) or pd.isna(r["ci_high"]):
            return [f"{x} vs {y}: difference ", diff, " (no interval)"]
        ci = [
            " (difference ",
            diff,
            ", ",
            self.num("comparisons", i, "level", 0, scale=100.0),
            " % CI [",
            self.num("comparisons", i, "ci_low", digits),
            ", ",
            self.num("comparisons", i, "ci_high", digits),
            "])",
        ]
        v = int(r["verdict"])
        if v == 0:
            return [f"{x} and {y} are indistinguishable"] + ci
        return [f"{x} {more if v > 0 else less} {y}"] + ci

    def selectivity(self, table: str, row: int, digits: int, unit: str) -> list:
        """' (selectivity m ± s; ...)' of a handcrafted/layers/table1 row: task minus control score, and the flag
        of a control decoded far above chance; nothing without control rows."""
        r = self.t[table].iloc[row]
        if "selectivity_mean" not in r.index or pd.isna(r["selectivity_mean"]):
            return []
        out = [" (selectivity ", self.mean_sd(table, row, digits, unit, "selectivity_mean", "selectivity_sd")]
        if r.get("control_flag", "") == "True":
            out += [
                "; its control task decodes far above chance: control ",
                self.num(table, row, "control_mean", digits, unit),
            ]
        return out + [")"]

    def mean_sd(
        self,
        table: str,
        row: int,
        digits: int,
        suffix: str = "",
        mean: str = "mean",
        sd: str = "sd",
        single: str = "one seed",
    ) -> list:
        """'m ± s' (sd over seeds) or 'm (one seed)' when the sd is undefined (``single`` names the unit)."""
        r = self.t[table].iloc[row]
        if pd.notna(r[sd]):
            return [self.num(table, row, mean, digits), " ± ", self.num(table, row, sd, digits, suffix)]
        out = [self.num(table, row, mean, digits, suffix)]
        if "n" in r.index and pd.notna(r["n"]) and int(r["n"]) == 1:
            out += [f" ({single})"]
        return out

    # blocks --------------------------------------------------------------------------------------------
    def h(self, level: int, text: str):
        self.blocks.append(("h", level, text))

    def p(self, *segs):
        self.blocks.append(("p", _flat(segs)))

    def ul(self, items: list[list]):
        if items:
            self.blocks.append(("ul", [_flat(i) for i in items]))

    def table(self, df: pd.DataFrame):
        self.blocks.append(("table", df))

    # rendering -----------------------------------------------------------------------------------------
    def markdown(self) -> str:
        out = []
        for b in self.blocks:
            if b[0] == "h":
                out.append("#" * b[1] + " " + b[2])
            elif b[0] == "p":
                out.append(_md(b[1]))
            elif b[0] == "ul":
                out.append("\n".join("- " + _md(i) for i in b[1]))
            else:
                out.append(b[1].to_markdown(index=False))
        return "\n\n".join(out) + "\n"

    def html(self, title: str) -> str:
        body = []
        for b in self.blocks:
            if b[0] == "h":
                body.append(f"<h{b[1]}>{html.escape(b[2])}</h{b[1]}>")
            elif b[0] == "p":
                body.append(f"<p>{_html(b[1])}</p>")
            elif b[0] == "ul":
                body.append("<ul>\n" + "\n".join(f"<li>{_html(i)}</li>" for i in b[1]) + "\n</ul>")
            else:
                body.append(b[1].to_html(index=False, border=0, classes="results", escape=True))
        return _PAGE.format(title=html.escape(title), body="\n".join(body))


def _flat(segs) -> list:
    out = []
    for s in segs:
        if isinstance(s, (list, tuple)):
            out += _flat(s)
        elif s is not None and s != "":
            out.append(s)
    return out


def _md(segs) -> str:
    return "".join(s.text + s.suffix if isinstance(s, Num) else str(s) for s in segs)


def _html(segs) -> str:
    parts = []
    for s in segs:
        if isinstance(s, Num):
            src = f"tables/{s.table}.csv, line {s.row + 2} (data row {s.row}), column {s.column}"
            scale = f' data-scale="{s.scale:g}"' if s.scale != 1.0 else ""
            parts.append(
                f'<span class="num" data-table="{s.table}" data-row="{s.row}" data-column="{s.column}" '
                f'data-digits="{s.digits}"{scale} title="{html.escape(src)}">{s.text}</span>'
                f"{html.escape(s.suffix)}"
            )
        else:
            parts.append(html.escape(str(s)))
    return "".join(parts)


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>
body {{ font-family: -apple-system, "Segoe UI", "DejaVu Sans", Helvetica, Arial, sans-serif; max-width: 62em;
       margin: 2em auto; padding: 0 1.5em; line-height: 1.5; color: #1d1d1f; background: #fff; }}
h1 {{ font-size: 1.7em; border-bottom: 2px solid #4c72b0; padding-bottom: .2em; }}
h2 {{ font-size: 1.3em; margin-top: 1.6em; color: #2a4d7f; }}
span.num {{ font-variant-numeric: tabular-nums; font-weight: 600; border-bottom: 1px dotted #888; cursor: help; }}
table.results {{ border-collapse: collapse; margin: 1em 0; font-size: .92em; }}
table.results th, table.results td {{ padding: .3em .8em; border-bottom: 1px solid #ddd; text-align: left; }}
table.results th {{ background: #eef2f8; }}
table.results tr:nth-child(even) td {{ background: #fafafa; }}
li {{ margin: .25em 0; }}
</style>
</head>
<body>
{body}
</body>
</html>
"""


# ----------------------------------------------------------------------------------------------------------
# Helpers on the tables
# ----------------------------------------------------------------------------------------------------------
def _rows(df: pd.DataFrame, **eq) -> pd.DataFrame:
    m = np.ones(len(df), dtype=bool)
    for k, v in eq.items():
        m &= (df[k] == v).to_numpy()
    return df[m]


def _better(metric: str, a: float, b: float) -> bool:
    return a < b if metric == "rmse" else a > b


def _best(df: pd.DataFrame, metric: str) -> int | None:
    """Row label of the best mean (max accuracy / min RMSE), or None."""
    d = df[df["mean"].notna()]
    if d.empty:
        return None
    return int(d["mean"].idxmin() if metric == "rmse" else d["mean"].idxmax())


def _compare(metric: str, a: float, a_sd: float, b: float, b_sd: float) -> str:
    """'about as well as' when the means differ by at most the larger sd, else 'better than' / 'worse than'."""
    tol = np.nanmax([a_sd, b_sd, 0.0]) if not (pd.isna(a_sd) and pd.isna(b_sd)) else 0.0
    if abs(a - b) <= tol:
        return "about as well as"
    return "better than" if _better(metric, a, b) else "worse than"


def _score(metric: str) -> tuple[str, str]:
    """(words before the number, unit suffix) of a metric."""
    return ("accuracy ", "%") if metric == "accuracy" else ("RMSE ", "")


# ----------------------------------------------------------------------------------------------------------
# The sections
# ----------------------------------------------------------------------------------------------------------
def _ways(metric: str) -> tuple[str, str]:
    """(words for a positive, a negative difference A - B) of a probe metric."""
    if metric == "rmse":
        return "has a higher RMSE than", "has a lower RMSE than"
    return "has a higher accuracy than", "has a lower accuracy than"


_HIGHER = ("is higher than", "is lower than")


#: comparisons whose seeds_a counts network seeds
_NETWORK_SEEDED = {"trained_vs_untrained", "deep_vs_chance", "concat_vs_alone", "first_vs_last_layer", "best_vs_random"}


def _intro(d: Doc, dataset: str, main: str, measure: str) -> None:
    ch = d.t["chance"]
    i = int(_rows(ch, task=main).index[0])
    others = [t for t in ch["task"] if t != main]
    d.h(1, f"Findings: {dataset}")
    d.p(
        f"Dataset {dataset}: main task {main} (",
        d.num("chance", i, "n_classes", 0),
        " classes), ",
        d.num("chance", i, "n_train", 0),
        " training and ",
        d.num("chance", i, "n_test", 0),
        " test clips",
        (f"; related tasks: {', '.join(others)}" if others else ""),
        ". ",
        f"Accuracies are test-split percentages, RMSEs are in the target's units; ± is the standard deviation "
        f"over seeds. Similarities are {MEASURE_DISPLAY.get(measure, measure)} on the training split. Every number "
        "below is read from the tables of this dataset (hover it in the HTML page to see its table, row and "
        "column).",
    )
    c = d.t.get("comparisons")
    if c is None or c.empty:
        return
    j = c.index[c["seeds_a"].notna() & c["what"].isin(_NETWORK_SEEDED)]
    seeds = []
    if len(j):
        k = int(c.loc[j, "seeds_a"].astype(float).idxmax())
        seeds = [", and here S = ", d.num("comparisons", k, "seeds_a", 0), " network seeds"]
    lvl = int(c.index[0])
    d.p(
        "Every comparison below is a paired difference with a ",
        d.num("comparisons", lvl, "level", 0, scale=100.0),
        " % interval from a two-stage bootstrap: first the recordings of the test split (probe scores) or of the "
        "training split (similarities) are resampled with replacement, the same resamples for every value of the "
        "dataset, so both sides of a difference move together; then the network seeds are drawn with replacement, "
        "the per-seed differences when both sides come from the same networks (trained vs untrained, layer vs "
        "layer, a concatenation vs the layer alone, task vs control), each side's own seeds otherwise "
        "(architecture vs architecture, deep vs hand-crafted; hand-crafted probe seeds are averaged, not drawn). "
        f"With S seeds there are only {SEED_DRAWS_FORMULA} distinct seed draws",
        *seeds,
        ", so the seed part of an interval is coarse. A comparison says which way it goes only when its interval "
        "excludes zero; otherwise the two sides are called indistinguishable. Selectivity is the accuracy minus the "
        "accuracy of the same probe on the control task (the task's labels permuted across recordings), or the "
        "control RMSE minus the RMSE: how much of a score the task itself explains.",
        " No value of this dataset has bootstrap replicates, so no comparison has an interval."
        if c["ci_low"].isna().all()
        else "",
    )


def _q1(d: Doc, main: str) -> None:
    t1 = d.t["table1"]
    ch = d.t["chance"]
    d.h(
        2,
        "First question: how well do hand-crafted and deep features decode the main task, and are deep "
        "features robust across tasks?",
    )
    d.p(
        f"Table 1: test accuracy on {main} (%), mean ± sd over seeds (hand-crafted features: probe seeds; deep "
        "features: network seeds, every one probed from the same probe initialisation, so the sd holds no "
        "probe-initialisation variance)."
    )
    d.table(table1_markdown(t1))
    ci = int(t1.index[t1["kind"] == "chance"][0])
    d.p("Chance, the share of the most frequent class in the test split, is ", d.num("table1", ci, "mean", 1, "%"), ".")
    hc = t1[t1["kind"] == "handcrafted"]
    deep = t1[t1["kind"] == "deep"]
    comps = d.t.get("comparisons", pd.DataFrame(columns=["what", "a", "b", "verdict"]))
    ways = _ways("accuracy")
    if len(hc):
        b, w = int(hc["mean"].idxmax()), int(hc["mean"].idxmin())
        s = [f"The best hand-crafted feature is {t1.loc[b, 'feature']} at ", d.mean_sd("table1", b, 1, "%")]
        s += d.selectivity("table1", b, 1, "")
        if w != b:
            s += [f"; the weakest is {t1.loc[w, 'feature']} at ", d.mean_sd("table1", w, 1, "%")]
            s += d.selectivity("table1", w, 1, "")
        vs = comps[(comps["what"] == "handcrafted_vs_chance") & comps["b"].eq(cmp.chance_label(main))]
        vs = vs[vs["a"].isin([cmp.hc_label(f, main) for f in hc["feature"]])]
        every = len(vs) == len(hc) and bool((vs["verdict"] == 1).all())
        s += [
            ". ",
            "Every" if every else "Not every",
            " hand-crafted feature decodes above chance by its interval; the weakest: ",
            d.compare(
                "handcrafted_vs_chance",
                cmp.hc_label(t1.loc[w, "feature"], main),
                cmp.chance_label(main),
                t1.loc[w, "feature"],
                "chance",
                *ways,
                1,
            ),
            ".",
        ]
        d.p(*s)
    if len(deep):
        b, w = int(deep["mean"].idxmax()), int(deep["mean"].idxmin())
        s = [
            "The deepest convolutional features of the trained networks reach ",
            d.mean_sd("table1", b, 1, "%"),
            f" ({arch_display(t1.loc[b, 'arch'])}, {t1.loc[b, 'layer']}, the best)",
        ]
        if w != b:
            s += [" down to ", d.mean_sd("table1", w, 1, "%"), f" ({arch_display(t1.loc[w, 'arch'])}, the weakest)"]
        d.p(*s, ".")
        items = []
        best_hc = t1.loc[int(hc["mean"].idxmax()), "feature"] if len(hc) else None
        for i in deep.index:
            arch, layer = t1.loc[i, "arch"], t1.loc[i, "layer"]
            lab = cmp.deep_label(arch, layer, "trained", main, main)
            name = f"{arch_display(arch)} {layer}"
            s = [f"{name}: ", d.mean_sd("table1", int(i), 1, "%")] + d.selectivity("table1", int(i), 1, "")
            if best_hc is not None:
                s += ["; ", d.compare("deep_vs_handcrafted", lab, cmp.hc_label(best_hc, main), name, best_hc, *ways, 1)]
            items.append(s + ["."])
        d.p(
            "Each network's deepest convolutional layer"
            + (" against the best hand-crafted feature:" if best_hc is not None else ":")
        )
        d.ul(items)
    ff = t1[t1["kind"] == "network"]
    if len(ff):
        i = int(ff.index[0])
        s = ["The Feed Forward network itself reaches ", d.mean_sd("table1", i, 1, "%")]
        if len(deep):
            b = int(deep["mean"].idxmax())
            arch, layer = t1.loc[b, "arch"], t1.loc[b, "layer"]
            s += [
                "; ",
                d.compare(
                    "network_vs_deep",
                    cmp.network_label("FeedForward", main),
                    cmp.deep_label(arch, layer, "trained", main, main),
                    "the Feed Forward network",
                    f"the best convolutional features ({arch_display(arch)} {layer})",
                    *ways,
                    1,
                ),
            ]
        d.p(*s, ".")
    if not len(deep) and not len(hc):
        d.p("No probe scores are available for the main task yet.")
    _robustness(d, main, ch)


def _robustness(d: Doc, main: str, ch: pd.DataFrame) -> None:
    rob = d.t["robustness"]
    items = []
    for (tt, pt), g in rob.groupby(["train_task", "probe_task"], sort=False):
        if tt == pt or g.empty:
            continue
        layer = last_layer(g["layer"])
        g = g[g["layer"] == layer]
        metric = g["metric"].iloc[0]
        i = _best(g, metric)
        if i is None:
            continue
        r = rob.loc[i]
        word, unit = _score(metric)
        dig = metric_digits(metric)
        arch = arch_display(r["arch"])
        lab = cmp.deep_label(r["arch"], layer, "trained", tt, pt)
        ways = _ways(metric)
        s = [
            f"{pt} from the {layer} features of networks trained on {tt}: best {arch} with {word}",
            d.mean_sd("robustness", i, dig, unit),
        ]
        for key, what, kind, other, name in (
            (
                "matched",
                f"the same layer of {arch} trained on {pt}",
                "cross_task_vs_matched",
                cmp.deep_label(r["arch"], layer, "trained", pt, pt),
                f"the same layer trained on {pt}",
            ),
            (
                "network",
                f"the {arch} network trained on {pt}",
                "deep_vs_network",
                cmp.network_label(r["arch"], pt),
                "the network",
            ),
        ):
            if pd.notna(r[f"{key}_mean"]):
                s += [
                    f"; {what}: ",
                    d.mean_sd("robustness", i, dig, unit, f"{key}_mean", f"{key}_sd"),
                    ", ",
                    d.compare(kind, lab, other, "this layer", name, *ways, dig),
                ]
        if r["handcrafted_best"]:
            s += [
                f"; best hand-crafted feature {r['handcrafted_best']}: ",
                d.mean_sd("robustness", i, dig, unit, "handcrafted_mean", "handcrafted_sd"),
                ", ",
                d.compare(
                    "deep_vs_handcrafted",
                    lab,
                    cmp.hc_label(r["handcrafted_best"], pt),
                    "this layer",
                    r["handcrafted_best"],
                    *ways,
                    dig,
                ),
            ]
        if pd.notna(r["chance"]):
            s += [
                "; chance" if metric == "accuracy" else "; predicting the training mean",
                ": ",
                d.num("robustness", i, "chance", dig, unit),
                ", ",
                d.compare("deep_vs_chance", lab, cmp.chance_label(pt), "this layer", "chance", *ways, dig),
            ]
        items.append(s + ["."])
    if items:
        d.p(
            "Robustness: features of a network trained on one task, probed on another task (the best "
            "architecture per pair):"
        )
        d.ul(items)
    else:
        d.p("Robustness: no network features were probed on a task other than the one they were trained on.")


def _sim_row(d: Doc, **eq) -> int | None:
    s = _rows(d.t["similarity"], **eq)
    s = s[s["mean"].notna()]
    return int(s.index[0]) if len(s) else None


def _with_chance(d: Doc, table: str, row: int, mname: str = "") -> list:
    """'<measure> m ± s (chance c)': a similarity and its chance level (unrelated features, this n and width)."""
    out = [f"{mname} " if mname else "", d.mean_sd(table, row, 2)]
    r = d.t[table].iloc[row]
    if "chance" in r.index and pd.notna(r["chance"]):
        out += [" (chance ", d.num(table, row, "chance", 2), ")"]
    return out


def _q2(d: Doc, main: str, measure: str) -> None:
    mname = MEASURE_DISPLAY.get(measure, measure)
    d.h(2, f"Second question: how similar are trained deep features to hand-crafted features ({mname})?")
    best = _rows(d.t["similarity_best"], task=main, trained="trained", measure=measure)
    if best.empty:
        d.p(f"No {mname} values between trained deep features and hand-crafted features are available.")
    else:
        items = []
        for arch in order_values(best["arch"], "arch"):
            b = best[best["arch"] == arch]
            layers = order_values(b["layer"], "layer")
            first, last = layers[0], layers[-1]
            i = int(b.index[b["layer"] == first][0])
            fa = b.loc[i, "feature"]
            s = [
                f"{arch_display(arch)}: {first} is most similar to {fa}, ",
                _with_chance(d, "similarity_best", i, mname),
            ]
            if pd.notna(b.loc[i, "random_mean"]):
                s += [
                    "; the Random baseline scores ",
                    d.num("similarity_best", i, "random_mean", 2),
                    ", ",
                    d.compare(
                        "best_vs_random",
                        cmp.sim_label(main, arch, first, "trained", fa),
                        cmp.sim_label(main, arch, first, "trained", "Random"),
                        fa,
                        "Random",
                        *_HIGHER,
                        3,
                    ),
                ]
            if last != first:
                j = int(b.index[b["layer"] == last][0])
                fb = b.loc[j, "feature"]
                s += [
                    f"; {last} is most similar to {fb}, ",
                    _with_chance(d, "similarity_best", j, mname),
                    "; ",
                    d.compare(
                        "first_vs_last_layer",
                        cmp.sim_label(main, arch, first, "trained", fa),
                        cmp.sim_label(main, arch, last, "trained", fb),
                        f"the best match of {first}",
                        f"that of {last}",
                        *_HIGHER,
                        3,
                    ),
                ]
            items.append(s + ["."])
        d.p(
            f"Most similar hand-crafted feature of the first and the last layer of each trained network "
            f"(trained on {main}; {mname}, mean ± sd over seeds):"
        )
        d.ul(items)
    sim = d.t["similarity"]
    ss = _rows(sim, comparison="seed_vs_seed", task=main, measure=measure, trained_a="trained")
    ss = ss[(ss["layer_a"] == ss["layer_b"]) & ss["mean"].notna()]
    if len(ss):
        parts = []
        for arch in order_values(ss["arch_a"], "arch"):
            a = ss[ss["arch_a"] == arch]
            layer = last_layer(a["layer_a"])
            i = int(a.index[a["layer_a"] == layer][0])
            parts += [
                ", " if parts else "",
                f"{arch_display(arch)} {layer} ",
                d.mean_sd("similarity", i, 2, single="one seed pair"),
            ]
        d.p(
            f"Networks of different seeds agree to this degree ({mname} of the same layer, mean ± sd over seed "
            "pairs): ",
            *parts,
            ".",
        )
    aa = _rows(sim, comparison="arch_vs_arch", task=main, measure=measure, trained_a="trained")
    aa = aa[(aa["layer_a"] == aa["layer_b"]) & aa["mean"].notna()]
    if len(aa):
        layer = last_layer(aa["layer_a"])
        a = aa[aa["layer_a"] == layer]
        hi, lo = int(a["mean"].idxmax()), int(a["mean"].idxmin())
        if measure in DISTANCES:  # smaller = more similar
            hi, lo = lo, hi
        hi_name = f"{arch_display(a.loc[hi, 'arch_a'])} and {arch_display(a.loc[hi, 'arch_b'])}"
        s = [
            f"Across architectures at {layer}, the most similar pair is {hi_name}, {mname} ",
            _with_chance(d, "similarity", hi),
        ]
        if lo != hi:
            lo_name = f"{arch_display(a.loc[lo, 'arch_a'])} and {arch_display(a.loc[lo, 'arch_b'])}"
            s += [
                f"; the least similar {lo_name}, ",
                _with_chance(d, "similarity", lo),
                "; ",
                d.compare(
                    "arch_pair_vs_arch_pair",
                    cmp.pair_label(main, a.loc[hi, "arch_a"], a.loc[hi, "arch_b"], layer, "trained"),
                    cmp.pair_label(main, a.loc[lo, "arch_a"], a.loc[lo, "arch_b"], layer, "trained"),
                    f"{mname} of {hi_name}",
                    f"that of {lo_name}",
                    *_HIGHER,
                    3,
                ),
            ]
        d.p(*s, ".")


def _q3(d: Doc, main: str, measure: str) -> None:
    mname = MEASURE_DISPLAY.get(measure, measure)
    d.h(
        2,
        "Third question: how similar are untrained deep features to hand-crafted features, and how well do "
        "they decode?",
    )
    best = _rows(d.t["similarity_best"], task=main, trained="untrained", measure=measure)
    items = []
    for arch in order_values(best["arch"], "arch"):
        b = best[best["arch"] == arch]
        first = order_values(b["layer"], "layer")[0]
        i = int(b.index[b["layer"] == first][0])
        feat = b.loc[i, "feature"]
        s = [
            f"Untrained {first} of {arch_display(arch)} is most similar to {feat}: ",
            _with_chance(d, "similarity_best", i, mname),
        ]
        j = _sim_row(
            d,
            comparison="deep_vs_handcrafted",
            task=main,
            arch_a=arch,
            layer_a=first,
            trained_a="trained",
            feature_b=feat,
            measure=measure,
        )
        if j is not None:
            s += [
                " (trained: ",
                d.mean_sd("similarity", j, 2),
                "; ",
                d.compare(
                    "untrained_vs_trained",
                    cmp.sim_label(main, arch, first, "untrained", feat),
                    cmp.sim_label(main, arch, first, "trained", feat),
                    "untrained",
                    "trained",
                    *_HIGHER,
                    3,
                ),
                ")",
            ]
        k = _sim_row(
            d, comparison="trained_vs_untrained", task=main, arch_a=arch, layer_a=first, layer_b=first, measure=measure
        )
        if k is not None:
            s += [f"; trained and untrained {first} have {mname} ", d.mean_sd("similarity", k, 2)]
            last = last_layer(
                _rows(d.t["similarity"], comparison="trained_vs_untrained", task=main, arch_a=arch)["layer_a"]
            )
            k2 = _sim_row(
                d,
                comparison="trained_vs_untrained",
                task=main,
                arch_a=arch,
                layer_a=last,
                layer_b=last,
                measure=measure,
            )
            if k2 is not None and last != first:
                s += [f", at {last} ", d.mean_sd("similarity", k2, 2)]
        items.append(s + ["."])
    if items:
        d.p(
            f"Similarity of untrained (initial-weight) networks to hand-crafted features ({mname}, mean ± sd over "
            "seeds; chance: the value expected for unrelated features of these widths on this many clips):"
        )
        d.ul(items)
    else:
        d.p(f"No {mname} values of untrained networks are available.")
    lay = d.t["layers"]
    lay = _rows(lay, train_task=main, probe_task=main, split="test")
    ch = d.t["chance"]
    ci = int(_rows(ch, task=main).index[0])
    items = []
    for arch in order_values(lay["arch"], "arch"):
        a = lay[(lay["arch"] == arch) & lay["mean"].notna()]
        u = a[a["trained"] == "untrained"]
        if u.empty:
            continue
        layer = last_layer(u["layer"])
        i = int(u.index[u["layer"] == layer][0])
        metric = u.loc[i, "metric"]
        word, unit = _score(metric)
        dig = metric_digits(metric)
        ways = _ways(metric)
        ulab = cmp.deep_label(arch, layer, "untrained", main, main)
        s = [f"Untrained {layer} of {arch_display(arch)} decodes {main} at ", d.mean_sd("layers", i, dig, unit)]
        s += d.selectivity("layers", i, dig, "")
        s += [
            "; chance is ",
            d.num("chance", ci, "value", dig, unit),
            ": ",
            d.compare("deep_vs_chance", ulab, cmp.chance_label(main), "it", "chance", *ways, dig),
        ]
        tr = a[(a["trained"] == "trained") & (a["layer"] == layer)]
        if len(tr):
            k = int(tr.index[0])
            s += ["; trained: ", d.mean_sd("layers", k, dig, unit)] + d.selectivity("layers", k, dig, "")
            s += [
                ", ",
                d.compare(
                    "trained_vs_untrained",
                    cmp.deep_label(arch, layer, "trained", main, main),
                    ulab,
                    "the trained layer",
                    "the untrained one",
                    *ways,
                    dig,
                ),
            ]
        items.append(s + ["."])
    if items:
        d.p("Decoding from untrained networks (deepest convolutional layer, mean ± sd over seeds):")
        d.ul(items)
    else:
        d.p("No probe scores of untrained networks are available.")


def _concat(d: Doc, main: str, measure: str) -> None:
    c = _rows(d.t["concat"], train_task=main, probe_task=main, trained="trained")
    c = c[c["gain_mean"].notna()]
    d.h(2, "Adding hand-crafted features to deep features")
    if c.empty:
        d.p("No concatenation probes are available.")
        return
    items = []
    for arch in order_values(c["arch"], "arch"):
        a = c[c["arch"] == arch]
        layer = last_layer(a["layer"])
        a = a[a["layer"] == layer]
        hi, lo = int(a["gain_mean"].idxmax()), int(a["gain_mean"].idxmin())
        metric = a.loc[hi, "metric"]
        word, unit = _score(metric)
        dig = metric_digits(metric)
        name = f"{arch_display(arch)} {layer}"
        f_hi, f_lo = a.loc[hi, "feature"], a.loc[lo, "feature"]
        s = [
            f"{name} alone: ",
            d.mean_sd("concat", hi, dig, unit, "alone_mean", "alone_sd"),
            f"; adding {f_hi} gives ",
            d.mean_sd("concat", hi, dig, unit, "concat_mean", "concat_sd"),
            " (gain ",
            d.mean_sd("concat", hi, dig, "", "gain_mean", "gain_sd"),
            "): ",
            d.compare(
                "concat_vs_alone",
                cmp.concat_label(arch, layer, "trained", main, f_hi, main),
                cmp.deep_label(arch, layer, "trained", main, main),
                f"{name} + {f_hi}",
                f"{name} alone",
                *_ways(metric),
                dig,
            ),
        ]
        if pd.notna(a.loc[hi, "cka"]):
            s += [f"; its {MEASURE_DISPLAY['cka']} with {layer} is ", d.num("concat", hi, "cka", 2)]
        if lo != hi:
            s += [f"; adding {f_lo} gains least (", d.mean_sd("concat", lo, dig, "", "gain_mean", "gain_sd"), ")"]
            if pd.notna(a.loc[lo, "cka"]):
                s += [f", {MEASURE_DISPLAY['cka']} ", d.num("concat", lo, "cka", 2)]
            s += [
                "; ",
                d.compare(
                    "gain_vs_gain",
                    cmp.gain_label(arch, layer, "trained", main, f_hi, main),
                    cmp.gain_label(arch, layer, "trained", main, f_lo, main),
                    f"the gain of {f_hi}",
                    f"that of {f_lo}",
                    "is larger than",
                    "is smaller than",
                    dig,
                ),
            ]
        items.append(s + ["."])
    unit = "percentage points" if c["metric"].iloc[0] == "accuracy" else "RMSE reduction"
    d.p(
        f"Deep features of the networks trained on {main}, concatenated with one hand-crafted feature and probed "
        f"on {main} (gain in {unit}, paired per seed; {MEASURE_DISPLAY['cka']} on the training split):"
    )
    d.ul(items)


def build_findings(tables: dict[str, pd.DataFrame], dataset: str, measure: str | None = None) -> Doc:
    """The findings document of one dataset from its tables (see :func:`deepfeat.formats.tables.read_tables`);
    ``measure``: the similarity measure quoted (None: the schema's default of ``report.measure``)."""
    measure = config.default("report", "measure") if measure is None else measure
    ch = tables["chance"]
    mains = ch.loc[ch["is_main"] == "True", "task"]
    if mains.empty:
        raise ValueError("chance table: no main task (is_main column)")
    main = mains.iloc[0]
    d = Doc(tables)
    _intro(d, dataset, main, measure)
    _q1(d, main)
    _q2(d, main, measure)
    _q3(d, main, measure)
    _concat(d, main, measure)
    return d


def _n_quoted(d: Doc) -> int:
    return sum(
        isinstance(s, Num)
        for b in d.blocks
        if b[0] in ("p", "ul")
        for s in (b[1] if b[0] == "p" else [x for i in b[1] for x in i])
    )


@job(reads={"report": ("measure",)})
def write_findings(*, tables, md, html, settings, dataset: str, log: logging.Logger | None = None) -> Doc:
    """Write the findings page of ``dataset``, read from the tables folder ``tables``, as Markdown (``md``) and
    standalone HTML (``html``). ``settings["report"]["measure"]``: the similarity measure quoted."""
    log = log or logging.getLogger(__name__)
    d = build_findings(read_tables(tables), dataset, settings["report"]["measure"])
    write_text(d.markdown(), md)
    write_text(d.html(f"deepfeat findings: {dataset}"), html)
    log.info(f"findings of {dataset}: {len(d.blocks)} blocks, {_n_quoted(d)} quoted numbers -> {md}, {html}")
    return d


__all__ = ["Doc", "Num", "build_findings", "write_findings"]
