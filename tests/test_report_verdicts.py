"""The findings' verdicts: paired differences with intervals over clips and network seeds (report/comparisons.py),
selectivity beside every accuracy, chance levels of similarities, checked against brute-force computations."""

from __future__ import annotations

from itertools import combinations_with_replacement

import h5py
import numpy as np
import pandas as pd
import pytest
from test_report import _build, _check_findings, _findings, make_inputs

from deepfeat import stats
from deepfeat.formats.cliptable import read_clip_table
from deepfeat.formats.files import open_h5
from deepfeat.formats.tables import read_probe_scores, read_tables
from deepfeat.report import comparisons as cmp
from deepfeat.report.findings import Doc

SEED, LEVEL = 0, 0.95


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("verdicts")
    inputs, raw = make_inputs(tmp / "in")
    tables = _build(inputs, tmp / "tables")
    return tmp, inputs, tables


def _boot_rows(paths, **eq) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """(values, replicates, keys) of the rows of replicate files ``paths`` whose keys equal ``eq``, read with h5py
    (no deepfeat reader)."""
    vals, reps, keys = [], [], []
    for p in paths:
        with h5py.File(p) as f:
            cols = list(f["keys"])
            k = pd.DataFrame({c: f["keys"][c].asstr()[:] for c in cols})
            m = np.ones(len(k), bool)
            for c, v in eq.items():
                m &= (k[c] == str(v)).to_numpy()
            v = f["values"][:]
            vals.append(v[m])
            off = f["offsets"][:].astype(np.float64)  # replicate = value + scale x offset; -32768 = NaN
            r = v[:, None] + f["scale"][:][:, None] * off
            r[f["offsets"][:] == -32768] = np.nan
            reps.append(r[m])
            keys += k[m].to_dict("records")
    return np.concatenate(vals), np.concatenate(reps), keys


def _quantiles(reps):
    return np.quantile(reps, [(1 - LEVEL) / 2, 1 - (1 - LEVEL) / 2])


def _brute_seed_mean(per_seed: np.ndarray, side: int = 0) -> np.ndarray:
    """Replicate b = the mean over a draw of S seeds with replacement of their replicate b, one draw at a time."""
    S, B = per_seed.shape
    if S == 1:
        return per_seed[0]
    rng = np.random.default_rng([SEED, stats.SEED_STREAM, S, B] + ([side] if side else []))
    draws = rng.integers(0, S, size=(B, S))
    return np.array([np.mean([per_seed[draws[b, k], b] for k in range(S)]) for b in range(B)])


def _row(c: pd.DataFrame, what: str, a: str, b: str) -> pd.Series:
    i = cmp.lookup(c, what, a, b)
    assert i is not None, (what, a, b)
    return c.iloc[i]


# ----------------------------------------------------------------------------------------------------------
# intervals against brute force on the replicate files
# ----------------------------------------------------------------------------------------------------------
def test_paired_difference_trained_vs_untrained_is_the_brute_force_two_stage_bootstrap(built):
    tmp, inputs, t = built
    c = t["comparisons"]
    r = _row(
        c,
        "trained_vs_untrained",
        cmp.deep_label("Regular", "conv3", "trained", "family", "family"),
        cmp.deep_label("Regular", "conv3", "untrained", "family", "family"),
    )
    files = [p for p in inputs["boot_probe_deep"] if "/Regular/" in str(p)]
    per_seed, vals = [], []
    for p in files:  # one file per network seed; the accuracy replicates are fractions: x 100
        va, ra, _ = _boot_rows([p], feature="Regular conv3", trained="trained", labels="task", metric="accuracy")
        vb, rb, _ = _boot_rows([p], feature="Regular conv3", trained="untrained", labels="task", metric="accuracy")
        per_seed.append(100 * (ra[0] - rb[0]))
        vals.append(100 * (va[0] - vb[0]))
    reps = _brute_seed_mean(np.array(per_seed))
    lo, hi = _quantiles(reps)
    assert r["difference"] == pytest.approx(np.mean(vals))
    assert (r["ci_low"], r["ci_high"]) == (pytest.approx(lo), pytest.approx(hi))
    assert r["seeds_a"] == r["seeds_b"] == 2 and r["level"] == LEVEL
    assert r["verdict"] == (1 if lo > 0 else -1 if hi < 0 else 0)


