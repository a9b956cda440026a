"""Decoding probes: exactness of the SGD protocol and of OLS, standardisation, and the tidy output tables."""

from __future__ import annotations

import json
import logging
import re

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import write_fake_mel
from torch.utils.data import DataLoader, TensorDataset

from deepfeat import config, workflow
from deepfeat.formats.cliptable import seeded_subset
from deepfeat.formats.files import write_h5
from deepfeat.formats.models import save_model
from deepfeat.formats.replicates import read_replicates
from deepfeat.formats.tables import CONFUSION_COLUMNS, PROBE_COLUMNS
from deepfeat.nets import extract_features
from deepfeat.nets.models import build_model, cpu_state
from deepfeat.probe import (
    RIDGE_GRID,
    fit_linear,
    fit_logistic,
    fit_logistic_many,
    gram_matrix,
    init_linear,
    linear,
    loading,
    logistic_costs,
    pipeline,
    probe_deep,
    probe_handcrafted,
    standardisation,
    standardise,
)

FAST = {"epochs": 100, "seeds": [0, 1], "device": "cpu", "ridge": 1.0e-3}
LAYERS = ["conv1", "pool1", "conv2", "pool2", "conv3"]


def run_handcrafted(folder, params, log=None, out=None, st=None):
    """probe_handcrafted on folder/{handcrafted,mel}.h5, tables written under ``out`` (default folder/out);
    ``st``: the stats settings (defaults when None)."""
    out = folder / "out" if out is None else out
    return probe_handcrafted(
        features=folder / "handcrafted.h5",
        mel=folder / "mel.h5",
        scores=out / "handcrafted.csv",
        confusion=out / "handcrafted.confusion.csv",
        boot=out / "handcrafted.boot.h5",
        settings={"probe": params, "stats": st or {}},
        dataset="toy",
        log=log,
    )


def run_deep(folder, params, log=None, deep="seed10.h5", out=None, model=None, deep_settings=None, st=None):
    """probe_deep on folder/<deep> (an exported deep-feature file; its layers are probed) or, with ``deep=None``,
    on the layers computed from ``model``, with folder/{handcrafted,mel}.h5; tables written under ``out``."""
    out = folder / "out" if out is None else out
    dp = dict(deep_settings or {})
    if deep is not None and "layers" not in dp:
        with h5py.File(folder / deep, "r") as f:
            dp["layers"] = json.loads(f.attrs["layers"])
    return probe_deep(
        model=model,
        deep=None if deep is None else folder / deep,
        features=folder / "handcrafted.h5",
        mel=folder / "mel.h5",
        scores=out / "deep.csv",
        confusion=out / "deep.confusion.csv",
        boot=out / "deep.boot.h5",
        settings={"probe": params, "deep": dp, "stats": st or {}},
        dataset="toy",
        log=log,
    )


def task_rows(scores):
    """The rows of the task probes (the control probes are tested in test_probe_control.py)."""
    return scores[scores["labels"] == "task"].reset_index(drop=True)


def blobs(n, d, n_classes, sep, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n)
    centres = rng.normal(0, sep, (n_classes, d))
    return (centres[y] + rng.normal(size=(n, d))).astype(np.float32), y


# ------------------------------------------------------------------------------------------------ logistic
def test_separable_data_is_decoded_perfectly():
    X, y = blobs(400, 6, 3, sep=8.0, seed=0)
    r = fit_logistic(X[:300], y[:300], X[300:], y[300:], 3, seed=0, params=FAST)
    assert r["train_acc"] >= 0.99 and r["test_acc"] >= 0.98
    assert r["confusion"].sum() == 100 and r["pred"].shape == (100,)


def test_random_labels_give_chance_on_test():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(1000, 10)).astype(np.float32)
    y = rng.integers(0, 4, 1000)
    r = fit_logistic(X[:600], y[:600], X[600:], y[600:], 4, seed=0, params=FAST)
    assert abs(r["test_acc"] - 0.25) < 0.08  # 400 test clips: sd of chance accuracy ~0.022


def reference_sgd(Z, y, n_classes, seed, epochs):
    """nn.Linear + CrossEntropyLoss + optim.SGD(0.01, momentum 0.9) + DataLoader(batch 64, shuffle, seeded)."""
    lin = torch.nn.Linear(Z.shape[1], n_classes)
    w, b = init_linear(Z.shape[1], n_classes, seed)
    with torch.no_grad():
        lin.weight.copy_(w)
        lin.bias.copy_(b)
    opt = torch.optim.SGD(lin.parameters(), lr=0.01, momentum=0.9)
    dl = DataLoader(
        TensorDataset(torch.from_numpy(Z), torch.from_numpy(y)),
        batch_size=64,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )
    for _ in range(epochs):
        for xb, yb in dl:
            opt.zero_grad()
            torch.nn.functional.cross_entropy(lin(xb), yb).backward()
            opt.step()
    return lin.weight.detach(), lin.bias.detach(), w


