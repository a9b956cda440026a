"""Control tasks of the probes and the bootstrap replicates of their test scores (issue #17): the control labels,
the control rows, that controls do not change the task probes, and the *.boot.h5 files against brute force."""

from __future__ import annotations

import h5py
import numpy as np
import pandas as pd
import pytest
from conftest import write_fake_mel
from test_probe import FAST, hc_key, run_deep, run_handcrafted, write_deep, write_handcrafted

from deepfeat import stats
from deepfeat.formats.replicates import fingerprint, read_replicates, read_stacked
from deepfeat.formats.tables import PROBE_COLUMNS, read_probe_scores
from deepfeat.probe import fit_linear, fit_logistic_many, pipeline, standardise
from deepfeat.probe.control import control_tasks
from deepfeat.probe.tables import BOOT_COLUMNS, ProbeTables

STATS = {"seed": 7, "resamples": 40}
KEYS = [c for c in PROBE_COLUMNS if c not in ("labels", "value")]  # a task row and its control row share these


@pytest.fixture
def stage(tmp_path):
    """60 clips in 30 recordings of two clips (make_meta), hand-crafted features and a deep-feature file."""
    _, meta = write_fake_mel(tmp_path / "mel.h5", n=60, n_mels=8, n_frames=8)
    write_handcrafted(tmp_path / "handcrafted.h5", meta)
    write_deep(tmp_path / "seed10.h5", meta)
    return tmp_path, meta


def test_control_labels_keep_recordings_together_and_permute_recordings():
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 6, 40)  # 40 recordings of 1-5 clips, in shuffled clip order
    rec = np.repeat([f"r{i:02d}" for i in range(40)], sizes)
    order = rng.permutation(len(rec))
    rec = rec[order]
    per_rec = {f"r{i:02d}": (i % 4, float(i) * 1.5) for i in range(40)}  # one label per recording
    codes = np.array([per_rec[r][0] for r in rec])
    pitch = np.array([per_rec[r][1] for r in rec])
    split = (rng.random(len(rec)) < 0.3).astype(np.uint8)
    tasks = [
        {"name": "c", "type": "classification", "classes": list("abcd"), "y": codes},
        {"name": "p", "type": "regression", "y": pitch},
    ]
    control_tasks(tasks, rec, split, seed=3)
    for t in tasks:
        ctrl = t["control"]
        assert ctrl.shape == t["y"].shape and ctrl.dtype == t["y"].dtype
        got = pd.Series(ctrl).groupby(rec).agg(["nunique", "first"])
        assert (got["nunique"] == 1).all()  # all clips of one recording keep one label
        orig = pd.Series(t["y"]).groupby(rec).first()
        # a permutation of the recordings' labels: the same multiset over recordings, not the identity
        assert sorted(got["first"]) == sorted(orig)
        assert (got["first"] != orig).mean() > 0.5
        np.testing.assert_array_equal(ctrl, stats.permute_by_recording(t["y"], rec, 3, stats.CONTROL_STREAM))
    te = split == 1
    assert tasks[0]["control_chance"] == np.bincount(tasks[0]["control"][te]).max() / te.sum()
    again = [{**t} for t in tasks]
    control_tasks(again, rec, split, seed=3)
    assert all(np.array_equal(a["control"], t["control"]) for a, t in zip(again, tasks))
    control_tasks(again, rec, split, seed=4)
    assert not np.array_equal(again[0]["control"], tasks[0]["control"])


def test_control_rows_exist_for_every_task_row(stage):
    tmp, _ = stage
    params = {**FAST, "epochs": 10, "concat_features": ["Random", "Mean Wavelet (25)"]}
    for run in (run_handcrafted, run_deep):
        scores, conf = run(tmp, params)
        assert set(scores["labels"]) == {"task", "control"}
        task, ctrl = (scores[scores["labels"] == lab].drop(columns=["labels", "value"]) for lab in ("task", "control"))
        assert len(task) == len(ctrl) and not task.duplicated().any()
        pd.testing.assert_frame_equal(
            task.sort_values(KEYS).reset_index(drop=True), ctrl.sort_values(KEYS).reset_index(drop=True)
        )
        # confusions: the task probes only (one 3 x 3 block per classification task probe)
        n_cls = ((scores["labels"] == "task") & (scores["metric"] == "accuracy") & (scores["split"] == "test")).sum()
        assert "labels" not in conf.columns and len(conf) == 9 * n_cls


def test_control_of_a_decoding_feature_is_near_chance(tmp_path):
    """300 clips in 150 recordings: the informative feature decodes the family (and pitch) well, and its
    control (labels permuted across recordings) is at chance: accuracy near 1/3, RMSE near the spread."""
    _, meta = write_fake_mel(tmp_path / "mel.h5", n=300, n_mels=8, n_frames=8)
    write_handcrafted(tmp_path / "handcrafted.h5", meta)
    scores, _ = run_handcrafted(tmp_path, {**FAST, "epochs": 30})
    s = scores[(scores["split"] == "test") & (scores["feature"] == "Mean Wavelet (25)")]
    acc = s[s["metric"] == "accuracy"].groupby("labels")["value"].mean()
    assert acc["task"] >= 0.9 and abs(acc["control"] - 1 / 3) < 0.15
    rmse = s[s["metric"] == "rmse"].set_index("labels")["value"]
    spread = meta["pitch"].std()
    assert rmse["task"] < 0.3 * spread and rmse["control"] > 0.8 * spread