def test_unpaired_difference_deep_vs_handcrafted_draws_the_deep_seeds_and_averages_probe_seeds(built):
    tmp, inputs, t = built
    c, t1 = t["comparisons"], t["table1"]
    best = t1[t1["kind"] == "handcrafted"]["feature"].iloc[0]
    r = _row(
        c,
        "deep_vs_handcrafted",
        cmp.deep_label("Dilated", "conv3", "trained", "family", "family"),
        cmp.hc_label(best, "family"),
    )
    files = [p for p in inputs["boot_probe_deep"] if "/Dilated/" in str(p)]
    deep = np.array(
        [
            100 * _boot_rows([p], feature="Dilated conv3", trained="trained", labels="task", metric="accuracy")[1][0]
            for p in files
        ]
    )
    hv, hr, hk = _boot_rows(inputs["boot_probe_handcrafted"], feature=best, probe_task="family", labels="task")
    assert len(hr) == 3  # three probe seeds, averaged
    reps = _brute_seed_mean(deep) - 100 * hr.mean(0)
    lo, hi = _quantiles(reps)
    assert (r["ci_low"], r["ci_high"]) == (pytest.approx(lo), pytest.approx(hi))
    dv = [100 * _boot_rows([p], feature="Dilated conv3", trained="trained", labels="task")[0][0] for p in files]
    assert r["difference"] == pytest.approx(np.mean(dv) - 100 * hv.mean())
    assert r["seeds_a"] == 2 and r["seeds_b"] == 3


def test_chance_side_is_the_majority_share_of_each_resample(built):
    tmp, inputs, t = built
    c = t["comparisons"]
    feat = "Random"
    r = _row(c, "handcrafted_vs_chance", cmp.hc_label(feat, "family"), cmp.chance_label("family"))
    with open_h5(inputs["mel"], "mel") as f:
        meta, _, _ = read_clip_table(f)
    test = meta[meta["split"] == 1]
    w = stats.bootstrap_weights(test["recording"], 40, 0, stats.PROBE_STREAM)
    codes = test["family_code"].to_numpy()
    major = np.bincount(codes).argmax()
    chance = []
    for b in range(len(w)):  # the resample as an explicit list of clips
        rows = np.repeat(np.arange(len(test)), w[b].astype(int))
        chance.append(100 * np.mean(codes[rows] == major))
    _, hr, _ = _boot_rows(inputs["boot_probe_handcrafted"], feature=feat, probe_task="family", labels="task")
    lo, hi = _quantiles(100 * hr.mean(0) - np.array(chance))
    assert (r["ci_low"], r["ci_high"]) == (pytest.approx(lo), pytest.approx(hi))
    ch = t["chance"].set_index("task").loc["family", "value"]
    assert r["difference"] == pytest.approx(
        t["handcrafted"].set_index(["feature", "probe_task", "split"]).loc[(feat, "family", "test"), "mean"] - ch
    )
    # regression chance: the RMSE of predicting the training mean on each resample
    r = _row(c, "handcrafted_vs_chance", cmp.hc_label(feat, "pitch"), cmp.chance_label("pitch"))
    y = meta["pitch"].to_numpy(np.float64)
    e = y[meta["split"] == 1] - y[meta["split"] == 0].mean()
    rm = [np.sqrt(np.mean(e[np.repeat(np.arange(len(e)), w[b].astype(int))] ** 2)) for b in range(len(w))]
    _, hr, _ = _boot_rows(inputs["boot_probe_handcrafted"], feature=feat, probe_task="pitch", labels="task")
    lo, hi = _quantiles(hr.mean(0) - np.array(rm))
    assert (r["ci_low"], r["ci_high"]) == (pytest.approx(lo), pytest.approx(hi))


