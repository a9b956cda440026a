"""The shared resampling: recording-level bootstrap weights and permutations, seed replicates, intervals."""

from __future__ import annotations

import numpy as np
import pytest

from deepfeat import stats


def _recordings(n_rec=7, per=3):
    return np.repeat([f"rec{i:02d}" for i in range(n_rec)], per)


def test_bootstrap_weights_move_the_clips_of_a_recording_together():
    rec = _recordings()
    w = stats.bootstrap_weights(rec, 500, seed=3)
    assert w.shape == (500, len(rec))
    codes, R = stats.recording_codes(rec)
    for r in range(R):  # equal weights within a recording, integer counts summing to R draws
        assert (w[:, codes == r] == w[:, codes == r][:, :1]).all()
    assert np.allclose(w[:, ::3].sum(1), R) and np.all(w == np.round(w))
    # the same clips, recordings and seed give the same resamples whatever job draws them; other seeds others
    assert np.array_equal(w, stats.bootstrap_weights(rec, 500, seed=3))
    assert not np.array_equal(w, stats.bootstrap_weights(rec, 500, seed=4))
    assert not np.array_equal(w, stats.bootstrap_weights(rec, 500, seed=3, stream=stats.SIMILARITY_STREAM))
    # each recording is drawn once on average (multinomial with R trials over R recordings)
    assert abs(w[:, ::3].mean() - 1.0) < 0.05


def test_weighted_scores_equal_a_brute_force_resample():
    rng = np.random.default_rng(0)
    rec = _recordings(5, 4)
    correct = rng.random(len(rec)) < 0.6
    err = rng.normal(size=len(rec))
    w = stats.bootstrap_weights(rec, 20, seed=1)
    acc, rmse = stats.weighted_accuracy(correct, w), stats.weighted_rmse(err, w)
    for b in range(20):
        rows = np.repeat(np.arange(len(rec)), w[b].astype(int))  # the resample as an explicit list of clips
        assert acc[b] == pytest.approx(correct[rows].mean())
        assert rmse[b] == pytest.approx(np.sqrt(np.mean(err[rows] ** 2)))
    two = stats.weighted_rmse(np.stack([err, 2 * err], 1), w)
    assert np.allclose(two[:, 1], 2 * rmse)


def test_permutation_by_recording_keeps_the_grouping():
    rec = _recordings(9, 3)
    labels = np.repeat(np.arange(9) % 3, 3)
    ctrl = stats.permute_by_recording(labels, rec, seed=5)
    codes, _ = stats.recording_codes(rec)
    for r in range(9):
        assert len(set(ctrl[codes == r])) == 1  # one label per recording
    assert sorted(ctrl[::3]) == sorted(labels[::3])  # the recordings' labels, shuffled
    assert not np.array_equal(ctrl, labels)
    assert np.array_equal(ctrl, stats.permute_by_recording(labels, rec, seed=5))
    varying = np.arange(len(rec))  # a label that varies within a recording: its first clip's value is used
    assert set(stats.permute_by_recording(varying, rec, seed=5)) <= set(varying[::3])


def test_seed_replicates_and_intervals():
    per_seed = np.array([[1.0, 2.0, 3.0, 4.0], [11.0, 12.0, 13.0, 14.0]])
    reps = stats.seed_replicates(per_seed, seed=0)
    offsets = reps - np.array([1.0, 2.0, 3.0, 4.0])  # each replicate averages two draws of the two seeds
    assert set(np.round(offsets, 9)) <= {0.0, 5.0, 10.0}
    assert np.array_equal(stats.seed_replicates(per_seed[:1], seed=0), per_seed[0])
    lo, hi = stats.interval(np.arange(1001.0))
    assert lo == pytest.approx(25.0) and hi == pytest.approx(975.0)
    lo, hi = stats.interval(np.array([np.nan, np.nan]))
    assert np.isnan(lo) and np.isnan(hi)
    assert stats.verdict(0.1, 0.3) == 1 and stats.verdict(-0.3, -0.1) == -1 and stats.verdict(-0.1, 0.2) == 0
    assert stats.verdict(np.nan, 1.0) == 0


def test_seed_replicates_of_a_second_side_draw_independently():
    rng = np.random.default_rng(1)
    per_seed = rng.normal(size=(3, 400))
    side0 = stats.seed_replicates(per_seed, seed=2)
    # side 0 keeps the draws of the plain call, drawn by default_rng([seed, SEED_STREAM, S, B]) (brute force)
    draws = np.random.default_rng([2, stats.SEED_STREAM, 3, 400]).integers(0, 3, size=(400, 3))
    brute = np.array([per_seed[draws[b], b].mean() for b in range(400)])
    assert np.array_equal(stats.seed_replicates(per_seed, seed=2, side=0), side0)
    assert np.allclose(side0, brute)
    side1 = stats.seed_replicates(per_seed, seed=2, side=1)
    draws1 = np.random.default_rng([2, stats.SEED_STREAM, 3, 400, 1]).integers(0, 3, size=(400, 3))
    assert np.allclose(side1, [per_seed[draws1[b], b].mean() for b in range(400)])
    assert not np.allclose(side0, side1)
    # a constant per seed: the replicate is the mean of the drawn seeds' constants; sides draw different seeds
    const = np.repeat(np.array([[0.0], [1.0], [2.0]]), 400, axis=1)
    r0, r1 = stats.seed_replicates(const, 2), stats.seed_replicates(const, 2, side=1)
    assert abs(np.corrcoef(r0, r1)[0, 1]) < 0.15
    assert np.array_equal(stats.seed_replicates(per_seed[:1], 2, side=1), per_seed[0])


def test_replicates_files_keep_replicates_to_a_65534th_of_the_largest_deviation(tmp_path):
    """*.boot.h5 stores int16 offsets from the value with a per-row scale: every replicate comes back within
    max|replicate - value| / 65534 of its row, NaN replicates and rows without replicates stay NaN."""
    import pandas as pd

    from deepfeat.formats.replicates import read_replicates, write_replicates

    rng = np.random.default_rng(0)
    values = np.array([0.5, 0.9, np.nan, 0.3, -2.0])
    reps = values[:, None] + rng.normal(0, [[0.05], [0.0], [0.1], [0.2], [3.0]], (5, 4000))
    reps[3, 7] = np.nan
    write_replicates(
        tmp_path / "r.boot.h5", pd.DataFrame({"k": list("abcde")}), values, reps, seed=0, stream=1, unit="x"
    )
    _, v, got, _ = read_replicates(tmp_path / "r.boot.h5")
    np.testing.assert_array_equal(v, values)
    assert np.isnan(got[2]).all() and np.isnan(got[3, 7]) and np.isfinite(np.delete(got[3], 7)).all()
    assert (got[1] == 0.9).all()  # a row without spread comes back exactly
    for r in (0, 3, 4):
        dev = np.nanmax(np.abs(reps[r] - values[r]))
        err = np.nanmax(np.abs(got[r] - reps[r]))
        assert 0 < err <= dev / 65534 * (1 + 1e-9)
    assert (tmp_path / "r.boot.h5").stat().st_size < 5 * 4000 * 3  # 2 bytes per replicate (+ a header)
