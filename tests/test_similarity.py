"""Similarity measures (CKA, debiased CKA, LR, CCA, SVCCA) and the three similarity entry points."""

from __future__ import annotations

import json
import math

import h5py
import numpy as np
import pytest
import torch
from conftest import write_fake_mel

from deepfeat import config
from deepfeat import similarity as sim
from deepfeat.formats.cliptable import seeded_subset
from deepfeat.formats.files import open_h5, write_h5
from deepfeat.formats.tables import SIMILARITY_COLUMNS, read_similarity
from deepfeat.runtime import get_logger
from deepfeat.similarity.bootstrap import _bootstrap_ci, _cka_psi
from deepfeat.similarity.channels import _channel_measures, _channel_stats
from deepfeat.similarity.gram import GRAM_STREAM
from deepfeat.similarity.measures import _Spec, _svals, _svcca_dim, canonical

ALL = [m for m in sim.MEASURES if not m.endswith("_test") and m != "procrustes"]  # the in-sample measures
HELD_OUT = [m for m in sim.MEASURES if m.endswith("_test")]


# ---------------------------------------------------------------------------------------------------------
# Naive references: the QR/SVD forms of docs/method.md, and the U-statistic HSIC on explicit Gram matrices
# ---------------------------------------------------------------------------------------------------------
def _c(X):
    return X - X.mean(0)


def ref_cka(X, Y):
    X, Y = _c(X), _c(Y)
    return np.linalg.norm(Y.T @ X) ** 2 / (np.linalg.norm(X.T @ X) * np.linalg.norm(Y.T @ Y))


def ref_hsic_u(K, L):
    """Song et al. (2012) unbiased HSIC on Gram matrices, diagonals zeroed."""
    n = K.shape[0]
    K, L = K.copy(), L.copy()
    np.fill_diagonal(K, 0)
    np.fill_diagonal(L, 0)
    one = np.ones(n)
    return (
        np.trace(K @ L) + (one @ K @ one) * (one @ L @ one) / ((n - 1) * (n - 2)) - 2 / (n - 2) * (one @ K @ L @ one)
    ) / (n * (n - 3))


def ref_cka_debiased(X, Y):
    K, L = _c(X) @ _c(X).T, _c(Y) @ _c(Y).T  # (translation invariant; centred for a well-conditioned reference)
    return ref_hsic_u(K, L) / math.sqrt(ref_hsic_u(K, K) * ref_hsic_u(L, L))


def ref_lr(X, Y):
    X, Y = _c(X), _c(Y)
    Q, _ = np.linalg.qr(Y)
    return np.linalg.norm(Q.T @ X) ** 2 / np.linalg.norm(X) ** 2


def ref_cca(X, Y):  # p1 <= p2, full rank
    Qx, _ = np.linalg.qr(_c(X))
    Qy, _ = np.linalg.qr(_c(Y))
    p1 = X.shape[1]
    T = Qy.T @ Qx
    return np.linalg.norm(T) ** 2 / p1, np.linalg.norm(T, "nuc") / p1


def ref_svcca_dims(X, variance=0.99):
    U, s, _ = np.linalg.svd(_c(X), full_matrices=False)
    frac = np.cumsum(s**2) / np.sum(s**2)
    d = int(np.argmax(frac >= variance)) + 1
    return U[:, :d], d


def ref_svcca(X, Y, variance=0.99, dims=None):
    Ux, dx = ref_svcca_dims(X, variance)
    Uy, dy = ref_svcca_dims(Y, variance)
    if dims is not None:
        dx, dy = dims
        Ux = np.linalg.svd(_c(X), full_matrices=False)[0][:, :dx]
        Uy = np.linalg.svd(_c(Y), full_matrices=False)[0][:, :dy]
    T = Uy.T @ Ux
    k = min(dx, dy)
    return np.linalg.norm(T) ** 2 / k, np.linalg.norm(T, "nuc") / k


def ref_all(X, Y):
    r2c, rhoc = ref_cca(X, Y)
    r2s, rhos = ref_svcca(X, Y)
    return dict(
        cka=ref_cka(X, Y),
        cka_debiased=ref_cka_debiased(X, Y),
        r2_lr=ref_lr(X, Y),
        r2_cca=r2c,
        rho_cca=rhoc,
        r2_svcca=r2s,
        rho_svcca=rhos,
    )


def related(rng, n=90, p1=8, p2=13, offset=0.0):
    """X and Y sharing a latent part, with mean >> std when offset is large."""
    Z = rng.normal(size=(n, 5))
    X = Z @ rng.normal(size=(5, p1)) + 0.7 * rng.normal(size=(n, p1)) + offset
    Y = Z @ rng.normal(size=(5, p2)) + 0.9 * rng.normal(size=(n, p2)) - offset
    return X, Y


# ---------------------------------------------------------------------------------------------------------
# Measures
# ---------------------------------------------------------------------------------------------------------
def test_debiased_reference_is_translation_invariant():
    rng = np.random.default_rng(11)
    X, Y = related(rng, n=30)
    K, L = X @ X.T, Y @ Y.T
    assert ref_hsic_u(K, L) == pytest.approx(ref_hsic_u(_c(X) @ _c(X).T, _c(Y) @ _c(Y).T), rel=1e-9)


def test_cka_of_itself_is_one():
    X = np.random.default_rng(0).normal(size=(50, 7))
    r = sim.all_measures(X, X, measures=("cka", "cka_debiased", "r2_lr", "r2_cca", "rho_cca"))
    for m in ("cka", "cka_debiased", "r2_lr", "r2_cca", "rho_cca"):
        assert r[m] == pytest.approx(1.0, abs=1e-12), m


@pytest.mark.parametrize("offset", [0.0, 1e4])
def test_agrees_with_naive_reference(offset):
    rng = np.random.default_rng(1)
    X, Y = related(rng, offset=offset)
    ref = ref_all(X, Y)
    for method in ("feature", "gram"):
        got = sim.all_measures(X, Y, method=method)
        assert got["flags"] == {}
        for m in ALL:
            assert abs(got[m] - ref[m]) <= 1e-10, (method, m, got[m], ref[m])


def test_invariances_and_a_general_linear_map():
    rng = np.random.default_rng(2)
    X, Y = related(rng, p1=10, p2=6)
    Q, _ = np.linalg.qr(rng.normal(size=(10, 10)))
    base = sim.all_measures(X, Y)
    rot = sim.all_measures(X @ Q, Y)
    scaled = sim.all_measures(3.7 * X, Y / 11.0)
    for m in ALL:
        assert rot[m] == pytest.approx(base[m], abs=1e-10), m
        assert scaled[m] == pytest.approx(base[m], abs=1e-10), m
    # an invertible but non-orthogonal map changes CKA; CCA (and LR of Y's span) is invariant to it
    A = rng.normal(size=(10, 10)) + np.diag(np.linspace(0.1, 20, 10))
    assert np.linalg.cond(A) < 1e4
    lin = sim.all_measures(X @ A, Y)
    assert abs(lin["cka"] - base["cka"]) > 0.02
    assert sim.cka(X, X @ A) < 0.99
    assert lin["r2_cca"] == pytest.approx(base["r2_cca"], abs=1e-9)
    assert sim.lr_r2(Y, X @ A) == pytest.approx(sim.lr_r2(Y, X), abs=1e-9)