def test_similarity_first_vs_last_layer_and_unpaired_arch_pairs(built):
    tmp, inputs, t = built
    c, best = t["comparisons"], t["similarity_best"]
    b = best[(best["arch"] == "Regular") & (best["trained"] == "trained") & (best["measure"] == "cka")]
    b = b.set_index("layer")
    fa, fb = b.loc["conv1", "feature"], b.loc["conv3", "feature"]
    r = _row(
        c,
        "first_vs_last_layer",
        cmp.sim_label("family", "Regular", "conv1", "trained", fa),
        cmp.sim_label("family", "Regular", "conv3", "trained", fb),
    )
    files = [p for p in inputs["boot_similarity_deep"] if "/Regular/" in str(p)]
    per_seed = []
    for p in files:
        eq = dict(comparison="deep_vs_handcrafted", arch_a="Regular", trained_a="trained", measure="cka")
        _, ra, _ = _boot_rows([p], **eq, layer_a="conv1", feature_b=fa)
        _, rb, _ = _boot_rows([p], **eq, layer_a="conv3", feature_b=fb)
        per_seed.append(ra[0] - rb[0])
    lo, hi = _quantiles(_brute_seed_mean(np.array(per_seed)))
    assert (r["ci_low"], r["ci_high"]) == (pytest.approx(lo), pytest.approx(hi))
    # measures without replicates (r2_lr is not in the synthetic similarity tables) are absent, cka_debiased present
    assert set(c.loc[c["what"] == "first_vs_last_layer", "metric"]) == {"cka", "cka_debiased"}


def test_unpaired_sides_draw_independent_seeds_and_paired_sides_cancel_the_seed_effect():
    B = 2000
    rng = np.random.default_rng(3)
    seed_effect = np.array([[-10.0], [0.0], [10.0]])  # a large seed-to-seed spread shared by both sides
    a = cmp.Side(np.array([-9.0, 1.0, 11.0]), seed_effect + 1.0 + 0.1 * rng.normal(size=(3, B)), ["1", "2", "3"])
    b = cmp.Side(np.array([-10.0, 0.0, 10.0]), seed_effect + 0.1 * rng.normal(size=(3, B)), ["1", "2", "3"])
    paired = cmp.difference(a, b, paired=True, seed=SEED, level=LEVEL)
    unpaired = cmp.difference(a, b, paired=False, seed=SEED, level=LEVEL)
    assert paired["difference"] == pytest.approx(1.0) and unpaired["difference"] == pytest.approx(1.0)
    assert paired["verdict"] == 1 and paired["ci_high"] - paired["ci_low"] < 1.0  # the seed effect cancels
    assert unpaired["verdict"] == 0 and unpaired["ci_high"] - unpaired["ci_low"] > 10.0  # it does not
    brute = _brute_seed_mean(a.reps) - _brute_seed_mean(b.reps, side=1)
    lo, hi = _quantiles(brute)
    assert (unpaired["ci_low"], unpaired["ci_high"]) == (pytest.approx(lo), pytest.approx(hi))
    # with 2 seeds and no clip noise, the seed part takes the C(3, 2) = 3 distinct multiset means only
    two = cmp.Side(np.array([0.0, 1.0]), np.repeat([[0.0], [1.0]], B, axis=1), ["1", "2"])
    zero = cmp.Side(np.zeros(2), np.zeros((2, B)), ["1", "2"])
    reps = stats.seed_replicates(two.minus(zero).reps, SEED)
    means = {np.mean(m) for m in combinations_with_replacement([0.0, 1.0], 2)}
    assert set(np.round(reps, 12)) == means
    # a missing replicate on either side: no interval, no verdict
    b.reps[1, 5] = np.nan
    for p in (True, False):
        d = cmp.difference(a, b, paired=p, seed=SEED, level=LEVEL)
        assert np.isnan(d["ci_low"]) and np.isnan(d["ci_high"]) and d["verdict"] == 0
        assert d["difference"] == pytest.approx(1.0)