def _direct(tmp, meta, name, st):
    """The probes of hand-crafted feature ``name`` fitted directly (standardised columns, fit_logistic_many and
    fit_linear) on the task and its control: {(task, labels, probe seed): test predictions}."""
    split = meta["split"].to_numpy()
    tr, te = split == 0, split == 1
    with h5py.File(tmp / "handcrafted.h5") as f:
        Ztr, Zte = standardise(f["features"][hc_key(name)][:][tr], f["features"][hc_key(name)][:][te])
    rec = meta["recording"].to_numpy()
    fam = np.arange(len(meta)) % 3
    pitch = meta["pitch"].to_numpy(np.float64)
    out = {}
    for labels, (y, p) in {
        "task": (fam, pitch),
        "control": tuple(stats.permute_by_recording(v, rec, st["seed"], stats.CONTROL_STREAM) for v in (fam, pitch)),
    }.items():
        r = fit_logistic_many(Ztr, y[tr], Zte, y[te], [3], [0, 1], FAST, form="primal")
        for si, s in enumerate((0, 1)):
            out["family", labels, str(s)] = (r["pred_test"][si, 0, 0] == y[te]).astype(float), "accuracy"
        lin = fit_linear(Ztr, p[tr], Zte, p[te], ridge=FAST["ridge"])
        out["pitch", labels, ""] = (lin["pred"] - p[te]) ** 2, "rmse"
    return out


def test_replicates_equal_a_brute_force_bootstrap(stage):
    """Every row of handcrafted.boot.h5 against a direct computation: the probe refitted directly, then for each
    resample the test clips of the drawn recordings taken as many times as drawn and the accuracy / RMSE
    recomputed on that resampled test set."""
    tmp, meta = stage
    scores, _ = run_handcrafted(tmp, FAST, st=STATS)
    keys, values, reps, attrs = read_replicates(tmp / "out" / "handcrafted.boot.h5")
    assert list(keys.columns) == BOOT_COLUMNS and reps.shape == (len(keys), STATS["resamples"])
    assert attrs["seed"] == STATS["seed"] and attrs["stream"] == stats.PROBE_STREAM and attrs["unit"] == "test clips"
    te = meta["split"].to_numpy() == 1
    assert attrs["clips"] == fingerprint(meta["clip_id"].to_numpy()[te])
    test = scores[scores["split"] == "test"]
    # the keys are the CSV's test rows, as text, in order; the values are the CSV's values
    np.testing.assert_array_equal(keys.to_numpy(), test[BOOT_COLUMNS].astype(str).to_numpy())
    np.testing.assert_array_equal(values, test["value"].to_numpy())
    W = stats.bootstrap_weights(meta["recording"].to_numpy()[te], STATS["resamples"], STATS["seed"])
    assert np.allclose(W, W.round()) and (W.sum(1) > 0).all()
    counts = W.astype(int)
    for name in ("Mean Wavelet (25)", "Random"):
        direct = _direct(tmp, meta, name, STATS)
        for (task, labels, seed), (per_clip, metric) in direct.items():
            row = np.flatnonzero(
                (keys["feature"] == name)
                & (keys["probe_task"] == task)
                & (keys["labels"] == labels)
                & (keys["probe_seed"] == seed)
            )
            assert len(row) == 1 and keys["metric"][row[0]] == metric
            whole = per_clip.mean() if metric == "accuracy" else np.sqrt(per_clip.mean())
            assert values[row[0]] == pytest.approx(whole, rel=1e-6)
            brute = []
            for b in range(len(counts)):
                sample = np.repeat(per_clip, counts[b])  # each test clip as often as its recording was drawn
                brute.append(sample.mean() if metric == "accuracy" else np.sqrt(sample.mean()))
            # stored as int16 offsets: within 1/65534 of the row's largest deviation from the value
            bound = np.max(np.abs(np.asarray(brute) - values[row[0]])) / 65534
            np.testing.assert_allclose(reps[row[0]], brute, rtol=0, atol=bound * (1 + 1e-9) + 1e-12)


