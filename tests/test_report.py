"""Tables, figures and findings on synthetic stage outputs that follow docs/formats.md column by column."""

from __future__ import annotations

import json
import re
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import make_meta, write_fake_mel

from deepfeat import stats
from deepfeat.config import ConfigError
from deepfeat.formats.cliptable import write_clip_table
from deepfeat.formats.files import write_csv, write_h5
from deepfeat.formats.replicates import fingerprint, write_replicates
from deepfeat.formats.tables import CONFUSION_COLUMNS, PROBE_COLUMNS, SIMILARITY_COLUMNS, read_tables
from deepfeat.report import build_tables, make_figures, write_findings

#: the probe and similarity rows as the tests write them (before the labels / chance columns)
PROBE12 = "dataset feature arch seed layer trained train_task probe_task probe_seed metric split value".split()
SIM21 = (
    "dataset comparison task arch_a seed_a layer_a trained_a arch_b seed_b layer_b "
    "trained_b feature_b measure value ci_low ci_high n p_a p_b method flag"
).split()
RESAMPLES = 40

HC = [
    "Mean Power (frequency)",
    "Time to -70 dB",
    "Mean Wavelet (25)",
    "Wavelet Combined",
    "Top 4 Combined",
    "Spectral Centroid",
    "Mean Wavelet (1)",
    "Std Wavelet (25)",
    "DWT db10 (horizontal)",
    "Random",
]
CONCAT = ["Mean Power (frequency)", "Mean Wavelet (25)"]
LAYERS = ["conv1", "pool1", "conv2", "pool2", "conv3"]
DS = "toy"


def _write_mel(path: Path, regression: bool, n: int = 60, n_frames: int = 128):
    if regression:
        return write_fake_mel(path, n=n, n_frames=n_frames)
    meta = make_meta(n, 3, 0)
    rng = np.random.default_rng(0)
    mel = np.clip(rng.normal(-40, 8, (n, 128, n_frames)), -80, 0).astype(np.float32)
    with write_h5(path, "mel") as f:
        f.create_dataset("mel", data=mel)
        f["mel"].attrs.update(dict(sr=22050, hop_length=502, fmax=8000.0, htk=False))
        f.attrs["train_mean"], f.attrs["train_std"] = -40.0, 8.0
        write_clip_table(f, meta, [{"name": "family", "type": "classification", "label": "family"}], "family")
    return mel, meta


def _write_handcrafted(path: Path, n: int, n_frames: int):
    rng = np.random.default_rng(1)
    dims = {
        "Mean Power (frequency)": n_frames,
        "Spectral Centroid": n_frames,
        "Time to -70 dB": 128,
        "Mean Wavelet (25)": 128,
    }
    with write_h5(path, "handcrafted") as f:
        g = f.create_group("features")
        for name, d in dims.items():
            key = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
            ds = g.create_dataset(key, data=rng.normal(size=(n, d)).astype(np.float32))
            ds.attrs.update(name=name, definition="synthetic", params="{}", dim=d, shape=json.dumps([d]))


def _probe_frame(rows: list, rng, meta) -> pd.DataFrame:
    """Probe score rows (PROBE12 lists, labels 'task') plus a control row for each (labels 'control', values drawn
    below the task's), as PROBE_COLUMNS."""
    task = pd.DataFrame(rows, columns=PROBE12).assign(labels="task")
    ctl = task.assign(labels="control")
    acc = ctl["metric"] == "accuracy"
    ctl["value"] = np.where(
        acc, ctl["value"] * rng.uniform(0.3, 0.9, len(ctl)), ctl["value"] * rng.uniform(1, 2, len(ctl))
    )
    return pd.concat([task, ctl], ignore_index=True)[[c for c in PROBE_COLUMNS]]


def _sim_frame(rows: list, rng) -> pd.DataFrame:
    """Similarity rows (SIM21 lists) with chance and null band columns where SIMILARITY_COLUMNS has them."""
    df = pd.DataFrame(rows, columns=SIM21)
    ch = df["value"] * rng.uniform(0.2, 1.2, len(df))
    extra = {"chance": ch, "null_lo": ch - 0.05, "null_hi": ch + 0.05}
    for c, v in extra.items():
        df[c] = v
    return df[[c for c in SIMILARITY_COLUMNS if c in df.columns]]


def _write_boot(path: Path, df: pd.DataFrame, key_cols: list[str], rng, clips: str, stream: int, unit: str) -> Path:
    """Synthetic replicates of the rows of ``df``: the value plus noise with a component shared by all files (the
    same resample b moves every value alike, as the real paired resamples do)."""
    shared = np.random.default_rng(7).normal(size=RESAMPLES)
    v = df["value"].to_numpy(np.float64)
    scale = np.where(np.abs(v) > 1.5, 1.0, 0.03)
    reps = v[:, None] + scale[:, None] * (0.5 * shared[None] + rng.normal(size=(len(df), RESAMPLES)))
    write_replicates(path, df[key_cols], v, reps, seed=0, stream=stream, unit=unit, clips=clips)
    return path