# ----------------------------------------------------------------------------------------------------------
# wording
# ----------------------------------------------------------------------------------------------------------
def test_verdict_wording_follows_the_interval():
    c = pd.DataFrame(
        dict(
            question="q1",
            what="w",
            a=["A", "A2", "A3", "A4"],
            b="B",
            metric="accuracy",
            difference=[3.21, -1.0, 0.5, 2.0],
            ci_low=[1.04, -2.5, -0.7, np.nan],
            ci_high=[5.55, -0.2, 1.9, np.nan],
            level=0.95,
            seeds_a=2,
            seeds_b=2,
            verdict=[1, -1, 0, 0],
        )
    )
    d = Doc({"comparisons": c})

    def text(a):
        segs = d.compare("w", a, "B", "X", "Y", "is higher than", "is lower than", 1)
        return "".join(s.text + s.suffix if hasattr(s, "text") else s for s in segs)

    assert text("A") == "X is higher than Y (difference 3.2, 95 % CI [1.0, 5.5])"
    assert text("A2") == "X is lower than Y (difference -1.0, 95 % CI [-2.5, -0.2])"
    assert text("A3") == "X and Y are indistinguishable (difference 0.5, 95 % CI [-0.7, 1.9])"
    assert text("A4") == "X vs Y: difference 2.0 (no interval)"
    assert text("nothing") == "X and Y were not compared"


def test_findings_state_directions_only_for_intervals_that_exclude_zero(built):
    tmp, inputs, t = built
    md, html_path = tmp / "findings.md", tmp / "findings.html"
    _findings(tmp / "tables", md, html_path, {"measure": "cka"})
    spans = _check_findings(tmp / "tables", md, html_path)
    c = read_tables(tmp / "tables")["comparisons"]
    quoted = {int(s["data-row"]) for s in spans if s["data-table"] == "comparisons" and s["data-column"] == "ci_low"}
    assert len(quoted) > 10
    text = md.read_text()
    for i in quoted:  # every quoted interval is worded by its verdict
        r = c.iloc[i]
        k = {"accuracy": 1, "rmse": 2}.get(r["metric"], 3)
        seg = f"(difference {r['difference']:.{k}f}, 95 % CI [{r['ci_low']:.{k}f}, {r['ci_high']:.{k}f}])"
        at = text.index(seg)
        same = text[:at].endswith("are indistinguishable ")
        assert same == (r["verdict"] == 0), (seg, text[at - 80 : at])
        assert (r["ci_low"] > 0 or r["ci_high"] < 0) == (r["verdict"] != 0)
    n_dir = sum(int(c.iloc[i]["verdict"] != 0) for i in quoted)
    n_same = len(quoted) - n_dir
    assert text.count("are indistinguishable (difference") == n_same
    assert n_dir > 0 and n_same > 0
    assert "C(2S − 1, S) distinct seed draws, and here S = 2 network seeds" in text
    assert "(selectivity " in text and "(chance " in text


def test_without_replicates_there_are_no_intervals(tmp_path):
    inputs, _ = make_inputs(tmp_path / "in", seeds=(1,), archs=("Regular",), regression=False, boot=False)
    t = _build(inputs, tmp_path / "tables")
    c = t["comparisons"]
    assert len(c) and c["ci_low"].isna().all() and (c["verdict"] == 0).all()
    md, html_path = tmp_path / "f.md", tmp_path / "f.html"
    _findings(tmp_path / "tables", md, html_path, {})
    text = md.read_text()
    assert "(no interval)" in text and "are indistinguishable (" not in text and "CI [" not in text
    assert "so no comparison has an interval" in text
    _check_findings(tmp_path / "tables", md, html_path)