def test_replicates_by_one_product_equal_the_loop_and_keep_nan():
    """ProbeTables.replicates against stats.weighted_accuracy / weighted_rmse row by row, and rows without
    per-clip results or resamples without clips are NaN."""
    rng = np.random.default_rng(1)
    t = ProbeTables("toy")
    n = 12
    correct = rng.random((3, n)) < 0.6
    err = rng.normal(size=(2, n))
    for i, c in enumerate(correct):
        t.add_scores(t.keys("f", "family", i), "accuracy", 0.5, c.mean(), c, "task" if i else "control")
    for i, e in enumerate(err):
        t.add_scores(t.keys("f", "pitch"), "rmse", 1.0, np.sqrt((e**2).mean()), e**2, ("task", "control")[i])
    t.add_scores(t.keys("g", "pitch"), "rmse", 1.0, 2.0)  # no per-clip results
    W = stats.bootstrap_weights([f"r{i // 3}" for i in range(n)], 25, 0)
    W[3] = 0.0
    keys, values, reps = t.replicates(W, ["f", "g"], ["family", "pitch"])
    assert list(keys["labels"]) == ["task", "task", "control", "task", "control", "task"]  # task before control
    assert list(keys["probe_seed"][:3]) == ["1", "2", "0"] and (keys["probe_seed"][3:] == "").all()
    order = [1, 2, 0]
    for j, i in enumerate(order):
        expect = stats.weighted_accuracy(correct[i], W)
        np.testing.assert_allclose(reps[j], expect, rtol=1e-12, equal_nan=True)
    for j, i in ((3, 0), (4, 1)):
        np.testing.assert_allclose(reps[j], stats.weighted_rmse(err[i], W), rtol=1e-12, equal_nan=True)
    assert np.isnan(reps[:, 3]).all() and np.isnan(reps[5]).all() and values[5] == 2.0


def test_replicate_files_of_two_jobs_are_paired(stage):
    """handcrafted.boot.h5 and a deep job's boot.h5 carry the same resamples (seed, stream, clips): read_stacked
    stacks them; another stats seed is refused."""
    tmp, _ = stage
    params = {**FAST, "epochs": 5, "concat_features": ["Random"]}
    run_handcrafted(tmp, params, st=STATS)
    run_deep(tmp, params, st=STATS)
    paths = [tmp / "out" / "handcrafted.boot.h5", tmp / "out" / "deep.boot.h5"]
    keys, values, reps, attrs = read_stacked(paths)
    n_hc, n_deep = (len(read_replicates(p)[0]) for p in paths)
    assert len(keys) == n_hc + n_deep and reps.shape == (n_hc + n_deep, STATS["resamples"])
    assert set(keys["arch"]) == {"", "Regular"} and np.isfinite(reps).all()
    run_deep(tmp, params, out=tmp / "other", st={**STATS, "seed": 8})
    with pytest.raises(ValueError, match="seed"):
        read_stacked([paths[0], tmp / "other" / "deep.boot.h5"])


@pytest.mark.parametrize(
    "force, ridge", [(None, "auto"), (None, 1e-3), ("gram", "auto"), ("recompute", "auto"), ("recompute", 1e-3)]
)
def test_task_rows_are_unchanged_by_the_control(stage, monkeypatch, force, ridge):
    """The task rows (and confusions) of a run with controls equal exactly those of a run with the control logic
    bypassed, for held rows and for rows computed on demand (dual from a Gram matrix, recomputed per pass), with
    the leave-one-out ridge (covariance and Gram forms) and a fixed one (OLS and the fixed dual ridge)."""
    from deepfeat.probe import plan as plan_module

    tmp, _ = stage
    params = {**FAST, "epochs": 12, "ridge": ridge, "concat_features": ["Random", "Mean Wavelet (25)"]}
    monkeypatch.setattr(plan_module, "FORCE", force)
    runs = {}
    for mode in ("with", "bypassed"):
        if mode == "bypassed":
            monkeypatch.setattr(pipeline, "control_tasks", lambda *a, **k: None)
        runs[mode] = [run(tmp, params, out=tmp / mode / run.__name__) for run in (run_handcrafted, run_deep)]
    for (s_with, c_with), (s_off, c_off) in zip(runs["with"], runs["bypassed"]):
        assert set(s_off["labels"]) == {"task"} and set(s_with["labels"]) == {"task", "control"}
        task = s_with[s_with["labels"] == "task"].reset_index(drop=True)
        pd.testing.assert_frame_equal(task, s_off)
        pd.testing.assert_frame_equal(c_with, c_off)


def test_probe_score_reader_keeps_the_labels(stage):
    """read_probe_scores: the labels column as written; a file from before the control task reads as task rows;
    an unknown label is refused by name."""
    tmp, _ = stage
    scores, _ = run_handcrafted(tmp, {**FAST, "epochs": 3, "seeds": [0]})
    path = tmp / "out" / "handcrafted.csv"
    back = read_probe_scores(path, "toy")
    assert list(back.columns) == PROBE_COLUMNS and list(back["labels"]) == list(scores["labels"])
    old = tmp / "old.csv"
    scores[scores["labels"] == "task"].drop(columns="labels").to_csv(old, index=False)
    assert set(read_probe_scores(old, "toy")["labels"]) == {"task"}
    bad = tmp / "bad.csv"
    scores.assign(labels="shuffled").to_csv(bad, index=False)
    with pytest.raises(ValueError, match="column 'labels' has \\['shuffled'\\]"):
        read_probe_scores(bad, "toy")