PROBE_BOOT_KEYS = "dataset feature arch seed layer trained train_task probe_task probe_seed labels metric".split()
SIM_BOOT_KEYS = (
    "dataset comparison task arch_a seed_a layer_a trained_a arch_b seed_b layer_b trained_b feature_b measure"
).split()


def _probe_boot(path: Path, df: pd.DataFrame, rng, meta) -> Path:
    test = df[df["split"] == "test"]
    clips = fingerprint(meta["clip_id"].to_numpy()[meta["split"].to_numpy() == 1])
    return _write_boot(path, test, PROBE_BOOT_KEYS, rng, clips, stats.PROBE_STREAM, "test clips")


def _sim_boot(path: Path, df: pd.DataFrame, rng, meta) -> Path:
    rows = df[df["measure"].isin(["cka", "cka_debiased"])]
    clips = fingerprint(meta["clip_id"].to_numpy()[meta["split"].to_numpy() == 0])
    return _write_boot(path, rows, SIM_BOOT_KEYS, rng, clips, stats.SIMILARITY_STREAM, "training clips")


def make_inputs(
    root: Path,
    seeds=(1, 10),
    archs=("Regular", "Dilated"),
    regression: bool = True,
    train_tasks=("family",),
    probe_seeds=(0, 1, 2),
    channels: bool = True,
    boot: bool = True,
) -> tuple[dict, dict]:
    """Synthetic stage outputs under ``root``; returns (inputs dict for build_tables, raw values by key).

    Accuracies are stored as fractions (probes) and percent (histories) to exercise both unit forms. Every probe
    row has a control row; ``boot``: the probe and similarity replicate files too."""
    rng = np.random.default_rng(42)
    root = Path(root)
    n_frames = 128
    mel, meta = _write_mel(root / "mel.h5", regression, n_frames=n_frames)
    _write_handcrafted(root / "handcrafted.h5", len(meta), n_frames)
    tasks = {"family": "accuracy"} | ({"pitch": "rmse"} if regression else {})
    classes = ["class0", "class1", "class2"]
    raw: dict = {}

    def val(metric):
        return rng.uniform(0.3, 0.95) if metric == "accuracy" else rng.uniform(2.0, 15.0)

    # hand-crafted probes + confusion
    rows, conf = [], []
    for feat in HC:
        for pt, metric in tasks.items():
            for ps in probe_seeds:
                for split in ("train", "test"):
                    v = val(metric)
                    raw.setdefault(("hc", feat, pt, split), []).append(v)
                    rows.append([DS, feat, "", "", "", "", "", pt, ps, metric, split, v])
            if metric == "accuracy":
                for ps in probe_seeds:
                    for t_ in classes:
                        for p_ in classes:
                            conf.append([DS, feat, "", "", "", "", "", pt, ps, "test", t_, p_, int(rng.integers(0, 9))])
    df = _probe_frame(rows, rng, meta)
    write_csv(df, root / "probes/handcrafted.csv")
    write_csv(pd.DataFrame(conf, columns=CONFUSION_COLUMNS), root / "probes/handcrafted.confusion.csv")
    boot_files = {k: [] for k in ("probe_handcrafted", "probe_deep", "similarity_deep", "similarity_cross")}
    if boot:
        boot_files["probe_handcrafted"].append(_probe_boot(root / "probes/handcrafted.boot.h5", df, rng, meta))
    inputs = {
        "mel": root / "mel.h5",
        "probe_handcrafted": root / "probes/handcrafted.csv",
        "confusion_handcrafted": root / "probes/handcrafted.confusion.csv",
        "probe_deep": [],
        "confusion_deep": [],
        "histories": [],
        "similarity_deep": [],
        "similarity_channels": [],
        "similarity_cross": [],
    }

    def sim_row(comp, task, aa, sa, la, ta, ab, sb, lb, tb, fb, measure, v):
        return [
            DS,
            comp,
            task,
            aa,
            sa,
            la,
            ta,
            ab,
            sb,
            lb,
            tb,
            fb,
            measure,
            v,
            v - 0.05,
            v + 0.05,
            40,
            100,
            100,
            "feature",
            "",
        ]

    for tt in train_tasks:
        for arch in archs + ("FeedForward",):
            for seed in seeds:
                metric = tasks[tt]
                hist = []
                for ep in (1, 2, 3):
                    v = val(metric) * (100 if metric == "accuracy" else 1)
                    hist.append([ep, 1.0 / ep, 1.1 / ep, v, v, metric, 200.0])
                raw.setdefault(("net", tt, arch), []).append(hist[-1][4])
                p = root / f"models/{tt}/{arch}/seed{seed}.history.csv"
                write_csv(
                    pd.DataFrame(
                        hist,
                        columns=[
                            "epoch",
                            "train_loss",
                            "test_loss",
                            "train_metric",
                            "test_metric",
                            "metric",
                            "clips_per_s",
                        ],
                    ),
                    p,
                )
                inputs["histories"].append(p)
                if arch == "FeedForward":
                    continue
                rows, conf, sim, ch = [], [], [], []
                for layer in LAYERS:
                    for tr in ("trained", "untrained"):
                        for pt, metric in tasks.items():
                            for split in ("train", "test"):
                                v = val(metric)
                                raw.setdefault(("deep", tt, pt, arch, layer, tr, split), []).append(v)
                                rows.append(
                                    [DS, f"{arch} {layer}", arch, seed, layer, tr, tt, pt, seed, metric, split, v]
                                )
                            if layer == "conv3" and split == "test":
                                for hc in CONCAT:
                                    v = val(metric)
                                    raw.setdefault(("concat", tt, pt, arch, tr, hc), []).append(
                                        (v, raw[("deep", tt, pt, arch, layer, tr, "test")][-1])
                                    )
                                    rows.append(
                                        [
                                            DS,
                                            f"{arch} {layer} + {hc}",
                                            arch,
                                            seed,
                                            layer,
                                            tr,
                                            tt,
                                            pt,
                                            seed,
                                            metric,
                                            "test",
                                            v,
                                        ]
                                    )
                        for t_ in classes:
                            for p_ in classes:
                                conf.append(
                                    [
                                        DS,
                                        f"{arch} {layer}",
                                        arch,
                                        seed,
                                        layer,
                                        tr,
                                        tt,
                                        "family",
                                        seed,
                                        "test",
                                        t_,
                                        p_,
                                        int(rng.integers(0, 9)),
                                    ]
                                )
                        for measure in ("cka", "cka_debiased"):
                            for feat in HC:
                                v = rng.uniform(0, 1)
                                raw.setdefault(("sim", tt, arch, layer, tr, feat, measure), []).append(v)
                                sim.append(
                                    sim_row(
                                        "deep_vs_handcrafted",
                                        tt,
                                        arch,
                                        seed,
                                        layer,
                                        tr,
                                        "",
                                        "",
                                        "",
                                        "",
                                        feat,
                                        measure,
                                        v,
                                    )
                                )
                    for measure in ("cka", "cka_debiased"):
                        sim.append(
                            sim_row(
                                "trained_vs_untrained",
                                tt,
                                arch,
                                seed,
                                layer,
                                "trained",
                                arch,
                                seed,
                                layer,
                                "untrained",
                                "",
                                measure,
                                rng.uniform(0, 1),
                            )
                        )
                for la, lb in combinations(LAYERS, 2):
                    for tr in ("trained", "untrained"):
                        sim.append(
                            sim_row(
                                "layer_vs_layer",
                                tt,
                                arch,
                                seed,
                                la,
                                tr,
                                arch,
                                seed,
                                lb,
                                tr,
                                "",
                                "cka",
                                rng.uniform(0, 1),
                            )
                        )
                for ca, cb in combinations([f"conv1/ch{i}" for i in range(3)], 2):
                    for tr in ("trained", "untrained"):
                        ch.append(
                            sim_row(
                                "channel_vs_channel",
                                tt,
                                arch,
                                seed,
                                ca,
                                tr,
                                arch,
                                seed,
                                cb,
                                tr,
                                "",
                                "cka",
                                rng.uniform(0, 1),
                            )
                        )
                base = root / f"probes/deep/{tt}/{arch}/seed{seed}"
                df = _probe_frame(rows, rng, meta)
                write_csv(df, f"{base}.csv")
                if boot:
                    boot_files["probe_deep"].append(_probe_boot(Path(f"{base}.boot.h5"), df, rng, meta))
                write_csv(pd.DataFrame(conf, columns=CONFUSION_COLUMNS), f"{base}.confusion.csv")
                inputs["probe_deep"].append(Path(f"{base}.csv"))
                inputs["confusion_deep"].append(Path(f"{base}.confusion.csv"))
                p = root / f"similarity/deep/{tt}/{arch}/seed{seed}.csv"
                df = _sim_frame(sim, rng)
                write_csv(df, p)
                inputs["similarity_deep"].append(p)
                if boot:
                    boot_files["similarity_deep"].append(_sim_boot(p.with_suffix(".boot.h5"), df, rng, meta))
                if channels:
                    p = root / f"similarity/channels/{tt}/{arch}/seed{seed}.csv"
                    write_csv(_sim_frame(ch, rng), p)
                    inputs["similarity_channels"].append(p)
        cross = []
        for arch in archs:
            for sa, sb in combinations(seeds, 2):
                for layer in LAYERS:
                    cross.append(
                        sim_row(
                            "seed_vs_seed",
                            tt,
                            arch,
                            sa,
                            layer,
                            "trained",
                            arch,
                            sb,
                            layer,
                            "trained",
                            "",
                            "cka",
                            rng.uniform(0, 1),
                        )
                    )
        for aa, ab in combinations(archs, 2):
            for seed in seeds:
                for layer in LAYERS:
                    for tr in ("trained", "untrained"):
                        cross.append(
                            sim_row(
                                "arch_vs_arch",
                                tt,
                                aa,
                                seed,
                                layer,
                                tr,
                                ab,
                                seed,
                                layer,
                                tr,
                                "",
                                "cka",
                                rng.uniform(0, 1),
                            )
                        )
        p = root / f"similarity/cross/{tt}.csv"
        df = _sim_frame(cross, rng)
        write_csv(df, p)
        inputs["similarity_cross"].append(p)
        if boot:
            boot_files["similarity_cross"].append(_sim_boot(p.with_suffix(".boot.h5"), df, rng, meta))
    inputs.update({f"boot_{k}": v for k, v in boot_files.items()})
    return inputs, raw