# ----------------------------------------------------------------------------------------------------------
# selectivity, control flag, similarity chance columns, null-band marks
# ----------------------------------------------------------------------------------------------------------
def test_selectivity_columns_are_computed_from_the_control_rows(built):
    tmp, inputs, t = built
    s = read_probe_scores(inputs["probe_deep"])
    lay = t["layers"].set_index(["train_task", "probe_task", "arch", "layer", "trained", "split"])
    chance = t["chance"].set_index("task")["value"]
    for pt, metric in (("family", "accuracy"), ("pitch", "rmse")):
        eq = (s["arch"] == "Regular") & (s["feature"] == "Regular conv2") & (s["trained"] == "trained")
        eq &= (s["probe_task"] == pt) & (s["split"] == "test")
        task = s[eq & (s["labels"] == "task")].set_index("seed")["value"].sort_index()
        ctl = s[eq & (s["labels"] == "control")].set_index("seed")["value"].sort_index()
        sel = (task - ctl) if metric == "accuracy" else (ctl - task)
        r = lay.loc[("family", pt, "Regular", "conv2", "trained", "test")]
        assert r["mean"] == pytest.approx(task.mean())  # task rows only: the existing numbers
        assert r["control_mean"] == pytest.approx(ctl.mean())
        assert r["selectivity_mean"] == pytest.approx(sel.mean())
        assert r["selectivity_sd"] == pytest.approx(np.std(sel, ddof=1))
        far = ctl.mean() > chance[pt] + 10 if metric == "accuracy" else ctl.mean() < 0.9 * chance[pt]
        assert r["control_flag"] == str(bool(far))
    assert set(t["layers"].loc[t["layers"]["split"] == "train", "control_flag"]) == {""}
    # hand-crafted: per probe seed; Table 1 carries the same cells
    h = read_probe_scores(inputs["probe_handcrafted"])
    eq = (h["feature"] == "Random") & (h["probe_task"] == "family") & (h["split"] == "test")
    task = h[eq & (h["labels"] == "task")].set_index("probe_seed")["value"].sort_index()
    ctl = h[eq & (h["labels"] == "control")].set_index("probe_seed")["value"].sort_index()
    r = t["handcrafted"].set_index(["feature", "probe_task", "split"]).loc[("Random", "family", "test")]
    assert r["selectivity_mean"] == pytest.approx((task - ctl).mean())
    t1 = t["table1"].set_index("feature").loc["Random"]
    assert t1["selectivity_mean"] == pytest.approx(r["selectivity_mean"]) and t1["control_flag"] == r["control_flag"]
    # the control flag: a control decoded far above chance
    from deepfeat.report.tables import control_flag

    df = pd.DataFrame(
        dict(
            probe_task="family",
            metric="accuracy",
            split="test",
            control_mean=[chance["family"] + 10.5, chance["family"] + 9.5],
        )
    )
    assert list(control_flag(df, t["chance"])) == ["True", "False"]
    df = pd.DataFrame(
        dict(
            probe_task="pitch",
            metric="rmse",
            split="test",
            control_mean=[0.85 * chance["pitch"], 0.95 * chance["pitch"]],
        )
    )
    assert list(control_flag(df, t["chance"])) == ["True", "False"]


#: the key columns of one synthetic deep-vs-hand-crafted similarity row (Regular conv1, trained)
SIM_ROW = dict(
    comparison="deep_vs_handcrafted",
    task="t",
    arch_a="Regular",
    layer_a="conv1",
    trained_a="trained",
    arch_b="",
    layer_b="",
    trained_b="",
    p_a=10.0,
    p_b=5.0,
    method="feature",
    flag="",
)


