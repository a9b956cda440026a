"""How results are shown: display orders (layers conv1 .. fc1, architectures as in the method, measures ...),
display names, number formatting and file-name slugs, shared by the tables, the figures and the findings page.

Orders: a column's known values come in the order of its list below, any other value after them in
:func:`deepfeat.formats.cliptable.natural_key` order (numbers by value, digit runs inside names as numbers).
Numbers: fixed-point at :func:`metric_digits` decimals (accuracy in % 1, RMSE 2, similarities 2); ``n/a`` for a
missing value.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import pandas as pd

from deepfeat.formats.cliptable import natural_key
from deepfeat.formats.handcrafted import feature_key
from deepfeat.formats.tables import COMPARISONS, MEASURES

LAYER_ORDER = ["conv1", "pool1", "conv2", "pool2", "conv3", "fc1"]
ARCH_ORDER = ["Regular", "Deformable", "Dilated", "1dF", "1dT", "FeedForward"]
TRAINED_ORDER = ["trained", "untrained", ""]
MEASURE_ORDER = list(MEASURES)
PRIMARY_MEASURE = "cka"
#: measures where smaller means more similar (distances)
DISTANCES = {"procrustes"}
ARCH_DISPLAY = {"FeedForward": "Feed Forward"}
MEASURE_DISPLAY = {
    "cka": "linear CKA",
    "cka_debiased": "debiased CKA",
    "r2_lr": "R² (linear regression)",
    "r2_cca": "R² CCA",
    "rho_cca": "ρ CCA",
    "r2_svcca": "R² SVCCA",
    "rho_svcca": "ρ SVCCA",
    "r2_lr_test": "R² (linear regression, held-out)",
    "r2_cca_test": "R² CCA (held-out)",
    "rho_cca_test": "ρ CCA (held-out)",
    "r2_svcca_test": "R² SVCCA (held-out)",
    "rho_svcca_test": "ρ SVCCA (held-out)",
    "procrustes": "Procrustes distance",
}
METRIC_UNIT = {"accuracy": "%", "rmse": "target units"}


def arch_display(arch: str) -> str:
    return ARCH_DISPLAY.get(arch, arch)


def slug(s) -> str:
    """File-name-safe version of a display name: lower case, runs of other characters -> '_' ('x' when empty);
    the rule of :func:`deepfeat.formats.handcrafted.feature_key`."""
    return feature_key(str(s)) or "x"


def _rank(values: Iterable, order: list[str]) -> dict:
    """A sort rank for every value: known ones by ``order``, the rest after them in natural order."""
    vals = sorted(set(values), key=natural_key)
    known = {v: i for i, v in enumerate(order)}
    rest = [v for v in vals if v not in known]
    return {**{v: known[v] for v in vals if v in known}, **{v: len(order) + i for i, v in enumerate(rest)}}


_ORDERS = {
    "layer": LAYER_ORDER,
    "layer_a": LAYER_ORDER,
    "layer_b": LAYER_ORDER,
    "arch": ARCH_ORDER,
    "arch_a": ARCH_ORDER,
    "arch_b": ARCH_ORDER,
    "trained": TRAINED_ORDER,
    "trained_a": TRAINED_ORDER,
    "trained_b": TRAINED_ORDER,
    "measure": MEASURE_ORDER,
    "comparison": COMPARISONS,
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


def last_layer(layers: Iterable[str]) -> str:
    """The deepest convolutional layer present (conv3 normally)."""
    present = [layer for layer in order_values(layers, "layer") if layer.startswith("conv")]
    if not present:
        present = order_values(layers, "layer")
    return present[-1]


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


__all__ = [
    "ARCH_DISPLAY",
    "ARCH_ORDER",
    "DISTANCES",
    "LAYER_ORDER",
    "MEASURE_DISPLAY",
    "MEASURE_ORDER",
    "METRIC_UNIT",
    "PRIMARY_MEASURE",
    "TRAINED_ORDER",
    "arch_display",
    "fmt_mean_sd",
    "fmt_number",
    "last_layer",
    "metric_digits",
    "order_values",
    "slug",
    "sort_frame",
]