def test_debiased_cka_of_independent_wide_noise():
    rng = np.random.default_rng(3)
    n, p1, p2 = 60, 1500, 900
    X, Y = rng.normal(size=(n, p1)), rng.normal(size=(n, p2))
    r = sim.all_measures(X, Y, measures=("cka", "cka_debiased"))
    predicted = math.sqrt(p1 * p2 / ((p1 + n) * (p2 + n)))
    assert r["method"] == "gram"
    assert r["cka"] == pytest.approx(predicted, abs=0.02)
    assert abs(r["cka_debiased"]) < 0.02
    assert r["cka"] > 0.9


def test_gram_form_equals_feature_form():
    rng = np.random.default_rng(4)
    X, Y = related(rng, n=40, p1=12, p2=25)
    f = sim.all_measures(X, Y, method="feature")
    g = sim.all_measures(X, Y, method="gram")
    for m in ALL:
        assert abs(f[m] - g[m]) <= 1e-10, m


def test_svcca_keeps_the_crossing_component():
    rng = np.random.default_rng(5)
    n = 200
    # X with variance shares 0.6, 0.3, 0.095, 0.005: 99% is crossed by the third component -> d_X = 3
    U, _ = np.linalg.qr(_c(rng.normal(size=(n, 4))))
    X = U * np.sqrt(np.array([0.6, 0.3, 0.095, 0.005]) * 1000)
    assert _svcca_dim(torch.tensor([0.6, 0.3, 0.095, 0.005], dtype=torch.float64), 0.99, 4) == 3
    assert ref_svcca_dims(X)[1] == 3
    Y = (U[:, 2] + 0.02 * rng.normal(size=n))[:, None]  # lives in X's third direction
    got = sim.svcca(X, Y)
    dy = ref_svcca_dims(Y)[1]
    want = ref_svcca(X, Y, dims=(3, dy))
    wrong = ref_svcca(X, Y, dims=(2, dy))  # dropping the crossing component (a common bug)
    assert got == pytest.approx(want, abs=1e-10)
    assert got[0] > 0.5 > wrong[0]


def test_rank_deficiency_gives_nan_and_flag():
    rng = np.random.default_rng(6)
    n = 20
    X, Y = rng.normal(size=(n, 4)), rng.normal(size=(n, 30))  # centred Y spans all n-1 directions
    r = sim.all_measures(X, Y)
    assert np.isfinite(r["cka"]) and np.isfinite(r["cka_debiased"])
    for m in ("r2_lr", "r2_cca", "rho_cca"):
        assert np.isnan(r[m]) and "rank_b" in r["flags"][m], m
    # LR of the wide block on the narrow one is fine
    r2 = sim.all_measures(Y, X, measures=("r2_lr", "r2_cca"))
    assert np.isfinite(r2["r2_lr"]) and "rank_a" in r2["flags"]["r2_cca"]
    # collinear columns: rank below p is handled by the cutoff, not by a singular whitening
    Xd = np.column_stack([X, X[:, 0] + X[:, 1]])
    assert sim.all_measures(Xd, X, measures=("r2_cca",))["r2_cca"] == pytest.approx(1.0, abs=1e-9)
    with pytest.raises(ValueError, match="rows"):
        sim.cka(X, Y[:-1])


def test_moments_streamed_equals_one_shot():
    rng = np.random.default_rng(7)
    n = 157
    X = rng.normal(size=(n, 6)) * 3 + 5e3  # mean >> std: the pilot shift keeps the sums exact
    Y = rng.normal(size=(n, 9)) + X[:, :1] - 2e3
    H = rng.normal(size=(n, 5))
    mom = sim.Moments({"x": 6, "h": {"y": 9, "z": 5}}, cross=[("x", "h")])
    for i in range(0, n, 40):
        mom.update({"x": X[i : i + 40], "h": np.hstack([Y, H])[i : i + 40]})
    Xc, Yc, Hc = _c(X), _c(Y), _c(H)
    a, b, h = (Xc**2).sum(1), (Yc**2).sum(1), (Hc**2).sum(1)
    np.testing.assert_allclose(mom.cross_cov("x", "y").numpy(), Xc.T @ Yc, rtol=1e-10, atol=1e-8)
    np.testing.assert_allclose(mom.cross_cov("z", "x").numpy(), Hc.T @ Xc, rtol=1e-10, atol=1e-8)
    np.testing.assert_allclose(mom.cov("y").numpy(), Yc.T @ Yc, rtol=1e-10, atol=1e-8)
    assert mom.ab("x", "y") == pytest.approx(a @ b, rel=1e-10)
    assert mom.ab("z", "x") == pytest.approx(h @ a, rel=1e-10)
    assert mom.aa("x") == pytest.approx(a @ a, rel=1e-10)
    assert mom.trace("z") == pytest.approx(h.sum(), rel=1e-10)
    np.testing.assert_allclose(mom.mean("x").numpy(), X.mean(0), rtol=1e-13)
    with pytest.raises(ValueError, match="no cross-product"):
        mom.cross_cov("y", "z")
    # centred in place: the same values, no second copy; the debiased sums must be read before
    before = {k: mom.cross_cov(*k).clone() for k in (("x", "y"), ("z", "x"))}
    mom.centre_cross()
    for k, v in before.items():
        assert torch.equal(mom.cross_cov(*k), v)
    with pytest.raises(ValueError, match="before centre_cross"):
        mom.ab("x", "y")
    with pytest.raises(ValueError, match="centred"):
        mom.update({"x": X[:2], "h": np.hstack([Y, H])[:2]})
    mom.release("y")
    with pytest.raises(KeyError):
        mom.cov("y")


def test_block_forms_follow_the_cap_the_clips_and_the_budget():
    """Feature form: at most max_features columns, fewer than n, and its p x p float64 self-covariance (24 bytes
    per entry at its peak) within memory_mb; every other block in Gram form."""
    from deepfeat.similarity.feature_form import SELF_BYTES, block_forms

    cfg = {"max_features": 100, "memory_mb": SELF_BYTES * 50 * 50 / 1e6}
    got = block_forms({"a": 10, "b": 50, "c": 51, "d": 101, "e": 60}, 55, cfg)
    assert got == {"a": "feature", "b": "feature", "c": "gram", "d": "gram", "e": "gram"}
    assert block_forms({"c": 51}, 55, {**cfg, "memory_mb": 1})["c"] == "feature"
    assert block_forms({"c": 51}, 52, {**cfg, "memory_mb": 1})["c"] == "feature"
    assert block_forms({"c": 51}, 51, {**cfg, "memory_mb": 1})["c"] == "gram"