def test_similarity_summary_carries_chance_and_null_band_means():
    from deepfeat.report.heatmaps import _pivot
    from deepfeat.report.tables import similarity_summary

    base = dict(SIM_ROW, measure="cka")
    rows = [
        dict(base, feature_b="F", value=0.5, chance=0.2, null_lo=0.1, null_hi=0.3),
        dict(base, feature_b="F", value=0.7, chance=0.4, null_lo=0.3, null_hi=0.5),
        dict(base, feature_b="G", value=0.3, chance=0.3, null_lo=0.2, null_hi=0.4),
        dict(base, feature_b="G", value=0.35, chance=0.3, null_lo=0.2, null_hi=0.4),
    ]
    s = similarity_summary(pd.DataFrame(rows)).set_index("feature_b")
    assert s.loc["F", "chance"] == pytest.approx(0.3) and s.loc["F", "null_lo"] == pytest.approx(0.2)
    assert s.loc["F", "null_hi"] == pytest.approx(0.4) and s.loc["F", "mean"] == pytest.approx(0.6)
    # heatmap mark: F (0.6 above its band [0.2, 0.4]) unmarked, G (0.325 within [0.2, 0.4]) marked
    m = _pivot(s.reset_index(), "feature_b", "layer_a", "cka")
    assert m.attrs["null"].loc["F", "conv1"] == 0.0 and m.attrs["null"].loc["G", "conv1"] == 1.0


def test_figures_draw_null_marks_and_control_curves(built, monkeypatch):
    from deepfeat.report import curves, heatmaps

    tmp, inputs, t = built
    m = pd.DataFrame([[0.6, 0.2], [0.3, np.nan]], index=["F", "G"], columns=["conv1", "conv2"])
    m.attrs["null"] = pd.DataFrame([[0.0, 1.0], [1.0, 1.0]], index=["F", "G"], columns=["conv1", "conv2"])
    fig = heatmaps.heatmap_figure([("p", m)], "cka", "title", "x", "y")
    ax = fig.axes[0]
    dots = [c for c in ax.collections[1:] if len(c.get_offsets())]
    assert len(dots) == 1 and len(dots[0].get_offsets()) == 2  # the two finite cells inside the band
    assert np.allclose(sorted(map(tuple, dots[0].get_offsets())), [(0.82, 1.22), (1.82, 0.22)])
    assert "permutation null band" in fig._suptitle.get_text()
    m.attrs["null"] = m.attrs["null"] * 0
    fig = heatmaps.heatmap_figure([("p", m)], "cka", "title", "x", "y")
    assert "null band" not in fig._suptitle.get_text()
    figs = {}
    monkeypatch.setattr(curves, "save_figure", lambda fig, out, name, dpi, log: figs.setdefault(name, fig) and name)
    tabs = read_tables(tmp / "tables")
    curves.decoding_figures(tabs, tmp, {"dpi": 40}, None)
    ax = figs["decoding_family_to_family"].axes[0]
    ctl = [ln for ln in ax.get_lines() if ln.get_label() == "trained: control task"]
    assert len(ctl) == 1
    lay = tabs["layers"]
    lay = lay[(lay["arch"] == "Regular") & (lay["trained"] == "trained") & (lay["split"] == "test")]
    lay = lay[(lay["probe_task"] == "family")].set_index("layer").reindex(["conv1", "pool1", "conv2", "pool2", "conv3"])
    assert np.allclose(ctl[0].get_ydata(), lay["control_mean"])


def test_every_measure_has_a_display_name_and_distances_pick_the_smallest():
    from deepfeat.formats.tables import MEASURES
    from deepfeat.report.display import MEASURE_DISPLAY
    from deepfeat.report.tables import similarity_best, similarity_summary

    assert set(MEASURES) <= set(MEASURE_DISPLAY)
    assert MEASURE_DISPLAY["r2_lr_test"] == "R² (linear regression, held-out)"
    assert MEASURE_DISPLAY["procrustes"] == "Procrustes distance"
    base = dict(SIM_ROW)
    rows = [
        dict(base, feature_b=f, measure=m, value=v) for m in ("cka", "procrustes") for f, v in (("F", 0.2), ("G", 0.9))
    ]
    best = similarity_best(similarity_summary(pd.DataFrame(rows))).set_index("measure")["feature"]
    assert best["cka"] == "G" and best["procrustes"] == "F"