def test_sgd_matches_dataloader_linear_sgd_reference():
    """Same init and seed: our closed-form batched SGD equals nn.Linear + CrossEntropyLoss + optim.SGD + DataLoader."""
    X, y = blobs(200, 7, 4, sep=1.0, seed=2)
    Z, _ = standardise(X, X[:5])
    r = fit_logistic(X, y, X[:5], y[:5], 4, seed=5, params={"epochs": 4, "device": "cpu"})
    weight, bias, w = reference_sgd(Z, y, 4, 5, 4)
    torch.testing.assert_close(r["weight"], weight, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(r["bias"], bias, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(r["weight"], w)  # it did train


def test_dual_form_matches_dataloader_linear_sgd_reference():
    """W = W0 + A Z trained on A (features outnumber clips) lands on the reference's weights too."""
    X, y = blobs(150, 400, 3, sep=0.3, seed=12)
    Z, Zte = standardise(X[:110], X[110:])
    r = fit_logistic_many(Z, y[:110], Zte, y[110:], [3], [4], {"epochs": 6, "device": "cpu"}, form="dual")
    weight, bias, w = reference_sgd(Z, y[:110], 3, 4, 6)
    assert r["form"] == "dual" and not torch.allclose(weight, w)
    torch.testing.assert_close(r["weight"][0, 0, 0], weight, atol=1e-4 * float(weight.abs().max()), rtol=0)
    torch.testing.assert_close(r["bias"][0, 0, 0], bias, atol=1e-6, rtol=1e-4)


def test_dual_form_equals_primal_form_for_batched_tasks_features_and_seeds():
    """p >> n: 2 features x 3 tasks (3, 5, 2 classes) x 2 seeds in one batch, primal vs dual: identical
    accuracies and confusions, weights and logits within 1e-4 relative, padded class rows still zero."""
    rng = np.random.default_rng(11)
    n, d = 100, 1500
    Y = np.stack([rng.integers(0, 3, n), rng.integers(0, 5, n), rng.integers(0, 2, n)])
    Xs = [rng.normal(size=(n, d)).astype(np.float32) for _ in range(2)]
    Xs[0][:, :60] += np.repeat(np.eye(3, dtype=np.float32)[Y[0]], 20, axis=1)  # something to learn for task 0
    Z = [standardise(x[:70], x[70:]) for x in Xs]
    args = (
        [z[0] for z in Z],
        Y[:, :70],
        [z[1] for z in Z],
        Y[:, 70:],
        [3, 5, 2],
        [0, 9],
        {"epochs": 20, "device": "cpu"},
    )
    pri = fit_logistic_many(*args, form="primal")
    dua = fit_logistic_many(*args, form="dual")
    assert (pri["form"], dua["form"], fit_logistic_many(*args)["form"]) == ("primal", "dual", "dual")
    assert pri["costs"]["dual"] < pri["costs"]["primal"]
    assert np.array_equal(dua["train_acc"], pri["train_acc"]) and np.array_equal(dua["test_acc"], pri["test_acc"])
    assert pri["test_acc"][:, 0, 0].min() > 0.6  # it learned (chance 1/3)
    for s in range(2):
        for f in range(2):
            for k, c in enumerate([3, 5, 2]):
                assert np.array_equal(dua["confusion"][s][f][k], pri["confusion"][s][f][k])
                Wp, Wd = pri["weight"][s, f, k, :c], dua["weight"][s, f, k, :c]
                torch.testing.assert_close(Wd, Wp, atol=1e-4 * float(Wp.abs().max()), rtol=0)
                torch.testing.assert_close(dua["bias"][s, f, k, :c], pri["bias"][s, f, k, :c], atol=1e-6, rtol=1e-4)
                assert (dua["weight"][s, f, k, c:] == 0).all()
                zp = torch.from_numpy(Z[f][1]) @ Wp.T + pri["bias"][s, f, k, :c]
                zd = torch.from_numpy(Z[f][1]) @ Wd.T + dua["bias"][s, f, k, :c]
                torch.testing.assert_close(zd, zp, atol=1e-4 * float(zp.abs().max()), rtol=0)
    w0, _ = init_linear(d, 5, 9)  # training moved the weights far more than the two forms differ
    w = dua["weight"][1, 1, 1]
    assert (w - w0).abs().max() > 10 * (w - pri["weight"][1, 1, 1]).abs().max()
    # a given Gram matrix (any float dtype) is used as is
    g = fit_logistic_many(*args, form="dual", gram=[gram_matrix(z[0]) for z in Z])
    torch.testing.assert_close(g["weight"], dua["weight"], atol=1e-5 * float(dua["weight"].abs().max()), rtol=0)
    with pytest.raises(ValueError, match=r"gram: expected 2 training Gram matrices of shape \(70, 70\)"):
        fit_logistic_many(*args, gram=[gram_matrix(Z[0][0])])
    with pytest.raises(ValueError, match="form must be"):
        fit_logistic_many(*args, form="kernel")


def test_form_choice_by_estimated_cost():
    wide = logistic_costs(336, 144, 98560, [10, 6, 2], 1, {"epochs": 30})  # a 1dF conv2 layer, 3 tasks
    assert wide["form"] == "dual" and wide["dual"] < wide["primal"] / 10
    assert logistic_costs(571, 245, 128, [8], 3, {"epochs": 30})["form"] == "primal"  # a 128-d hand-crafted feature
    given = logistic_costs(571, 245, 128, [8], 3, {"epochs": 30}, gram_columns=0)
    assert given["gram"] == 0 and given["dual"] < logistic_costs(571, 245, 128, [8], 3, {"epochs": 30})["dual"]
    assert logistic_costs(40000, 15000, 98560, [9], 1, {"epochs": 1})["form"] == "primal"  # K would be 12.8 GB


@pytest.mark.parametrize("n", [7, 1100])  # one block of rows, and several (the mirrored triangle in blocks)
def test_gram_matrix_over_column_blocks(monkeypatch, n):
    monkeypatch.setattr(standardisation, "BLOCK_BYTES", 1)  # blocks of 256 columns: 3 blocks
    Z = np.random.default_rng(n).normal(size=(n, 700)).astype(np.float32)
    ref = Z.astype(np.float64) @ Z.astype(np.float64).T
    K64, K32 = gram_matrix(Z), gram_matrix(torch.from_numpy(Z), torch.float32)
    assert K64.dtype == torch.float64 and K32.dtype == torch.float32 and K64.is_contiguous()
    np.testing.assert_allclose(K64.numpy(), ref, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(K32.numpy(), ref, rtol=0, atol=1e-5 * np.abs(ref).max())
    assert torch.equal(K64, K64.T) and torch.equal(K32, K32.T)


def test_determinism_for_a_seed():
    X, y = blobs(150, 5, 3, sep=1.0, seed=3)
    a = fit_logistic(X[:100], y[:100], X[100:], y[100:], 3, seed=7, params=FAST)
    b = fit_logistic(X[:100], y[:100], X[100:], y[100:], 3, seed=7, params=FAST)
    c = fit_logistic(X[:100], y[:100], X[100:], y[100:], 3, seed=8, params=FAST)
    assert torch.equal(a["weight"], b["weight"]) and np.array_equal(a["pred"], b["pred"])
    assert not torch.equal(a["weight"], c["weight"])


def test_batched_probes_equal_individual_probes():
    """Features x tasks (different class counts) x seeds in one bmm model == one probe at a time."""
    rng = np.random.default_rng(4)
    Xs = [rng.normal(size=(120, 6)).astype(np.float32) for _ in range(2)]
    Y = np.stack([rng.integers(0, 3, 120), rng.integers(0, 5, 120)])
    Y[0] = (Xs[0][:, 0] > 0) + (Xs[0][:, 1] > 0)  # learnable structure for the 3-class task
    params = {"epochs": 6, "device": "cpu"}
    many = fit_logistic_many([x[:90] for x in Xs], Y[:, :90], [x[90:] for x in Xs], Y[:, 90:], [3, 5], [0, 9], params)
    for si, s in enumerate([0, 9]):
        for f in range(2):
            for k, c in enumerate([3, 5]):
                one = fit_logistic_many(Xs[f][:90], Y[k, :90], Xs[f][90:], Y[k, 90:], [c], [s], params)
                torch.testing.assert_close(many["weight"][si, f, k, :c], one["weight"][0, 0, 0], atol=1e-6, rtol=1e-5)
                torch.testing.assert_close(many["bias"][si, f, k, :c], one["bias"][0, 0, 0], atol=1e-6, rtol=1e-5)
                assert (many["weight"][si, f, k, c:] == 0).all()  # padded classes never move
                assert many["test_acc"][si, f, k] == one["test_acc"][0, 0, 0]
                assert np.array_equal(many["confusion"][si][f][k], one["confusion"][0][0][0])


def test_bad_params_and_labels_are_rejected():
    X, y = blobs(40, 3, 2, 1.0, 0)
    with pytest.raises(ValueError, match="unknown key"):
        fit_logistic(X, y, X, y, 2, 0, {"epoch": 3})
    with pytest.raises(ValueError, match=r"codes of task 0 must lie in \[0, 2\)"):
        fit_logistic(X, y + 1, X, y, 2, 0, FAST)


# ------------------------------------------------------------------------------------------ standardisation
def test_standardise_uses_training_statistics_only():
    rng = np.random.default_rng(5)
    Xtr = np.column_stack([rng.normal(1e6, 0.5, 80), np.full(80, 3.25), rng.normal(-2, 4, 80)]).astype(np.float32)
    Xte = rng.normal(50, 9, (30, 3)).astype(np.float32)
    Ztr, Zte, mean, std = standardise(Xtr, Xte, return_stats=True)
    x64 = Xtr.astype(np.float64)
    ref_std = x64.std(0)
    ref_std[1] = 1.0  # constant column -> std 1
    np.testing.assert_allclose(mean, x64.mean(0), rtol=1e-12)
    np.testing.assert_allclose(std, ref_std, rtol=1e-12)
    np.testing.assert_allclose(Zte, (Xte - x64.mean(0)) / ref_std, rtol=1e-5, atol=1e-4)
    assert np.isfinite(Ztr).all() and np.isfinite(Zte).all() and (Ztr[:, 1] == 0).all()
    np.testing.assert_allclose(Ztr[:, [0, 2]].mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(Ztr[:, [0, 2]].std(0), 1, atol=1e-4)
    Ztr2, _ = standardise(Xtr, Xte * 100 + 7)  # the test split never moves the training statistics
    assert np.array_equal(Ztr, Ztr2)


def test_standardise_rejects_non_finite_values_naming_the_feature():
    X = np.ones((10, 2), np.float32)
    X[3, 1] = np.nan
    with pytest.raises(ValueError, match="my feature: 1 non-finite"):
        standardise(X, X, name="my feature")


# ------------------------------------------------------------------------------------------------- linear
def _np_ols_pred(Xtr, ytr, Xte):
    A = np.column_stack([np.ones(len(Xtr)), Xtr.astype(np.float64)])
    beta = np.linalg.lstsq(A, ytr, rcond=None)[0]
    return np.column_stack([np.ones(len(Xte)), Xte.astype(np.float64)]) @ beta, A @ beta


@pytest.mark.parametrize("path", ["gelsd", "normal_equations"])
def test_ols_equals_numpy_lstsq(monkeypatch, path):
    if path == "normal_equations":
        monkeypatch.setattr(linear, "LSTSQ_BYTES", 0)
    rng = np.random.default_rng(6)
    X = rng.normal(size=(90, 6)).astype(np.float32)
    X[:, 4] = 2.5  # constant column, and a duplicated one: rank deficient, predictions are still unique
    X[:, 5] = X[:, 0]
    y = X[:, :4].astype(np.float64) @ [1.0, -2.0, 0.5, 3.0] + 60 + rng.normal(0, 0.3, 90)
    r = fit_linear(X[:60], y[:60], X[60:], y[60:], ridge=1e-3)
    pred_te, pred_tr = _np_ols_pred(X[:60], y[:60], X[60:])
    assert r["method"] == "ols" and r["ridge_used"] == 0.0
    np.testing.assert_allclose(r["pred"], pred_te, rtol=1e-9, atol=1e-8)
    assert r["train_rmse"] == pytest.approx(np.sqrt(np.mean((pred_tr - y[:60]) ** 2)), rel=1e-8)
    assert r["test_rmse"] == pytest.approx(np.sqrt(np.mean((pred_te - y[60:]) ** 2)), rel=1e-8)
    assert r["test_rmse"] < 0.5  # noise sd 0.3: the fit is right, in target units


@pytest.mark.parametrize("p", [5, 80])  # OLS and dual ridge
def test_several_targets_at_once_equal_one_at_a_time(p):
    rng = np.random.default_rng(8)
    X = rng.normal(size=(70, p)).astype(np.float32)
    Y = np.column_stack([X[:, 0] * 3 + 60, rng.choice([25.0, 50, 75, 100, 127], 70)])
    both = fit_linear(X[:50], Y[:50], X[50:], Y[50:], ridge=1e-3)
    for k in range(2):
        one = fit_linear(X[:50], Y[:50, k], X[50:], Y[50:, k], ridge=1e-3)
        assert both["test_rmse"][k] == pytest.approx(one["test_rmse"], rel=1e-10)
        assert both["train_rmse"][k] == pytest.approx(one["train_rmse"], rel=1e-9, abs=1e-9)
        np.testing.assert_allclose(both["pred"][:, k], one["pred"], rtol=1e-10)


def test_ridge_from_a_given_gram_matrix_equals_the_direct_fit():
    """Standardised features: the uncentred Gram matrix, double-centred, gives the same ridge fit."""
    rng = np.random.default_rng(13)
    X = rng.normal(3.0, 2.0, size=(60, 250)).astype(np.float32)
    Y = np.column_stack([40 + 5 * X[:, 0], rng.normal(60, 9, 60)])
    Ztr, Zte = standardise(X[:45], X[45:])
    direct = fit_linear(Ztr, Y[:45], Zte, Y[45:], ridge=1e-2)
    given = fit_linear(Ztr, Y[:45], Zte, Y[45:], ridge=1e-2, gram=gram_matrix(Ztr))
    assert direct["method"] == given["method"] == "ridge_dual"
    assert given["ridge_used"] == pytest.approx(direct["ridge_used"], rel=1e-12)
    for key in ("pred", "coef", "intercept", "train_rmse", "test_rmse"):
        np.testing.assert_allclose(given[key], direct[key], rtol=1e-9, atol=1e-9)
    with pytest.raises(ValueError, match=r"nearly\) centred features"):  # raw features, mean 3: refused
        fit_linear(X[:45], Y[:45], X[45:], Y[45:], gram=gram_matrix(X[:45]))
    with pytest.raises(ValueError, match=r"gram must be the float64 \(45, 45\)"):
        fit_linear(Ztr, Y[:45], Zte, Y[45:], gram=gram_matrix(Ztr, torch.float32))


def test_more_features_than_clips_uses_dual_ridge_and_stays_finite():
    rng = np.random.default_rng(7)
    X = rng.normal(size=(50, 200)).astype(np.float32)
    y = 40 + 5 * X[:, 0].astype(np.float64) + rng.normal(0, 1, 50)
    r = fit_linear(X[:30], y[:30], X[30:], y[30:], ridge=1e-2)
    assert r["method"] == "ridge_dual" and r["ridge_used"] > 0
    assert np.isfinite(r["pred"]).all() and np.isfinite([r["train_rmse"], r["test_rmse"]]).all()
    Xc = X[:30].astype(np.float64) - X[:30].mean(0, dtype=np.float64)
    lam = 1e-2 * np.trace(Xc @ Xc.T) / 30
    beta = np.linalg.solve(Xc.T @ Xc + lam * np.eye(200), Xc.T @ (y[:30] - y[:30].mean()))  # primal ridge
    ref = (X[30:] - X[:30].mean(0, dtype=np.float64)) @ beta + y[:30].mean()
    assert r["ridge_used"] == pytest.approx(lam, rel=1e-10)
    np.testing.assert_allclose(r["pred"], ref, rtol=1e-7, atol=1e-7)


def _brute_loo_mse(X, y, lam):
    """Leave-one-out MSE of ridge (unpenalised intercept, absolute penalty lam) by n separate primal fits."""
    X, y, n = X.astype(np.float64), y.astype(np.float64), len(y)
    err = np.empty(n)
    for i in range(n):
        keep = np.arange(n) != i
        mx, my = X[keep].mean(0), y[keep].mean()
        Xc = X[keep] - mx
        beta = np.linalg.solve(Xc.T @ Xc + lam * np.eye(X.shape[1]), Xc.T @ (y[keep] - my))
        err[i] = y[i] - (my + (X[i] - mx) @ beta)
    return np.mean(err**2)


@pytest.mark.parametrize("p", [4, 30])  # fewer and more features than clips
def test_ridge_auto_loo_equals_brute_force_leave_one_out(p):
    rng = np.random.default_rng(21)
    X = rng.normal(size=(20, p)).astype(np.float32)
    Y = np.column_stack([2 * X[:, 0] + rng.normal(0, 0.5, 20), rng.normal(50, 10, 20)])
    r = fit_linear(X[:14], Y[:14], X[14:], Y[14:], ridge="auto")
    form = "primal" if p < 14 else "dual"  # the p x p covariance whenever p < n_train, the n x n Gram otherwise
    assert r["method"] == "ridge_loo" and r["form"] == form and r["loo_mse"].shape == (len(RIDGE_GRID), 2)
    Xc = X[:14].astype(np.float64) - X[:14].mean(0, dtype=np.float64)
    np.testing.assert_allclose(r["ridge_grid"], RIDGE_GRID * np.trace(Xc @ Xc.T) / 14, rtol=1e-12)
    for g in range(0, len(RIDGE_GRID), 4):
        for k in range(2):
            ref = _brute_loo_mse(X[:14], Y[:14, k], r["ridge_grid"][g])
            assert r["loo_mse"][g, k] == pytest.approx(ref, rel=1e-8)
    for k in range(2):  # the chosen penalty is the LOO minimiser, and the fit is that ridge
        g = int(np.argmin(r["loo_mse"][:, k]))
        lam = r["ridge_grid"][g]
        assert r["ridge_used"][k] == lam and r["ridge_rel"][k] == RIDGE_GRID[g]
        beta = np.linalg.solve(Xc.T @ Xc + lam * np.eye(p), Xc.T @ (Y[:14, k] - Y[:14, k].mean()))
        ref = (X[14:] - X[:14].mean(0, dtype=np.float64)) @ beta + Y[:14, k].mean()
        np.testing.assert_allclose(r["pred"][:, k], ref, rtol=1e-8, atol=1e-8)


def test_ridge_auto_chooses_per_target_and_is_deterministic():
    """Signal target: small penalty and low RMSE; pure-noise target: large penalty, about the mean's RMSE."""
    rng = np.random.default_rng(22)
    n, p = 300, 40
    X = rng.normal(size=(n, p)).astype(np.float32)
    beta = rng.normal(size=p)
    Y = np.column_stack([60 + X.astype(np.float64) @ beta + rng.normal(0, 0.5, n), rng.normal(70, 20, n)])
    r = fit_linear(X[:200], Y[:200], X[200:], Y[200:], ridge="auto")
    assert r["ridge_rel"][0] < r["ridge_rel"][1]
    assert r["test_rmse"][0] < 0.7  # noise sd 0.5 vs target sd ~6.3
    mean_rmse = np.sqrt(np.mean((Y[200:, 1] - Y[:200, 1].mean()) ** 2))
    assert r["test_rmse"][1] <= 1.05 * mean_rmse
    again = fit_linear(X[:200], Y[:200], X[200:], Y[200:], ridge="auto")
    for key in ("pred", "ridge_used", "loo_mse", "coef", "intercept"):
        np.testing.assert_array_equal(again[key], r[key])
    one = fit_linear(X[:200], Y[:200, 1], X[200:], Y[200:, 1], ridge="auto")  # 1-D target: scalar penalty
    assert isinstance(one["ridge_used"], float) and one["ridge_used"] == r["ridge_used"][1]
    np.testing.assert_allclose(one["pred"], r["pred"][:, 1], rtol=1e-10)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ridge_auto_on_pure_noise_features_is_no_worse_than_the_mean(seed):
    """p ~ n noise features (where OLS / a tiny fixed penalty overfit): auto stays at the mean's test RMSE."""
    rng = np.random.default_rng(100 + seed)
    n_tr, n_te, p = 120, 200, 110
    X = rng.normal(size=(n_tr + n_te, p)).astype(np.float32)
    y = rng.normal(64, 30, n_tr + n_te)
    Ztr, Zte = standardise(X[:n_tr], X[n_tr:])
    auto = fit_linear(Ztr, y[:n_tr], Zte, y[n_tr:], ridge="auto", gram=gram_matrix(Ztr))
    fixed = fit_linear(Ztr, y[:n_tr], Zte, y[n_tr:], ridge=1e-3)
    mean_rmse = np.sqrt(np.mean((y[n_tr:] - y[:n_tr].mean()) ** 2))
    assert auto["test_rmse"] <= 1.05 * mean_rmse  # noise: at most a few percent above the mean
    assert fixed["test_rmse"] > 1.5 * mean_rmse  # ... where today's fixed tiny penalty overfits badly
    assert auto["ridge_rel"] >= 1.0


def test_ridge_auto_primal_and_given_gram_paths_equal_the_dual():
    rng = np.random.default_rng(23)
    X = rng.normal(2.0, 1.5, size=(80, 12)).astype(np.float32)
    Y = np.column_stack([X[:, :3].astype(np.float64) @ [1.0, -2.0, 3.0] + rng.normal(0, 1, 80), rng.normal(0, 1, 80)])
    Ztr, Zte = standardise(X[:60], X[60:])
    dual = fit_linear(Ztr, Y[:60], Zte, Y[60:], ridge="auto", form="dual")  # forced: p < n_train takes the primal
    given = fit_linear(Ztr, Y[:60], Zte, Y[60:], ridge="auto", gram=gram_matrix(Ztr), form="dual")
    primal = fit_linear(Ztr, Y[:60], Zte, Y[60:], ridge="auto")  # p x p covariance form: the default for p < n
    assert (dual["form"], given["form"], primal["form"]) == ("dual", "dual", "primal")
    for other in (given, primal):
        np.testing.assert_array_equal(other["ridge_rel"], dual["ridge_rel"])
        for key in ("loo_mse", "pred", "coef", "intercept", "train_rmse", "test_rmse"):
            np.testing.assert_allclose(other[key], dual[key], rtol=1e-8, atol=1e-8)


def test_ridge_parameter_validation():
    assert config.settings("probe", {"ridge": "auto"}, ["ridge"])["ridge"] == "auto"
    assert config.settings("probe", {"ridge": 0}, ["ridge"])["ridge"] == 0
    assert config.settings("probe", {}, ["ridge"])["ridge"] == "auto"  # the schema's default
    for bad in ("Auto", -1.0, None, True):
        with pytest.raises(config.ConfigError, match=r"^probe\.ridge: "):
            config.settings("probe", {"ridge": bad}, ["ridge"])
    X = np.zeros((5, 2), np.float32)
    with pytest.raises(ValueError, match="ridge: expected a number >= 0 or 'auto'"):
        fit_linear(X, np.arange(5.0), X, np.arange(5.0), ridge="gcv")
    r = fit_linear(X, np.arange(5.0), X, np.arange(5.0), ridge="auto")  # constant features: the mean
    np.testing.assert_allclose(r["pred"], 2.0)


# ------------------------------------------------------------------------------------ synthetic stage files
HC = {  # display name -> (width, informative?)
    "Mean Power (frequency)": (8, True),
    "Time to -70 dB": (8, False),
    "Mean Wavelet (25)": (5, True),
    "Wavelet Combined": (12, True),
    "Random": (8, False),
}


def hc_key(name):
    return name.lower().replace(" ", "_").replace("(", "").replace(")", "").replace("-", "m")


def write_handcrafted(path, meta, seed=0):
    rng = np.random.default_rng(seed)
    codes = np.arange(len(meta)) % 3
    with write_h5(path, "handcrafted") as f:
        g = f.create_group("features")
        for name, (d, informative) in HC.items():
            X = rng.normal(size=(len(meta), d))
            if informative:
                X[:, :3] += 5.0 * np.eye(3)[codes]
                X[:, 3] = meta["pitch"].to_numpy() / 10 + rng.normal(0, 0.1, len(meta))
            X[:, -1] = 1.0  # a constant column everywhere: must not produce NaN
            ds = g.create_dataset(hc_key(name), data=X.astype(np.float32))
            ds.attrs.update(
                {"name": name, "definition": "synthetic", "params": "{}", "dim": d, "shape": json.dumps([d])}
            )


def write_deep(path, meta, widths=None, seed=0):
    widths = {"conv1": 70, "pool1": 40, "conv3": 6} if widths is None else widths
    rng = np.random.default_rng(seed)
    codes = np.arange(len(meta)) % 3
    with write_h5(path, "deep") as f:
        f.attrs.update({"arch": "Regular", "seed": 10, "task": "family", "layers": json.dumps(list(widths))})
        for which, signal in (("trained", 5.0), ("untrained", 0.5)):
            g = f.create_group(which)
            for layer, d in widths.items():
                X = rng.normal(size=(len(meta), d))
                X[:, :3] += signal * np.eye(3)[codes]
                ds = g.create_dataset(layer, data=X.astype(np.float32))
                ds.attrs.update({"shape": json.dumps([d]), "averaged_channels": False, "point": "raw"})


def write_model(path, mel, arch="Regular", seed=10, size=64):
    """A model file of ``arch`` for the spectrograms of ``mel`` (untrained and "trained" weights from two seeds of
    the initialisation: distinct networks, no training needed) with mel.h5's training statistics."""
    with h5py.File(mel, "r") as f:
        stats = {k: float(f.attrs[k]) for k in ("train_mean", "train_std")}
    torch.manual_seed(seed)
    init = cpu_state(build_model(arch, size, size, 3))
    torch.manual_seed(seed + 1000)
    final = cpu_state(build_model(arch, size, size, 3))
    meta = {"arch": arch, "seed": seed, "task": "family", "input_shape": [1, size, size], "n_outputs": 3, **stats}
    save_model(path, meta, init, final)


@pytest.fixture(scope="module")
def model_stage(tmp_path_factory):
    """mel.h5 (60 clips of 64 x 64), handcrafted.h5, a Regular model file (seed 10) and the deep-feature file
    extract_features exports for it (every layer)."""
    tmp = tmp_path_factory.mktemp("on_demand")
    _, meta = write_fake_mel(tmp / "mel.h5", n=60, n_mels=64, n_frames=64)
    write_handcrafted(tmp / "handcrafted.h5", meta)
    write_model(tmp / "seed10.pt", tmp / "mel.h5")
    extract_features(
        model=tmp / "seed10.pt",
        mel=tmp / "mel.h5",
        deep=tmp / "seed10.h5",
        settings={"deep": {"device": "cpu", "batch_size": 16, "store": LAYERS}},
    )
    return tmp, meta


@pytest.fixture
def stage_files(tmp_path):
    mel = tmp_path / "mel.h5"
    _, meta = write_fake_mel(mel, n=60, n_mels=8, n_frames=8)
    write_handcrafted(tmp_path / "handcrafted.h5", meta)
    write_deep(tmp_path / "seed10.h5", meta)
    return tmp_path, meta


class ListHandler(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def list_logger(name):
    log = logging.getLogger(name)
    log.handlers[:] = [ListHandler()]
    log.setLevel(logging.INFO)
    log.propagate = False
    return log, log.handlers[0].lines


def test_probe_handcrafted_tidy_tables(stage_files):
    tmp, meta = stage_files
    n_test = int((meta["split"] == 1).sum())
    log, lines = list_logger("test_probe.handcrafted")
    scores, conf = run_handcrafted(tmp, FAST, log)
    scores = task_rows(scores)
    # one progress line per probe: feature, task, seconds, score
    assert (
        sum(
            bool(re.match(r"probe .+ \| task family \| seed [01] \| [\d.]+ s .*accuracy train [\d.]+ test", x))
            for x in lines
        )
        == 5 * 2
    )
    assert sum(x.startswith("probe ") and "task pitch |" in x and "OLS" in x for x in lines) == 5
    assert list(scores.columns) == PROBE_COLUMNS and list(conf.columns) == CONFUSION_COLUMNS
    # 5 features x (family: 2 seeds x 2 splits + pitch: 1 x 2 splits)
    assert len(scores) == 5 * (2 * 2 + 2)
    assert set(scores["feature"]) == set(HC) and (scores["dataset"] == "toy").all()
    for col in ("arch", "seed", "layer", "trained", "train_task"):
        assert (scores[col] == "").all()
    acc = scores[scores["metric"] == "accuracy"]
    assert set(acc["probe_task"]) == {"family"} and set(acc["probe_seed"]) == {0, 1}
    rm = scores[scores["metric"] == "rmse"]
    assert set(rm["probe_task"]) == {"pitch"} and (rm["probe_seed"] == "").all()
    assert set(scores["split"]) == {"train", "test"} and np.isfinite(scores["value"]).all()
    test_acc = acc[acc["split"] == "test"].set_index(["feature", "probe_seed"])["value"]
    assert test_acc["Mean Wavelet (25)"].min() >= 0.9  # informative features decode
    assert test_acc["Random"].max() <= 0.75  # 18 test clips, 3 classes: noise stays near chance
    pitch = rm[rm["split"] == "test"].set_index("feature")["value"]
    assert pitch["Mean Wavelet (25)"] < 0.5 * pitch["Random"]  # pitch is encoded in column 3
    # confusion: 3 x 3 per (feature, seed), sums to the test size, class names
    assert set(conf["true"]) == set(conf["predicted"]) == {"class0", "class1", "class2"}
    sums = conf.groupby(["feature", "probe_seed"])["count"].sum()
    assert len(sums) == 5 * 2 and (sums == n_test).all()
    assert (conf.groupby(["feature", "probe_seed"]).size() == 9).all() and (conf["split"] == "test").all()
    # test accuracy = trace of the confusion / test size
    diag = conf[conf["true"] == conf["predicted"]].groupby(["feature", "probe_seed"])["count"].sum() / n_test
    pd.testing.assert_series_equal(diag.sort_index(), test_acc.sort_index(), check_names=False, check_index_type=False)


def test_probe_handcrafted_ridge_auto_logs_the_grid_and_the_choice(stage_files):
    tmp, _ = stage_files
    log, lines = list_logger("test_probe.handcrafted_auto")
    scores, _ = run_handcrafted(tmp, {**FAST, "seeds": [0], "ridge": "auto"}, log)
    scores = task_rows(scores)
    assert sum("leave-one-out" in x and "1.000e-06" in x and "1.000e+03" in x for x in lines) == 1
    # widths 5-12 < 42 training clips: the p x p covariance (primal) form, never the n x n eigendecomposition
    assert (
        sum(
            bool(
                re.match(
                    r"probe .+ \| task pitch \| .*primal ridge, penalty [\d.e+-]+ = [\d.e+-]+.* x trace"
                    r"\(K\)/n by leave-one-out \(LOO rmse [\d.]+\)",
                    x,
                )
            )
            for x in lines
        )
        == 5
    )
    rm = scores[(scores["metric"] == "rmse") & (scores["split"] == "test")].set_index("feature")["value"]
    assert rm["Mean Wavelet (25)"] < 0.5 * rm["Random"] and np.isfinite(rm).all()


def test_probe_deep_tidy_tables_and_concatenation(stage_files):
    tmp, meta = stage_files
    n_train = int((meta["split"] == 0).sum())
    params = {**FAST, "concat_features": ["Time to -70 dB", "Mean Wavelet (25)"]}
    log, lines = list_logger("test_probe.deep")
    scores, conf = run_deep(tmp, params, log)
    scores = task_rows(scores)
    assert sum("Regular conv1" in x and "task pitch |" in x and "dual ridge" in x for x in lines) == 2
    assert list(scores.columns) == PROBE_COLUMNS and list(conf.columns) == CONFUSION_COLUMNS
    layer_rows = scores[~scores["feature"].str.contains(r"\+")]
    # 3 layers x 2 (trained/untrained) x 2 tasks x 2 splits, probe seed = model seed
    assert len(layer_rows) == 3 * 2 * 2 * 2
    assert set(layer_rows["feature"]) == {"Regular conv1", "Regular pool1", "Regular conv3"}
    assert (scores["arch"] == "Regular").all() and (scores["seed"] == 10).all()
    assert (scores["train_task"] == "family").all() and set(scores["trained"]) == {"trained", "untrained"}
    assert set(scores.loc[scores["metric"] == "accuracy", "probe_seed"]) == {0}  # the first of probe.seeds
    assert (scores.loc[scores["metric"] == "rmse", "probe_seed"] == "").all()
    assert set(layer_rows["probe_task"]) == {"family", "pitch"}
    assert np.isfinite(scores["value"]).all()  # conv1 has 70 > 42 train clips: ridge, still finite
    assert 70 + 1 >= n_train
    cat = scores[scores["feature"].str.contains(r"\+")]
    assert set(cat["feature"]) == {"Regular conv3 + Time to -70 dB", "Regular conv3 + Mean Wavelet (25)"}
    assert len(cat) == 2 * 2 and (cat["layer"] == "conv3").all() and (cat["trained"] == "trained").all()
    assert (cat["probe_task"] == "family").all() and (cat["metric"] == "accuracy").all()
    tr = scores.set_index(["feature", "trained", "probe_task", "split"])["value"]
    assert tr[("Regular conv3", "trained", "family", "test")] >= 0.9
    # confusions for every classification probe: 3 layers x 2 + 2 concatenations
    assert conf.groupby(["feature", "trained"]).ngroups == 3 * 2 + 2
    assert (conf.groupby(["feature", "trained"])["count"].sum() == int((meta["split"] == 1).sum())).all()


def test_probe_deep_dual_and_primal_forms_give_the_same_tables(tmp_path, monkeypatch):
    """Wide layers and the concatenations run in the dual form (the concatenations reusing conv3's Gram
    matrix), a narrow layer in the primal: the tables equal those of the primal form everywhere, and a
    concatenation's accuracy equals a probe fitted directly on the concatenated standardised columns."""
    _, meta = write_fake_mel(tmp_path / "mel.h5", n=60, n_mels=8, n_frames=8)
    write_handcrafted(tmp_path / "handcrafted.h5", meta)
    write_deep(tmp_path / "seed10.h5", meta, widths={"conv3": 30, "conv1": 70, "pool1": 6})
    params = {**FAST, "epochs": 30, "concat_features": ["Time to -70 dB", "Mean Wavelet (25)"]}
    log, lines = list_logger("test_probe.forms")
    auto = run_deep(tmp_path, params, log)
    monkeypatch.setattr(pipeline, "FORM", "primal")
    primal = run_deep(tmp_path, params)
    formed = [x for x in lines if x.startswith("trained ")]
    assert sum("width 6 " in x and "primal form" in x for x in formed) == 1
    assert sum("width 70 " in x and "dual form" in x for x in formed) == 1
    cat = [x for x in formed if "width 38 " in x or "width 35 " in x]  # conv3 (30) + hand-crafted (8 or 5)
    assert len(cat) == 2 and all("dual form" in x and "Gram matrix given" in x for x in cat)
    for a, b in zip(auto, primal):
        pd.testing.assert_frame_equal(a.drop(columns=a.columns[-1]), b.drop(columns=b.columns[-1]))
    pd.testing.assert_frame_equal(auto[1], primal[1])  # confusion counts identical
    acc = auto[0]["metric"] == "accuracy"
    assert np.array_equal(auto[0].loc[acc, "value"], primal[0].loc[acc, "value"])
    np.testing.assert_allclose(auto[0].loc[~acc, "value"], primal[0].loc[~acc, "value"], rtol=1e-9)

    split = meta["split"].to_numpy()
    with h5py.File(tmp_path / "seed10.h5") as f, h5py.File(tmp_path / "handcrafted.h5") as g:
        blocks = [
            standardise(x[split == 0], x[split == 1])
            for x in (f["trained/conv3"][:], g["features"][hc_key("Mean Wavelet (25)")][:])
        ]
    y = np.arange(60) % 3
    direct = fit_logistic_many(
        np.hstack([b[0] for b in blocks]),
        y[split == 0],
        np.hstack([b[1] for b in blocks]),
        y[split == 1],
        [3],
        [0],  # the first probe seed, whatever the model seed
        params,
        form="primal",
    )
    s = task_rows(auto[0]).set_index(["feature", "split"])
    assert s.loc[("Regular conv3 + Mean Wavelet (25)", "test"), "value"] == direct["test_acc"][0, 0, 0]
    assert s.loc[("Regular conv3 + Mean Wavelet (25)", "train"), "value"] == direct["train_acc"][0, 0, 0]


def test_bad_concat_name_lists_available_features(stage_files):
    tmp, _ = stage_files
    params = {**FAST, "concat_features": ["Mean Power"]}
    with pytest.raises(
        ValueError, match=r"\['Mean Power'\] not found.*available display names.*Mean Power \(frequency\)"
    ):
        run_deep(tmp, params)


def test_misaligned_features_are_rejected(tmp_path):
    _, meta = write_fake_mel(tmp_path / "mel.h5", n=60, n_mels=8, n_frames=8)
    write_handcrafted(tmp_path / "handcrafted.h5", meta.iloc[:50])
    with pytest.raises(ValueError, match=r"features/\w+ has shape \(50, \d+\); expected \(60 clips x d\)"):
        run_handcrafted(tmp_path, FAST)


def test_snakemake_scripts_write_the_tables(model_stage, tmp_path):
    """The thin rule scripts: run_job unpacks snakemake.input/output/wildcards/params/resources/log (the settings
    and tuning the workflow derives from a config for the rule), the job writes both CSVs atomically; probe_deep
    computes the layers from the model file."""
    import runpy
    from pathlib import Path
    from types import SimpleNamespace

    from snakemake.iocontainers import Namedlist

    src, _ = model_stage
    tmp = tmp_path
    scripts = Path(__file__).resolve().parents[1] / "scripts"
    cfg = {"probe": {**FAST, "seeds": [3], "concat_features": ["Random"]}, "deep": {"batch_size": 16}}
    runs = {
        "probe_handcrafted": (
            {"features": str(src / "handcrafted.h5"), "mel": str(src / "mel.h5")},
            {"dataset": "toy"},
        ),
        "probe_deep": (
            {"model": str(src / "seed10.pt"), "features": str(src / "handcrafted.h5"), "mel": str(src / "mel.h5")},
            {"dataset": "toy", "task": "family", "conv_arch": "Regular", "seed": "10"},
        ),
    }
    for name, (inputs, wildcards) in runs.items():
        out = {
            "scores": str(tmp / name / "s.csv"),
            "confusion": str(tmp / name / "s.confusion.csv"),
            "boot": str(tmp / name / "s.boot.h5"),
        }
        smk = SimpleNamespace(
            input=Namedlist(fromdict=inputs),
            output=Namedlist(fromdict=out),
            wildcards=Namedlist(fromdict=wildcards),
            params=Namedlist(fromdict={"settings": workflow.rule_settings(cfg, name), "code": "x"}),
            resources=SimpleNamespace(tuning=workflow.rule_tuning(cfg, name)),
            log=[str(tmp / f"{name}.log")],
            rule=name,
        )
        runpy.run_path(str(scripts / f"{name}.py"), init_globals={"snakemake": smk})
        scores = pd.read_csv(out["scores"], keep_default_na=False)
        conf = pd.read_csv(out["confusion"], keep_default_na=False)
        assert list(scores.columns) == PROBE_COLUMNS and list(conf.columns) == CONFUSION_COLUMNS
        assert len(scores) > 0 and len(conf) > 0 and set(scores["labels"]) == {"task", "control"}
        keys, values, reps, attrs = read_replicates(out["boot"])
        assert len(keys) == (scores["split"] == "test").sum() and reps.shape[1] == config.default("stats", "resamples")
        assert "| task family |" in (tmp / f"{name}.log").read_text()
        assert not list((tmp / name).glob(".*"))  # no temporary files left
    assert "Regular conv3 + Random" in set(scores["feature"])
    assert set(scores.loc[scores["metric"] == "accuracy", "probe_seed"]) == {"3"}  # the first of probe.seeds


def test_jobs_write_the_tables_they_return(stage_files):
    tmp, _ = stage_files
    for run, stem in ((run_handcrafted, "handcrafted"), (run_deep, "deep")):
        frames = run(tmp, {**FAST, "seeds": [0], "concat_features": ["Random"]})
        for frame, path in zip(frames, (tmp / "out" / f"{stem}.csv", tmp / "out" / f"{stem}.confusion.csv")):
            back = pd.read_csv(path, keep_default_na=False)
            expect = frame.astype(str).reset_index(drop=True)
            pd.testing.assert_frame_equal(back.astype(str), expect)


def test_job_declarations_and_unknown_settings():
    """The declared reads/tunes (what the workflow passes and watches); unknown keys are refused by name."""
    reads = ["epochs", "lr", "momentum", "batch_size", "seeds", "ridge", "dual_max_clips", "covariance_max_width"]
    assert workflow.job_spec("probe_handcrafted") == {
        "reads": {"probe": reads, "stats": ["seed", "resamples"]},
        "tunes": {"probe": ["device", "memory_mb"]},
    }
    assert workflow.job_spec("probe_deep") == {
        "reads": {
            "probe": reads + ["concat_features"],
            "deep": ["layers", "point", "average_channels"],
            "stats": ["seed", "resamples"],
        },
        "tunes": {"probe": ["device", "memory_mb"], "deep": ["batch_size"]},
    }
    spec = probe_deep.job.resolve({"probe": {"epochs": 3}})
    assert spec["probe"]["epochs"] == 3 and spec["probe"]["ridge"] == config.default("probe", "ridge")
    assert set(spec["probe"]) == {*reads, "concat_features", "device", "memory_mb"}
    assert set(spec["deep"]) == {"layers", "point", "average_channels", "batch_size"}
    with pytest.raises(config.ConfigError, match=r"probe\.epoch: unknown key"):
        probe_handcrafted(
            features="f.h5",
            mel="m.h5",
            scores="s.csv",
            confusion="c.csv",
            boot="b.h5",
            settings={"probe": {"epoch": 3}},
            dataset="toy",
        )
    with pytest.raises(config.ConfigError, match=r"probe\.seed: unknown key"):
        probe_deep(
            model="m.pt",
            features="f.h5",
            mel="m.h5",
            scores="s.csv",
            confusion="c.csv",
            boot="b.h5",
            settings={"probe": {"seed": 3}},
            dataset="toy",
        )
    with pytest.raises(config.ConfigError, match=r"probe\.epochs: 0 is less than the minimum of 1"):
        probe_handcrafted(
            features="f.h5",
            mel="m.h5",
            scores="s.csv",
            confusion="c.csv",
            boot="b.h5",
            settings={"probe": {"epochs": 0}},
            dataset="toy",
        )
    X, y = blobs(40, 3, 2, 1.0, 0)
    for call in (
        lambda: logistic_costs(40, 10, 3, [2], 1, {"batchsize": 8}),
        lambda: fit_logistic_many(X, y, X, y, [2], [0], {"momentum": 0.9, "lrate": 0.1}),
    ):
        with pytest.raises(config.ConfigError, match="unknown key"):
            call()


def test_duplicate_probe_seeds_are_rejected(stage_files):
    tmp, _ = stage_files
    with pytest.raises(config.ConfigError, match=r"probe\.seeds: .* non-unique"):
        run_handcrafted(tmp, {**FAST, "seeds": [1, 1]})


def test_library_defaults_come_from_the_schema():
    """params None / missing keys and ridge None take the probe section's schema defaults."""
    X, y = blobs(80, 4, 3, 2.0, 1)
    Z, Zte = standardise(X[:60], X[60:])
    given = config.settings("probe", {"device": "cpu"}, ["epochs", "lr", "momentum", "batch_size", "device"])
    a = fit_logistic_many(Z, y[:60], Zte, y[60:], [3], [0], None, device="cpu")
    b = fit_logistic_many(Z, y[:60], Zte, y[60:], [3], [0], given)
    assert torch.equal(a["weight"], b["weight"]) and given["epochs"] == config.default("probe", "epochs")
    assert logistic_costs(60, 20, 4, [3], 1, None) == logistic_costs(60, 20, 4, [3], 1, given)
    t = X[:, 0].astype(np.float64)
    auto = fit_linear(X[:60], t[:60], X[60:], t[60:])
    assert config.default("probe", "ridge") == "auto" and auto["method"] == "ridge_loo"
    np.testing.assert_array_equal(auto["pred"], fit_linear(X[:60], t[:60], X[60:], t[60:], ridge="auto")["pred"])


def test_tables_do_not_depend_on_grouping(stage_files, monkeypatch):
    tmp, _ = stage_files
    a = run_handcrafted(tmp, FAST)
    monkeypatch.setattr(loading, "GROUP_BYTES", 0)  # every feature trained as its own model
    b = run_handcrafted(tmp, FAST)
    for x, y in zip(a, b):
        pd.testing.assert_frame_equal(x, y)
    assert list(a[0]["feature"].drop_duplicates()) == sorted(HC, key=hc_key)  # the file's order


def test_deep_file_whose_seed_contradicts_its_name_is_rejected(stage_files):
    tmp, _ = stage_files
    (tmp / "seed10.h5").rename(tmp / "seed1.h5")
    with pytest.raises(ValueError, match=r"seed1\.h5: root attr seed=10 contradicts the file name"):
        run_deep(tmp, FAST, deep="seed1.h5")


# ------------------------------------------------------------------------------ probes on demand, bounded memory
def test_fit_linear_leaves_a_float64_input_unchanged():
    """Issue 16: the dual ridge centred the caller's float64 array in place (column means 2.94 -> 0.00)."""
    rng = np.random.default_rng(30)
    X = rng.normal(2.94, 1.0, size=(40, 90))  # float64, p > n: the dual forms
    y = X[:, 0] * 2 + rng.normal(0, 0.1, 40)
    keep = X.copy()
    for ridge, gram in ((1e-2, None), ("auto", None), ("auto", "given"), (1e-2, "given")):
        Z = X if gram is None else X - X[:30].mean(0)  # a given Gram matrix needs nearly centred features
        before = Z.copy()
        g = None if gram is None else torch.from_numpy(Z[:30] @ Z[:30].T)
        r = fit_linear(Z[:30], y[:30], Z[30:], y[30:], ridge=ridge, gram=g)
        assert np.array_equal(Z, before), (ridge, gram)
        assert np.isfinite(r["test_rmse"])
    np.testing.assert_allclose(X.mean(0), keep.mean(0), rtol=0, atol=0)
    assert abs(X.mean() - 2.94) < 0.1
    for p in (5, 90):  # OLS / covariance forms too
        Xp = X[:, :p].copy()
        fit_linear(Xp[:30], y[:30], Xp[30:], y[30:], ridge="auto")
        fit_linear(Xp[:30], y[:30], Xp[30:], y[30:], ridge=1e-3)
        assert np.array_equal(Xp, X[:, :p])


def test_running_statistics_and_gram_accumulation_over_column_groups():
    from deepfeat.probe.standardisation import GramAccumulator, RunningStats, gram_block

    rng = np.random.default_rng(31)
    X = np.column_stack([rng.normal(1e4, 0.5, 300), np.full(300, 7.0), rng.normal(-3, 2, 300)]).astype(np.float32)
    acc = RunningStats(3, "feat")
    for a, b in ((0, 7), (7, 150), (150, 151), (151, 300)):  # uneven blocks, one of one row
        acc.add(torch.from_numpy(X[a:b]))
    mean, std = acc.result()
    _, _, m_ref, s_ref = standardise(X, X[:2], return_stats=True)
    np.testing.assert_allclose(mean.numpy(), m_ref, rtol=1e-14)
    np.testing.assert_allclose(std.numpy(), s_ref, rtol=1e-9)  # the large-mean column: no cancellation
    assert std[1] == 1.0  # constant column
    bad = X.copy()
    bad[5, 2] = np.inf
    with pytest.raises(ValueError, match=r"my layer: 1 non-finite value\(s\) in the training split \(columns 2..2\)"):
        RunningStats(3, "my layer").add(bad)
    Z = rng.normal(size=(90, 700)).astype(np.float32)
    w = gram_block(90)
    for dtype in (torch.float64, torch.float32):
        K = GramAccumulator(90, dtype)
        for a in range(0, 700, w):  # column groups aligned on the block width: the same sums as one pass
            K.add(Z[:, a : a + w])
        assert torch.equal(K.result(), gram_matrix(Z, dtype))
    K = GramAccumulator(90)
    for a in range(0, 700, 97):
        K.add(torch.from_numpy(Z[:, a : a + 97]))
    np.testing.assert_allclose(
        K.result().numpy(), Z.astype(np.float64) @ Z.T.astype(np.float64), rtol=1e-12, atol=1e-11
    )


def test_streamed_rows_equal_the_standardised_matrix(stage_files):
    from deepfeat.probe.rows import DatasetSource, ResidentRows, StreamedRows, gram_of, training_stats

    tmp, meta = stage_files
    split = meta["split"].to_numpy()
    tr, te = np.flatnonzero(split == 0), np.flatnonzero(split != 0)
    with h5py.File(tmp / "seed10.h5") as f:
        X = f["trained/conv1"][:]
        src = DatasetSource(f["trained/conv1"], "seed10.h5: trained/conv1", "cpu")
        stats = training_stats(src, tr)
        rows = StreamedRows(src, tr, stats)
        rows.step = 5  # several blocks
        Ztr, Zte = standardise(X[tr], X[te])
        got = torch.cat([z for _, z in rows.blocks()])
        np.testing.assert_allclose(got.numpy(), Ztr, rtol=0, atol=1e-6)
        test = StreamedRows(src, te, stats)
        np.testing.assert_allclose(torch.cat([z for _, z in test.blocks()]).numpy(), Zte, rtol=0, atol=1e-6)
        pos = torch.tensor([7, 3, 3, 41, 0])  # any order, repeats
        np.testing.assert_allclose(rows.take(pos).numpy(), Ztr[pos.numpy()], rtol=0, atol=1e-6)
        groups = list(rows.column_groups(32))
        assert [a for a, _ in groups] == [0, 32, 64] and rows.passes == 1 + 3
        np.testing.assert_allclose(torch.cat([g for _, g in groups], 1).numpy(), Ztr, rtol=0, atol=1e-6)
        np.testing.assert_allclose(gram_of(rows, width=32).numpy(), gram_of(ResidentRows(torch.from_numpy(Ztr))))
        np.testing.assert_allclose(rows.mean().numpy(), Ztr.astype(np.float64).mean(0), atol=1e-7)


def test_probe_deep_on_demand_equals_the_exported_deep_file(model_stage):
    """The issue's item 3 on a real network: layers computed from the model file, batch by batch, give exactly
    the tables of the deep-feature file extract_features exports for it (same rows, same plans)."""
    tmp, _ = model_stage
    params = {**FAST, "epochs": 20, "ridge": "auto", "concat_features": ["Time to -70 dB", "Wavelet Combined"]}
    log, lines = list_logger("test_probe.on_demand")
    on = run_deep(tmp, params, log, deep=None, model=tmp / "seed10.pt", deep_settings={"batch_size": 7})
    stored = run_deep(tmp, params, deep="seed10.h5", out=tmp / "stored")
    for a, b in zip(on, stored):
        pd.testing.assert_frame_equal(a, b)
    assert set(on[0]["layer"]) == set(LAYERS) and len(task_rows(on[0])) == 5 * 2 * 2 * 2 + 2 * 2
    assert sum(x.startswith("pass 1/1: layers ['conv1', 'pool1', 'conv2', 'pool2', 'conv3']") for x in lines) == 1
    assert sum(" plan resident (rows held), " in x and " MB planned" in x for x in lines) == 5 + 2
    with pytest.raises(ValueError, match=r"seed10\.h5: holds layers .* deep\.layers asks for \['fc1'\]"):
        run_deep(tmp, params, deep="seed10.h5", deep_settings={"layers": ["fc1"]}, out=tmp / "bad")


@pytest.mark.parametrize("mode", ["gram", "recompute"])
def test_non_resident_plans_give_the_resident_probes(model_stage, monkeypatch, mode):
    """Plans (b) and (c) forced on every feature (layers, concatenations, hand-crafted features): the same tables
    as holding the rows (accuracies and confusions identical, RMSE to float32 rounding), with nothing held."""
    from deepfeat.probe import plan as plan_module

    tmp, _ = model_stage
    params = {**FAST, "epochs": 8, "seeds": [0], "ridge": "auto", "concat_features": ["Mean Wavelet (25)"]}
    dp = {"layers": ["pool1", "conv3"]}  # one wide (900, dual forms) and one narrow (30, primal/covariance)
    held = run_deep(tmp, params, deep="seed10.h5", out=tmp / f"held_{mode}", deep_settings=dp)
    held_hc = run_handcrafted(tmp, params, out=tmp / f"held_hc_{mode}")
    monkeypatch.setattr(plan_module, "FORCE", mode)
    log, lines = list_logger(f"test_probe.{mode}")
    streamed = run_deep(tmp, params, log, deep=None, model=tmp / "seed10.pt", out=tmp / f"on_{mode}", deep_settings=dp)
    streamed_hc = run_handcrafted(tmp, params, log, out=tmp / f"on_hc_{mode}")
    assert not any(x.startswith("pass ") for x in lines)  # no layer was held
    assert sum(f": plan {mode} (" in x for x in lines) == 2 * 2 + 1 + len(HC)
    assert sum("computed on demand in" in x for x in lines) == 2 * 2 + 1 + len(HC)
    for a, b in ((held, streamed), (held_hc, streamed_hc)):
        acc = a[0]["metric"] == "accuracy"
        pd.testing.assert_frame_equal(a[0].drop(columns="value"), b[0].drop(columns="value"))
        assert np.array_equal(a[0].loc[acc, "value"], b[0].loc[acc, "value"])
        np.testing.assert_allclose(b[0].loc[~acc, "value"], a[0].loc[~acc, "value"], rtol=1e-5)
        pd.testing.assert_frame_equal(a[1], b[1])
    assert held[0].loc[held[0]["metric"] == "accuracy", "value"].max() > 0.9  # they learned something


def test_the_memory_budget_chooses_the_plan_and_is_logged(model_stage):
    """A budget below a layer's rows: that layer is never held (the cheaper of gram and recompute runs, logged
    with its estimated cost and planned memory), narrow ones still are; the tables do not change."""
    tmp, _ = model_stage
    params = {**FAST, "epochs": 5, "seeds": [0], "concat_features": []}
    full = run_deep(tmp, params, deep="seed10.h5", out=tmp / "full")
    log, lines = list_logger("test_probe.budget")
    small = run_deep(tmp, {**params, "memory_mb": 0.5}, log, deep="seed10.h5", out=tmp / "small")
    conv1 = [x for x in lines if x.startswith("Regular conv1 (trained), width 3600: plan ")]
    assert len(conv1) == 1 and re.search(
        r"plan (gram|recompute) .* \d+ MB planned, estimated multiply-adds: ", conv1[0]
    )
    assert any(x.startswith("Regular conv3 (trained + untrained), width 30: plan resident") for x in lines)
    acc = full[0]["metric"] == "accuracy"
    assert np.array_equal(full[0].loc[acc, "value"], small[0].loc[acc, "value"])
    np.testing.assert_allclose(small[0].loc[~acc, "value"], full[0].loc[~acc, "value"], rtol=1e-5)


def test_plans_by_estimated_cost_and_regression_routes():
    from deepfeat.probe.plan import Work, plan, regression_route
    from deepfeat.probe.standardisation import gram_block

    keys = ["memory_mb", "ridge", "dual_max_clips", "covariance_max_width", "epochs", "batch_size"]
    hp = config.settings("probe", {"memory_mb": 400}, keys)
    wide = Work(n=4000, t=1700, d=71680, classes=[8], targets=0, seeds=1, cost=2e7)  # a 1dF conv2 layer
    many, few = plan(wide, {**hp, "epochs": 100}), plan(wide, {**hp, "epochs": 1})
    assert (many.mode, many.logistic, few.mode, few.logistic) == ("gram", "dual", "recompute", "primal")
    assert many.width % gram_block(4000) == 0 and many.width < wide.d and many.memory <= 400 * 2**20
    narrow, hp50 = Work(1000, 400, 128, [8], 2, 3, 128.0), {**hp, "memory_mb": 50}
    assert plan(narrow, hp50).mode == "resident" and plan(narrow, hp50, F=8).F == 8
    assert plan(narrow, hp50, F=80) is None  # 80 at once (57 MB of rows) do not fit: planned one by one
    # regression: never the n x n eigendecomposition when the feature is narrower (the 25 s probe)
    assert regression_route(4365, 128, "auto", hp) == ("covariance", None)
    assert regression_route(4365, 15376, "auto", hp) == ("gram", None)
    assert regression_route(22400, 15376, "auto", hp) == ("covariance", None)  # exact: linear in clips
    assert regression_route(35000, 15376, 0, hp) == ("ols", None)  # the method's least squares, exact
    assert regression_route(22400, 71680, "auto", hp) == ("gram", 8192)  # the Gram form beyond dual_max_clips
    assert regression_route(22400, 71680, 0, hp) == ("fixed", 8192)
    assert regression_route(35000, 23040, "auto", hp) == ("gram", 8192)  # wider than covariance_max_width
    assert regression_route(35000, 23040, "auto", {**hp, "covariance_max_width": 30000}) == ("covariance", None)


def test_regression_beyond_the_caps_is_fitted_on_a_seeded_subset(stage_files):
    tmp, meta = stage_files
    params = {**FAST, "seeds": [4], "ridge": "auto", "dual_max_clips": 20, "concat_features": []}
    params["covariance_max_width"] = 39  # pool1 (40 wide < 42 clips) beyond it; conv3 (6) within
    log, lines = list_logger("test_probe.subset")
    scores, _ = run_deep(tmp, params, log)
    sub = [x for x in lines if "task pitch |" in x and "seeded subset" in x]
    assert len(sub) == 2 * 2  # conv1 (70 wide >= 42 clips > dual_max_clips 20), pool1 (40 > covariance_max_width)
    assert all("20 training clips (a seeded subset of the 42" in x for x in sub)
    split = meta["split"].to_numpy()
    with h5py.File(tmp / "seed10.h5") as f:
        Ztr, Zte = standardise(f["trained/pool1"][:][split == 0], f["trained/pool1"][:][split == 1])
    pos = seeded_subset(42, 20, 4, 1)  # the first probe seed, the subsets' stream
    y = meta["pitch"].to_numpy()
    ref = fit_linear(Ztr[pos], y[split == 0][pos], Zte, y[split == 1], ridge="auto", form="dual")
    s = task_rows(scores).set_index(["feature", "trained", "probe_task", "split"])["value"]
    assert s[("Regular pool1", "trained", "pitch", "test")] == pytest.approx(ref["test_rmse"], rel=1e-9)
    assert s[("Regular pool1", "trained", "pitch", "train")] == pytest.approx(ref["train_rmse"], rel=1e-9)
    assert not any("seeded subset" in x for x in lines if "conv3" in x)


def test_deep_probes_use_one_probe_seed_for_every_network_seed(stage_files):
    """Issue 16: one probe initialisation per architecture: models of seeds 10 and 11 with the same features
    get the same probe seed (the first of probe.seeds), hence identical probes."""
    tmp, meta = stage_files
    write_deep(tmp / "seed11.h5", meta)  # the same rows as seed10.h5 ...
    with h5py.File(tmp / "seed11.h5", "a") as f:
        f.attrs["seed"] = 11  # ... for another network seed
    params = {**FAST, "epochs": 3, "seeds": [5, 6], "concat_features": ["Random"]}
    a, ca = run_deep(tmp, params)
    b, cb = run_deep(tmp, params, deep="seed11.h5", out=tmp / "s11")
    assert set(a["seed"]) == {10} and set(b["seed"]) == {11}
    assert (
        set(a.loc[a["metric"] == "accuracy", "probe_seed"])
        == set(b.loc[b["metric"] == "accuracy", "probe_seed"])
        == {5}
    )
    pd.testing.assert_frame_equal(a.drop(columns="seed"), b.drop(columns="seed"))
    pd.testing.assert_frame_equal(ca.drop(columns="seed"), cb.drop(columns="seed"))