def test_bootstrap_influence_matches_finite_reweighting():
    """psi_i is the derivative of CKA when row i's weight changes: check against a weighted recomputation."""
    rng = np.random.default_rng(8)
    X, Y = related(rng, n=50, p1=5, p2=7)
    n = len(X)
    Xc, Yc = _c(X), _c(Y)
    Cxy, Cxx, Cyy = Xc.T @ Yc, Xc.T @ Xc, Yc.T @ Yc
    sx = _Spec(n=n, p=5, trace=0, fro2=float((Cxx**2).sum()), aa=0)
    sy = _Spec(n=n, p=7, trace=0, fro2=float((Cyy**2).sum()), aa=0)
    r = ((Xc @ Cxy) * Yc).sum(1)
    qx, qy = ((Xc @ Cxx) * Xc).sum(1), ((Yc @ Cyy) * Yc).sum(1)
    c0 = ref_cka(X, Y)
    psi = _cka_psi(r, qx, qy, sx, sy, c0, n)
    assert abs(psi.sum()) < 1e-8

    def wcka(w):
        w = w / w.sum()
        mx, my = w @ X, w @ Y
        A, B = (X - mx) * np.sqrt(w)[:, None], (Y - my) * np.sqrt(w)[:, None]
        return np.linalg.norm(A.T @ B) ** 2 / (np.linalg.norm(A.T @ A) * np.linalg.norm(B.T @ B))

    eps = 1e-6
    for i in (0, 17, 49):
        w = np.ones(n)
        w[i] += eps
        assert (wcka(w) - c0) / eps * n == pytest.approx(psi[i] * (1 + 0), rel=1e-3, abs=1e-6)


def test_linearised_bootstrap_interval_matches_a_naive_bootstrap():
    rng = np.random.default_rng(12)
    n = 300
    X, Y = related(rng, n=n, p1=6, p2=9)
    Xc, Yc = _c(X), _c(Y)
    Cxy, Cxx, Cyy = Xc.T @ Yc, Xc.T @ Xc, Yc.T @ Yc
    sx = _Spec(n=n, p=6, trace=0, fro2=float((Cxx**2).sum()), aa=0)
    sy = _Spec(n=n, p=9, trace=0, fro2=float((Cyy**2).sum()), aa=0)
    c0 = ref_cka(X, Y)
    psi = _cka_psi(((Xc @ Cxy) * Yc).sum(1), ((Xc @ Cxx) * Xc).sum(1), ((Yc @ Cyy) * Yc).sum(1), sx, sy, c0, n)
    lo, hi = _bootstrap_ci(np.array([c0]), psi[:, None], 2000, 0, 0)
    naive = [ref_cka(X[i], Y[i]) for i in rng.integers(0, n, (300, n))]
    nlo, nhi = np.quantile(naive, [0.025, 0.975])
    assert lo[0] < c0 < hi[0]
    assert abs(lo[0] - nlo) < 0.2 * (nhi - nlo) and abs(hi[0] - nhi) < 0.2 * (nhi - nlo)