def _build(inputs: dict, tables: Path, dataset: str = DS, settings=None) -> dict:
    settings = {"stats": {"seed": 0, "level": 0.95}} if settings is None else settings
    return build_tables(**inputs, tables=tables, settings=settings, dataset=dataset)


def _figures(tables: Path, mel, features, figures: Path, report: dict) -> list[Path]:
    return make_figures(
        tables=tables, mel=mel, features=features, figures=figures, settings={"report": report}, dataset=DS
    )


def _findings(tables: Path, md: Path, html: Path, report: dict) -> None:
    write_findings(tables=tables, md=md, html=html, settings={"report": report}, dataset=DS)


def _sd(v):
    return float(np.std(v, ddof=1)) if len(v) > 1 else np.nan


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Synthetic inputs and their tables, shared read-only by the tests of this module."""
    tmp_path = tmp_path_factory.mktemp("built")
    inputs, raw = make_inputs(tmp_path / "in")
    tables = _build(inputs, tmp_path / "tables")
    return tmp_path, inputs, raw, tables


# ----------------------------------------------------------------------------------------------------------
# tables
# ----------------------------------------------------------------------------------------------------------
def test_table1_values_are_hand_computed_mean_sd(built):
    tmp_path, inputs, raw, t = built
    t1 = t["table1"].set_index("feature")
    for feat in HC:
        v = 100 * np.asarray(raw[("hc", feat, "family", "test")])
        assert t1.loc[feat, "mean"] == pytest.approx(v.mean(), abs=1e-9)
        assert t1.loc[feat, "sd"] == pytest.approx(np.std(v, ddof=1), abs=1e-9)
        assert t1.loc[feat, "n"] == 3
    for arch in ("Regular", "Dilated"):
        v = 100 * np.asarray(raw[("deep", "family", "family", arch, "conv3", "trained", "test")])
        r = t1.loc[f"{arch} (conv3)"]
        assert (r["mean"], r["sd"], r["n"]) == (pytest.approx(v.mean()), pytest.approx(_sd(v)), 2)
    v = np.asarray(raw[("net", "family", "FeedForward")])
    assert t1.loc["Feed Forward (network)", "mean"] == pytest.approx(v.mean())
    assert t1.loc["Feed Forward (network)", "sd"] == pytest.approx(_sd(v))
    # order: chance, hand-crafted by decreasing accuracy, deep, network
    assert list(t1["kind"]) == ["chance"] + ["handcrafted"] * len(HC) + ["deep"] * 2 + ["network"]
    hc = t1[t1["kind"] == "handcrafted"]["mean"].to_numpy()
    assert np.all(np.diff(hc) <= 0)
    md = (tmp_path / "tables/table1.md").read_text()
    assert "Feed Forward (network)" in md and t1.loc["Regular (conv3)", "text"] in md


def test_chance_is_majority_share_of_test_split(built):
    tmp_path, inputs, raw, t = built
    import h5py

    with h5py.File(inputs["mel"]) as f:
        split = f["meta/split"][:]
        codes = f["labels/family"][:]
        pitch = f["labels/pitch"][:]
    test = codes[split == 1]
    want = 100.0 * np.bincount(test).max() / len(test)
    ch = t["chance"].set_index("task")
    assert ch.loc["family", "value"] == pytest.approx(want)
    assert t["table1"].iloc[0]["mean"] == pytest.approx(want)
    # not the share over all clips (differs for this split)
    assert want != pytest.approx(100.0 * np.bincount(codes).max() / len(codes))
    rmse = np.sqrt(np.mean((pitch[split == 1] - pitch[split == 0].mean()) ** 2))
    assert ch.loc["pitch", "value"] == pytest.approx(rmse)
    assert ch.loc["pitch", "metric"] == "rmse"


def test_layers_robustness_concat_similarity_tables(built):
    tmp_path, inputs, raw, t = built
    lay = t["layers"].set_index(["probe_task", "arch", "layer", "trained", "split"])
    v = np.asarray(raw[("deep", "family", "pitch", "Dilated", "pool1", "untrained", "test")])
    r = lay.loc[("pitch", "Dilated", "pool1", "untrained", "test")]
    assert (r["mean"], r["sd"], r["metric"]) == (pytest.approx(v.mean()), pytest.approx(_sd(v)), "rmse")
    # robustness: pitch decoded from family-trained conv2; best hand-crafted = lowest RMSE
    rob = t["robustness"].set_index(["train_task", "probe_task", "arch", "layer"])
    r = rob.loc[("family", "pitch", "Regular", "conv2")]
    v = np.asarray(raw[("deep", "family", "pitch", "Regular", "conv2", "trained", "test")])
    assert r["mean"] == pytest.approx(v.mean())
    best = min(HC, key=lambda f: np.mean(raw[("hc", f, "pitch", "test")]))
    assert r["handcrafted_best"] == best
    assert np.isnan(r["matched_mean"]) and np.isnan(r["network_mean"])  # nothing trained on pitch
    r = rob.loc[("family", "family", "Regular", "conv2")]
    assert r["matched_mean"] == pytest.approx(r["mean"])
    assert r["network_mean"] == pytest.approx(np.mean(raw[("net", "family", "Regular")]))
    # concatenation gain: paired per seed; RMSE gain has the sign of an improvement
    cc = t["concat"].set_index(["probe_task", "arch", "trained", "feature"])
    for pt, scale, sign in (("family", 100, 1), ("pitch", 1, -1)):
        pairs = np.asarray(raw[("concat", "family", pt, "Regular", "trained", "Mean Wavelet (25)")]) * scale
        r = cc.loc[(pt, "Regular", "trained", "Mean Wavelet (25)")]
        assert r["gain_mean"] == pytest.approx(sign * (pairs[:, 0] - pairs[:, 1]).mean())
        assert r["gain_sd"] == pytest.approx(np.std(sign * (pairs[:, 0] - pairs[:, 1]), ddof=1))
        assert r["concat_mean"] == pytest.approx(pairs[:, 0].mean())
    r = cc.loc[("family", "Regular", "trained", "Mean Wavelet (25)")]
    assert r["cka"] == pytest.approx(
        np.mean(raw[("sim", "family", "Regular", "conv3", "trained", "Mean Wavelet (25)", "cka")])
    )
    # similarity summary and best feature
    s = t["similarity"]
    s = s[
        (s["comparison"] == "deep_vs_handcrafted")
        & (s["arch_a"] == "Dilated")
        & (s["layer_a"] == "conv1")
        & (s["trained_a"] == "untrained")
        & (s["measure"] == "cka")
    ].set_index("feature_b")
    for feat in HC:
        v = np.asarray(raw[("sim", "family", "Dilated", "conv1", "untrained", feat, "cka")])
        assert s.loc[feat, "mean"] == pytest.approx(v.mean()) and s.loc[feat, "sd"] == pytest.approx(_sd(v))
    b = (
        t["similarity_best"]
        .set_index(["arch", "layer", "trained", "measure"])
        .loc[("Dilated", "conv1", "untrained", "cka")]
    )
    real = s.drop(index="Random")
    assert b["feature"] == real["mean"].idxmax() and b["random_mean"] == pytest.approx(s.loc["Random", "mean"])
    # seed_vs_seed: mean over seed pairs; confusion summed over probe seeds
    ss = t["similarity"][t["similarity"]["comparison"] == "seed_vs_seed"]
    assert set(ss["n"]) == {1}
    c = t["confusion"]
    c = c[(c["feature"] == "Random") & (c["true"] == "class0") & (c["predicted"] == "class1")]
    assert len(c) == 1 and c["runs"].iloc[0] == 3


def test_tables_round_trip_and_markdown(built):
    tmp_path, _, _, t = built
    back = read_tables(tmp_path / "tables")
    for name, df in t.items():
        pd.testing.assert_frame_equal(back[name], df, check_dtype=False)
        assert (tmp_path / "tables" / f"{name}.md").read_text().startswith("|")


def test_bad_inputs_are_named(tmp_path):
    inputs, _ = make_inputs(tmp_path / "in", archs=("Regular",), seeds=(1,))
    bad = pd.read_csv(inputs["probe_handcrafted"]).drop(columns=["probe_seed"])
    bad.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ValueError, match=r"bad\.csv.*probe_seed"):
        _build({**inputs, "probe_handcrafted": tmp_path / "bad.csv"}, tmp_path / "t")
    with pytest.raises(ValueError, match="dataset"):
        _build(inputs, tmp_path / "t", "other")
    bad = pd.read_csv(inputs["probe_handcrafted"])
    bad.loc[0, "metric"] = "f1"
    bad.to_csv(tmp_path / "bad2.csv", index=False)
    with pytest.raises(ValueError, match=r"bad2\.csv.*metric"):
        _build({**inputs, "probe_handcrafted": tmp_path / "bad2.csv"}, tmp_path / "t")


def test_display_order_is_the_natural_order_of_the_clip_table():
    from deepfeat.formats.cliptable import natural_key
    from deepfeat.report.display import order_values, sort_frame

    assert order_values(["class10", "class2", "class1"], "feature") == ["class1", "class2", "class10"]
    assert order_values(["fc1", "conv3", "extra", "pool1", "conv1"], "layer") == [
        "conv1",
        "pool1",
        "conv3",
        "fc1",
        "extra",
    ]
    names = ["DWT bior2.2 (vertical)", "DWT bior1.3 (vertical)", "Mean Wavelet (25)", "Mean Wavelet (5)", "RMS"]
    assert order_values(names, "feature") == sorted(names, key=natural_key)
    df = pd.DataFrame({"arch": ["FeedForward", "Regular", "Dilated"], "layer": ["fc1", "conv2", "conv1"]})
    assert sort_frame(df, ["arch"])["arch"].tolist() == ["Regular", "Dilated", "FeedForward"]


def test_jobs_declare_their_settings_and_reject_unknown_ones(built, tmp_path):
    src, inputs, _, _ = built
    assert build_tables.job.reads == {"stats": ("seed", "level")} and build_tables.job.tunes == {}
    assert make_figures.job.reads == {
        "report": (
            "top_features",
            "figure_measures",
            "dpi",
            "seed",
            "pca_max_clips",
            "example_clip",
            "example_features",
        )
    }
    assert write_findings.job.reads == {"report": ("measure",)}
    with pytest.raises(ConfigError, match="report.dpi_x: unknown key"):
        _figures(src / "tables", inputs["mel"], None, tmp_path / "figures", {"dpi_x": 50})
    with pytest.raises(ConfigError, match="report.measure"):
        _findings(src / "tables", tmp_path / "f.md", tmp_path / "f.html", {"measure": "pearson"})
    with pytest.raises(ConfigError, match="unknown config section 'tabels'"):
        _build(inputs, tmp_path / "tables", settings={"tabels": {}})
    assert not any((tmp_path / n).exists() for n in ("figures", "f.md", "f.html", "tables"))


def test_pca_subset_is_the_seeded_subset():
    """The PCA draws its clips with formats.cliptable.seeded_subset: the same draw as the report's former own
    subset, np.sort(default_rng(seed).choice(n, min(n, k), replace=False)), also when k >= n."""
    from deepfeat.formats.cliptable import seeded_subset

    for n, k, seed in ((100, 40, 0), (40, 40, 3), (30, 2000, 0), (2500, 2000, 7)):
        old = np.sort(np.random.default_rng(seed).choice(n, size=min(n, k), replace=False))
        assert np.array_equal(seeded_subset(n, k, seed), old)


# ----------------------------------------------------------------------------------------------------------
# figures
# ----------------------------------------------------------------------------------------------------------
FAST = {"figure_measures": ["cka"], "top_features": 4, "dpi": 50, "pca_max_clips": 40}


def _nonblank(path: Path) -> bool:
    import matplotlib.image as mpimg

    img = mpimg.imread(path)[..., :3]
    return img.std() > 0.05 and (img.mean(axis=-1) < 0.9).mean() > 0.01


def test_figures_for_every_comparison(built):
    tmp_path, inputs, _, t = built
    out = tmp_path / "figures"
    written = _figures(tmp_path / "tables", inputs["mel"], tmp_path / "in/handcrafted.h5", out, FAST)
    names = {p.stem for p in written}
    assert names == {p.stem for p in out.glob("*.png")}
    for comp in set(t["similarity"]["comparison"]):
        assert any(n.startswith(f"sim_{comp}_") for n in names), comp
    assert {
        "decoding_family_to_family",
        "decoding_family_to_pitch",
        "robustness_pitch",
        "pca_spectrograms",
        "example_spectrogram",
        "sim_deep_vs_handcrafted_family_all_cka",
    } <= names
    # confusion: the 4 best hand-crafted features + trained/untrained conv3 of both architectures
    assert sum(n.startswith("confusion_family_") for n in names) == 4 + 4
    assert not any("cka_debiased" in n for n in names)  # only the requested measures
    for p in written:
        assert _nonblank(p), p.name


def test_figures_single_seed_without_regression(tmp_path):
    inputs, _ = make_inputs(tmp_path / "in", seeds=(1,), archs=("Regular",), regression=False, channels=False)
    _build(inputs, tmp_path / "tables")
    t = read_tables(tmp_path / "tables")
    assert t["layers"]["sd"].isna().all() and (t["layers"]["n"] == 1).all()
    assert set(t["chance"]["metric"]) == {"accuracy"}
    written = _figures(tmp_path / "tables", inputs["mel"], None, tmp_path / "figures", FAST)
    names = {p.stem for p in written}
    assert "decoding_family_to_family" in names and "example_spectrogram" in names
    assert not any(n.startswith("robustness_") or n.startswith("sim_arch_vs_arch") for n in names)
    assert all(_nonblank(p) for p in written)


def test_feature_axis_decided_by_name_when_square():
    from deepfeat.report.spectrograms import feature_axis

    assert feature_axis("Mean Power (frequency)", 128, 128, 128) == "frame"
    assert feature_axis("Spectral Centroid", 128, 128, 128) == "frame"
    assert feature_axis("Mean Wavelet (25) over frequency", 128, 128, 128) == "frame"
    assert feature_axis("Time to -70 dB", 128, 128, 128) == "band"
    assert feature_axis("Mean Wavelet (25)", 128, 128, 176) == "band"
    assert feature_axis("Mean Power (time)", 176, 128, 176) is None
    assert feature_axis("Wavelet Combined", 768, 128, 176) is None


# ----------------------------------------------------------------------------------------------------------
# findings
# ----------------------------------------------------------------------------------------------------------
def _spans(html_text: str) -> tuple[list[dict], str]:
    """(number spans with their attributes and text, prose text outside tables and number spans)."""
    from html.parser import HTMLParser

    class P(HTMLParser):
        def __init__(self):
            super().__init__()
            self.spans, self.prose, self.cur, self.in_table, self.in_style = [], [], None, 0, False

        def handle_starttag(self, tag, attrs):
            a = dict(attrs)
            if tag == "span" and a.get("class") == "num":
                self.cur = {**a, "text": ""}
            self.in_table += tag == "table"
            self.in_style |= tag in ("style", "title")

        def handle_endtag(self, tag):
            if tag == "span" and self.cur is not None:
                self.spans.append(self.cur)
                self.cur = None
            self.in_table -= tag == "table"
            if tag in ("style", "title"):
                self.in_style = False

        def handle_data(self, data):
            if self.cur is not None:
                self.cur["text"] += data
            elif not self.in_table and not self.in_style:
                self.prose.append(data)

    p = P()
    p.feed(html_text)
    return p.spans, " ".join(p.prose)


def _names(tables: dict) -> list[str]:
    from deepfeat.formats.tables import TABLE_COLUMNS
    from deepfeat.report.display import arch_display
    from deepfeat.report.findings import SEED_DRAWS_FORMULA

    names = {DS, "Table 1", SEED_DRAWS_FORMULA}  # the caption label and the formula are the only other numbers
    name_columns = {
        "feature",
        "arch",
        "layer",
        "task",
        "train_task",
        "probe_task",
        "arch_a",
        "arch_b",
        "layer_a",
        "layer_b",
        "feature_b",
        "handcrafted_best",
        "majority_class",
    }
    for name, spec in TABLE_COLUMNS.items():
        for c in set(spec) & name_columns:
            names |= set(tables[name][c].astype(str))
    names |= {arch_display(a) for a in names}
    return sorted((n for n in names if n), key=len, reverse=True)


def _check_findings(tables_dir: Path, md: Path, html_path: Path) -> list[dict]:
    from deepfeat.report.display import fmt_number

    tables = read_tables(tables_dir)
    spans, prose = _spans(html_path.read_text())
    for s in spans:  # every quoted number is the cell it names, printed at its precision
        cell = tables[s["data-table"]].iloc[int(s["data-row"])][s["data-column"]]
        assert s["text"] == fmt_number(float(cell) * float(s.get("data-scale", 1)), int(s["data-digits"])), s
    for n in _names(tables):  # no other number in the prose: only digits inside names remain
        prose = prose.replace(n, " ")
    assert not re.search(r"\d", prose), re.findall(r".{0,40}\d.{0,40}", prose)
    # the Markdown page quotes the same numbers in the same order
    md_prose = "\n".join(line for line in md.read_text().splitlines() if not line.startswith("|"))
    for n in _names(tables):
        md_prose = md_prose.replace(n, " ")
    assert re.findall(r"-?\d+(?:\.\d+)?", md_prose) == [s["text"] for s in spans]
    return spans


def test_findings_numbers_come_from_tables(built):
    tmp_path, _, raw, t = built
    md, html_path = tmp_path / "findings.md", tmp_path / "findings.html"
    _findings(tmp_path / "tables", md, html_path, {"measure": "cka"})
    spans = _check_findings(tmp_path / "tables", md, html_path)
    assert len(spans) > 60
    used = {s["data-table"] for s in spans}
    assert {"table1", "chance", "robustness", "similarity_best", "similarity", "layers", "concat"} <= used
    text = md.read_text()
    assert (tmp_path / "tables/table1.md").read_text().strip() in text  # Table 1 included verbatim
    t1 = t["table1"]
    best = t1[t1["kind"] == "handcrafted"].iloc[0]
    assert f"The best hand-crafted feature is {best['feature']} at {best['mean']:.1f} ± {best['sd']:.1f}%" in text
    ch = t["chance"].set_index("task").loc["family", "value"]
    assert f"chance is {ch:.1f}%: it has a" in text or f"chance is {ch:.1f}%: it and chance are" in text


def test_findings_follow_the_tables(built):
    """Change a table: the sentence changes with it (nothing is hard-coded)."""
    import shutil

    src, _, _, t = built
    tmp_path = src / "changed"
    shutil.copytree(src / "tables", tmp_path / "tables")
    t1 = pd.read_csv(tmp_path / "tables/table1.csv", keep_default_na=False)
    i = t1.index[t1["kind"] == "handcrafted"][-1]
    t1.loc[i, "mean"] = 99.87654
    t1.to_csv(tmp_path / "tables/table1.csv", index=False)
    md, html_path = tmp_path / "f.md", tmp_path / "f.html"
    _findings(tmp_path / "tables", md, html_path, {})
    assert f"The best hand-crafted feature is {t1.loc[i, 'feature']} at 99.9 ±" in md.read_text()
    _check_findings(tmp_path / "tables", md, html_path)


def test_findings_single_seed_without_regression(tmp_path):
    inputs, _ = make_inputs(tmp_path / "in", seeds=(1,), archs=("Regular",), regression=False, channels=False)
    _build(inputs, tmp_path / "tables")
    md, html_path = tmp_path / "findings.md", tmp_path / "findings.html"
    _findings(tmp_path / "tables", md, html_path, {})
    text = md.read_text()
    assert "(one seed)" in text and "nan" not in text.lower() and "n/a" not in text
    assert "no network features were probed on a task other than" in text
    _check_findings(tmp_path / "tables", md, html_path)


# ----------------------------------------------------------------------------------------------------------
# the rules, through Snakemake, and `snakemake --report`
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_rules_and_snakemake_report(tmp_path):
    """tables -> figures/findings as Snakemake jobs on synthetic upstream files, then the HTML report."""
    import shutil
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    wf = tmp_path / "wf"
    wf.mkdir()
    for d in ("rules", "scripts", "src", "schemas", "report", "envs"):
        if (repo / d).exists():  # schemas/ is gone: the schema lives in the package now
            (wf / d).symlink_to(repo / d)
    snakefile = (repo / "Snakefile").read_text()
    if 'report: "report/workflow.rst"' not in snakefile:
        snakefile = snakefile.replace(
            'configfile: "config.yaml"\n', 'configfile: "config.yaml"\nreport: "report/workflow.rst"\n', 1
        )
    (wf / "Snakefile").write_text(snakefile)
    (wf / "config.yaml").write_text(
        "datasets:\n  toy:\n    format: nsynth\n    sample_rate: 16000\n    render: {kind: notes}\n"
        "    tasks:\n      - {name: family, type: classification, label: instrument_family_str}\n"
        "      - {name: pitch, type: regression, label: pitch}\n    main_task: family\n"
        "models: {architectures: [Regular, Dilated, FeedForward], seeds: [1, 10]}\n"
        "report: {figure_measures: [cka], dpi: 60}\n"
    )
    make_inputs(wf / "results" / DS)
    exe = [
        str(Path(sys.executable).parent / "snakemake"),
        "--cores",
        "1",
        "--allowed-rules",
        "tables",
        "figures",
        "findings",
    ]
    r = subprocess.run(exe, cwd=wf, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    res = wf / "results" / DS
    assert (res / "tables/table1.csv").is_file() and (res / "findings.html").is_file()
    assert len(list((res / "figures").glob("*.png"))) > 10
    assert "INFO figure" in (wf / "logs" / DS / "figures.log").read_text()
    r = subprocess.run(exe + ["--report", "report.html"], cwd=wf, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    page = (wf / "report.html").read_text()
    for s in (
        "Findings",
        "Figures",
        "Tables",
        "table1.csv",
        "findings.html",
        "decoding_family_to_family.png",
        "deepfeat: what do audio CNNs learn",
    ):
        assert s in page, s
    shutil.rmtree(wf / ".snakemake", ignore_errors=True)
