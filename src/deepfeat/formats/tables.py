"""The tidy CSV tables: the per-job outputs (probe scores and confusions, similarities, training histories) and
the aggregated result tables of ``R/{dataset}/tables/``, with their column lists, readers and writers.

Per-job tables (one row per value):

* probe scores (``probes/handcrafted.csv``, ``probes/deep/{task}/{arch}/seed{seed}.csv``): :data:`PROBE_COLUMNS`;
  accuracy is a fraction in [0, 1], RMSE in target units. Confusions (``*.confusion.csv``):
  :data:`CONFUSION_COLUMNS`, test split, class names, zeros kept.
* similarities (``similarity/{deep,channels,cross}/...csv``): :data:`SIMILARITY_COLUMNS`.
* training histories (``models/{task}/{arch}/seed{seed}.history.csv``): :data:`HISTORY_COLUMNS`.

Result tables: :data:`TABLE_COLUMNS` (column -> kind: "s" string, "f" float, "i" nullable integer), each written
as ``{name}.csv`` and ``{name}.md`` by :func:`write_table` and read back by :func:`read_tables`. Readers scale
accuracies stored as fractions to percent (a file whose accuracies all lie in [0, 1] is a fraction file).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from deepfeat.formats.files import write_csv

MEASURES = ["cka", "cka_debiased", "r2_lr", "r2_cca", "rho_cca", "r2_svcca", "rho_svcca"]
#: the held-out twins (fitted on the training split, evaluated on the test split) and the Procrustes shape distance
MEASURES += ["r2_lr_test", "r2_cca_test", "rho_cca_test", "r2_svcca_test", "rho_svcca_test", "procrustes"]
COMPARISONS = (
    "deep_vs_handcrafted trained_vs_untrained layer_vs_layer seed_vs_seed arch_vs_arch channel_vs_channel"
).split()

#: ``labels``: "task" (the probe of the task's labels) or "control" (the same probe on the control task: the task's
#: labels permuted across recordings, deepfeat.stats.permute_by_recording)
PROBE_COLUMNS = (
    "dataset feature arch seed layer trained train_task probe_task probe_seed labels metric split value".split()
)
CONFUSION_COLUMNS = [c for c in PROBE_COLUMNS if c not in ("labels", "metric", "value")]  # task probes only
CONFUSION_COLUMNS += ["true", "predicted", "count"]
SIMILARITY_COLUMNS = (
    "dataset comparison task arch_a seed_a layer_a trained_a arch_b seed_b layer_b "
    "trained_b feature_b measure value ci_low ci_high chance null_lo null_hi n p_a p_b method flag"
).split()


def similarity_row(
    dataset: str,
    comparison: str,
    task: str,
    a: dict,
    b: dict,
    measure: str,
    value: float,
    ci: tuple[float, float],
    n: int,
    p_a: int,
    p_b: int,
    method: str,
    flag: str = "",
    chance: float = float("nan"),
    null: tuple[float, float] = (float("nan"), float("nan")),
) -> dict:
    """One row of a similarity table (:data:`SIMILARITY_COLUMNS`). ``a`` and ``b`` describe the two sides with the
    keys ``arch``, ``seed``, ``layer``, ``trained`` (and ``feature`` for a hand-crafted side ``b``); keys that do not
    apply are left out and written as "". ``chance``: the measure's expected value for unrelated sets; ``null``:
    the (lo, hi) band of its permutation null (NaN where not computed)."""
    side = {f"{k}_{s}": d.get(k, "") for s, d in (("a", a), ("b", b)) for k in ("arch", "seed", "layer", "trained")}
    return dict(
        dataset=dataset,
        comparison=comparison,
        task=task,
        **side,
        feature_b=b.get("feature", ""),
        measure=measure,
        value=value,
        ci_low=ci[0],
        ci_high=ci[1],
        chance=chance,
        null_lo=null[0],
        null_hi=null[1],
        n=n,
        p_a=p_a,
        p_b=p_b,
        method=method,
        flag=flag,
    )


HISTORY_COLUMNS = ["epoch", "train_loss", "test_loss", "train_metric", "test_metric", "metric", "clips_per_s"]
_NA = ["", "nan", "NaN", "NA", "<NA>", "None", "null"]


def _columns(spec: str) -> dict[str, str]:
    """``"a:s b:f"`` -> {"a": "s", "b": "f"}: the columns of a table and their kinds, in order."""
    return dict(item.split(":") for item in spec.split())


# Every written table: column -> "s" (string), "f" (float) or "i" (nullable integer). Order = column order.
TABLE_COLUMNS: dict[str, dict[str, str]] = {
    "chance": _columns(
        "dataset:s task:s type:s is_main:s metric:s value:f majority_class:s n_classes:i n_train:i n_test:i"
    ),
    "table1": _columns(
        "dataset:s task:s feature:s kind:s arch:s layer:s metric:s mean:f sd:f n:i text:s control_mean:f "
        "selectivity_mean:f selectivity_sd:f control_flag:s"
    ),
    "handcrafted": _columns(
        "dataset:s feature:s probe_task:s metric:s split:s mean:f sd:f n:i control_mean:f selectivity_mean:f "
        "selectivity_sd:f control_flag:s"
    ),
    "layers": _columns(
        "dataset:s train_task:s probe_task:s arch:s layer:s trained:s metric:s split:s mean:f sd:f n:i "
        "control_mean:f selectivity_mean:f selectivity_sd:f control_flag:s"
    ),
    "networks": _columns("dataset:s task:s arch:s metric:s mean:f sd:f n:i train_mean:f epochs:i"),
    "robustness": _columns(
        "dataset:s train_task:s probe_task:s arch:s layer:s metric:s mean:f sd:f n:i matched_mean:f "
        "matched_sd:f network_mean:f network_sd:f handcrafted_best:s handcrafted_mean:f handcrafted_sd:f "
        "chance:f"
    ),
    "concat": _columns(
        "dataset:s train_task:s probe_task:s arch:s layer:s trained:s feature:s metric:s alone_mean:f "
        "alone_sd:f concat_mean:f concat_sd:f gain_mean:f gain_sd:f n:i feature_mean:f cka:f"
    ),
    "similarity": _columns(
        "dataset:s comparison:s task:s arch_a:s layer_a:s trained_a:s arch_b:s layer_b:s trained_b:s "
        "feature_b:s measure:s mean:f sd:f n:i p_a:f p_b:f method:s flag:s chance:f null_lo:f null_hi:f"
    ),
    "similarity_best": _columns(
        "dataset:s task:s arch:s layer:s trained:s measure:s feature:s mean:f sd:f n:i random_mean:f chance:f"
    ),
    "confusion": _columns(
        "dataset:s feature:s arch:s layer:s trained:s train_task:s probe_task:s split:s true:s predicted:s "
        "count:f runs:i"
    ),
    "comparisons": _columns(
        "dataset:s question:s what:s a:s b:s metric:s difference:f ci_low:f ci_high:f level:f seeds_a:i "
        "seeds_b:i verdict:i"
    ),
}


def as_paths(x) -> list[str]:
    """A path, a list of paths or None as a list of path strings."""
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
        msg = f"{path}: empty file, expected a {what} CSV with columns {required} (docs/formats.md)"
        raise ValueError(msg) from None
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
        log.info(
            f"{what}: accuracy stored as a fraction in {units.get('fraction', 0)} file(s), as percent in "
            f"{units.get('percent', 0)} file(s); all reported in percent"
        )


def _stack(frames: list[pd.DataFrame], columns: list[str], value: str) -> pd.DataFrame:
    """The rows of every file in order (an empty table of ``columns`` when none), the seed columns as nullable
    integers and ``value`` as float64."""
    out = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
    for c in ("seed", "probe_seed"):
        out[c] = pd.to_numeric(out[c]).astype("Int64")
    out[value] = out[value].astype(np.float64)
    return out


def read_probe_scores(paths, dataset: str | None = None, log=None) -> pd.DataFrame:
    """All probe score rows of ``paths`` (columns PROBE_COLUMNS), accuracy in percent, seeds as Int64. A file
    written before the control task (no ``labels`` column) holds task rows only: its labels read as "task"."""
    frames, units = [], {}
    required = [c for c in PROBE_COLUMNS if c != "labels"]
    for p in as_paths(paths):
        df = _read_csv(p, required, ["seed", "probe_seed", "value"], "probe score")
        if "labels" not in df.columns:
            df["labels"] = "task"
        df = df[PROBE_COLUMNS]
        _check_values(df, "labels", {"task", "control"}, p)
        _check_dataset(df, p, dataset)
        _check_values(df, "metric", {"accuracy", "rmse"}, p)
        _check_values(df, "split", {"train", "test"}, p)
        _check_values(df, "trained", {"trained", "untrained", ""}, p)
        df = _accuracy_to_percent(df, ["value"], df["metric"] == "accuracy", p, units)
        frames.append(df)
    _log_units(units, "probe scores", log)
    return _stack(frames, PROBE_COLUMNS, "value")


def read_confusions(paths, dataset: str | None = None) -> pd.DataFrame:
    """All confusion count rows of ``paths`` (columns CONFUSION_COLUMNS), seeds as Int64, counts as float."""
    frames = []
    for p in as_paths(paths):
        df = _read_csv(p, CONFUSION_COLUMNS, ["seed", "probe_seed", "count"], "confusion")[CONFUSION_COLUMNS]
        _check_dataset(df, p, dataset)
        frames.append(df)
    return _stack(frames, CONFUSION_COLUMNS, "count")


def read_similarity(paths, dataset: str | None = None) -> pd.DataFrame:
    """All similarity rows of ``paths`` (columns SIMILARITY_COLUMNS), numeric columns as float."""
    numeric = ["seed_a", "seed_b", "value", "ci_low", "ci_high", "chance", "null_lo", "null_hi", "n", "p_a", "p_b"]
    frames = []
    for p in as_paths(paths):
        df = _read_csv(p, SIMILARITY_COLUMNS, numeric, "similarity")[SIMILARITY_COLUMNS]
        _check_dataset(df, p, dataset)
        _check_values(df, "comparison", set(COMPARISONS), p)
        _check_values(df, "measure", set(MEASURES), p)
        frames.append(df)
    out = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=SIMILARITY_COLUMNS)
    for c in numeric:
        out[c] = out[c].astype(np.float64)
    return out


_HISTORY_RE = re.compile(r"models/(?P<task>[^/]+)/(?P<arch>[^/]+)/seed(?P<seed>\d+)\.history\.csv$")


def read_histories(paths, log=None) -> pd.DataFrame:
    """The last epoch of every training history: task, arch, seed (from the path), epoch, metric, scores."""
    rows, units = [], {}
    for p in as_paths(paths):
        m = _HISTORY_RE.search(Path(p).as_posix())
        if m is None:
            raise ValueError(f"{p}: history path must end in models/<task>/<arch>/seed<seed>.history.csv")
        df = _read_csv(p, HISTORY_COLUMNS, [c for c in HISTORY_COLUMNS if c != "metric"], "training history")
        if df.empty:
            raise ValueError(f"{p}: training history has no rows")
        _check_values(df, "metric", {"accuracy", "rmse"}, p)
        df = _accuracy_to_percent(df, ["train_metric", "test_metric"], df["metric"] == "accuracy", p, units)
        last = df.loc[df["epoch"].idxmax()]
        rows.append(
            dict(
                task=m["task"],
                arch=m["arch"],
                seed=int(m["seed"]),
                epoch=int(last["epoch"]),
                metric=last["metric"],
                train_metric=float(last["train_metric"]),
                test_metric=float(last["test_metric"]),
            )
        )
    _log_units(units, "training histories", log)
    cols = ["task", "arch", "seed", "epoch", "metric", "train_metric", "test_metric"]
    return pd.DataFrame(rows, columns=cols)


def conform(df: pd.DataFrame, name: str, dataset: str) -> pd.DataFrame:
    """``df`` with exactly the columns of the result table ``name`` (TABLE_COLUMNS), in order and of their kinds,
    and the ``dataset`` column set."""
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