def test_channel_cka_streamed_equals_in_memory():
    rng = np.random.default_rng(9)
    A = rng.normal(size=(33, 4, 3, 5))
    A[:, 1] = A[:, 0] * 2 + 0.1 * A[:, 1]  # channel 1 ~ channel 0
    C = sim.channel_cka(A)
    assert C.shape == (4, 4)
    for c in range(4):
        for d in range(4):
            assert C[c, d] == pytest.approx(ref_cka(A[:, c].reshape(33, -1), A[:, d].reshape(33, -1)), abs=1e-12)
    assert C[0, 1] > 0.9
    At = torch.as_tensor(A.reshape(33, 4, -1)) - torch.as_tensor(A.reshape(33, 4, -1)).mean(0)
    F, a, r = _channel_stats(lambda idx: {"x": At[torch.as_tensor(idx)]}, 33, 7, True)["x"]
    np.testing.assert_allclose(_channel_measures(F, a, 33, ("cka",))["cka"], C, atol=1e-12)
    K = torch.einsum("icp,jcp->cij", At, At)
    np.testing.assert_allclose(r.numpy(), torch.einsum("cij,dij->cdi", K, K).numpy(), rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------------------------------------------------
# Entry points on small synthetic files
# ---------------------------------------------------------------------------------------------------------
HC = {
    "rms": ("RMS", 6),
    "mean_power_frequency": ("Mean Power (frequency)", 9),
    "random": ("Random", 5),
    "dwt_db10_horizontal": ("DWT db10 (horizontal)", 50),
}
LAYERS = {"conv1": 48, "pool1": 12, "conv3": 5}  # conv1 and the DWT feature are wider than n_train -> Gram form


SHAPES = {"conv1": [6, 8], "pool1": [3, 4], "conv3": [5, 1, 1]}  # conv1, pool1 averaged over channels
DEEP = {"layers": list(LAYERS)}  # the deep settings of the fake deep-feature files


def write_deep(path, n, arch="Regular", seed=1, task="family", shift=0.0):
    rng = np.random.default_rng(seed + int(shift * 10))
    out = {}
    with write_h5(path, "deep") as f:
        f.attrs.update(arch=arch, seed=seed, task=task, layers=json.dumps(list(LAYERS)), point="raw")
        for s, state in enumerate(("trained", "untrained")):
            g = f.create_group(state)
            base = rng.normal(size=(n, 3))
            for a, d in LAYERS.items():
                x = base @ rng.normal(size=(3, d)) + (0.5 + s) * rng.normal(size=(n, d)) + shift
                g.create_dataset(a, data=x.astype(np.float32)).attrs["shape"] = json.dumps(SHAPES[a])
                out[state, a] = x.astype(np.float32)
    return out


def write_hc(path, n, seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    with write_h5(path, "handcrafted") as f:
        g = f.create_group("features")
        for key, (name, d) in HC.items():
            x = rng.normal(size=(n, d)) * rng.uniform(0.1, 100, d) + rng.uniform(-50, 50, d)
            if key == "rms":
                x[:, 2] = 3.0  # a constant column
            ds = g.create_dataset(key, data=x.astype(np.float32))
            ds.attrs["name"] = name
            out[name] = x.astype(np.float32)
    return out


def zscore(x, train):
    mu, sd = x[train].astype(np.float64).mean(0), x[train].astype(np.float64).std(0)
    z = (x - mu) / np.where(sd > 0, sd, 1)
    z[:, sd == 0] = 0
    return z


def _check_table(df):
    assert list(df.columns) == SIMILARITY_COLUMNS
    assert df["measure"].isin(sim.MEASURES).all()
    assert (df["flag"].fillna("") != "").eq(df["value"].isna()).all()


@pytest.fixture
def files(tmp_path):
    n = 60
    mel, meta = write_fake_mel(tmp_path / "mel.h5", n=n, n_mels=16, n_frames=16)
    train = meta["split"].to_numpy() == 0
    deep = write_deep(tmp_path / "deep.h5", n)
    hc = write_hc(tmp_path / "handcrafted.h5", n)
    return tmp_path, train, deep, hc


def run_deep(tmp, params, log=None, deep="deep.h5", moments=None, table="deep.csv"):
    """The similarity_deep job on the fixture's exported deep features (``params``: the similarity settings)."""
    return sim.similarity_deep(
        model=None,
        deep=tmp / deep,
        features=tmp / "handcrafted.h5",
        mel=tmp / "mel.h5",
        table=tmp / table,
        settings={"similarity": params, "deep": DEEP},
        dataset="toy",
        moments=moments,
        log=log,
    )


def run_channels(tmp, params, log=None, model="model.pt", table="channels.csv"):
    """The similarity_channels job on the fixture's mel.h5 (activations at the raw point)."""
    return sim.similarity_channels(
        model=tmp / model,
        mel=tmp / "mel.h5",
        table=tmp / table,
        settings={"similarity": params, "deep": {"point": "raw"}},
        dataset=tmp.name,
        log=log,
    )


@pytest.mark.parametrize("memory_mb,chunk", [(4000, 1024), (0.004, 7)])
def test_similarity_deep_table(files, memory_mb, chunk):
    """The tiny budget (4 kB) splits sources into many passes and makes the Gram cache evict."""
    tmp, train, deep, hc = files
    params = dict(bootstrap=40, seed=3, device="cpu", memory_mb=memory_mb, chunk_size=chunk)
    df = run_deep(tmp, params, get_logger(None, "test_sim"))
    _check_table(df)
    n_hc, n_l = len(HC), len(LAYERS)
    per = {"deep_vs_handcrafted": 2 * n_l * n_hc, "trained_vs_untrained": n_l, "layer_vs_layer": 2 * 3}
    nd = len(config.default("similarity", "measures"))  # the in-sample measures and r2_lr_test
    assert df.groupby("comparison").size().to_dict() == {k: v * nd for k, v in per.items()}
    assert (df["n"] == train.sum()).all() and (df["dataset"] == "toy").all() and (df["task"] == "family").all()
    cka = df[df["measure"] == "cka"]
    assert cka["ci_low"].notna().all() and (cka["ci_low"] <= cka["value"] + 1e-12).all()
    assert (cka["value"] <= cka["ci_high"] + 1e-12).all() and (cka["ci_high"] - cka["ci_low"] > 0).all()
    assert df.loc[df["measure"] != "cka", "ci_low"].isna().all()
    assert set(df.loc[df["layer_a"] == "conv1", "method"]) == {"gram"}
    assert set(df.loc[(df["layer_a"] == "conv3") & (df["feature_b"] == "RMS"), "method"]) == {"feature"}
    # every value equals the in-memory computation on the same (z-scored) arrays
    # (the held-out r2_lr_test has its own tests: tests/test_similarity_stats.py)
    for _, row in df[~df["measure"].str.endswith("_test")].sample(40, random_state=0).iterrows():
        X = deep[row["trained_a"], row["layer_a"]][train]
        if row["comparison"] == "deep_vs_handcrafted":
            Y = zscore(hc[row["feature_b"]], train)[train]
        else:
            Y = deep[row["trained_b"], row["layer_b"]][train]
        want = sim.all_measures(X, Y, measures=(row["measure"],))[row["measure"]]
        if np.isnan(want):
            assert np.isnan(row["value"]) and row["flag"]
        else:
            assert abs(row["value"] - want) < 1e-9, (row.to_dict(), want)
    # rank >= n-1 for the wide blocks: LR/CCA of conv1 are NaN with a flag, CKA is not
    c1 = df[(df["layer_a"] == "conv1") & (df["comparison"] == "deep_vs_handcrafted")]
    assert c1.loc[c1["measure"] == "r2_cca", "value"].isna().all()
    assert c1.loc[c1["measure"] == "cka", "value"].notna().all()


def test_similarity_deep_cka_only_skips_eigendecompositions(files):
    tmp, train, deep, hc = files
    full = run_deep(tmp, {"device": "cpu", "bootstrap": 5})
    only = run_deep(tmp, {"device": "cpu", "bootstrap": 5, "measures": ["cka", "cka_debiased"]})
    assert set(only["measure"]) == {"cka", "cka_debiased"}
    merged = only.merge(full, on=["comparison", "layer_a", "trained_a", "layer_b", "trained_b", "feature_b", "measure"])
    assert len(merged) == len(only)
    np.testing.assert_allclose(merged["value_x"], merged["value_y"], rtol=0, atol=1e-10)
    np.testing.assert_allclose(merged["ci_low_x"], merged["ci_low_y"], rtol=0, atol=1e-10)
    # CKA alone: no row-norm sums are accumulated, the values stay the same
    cka = run_deep(tmp, {"device": "cpu", "bootstrap": 5, "measures": ["cka"]})
    m2 = cka.merge(full, on=["comparison", "layer_a", "trained_a", "layer_b", "trained_b", "feature_b", "measure"])
    assert len(m2) == len(cka) and set(cka["measure"]) == {"cka"}
    np.testing.assert_allclose(m2["value_x"], m2["value_y"], rtol=0, atol=1e-10)
    np.testing.assert_allclose(m2["ci_high_x"], m2["ci_high_y"], rtol=0, atol=1e-10)


def test_similarity_deep_rejects_misaligned_rows(files):
    tmp, train, deep, hc = files
    write_deep(tmp / "short.h5", 50)
    with pytest.raises(ValueError, match="short.h5.*50 rows"):
        run_deep(tmp, {"device": "cpu"}, deep="short.h5")
    # a deep file whose copy of the clip table lists the clips in another order
    from conftest import TASKS, make_meta

    from deepfeat.formats.cliptable import write_clip_table

    write_deep(tmp / "other.h5", 60)
    import h5py

    with h5py.File(tmp / "other.h5", "a") as f:
        write_clip_table(f, make_meta(60).iloc[::-1], TASKS, "family")
    with pytest.raises(ValueError, match="other.h5: its clip table does not match"):
        run_deep(tmp, {"device": "cpu"}, deep="other.h5")


def test_similarity_cross_table(files):
    tmp, train, _, _ = files
    paths = []
    for arch in ("Regular", "Dilated"):
        for seed in (1, 10):
            p = tmp / f"{arch}{seed}.h5"
            write_deep(p, 60, arch=arch, seed=seed, shift=0.3 if arch == "Dilated" else 0.0)
            paths.append(p)
    settings = {"similarity": {"device": "cpu", "bootstrap": 10, "measures": ["cka", "r2_svcca"]}, "deep": DEEP}
    df = sim.similarity_cross(
        models=[], deep=paths, mel=tmp / "mel.h5", table=tmp / "cross.csv", settings=settings, dataset="toy"
    )
    _check_table(df)
    n_l = len(LAYERS)
    assert df.groupby("comparison").size().to_dict() == {
        "seed_vs_seed": 2 * 2 * n_l * 2,
        "arch_vs_arch": 2 * 2 * n_l * 2,
    }
    s = df[df["comparison"] == "seed_vs_seed"]
    assert (s["arch_a"] == s["arch_b"]).all() and (s["seed_a"] < s["seed_b"]).all()
    a = df[df["comparison"] == "arch_vs_arch"]
    assert (a["seed_a"] == a["seed_b"]).all() and (a["layer_a"] == a["layer_b"]).all()
    assert set(a["arch_a"]) == {"Regular"} and set(a["arch_b"]) == {"Dilated"}
    assert df["value"].between(0, 1).all()


def fake_network(monkeypatch, tmp, net, acts) -> tuple[float, float]:
    """Make every model file load as ``net`` (``acts(net, x, layers, point)``: its activations), trained on the
    fixture's mel.h5; returns that file's (train_mean, train_std)."""
    from deepfeat.nets import features

    with open_h5(tmp / "mel.h5", "mel") as f:
        mean, std = float(f.attrs["train_mean"]), float(f.attrs["train_std"])
        shape = [1, *f["mel"].shape[1:]]
    meta = {"arch": "Regular", "seed": 4, "task": "family", "train_mean": mean, "train_std": std, "input_shape": shape}
    monkeypatch.setattr(features, "load_model", lambda path, which="trained", device=None: (net, meta))
    monkeypatch.setattr(features, "layer_activations", acts)
    return mean, std


def test_similarity_channels_table(files, monkeypatch):
    tmp, train, _, _ = files
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(1, 3, 3)
    pool = torch.nn.MaxPool2d(2)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.pool = conv, pool

    def fake_acts(model, x, layers, point="raw"):
        with torch.no_grad():
            c = model.conv(x)
            return {"conv1": c, "pool1": model.pool(c)}

    mean, std = fake_network(monkeypatch, tmp, Net(), fake_acts)
    df = run_channels(tmp, {"device": "cpu", "bootstrap": 20, "memory_mb": 1}, get_logger(None, "test_sim"))
    _check_table(df)
    assert set(df["comparison"]) == {"channel_vs_channel"} and set(df["dataset"]) == {tmp.name}
    assert len(df) == 2 * 2 * 3 * 2  # states x layers x channel pairs x (cka, cka_debiased)
    assert set(df["layer_a"]) == {"conv1/ch0", "conv1/ch1", "pool1/ch0", "pool1/ch1"}
    # equals channel_cka on the activations of the training clips
    with open_h5(tmp / "mel.h5", "mel") as f:
        mel = f["mel"][:][train]
    with torch.no_grad():
        acts = fake_acts(Net(), (torch.as_tensor(mel)[:, None] - mean) / std, ["conv1"])["conv1"]
    C = sim.channel_cka(acts.double())
    row = df[(df["layer_a"] == "conv1/ch0") & (df["layer_b"] == "conv1/ch2") & (df["measure"] == "cka")].iloc[0]
    assert row["value"] == pytest.approx(C[0, 2], abs=1e-9)
    assert row["ci_low"] <= row["value"] <= row["ci_high"]


# ---------------------------------------------------------------------------------------------------------
# Hand-crafted self terms computed once per dataset (handcrafted_moments.h5)
# ---------------------------------------------------------------------------------------------------------
class _Lines(list):
    """A logger stand-in collecting the messages (to see which path the engine took)."""

    def info(self, msg):
        self.append(msg)

    def __bool__(self):  # an empty collector is still a logger
        return True


def _build_moments(tmp, params):
    path = tmp / "handcrafted_moments.h5"
    sim.handcrafted_moments(
        features=tmp / "handcrafted.h5",
        mel=tmp / "mel.h5",
        moments=path,
        settings={"similarity": params},
        log=get_logger(None, "test_sim"),
    )
    return path


def _same_tables(a, b, tol):
    keys = ["comparison", "layer_a", "trained_a", "layer_b", "trained_b", "feature_b", "measure"]
    m = a.merge(b, on=keys, suffixes=("_a", "_b"))
    assert len(m) == len(a) == len(b)
    for col in ("value", "ci_low", "ci_high"):
        x, y = m[f"{col}_a"].to_numpy(), m[f"{col}_b"].to_numpy()
        assert np.array_equal(np.isnan(x), np.isnan(y)), col
        ok = ~np.isnan(x)
        assert np.abs(x[ok] - y[ok]).max() <= tol, (col, np.abs(x[ok] - y[ok]).max())
    for col in ("flag", "method", "n", "p_a", "p_b"):
        assert (m[f"{col}_a"].fillna("").astype(str) == m[f"{col}_b"].fillna("").astype(str)).all(), col


@pytest.mark.parametrize("memory_mb,gram_max_clips", [(4000, 10000), (0.004, 10000), (4000, 20)])
def test_cached_self_terms_give_the_uncached_table(files, memory_mb, gram_max_clips):
    """Gram space (default budget) and pair-by-pair factors (tiny budget); a Gram subset smaller than the
    training set (20 of 42 clips) makes the cache stream the feature-form covariances separately."""
    tmp, train, _, _ = files
    params = dict(bootstrap=30, seed=5, device="cpu", memory_mb=memory_mb, gram_max_clips=gram_max_clips, chunk_size=16)
    path = _build_moments(tmp, params)
    lines = _Lines()
    cached = run_deep(tmp, params, lines, moments=path)
    uncached = run_deep(tmp, params, get_logger(None, "test_sim"))
    assert any("self terms read from" in s for s in lines)
    assert not any("z-scored" in s for s in lines)  # the hand-crafted columns were not re-standardised
    assert any(("Gram space" in s) == (memory_mb > 1) for s in lines if s.startswith("Gram form"))
    _same_tables(cached, uncached, 1e-10)
    if gram_max_clips < train.sum():
        g = cached[cached["method"] == "gram"]
        assert len(g) and (g["n"] == gram_max_clips).all()


@pytest.mark.parametrize("gram_max_clips", [30, 10000])
def test_reading_job_recomputes_the_writers_factors_bit_for_bit(files, monkeypatch, gram_max_clips):
    """A feature narrower than the Gram subset is stored as (subset mean, V): the B = (y_sub - mean) V that
    engine_cache recomputes from handcrafted.h5 is exactly the B the writer computed (and its q came from)."""
    from deepfeat.formats.files import open_h5
    from deepfeat.similarity import cache
    from deepfeat.similarity.sources import handcrafted_source

    tmp, *_ = files
    made = []
    real = cache._coords
    monkeypatch.setattr(cache, "_coords", lambda X, V: made.append(real(X, V)) or made[-1])
    params = {"device": "cpu", "gram_max_clips": gram_max_clips, "seed": 2, "chunk_size": 7}
    path = _build_moments(tmp, params)
    monkeypatch.setattr(cache, "_coords", real)
    hm = sim.read_handcrafted_moments(path)
    narrow = [k for k in hm.keys if k in hm.gram_V]
    assert narrow and len(made) == len(narrow)  # one product per narrow feature, in file order
    cfg = canonical({**config.defaults("similarity"), **params})
    with open_h5(tmp / "handcrafted.h5", "handcrafted") as fh:
        hc, _ = handcrafted_source(fh, tmp / "handcrafted.h5", len(hm.clip_ids))
        ec = cache.engine_cache(hm, hc, cfg, "cpu", "test")
        for k, B in zip(narrow, made):
            assert torch.equal(ec.factor[f"hc:{k}"].B, B), k


def test_moments_file_holds_the_self_terms(files):
    tmp, train, _, hc = files
    n = int(train.sum())
    path = _build_moments(tmp, {"device": "cpu", "gram_max_clips": 30, "seed": 2})
    hm = sim.read_handcrafted_moments(path)
    assert hm.n == n and hm.m == 30 and hm.settings == {"max_features": 12000, "gram_max_clips": 30, "seed": 2}
    assert set(hm.gram) == set(hm.keys) and set(hm.feature) == {"rms", "mean_power_frequency", "random"}
    sub = np.flatnonzero(train)[seeded_subset(n, 30, 2, GRAM_STREAM)]
    assert np.array_equal(hm.sub_rows, sub)
    for key, (name, p) in HC.items():
        z = zscore(hc[name].astype(np.float64), train)
        np.testing.assert_allclose(hm.shift[key], hc[name][train].astype(np.float64).mean(0), rtol=1e-12)
        y = z[train] - z[train].mean(0)
        C = y.T @ y
        if key in hm.feature:
            f = hm.feature[key]
            np.testing.assert_allclose(
                f["lam"], np.sort(np.clip(np.linalg.eigvalsh(C), 0, None))[::-1], rtol=1e-10, atol=1e-9
            )
            assert f["fro2"] == pytest.approx((C * C).sum(), rel=1e-12)
            assert f["aa"] == pytest.approx((((y * y).sum(1)) ** 2).sum(), rel=1e-12)
            np.testing.assert_allclose(f["q"], ((y @ C) * y).sum(1), rtol=1e-10)
            V = hm.feature_V[key]
            np.testing.assert_allclose(V.T @ C @ V, np.diag(f["lam"]), atol=1e-9 * f["lam"][0])
        ys = z[sub] - z[sub].mean(0)
        K = ys @ ys.T
        g = hm.gram[key]
        assert (key in hm.gram_B) == (p > 30) and (key in hm.gram_V) == (p <= 30)
        if key in hm.gram_B:
            B = hm.gram_B[key]
        else:  # narrower than the subset: B is recomputed by the reading job from the subset's mean and V
            np.testing.assert_allclose(g["mean"], z[sub].mean(0), rtol=1e-10, atol=1e-12)
            B = (z[sub] - g["mean"]) @ hm.gram_V[key]
        np.testing.assert_allclose(B @ B.T, K, rtol=1e-9, atol=1e-9 * np.abs(K).max())
        if p >= 30:  # wider than the subset: the Gram itself is kept too
            np.testing.assert_allclose(hm.gram_K[key], K, rtol=1e-10, atol=1e-10 * np.abs(K).max())
        np.testing.assert_allclose(g["a"], np.diag(K), rtol=1e-10)
        np.testing.assert_allclose(g["q"], (K * K).sum(1), rtol=1e-9)
        assert g["fro2"] == pytest.approx((K * K).sum(), rel=1e-12)


def test_stale_moments_are_refused(files):
    tmp, *_ = files
    path = _build_moments(tmp, {"device": "cpu"})
    with pytest.raises(ValueError, match="handcrafted_moments.h5: built with other similarity settings"):
        run_deep(tmp, {"device": "cpu", "seed": 9}, moments=path)
    write_hc(tmp / "handcrafted.h5", 60, seed=1)  # same features, other values: still consistent widths ...
    import h5py

    with h5py.File(tmp / "handcrafted.h5", "a") as f:  # ... but one more feature is a different store
        f["features"].create_dataset("extra", data=np.ones((60, 2), np.float32))
    with pytest.raises(ValueError, match="its features differ"):
        run_deep(tmp, {"device": "cpu"}, moments=path)


def test_fast_singular_values():
    rng = np.random.default_rng(13)
    W = torch.as_tensor(rng.normal(size=(40, 12)))
    np.testing.assert_allclose(_svals(W).numpy(), torch.linalg.svdvals(W).numpy(), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(_svals(W.T).numpy(), torch.linalg.svdvals(W).numpy(), rtol=1e-12, atol=1e-13)
    Wd = W.clone()
    Wd[:, 3] = 1e-9 * Wd[:, 0] + Wd[:, 1]  # nearly dependent: singular value ~1e-9, the SVD fallback keeps it
    s = _svals(Wd)
    np.testing.assert_allclose(s.numpy(), torch.linalg.svdvals(Wd).numpy(), rtol=1e-12, atol=1e-15)
    assert 0 < float(s[-1]) < 1e-8


def test_similarity_channels_subset(files, monkeypatch):
    """channel_max_clips < n_train: a seeded subset, n says so; in-memory and streamed (tiny budget) agree."""
    tmp, train, _, _ = files
    torch.manual_seed(1)
    conv = torch.nn.Conv2d(1, 4, 3)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = conv

    def fake_acts(model, x, layers, point="raw"):
        with torch.no_grad():
            return {"conv1": model.conv(x), "pool1": torch.nn.functional.max_pool2d(model.conv(x), 2)}

    mean, std = fake_network(monkeypatch, tmp, Net(), fake_acts)
    base = {"device": "cpu", "bootstrap": 20, "channel_max_clips": 25, "seed": 3}
    lines = _Lines()
    df = run_channels(tmp, base, lines, model="m.pt")
    assert (df["n"] == 25).all() and any("on 25 of 42 training clips (seeded subset" in s for s in lines)
    streamed = run_channels(tmp, {**base, "memory_mb": 0.01}, model="m.pt")
    np.testing.assert_allclose(streamed["value"], df["value"], atol=1e-12)
    np.testing.assert_allclose(streamed["ci_low"], df["ci_low"], atol=1e-12, equal_nan=True)
    # the values are channel_cka on the seeded subset of the training clips
    rows_train = np.flatnonzero(train)
    rows = np.sort(rows_train[np.random.default_rng([3, 104729]).choice(len(rows_train), 25, replace=False)])
    with open_h5(tmp / "mel.h5", "mel") as f:
        mel = f["mel"][:][rows]
    with torch.no_grad():
        C = sim.channel_cka(conv((torch.as_tensor(mel)[:, None] - mean) / std).double())
    got = df[(df["layer_a"] == "conv1/ch1") & (df["layer_b"] == "conv1/ch3") & (df["measure"] == "cka")]
    assert got["value"].iloc[0] == pytest.approx(C[1, 3], abs=1e-9)
    other = run_channels(tmp, {**base, "seed": 4}, model="m.pt")
    assert np.abs(other["value"].to_numpy() - df["value"].to_numpy()).max() > 1e-6


# ---------------------------------------------------------------------------------------------------------
# Settings, declarations and written outputs of the jobs
# ---------------------------------------------------------------------------------------------------------
def test_job_declarations():
    """What each job reads (its results depend on it: a change reruns it) and tunes (speed, memory, device)."""
    result = ("measures", "svcca_variance", "max_features", "gram_max_clips", "bootstrap", "seed", "rank_rtol")
    tuning = {"similarity": ("device", "chunk_size", "memory_mb")}
    assert sim.handcrafted_moments.job.reads == {"similarity": sim.MOMENT_SETTINGS}
    assert sim.handcrafted_moments.job.tunes == tuning
    for fn in (sim.similarity_deep, sim.similarity_cross):  # the deep layers are computed from the model file
        assert fn.job.reads == {
            "similarity": result,
            "deep": ("layers", "point", "average_channels"),
            "stats": ("seed", "resamples", "level", "chance_permutations", "chance_max_clips"),
        }
        assert fn.job.tunes == {**tuning, "deep": ("batch_size",)}
    assert sim.similarity_channels.job.reads == {
        "similarity": ("measures", "channel_max_clips", "bootstrap", "seed"),
        "deep": ("point",),
    }
    assert sim.similarity_channels.job.tunes == {"similarity": ("device", "memory_mb")}


def test_unknown_or_invalid_settings_are_rejected(files):
    tmp, *_ = files
    with pytest.raises(config.ConfigError, match=r"similarity\.bootstrapp: unknown key"):
        run_deep(tmp, {"device": "cpu", "bootstrapp": 3})
    with pytest.raises(config.ConfigError, match=r"similarity\.measures"):
        run_deep(tmp, {"device": "cpu", "measures": ["cka", "no_such_measure"]})
    with pytest.raises(config.ConfigError, match=r"deep\.pointt: unknown key"):
        sim.similarity_channels(
            model=tmp / "m.pt",
            mel=tmp / "mel.h5",
            table=tmp / "c.csv",
            dataset="toy",
            settings={"similarity": {"device": "cpu"}, "deep": {"pointt": "raw"}},
        )
    with pytest.raises(config.ConfigError, match=r"similarity\.gram_max_clips"):
        _build_moments(tmp, {"device": "cpu", "gram_max_clips": 3})
    X = np.random.default_rng(0).normal(size=(20, 3))
    with pytest.raises(config.ConfigError, match=r"similarity\.svcca_variance"):
        sim.all_measures(X, X, svcca_variance=0)
    with pytest.raises(config.ConfigError, match=r"similarity\.measures"):
        sim.all_measures(X, X, measures=("cka", "nope"))
    assert not (tmp / "deep.csv").exists()


def test_single_pair_defaults_are_the_schema_defaults():
    rng = np.random.default_rng(14)
    X, Y = related(rng, n=60, p1=7, p2=30)
    keys = ("measures", "svcca_variance", "max_features", "rank_rtol")
    explicit = sim.all_measures(X, Y, **{k: config.default("similarity", k) for k in keys})
    # the default's held-out measures need a test split: left out of a single pair's defaults, NaN when asked
    assert explicit["flags"].pop("r2_lr_test") == "no_test_clips" and np.isnan(explicit.pop("r2_lr_test"))
    assert sim.all_measures(X, Y) == explicit
    assert list(explicit)[: len(ALL)] == list(ALL)
    assert sim.svcca(X, Y) == sim.svcca(X, Y, variance=config.default("similarity", "svcca_variance"))


def test_measures_are_reported_once_in_the_canonical_order(files):
    tmp, *_ = files
    df = run_deep(tmp, {"device": "cpu", "bootstrap": 0, "measures": ["rho_cca", "cka", "rho_cca"]})
    assert list(df["measure"][:4]) == ["cka", "rho_cca", "cka", "rho_cca"]
    assert len(df) == 2 * len(df.drop_duplicates(["comparison", "layer_a", "trained_a", "layer_b", "feature_b"]))


def test_jobs_write_what_they_return(files):
    tmp, *_ = files
    params = {"device": "cpu", "bootstrap": 3, "measures": ["cka", "r2_lr"]}
    path = _build_moments(tmp, params)
    hm = sim.read_handcrafted_moments(path)
    assert hm.keys == sorted(HC) and hm.names["random"] == "Random"  # file order
    assert set(hm.gram_B) | set(hm.gram_V) == set(HC) and not set(hm.gram_B) & set(hm.gram_V)
    with h5py.File(path) as f:  # the subset is every training clip: gram/V is feature/V, stored once
        linked = [k for k in hm.gram_V if k in hm.feature]
        assert linked and all(f[f"features/{k}/gram/V"] == f[f"features/{k}/feature/V"] for k in linked)
    for df, table in (
        (run_deep(tmp, params, moments=path), "deep.csv"),
        (
            sim.similarity_cross(
                models=[],
                deep=[tmp / "deep.h5"],
                mel=tmp / "mel.h5",
                table=tmp / "cross.csv",
                settings={"similarity": params, "deep": DEEP},
                dataset="toy",
            ),
            "cross.csv",
        ),
    ):
        back = read_similarity(tmp / table, dataset="toy")
        assert len(back) == len(df) and list(back.columns) == SIMILARITY_COLUMNS
        np.testing.assert_array_equal(back["value"].to_numpy(), df["value"].to_numpy(dtype=np.float64))
    assert len(read_similarity(tmp / "cross.csv")) == 0  # one model: nothing to compare, an empty table


def test_arch_order_is_the_networks_order():
    from deepfeat.nets.models import ARCHS
    from deepfeat.similarity.comparisons import ARCH_ORDER

    assert ARCH_ORDER == tuple(ARCHS)


# ---------------------------------------------------------------------------------------------------------
# Deep features computed from the model file equal the exported ones (issue 15, item 3)
# ---------------------------------------------------------------------------------------------------------
ON_DEMAND = {"layers": ["conv1", "pool1", "conv2", "pool2", "conv3"], "average_channels": ["conv1", "pool1", "pool2"]}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """mel.h5 (60 clips of 64 x 64, 42 training clips), handcrafted.h5 and three model files (Regular seeds 1, 2;
    1dF seed 1: random initial and 'trained' weights) with their exported deep-feature files. At this size conv3
    (30 columns) and pool2 (averaged, 25) are in feature form, the other layers in Gram form."""
    from deepfeat.formats.models import save_model
    from deepfeat.nets import extract_features
    from deepfeat.nets.models import build_model, cpu_state

    d = tmp_path_factory.mktemp("on_demand")
    write_fake_mel(d / "mel.h5", n=60, n_mels=64, n_frames=64)
    write_hc(d / "handcrafted.h5", 60)
    with open_h5(d / "mel.h5", "mel") as f:
        stats = {k: float(f.attrs[k]) for k in ("train_mean", "train_std")}
    out = {}
    for arch, seed in (("Regular", 1), ("Regular", 2), ("1dF", 1)):
        torch.manual_seed(seed)
        init, final = (cpu_state(build_model(arch, 64, 64, 3)) for _ in range(2))
        meta = {"arch": arch, "seed": seed, "task": "family", "input_shape": [1, 64, 64], "n_outputs": 3, **stats}
        model = d / f"{arch}{seed}.pt"
        save_model(model, meta, init, final)
        deep = d / f"{arch}{seed}.h5"
        export = {"store": ON_DEMAND["layers"], "average_channels": ON_DEMAND["average_channels"], "batch_size": 16}
        extract_features(model=model, mel=d / "mel.h5", deep=deep, settings={"deep": export})
        out[arch, seed] = (model, deep)
    return d, out


def _bytes_equal(a, b):
    assert a.read_bytes() == b.read_bytes(), (a, b)


@pytest.mark.parametrize(
    "params",
    [
        {},  # every Gram at once (Gram space), one feature-form pass
        {"memory_mb": 0.5, "chunk_size": 7},  # Gram form block by block, several passes, chunks cut by the budget
        {"gram_max_clips": 20, "measures": ["cka", "cka_debiased", "r2_svcca"]},  # seeded Gram subset
    ],
)
def test_on_demand_features_equal_the_exported_ones(models, params, tmp_path):
    """Every similarity job computed from the model files (on demand) equals, bit for bit, the same job on the
    deep-feature files that extract_features exported for those models; nothing else is written."""
    d, files = models
    settings = {"similarity": {"device": "cpu", "bootstrap": 8, "seed": 2, **params}, "deep": ON_DEMAND}
    common = dict(mel=d / "mel.h5", settings=settings, dataset="toy")
    lines = _Lines()
    model, deep = files["Regular", 1]
    for tag, kw in (("model", dict(model=model)), ("deep", dict(model=None, deep=deep))):
        sim.similarity_deep(features=d / "handcrafted.h5", table=tmp_path / f"{tag}.csv", log=lines, **common, **kw)
    _bytes_equal(tmp_path / "model.csv", tmp_path / "deep.csv")
    df = read_similarity(tmp_path / "model.csv")
    assert set(df["method"]) == {"feature", "gram"} and len(df) == len(df.drop_duplicates())
    assert any("computed from" in s for s in lines) and any("read from" in s for s in lines)
    if "memory_mb" in params:
        assert any("block by block" in s for s in lines if s.startswith("Gram form"))
    cross = [files[k] for k in files if "memory_mb" not in params or k[0] == "Regular"]  # the tiny budget: 2 models
    sim.similarity_cross(models=[m for m, _ in cross], table=tmp_path / "xm.csv", **common)
    sim.similarity_cross(models=[], deep=[f for _, f in cross], table=tmp_path / "xd.csv", **common)
    _bytes_equal(tmp_path / "xm.csv", tmp_path / "xd.csv")
    x = read_similarity(tmp_path / "xm.csv")
    want = {"seed_vs_seed"} if len(cross) == 2 else {"seed_vs_seed", "arch_vs_arch"}
    assert set(x["comparison"]) == want and x["value"].notna().any()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deep.csv", "model.csv", "xd.csv", "xm.csv"]


def test_on_demand_rows_are_only_those_needed(models, monkeypatch):
    """The streamed passes compute chunks of at most the window share of memory_mb; the Gram form computes only the
    seeded subset's rows; the features of a chunk are computed once for all its views."""
    from deepfeat.nets.features import ModelFeatures
    from deepfeat.similarity.reader import WINDOW_SHARE

    d, files = models
    asked = []
    real = ModelFeatures.batches

    def spy(self, state, idx, layers=None):
        asked.append((state, np.asarray(idx).copy(), tuple(layers or ())))
        return real(self, state, idx, layers)

    monkeypatch.setattr(ModelFeatures, "batches", spy)
    mb = 0.2
    settings = {"similarity": {"device": "cpu", "bootstrap": 0, "gram_max_clips": 20, "memory_mb": mb, "seed": 1}}
    # the in-sample measures only: the held-out ones (r2_lr_test, in the default) also compute the test clips' rows
    settings["similarity"]["measures"] = [m for m in config.default("similarity", "measures") if m not in HELD_OUT]
    settings["deep"] = ON_DEMAND
    lines = _Lines()
    sim.similarity_deep(
        model=files["Regular", 1][0],
        features=d / "handcrafted.h5",
        mel=d / "mel.h5",
        table=d / "spy.csv",
        settings=settings,
        dataset="toy",
        log=lines,
    )
    with open_h5(d / "mel.h5", "mel") as f:
        from deepfeat.formats.cliptable import read_clip_table

        train = read_clip_table(f)[0]["split"].to_numpy() == 0
    rows = np.flatnonzero(train)
    sub = np.sort(rows[seeded_subset(len(rows), 20, 1, GRAM_STREAM)])
    width = 3600 + 900 + 2420 + 25 + 30  # one weight state, every layer
    from deepfeat.similarity.chance import CHANCE_STREAM

    def chance_subset(idx):  # the rows of the chance band's seeded subset (stats.seed 0), asked at once
        return len(idx) >= 4 and np.array_equal(
            idx, np.sort(rows[seeded_subset(len(rows), len(idx), 0, CHANCE_STREAM)])
        )

    asked = [a for a in asked if not chance_subset(a[1])]
    subset = [a for a in asked if len(a[1]) == 20]
    chunks = [a for a in asked if len(a[1]) != 20]
    assert subset and all(np.array_equal(a[1], sub) for a in subset)
    assert chunks and all(np.isin(a[1], rows).all() for a in chunks)
    assert max(len(a[1]) for a in chunks) <= WINDOW_SHARE * mb * 1e6 / (4 * width)
    # each pass over the training clips computes every training clip once per weight state it reads
    assert sum(len(a[1]) for a in chunks) % len(rows) == 0
