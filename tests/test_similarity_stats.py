"""Statistical verdicts of the similarity jobs (issue #17): replicates of CKA / debiased CKA under the
recording-level resamples, chance levels (exact formulas and the permutation band), each checked against a direct
computation on small data."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from conftest import write_fake_mel
from test_similarity import DEEP, _c, ref_cka, ref_cka_debiased, related, write_deep, write_hc, zscore

from deepfeat import similarity as sim
from deepfeat import stats
from deepfeat.formats.replicates import fingerprint, read_replicates
from deepfeat.similarity.bootstrap import _cka_psi, _dcka_psi, _replicates, _Resampler
from deepfeat.similarity.chance import cka_chance, eig_chance, null_band, permutation_rows
from deepfeat.similarity.comparisons import BOOT_KEYS
from deepfeat.similarity.measures import _Spec


def _parts(X, Y):
    """(r, qx, qy, spec x, spec y) of two arrays: the per-row parts the engine streams."""
    Xc, Yc = _c(X), _c(Y)
    Cxy, Cxx, Cyy = Xc.T @ Yc, Xc.T @ Xc, Yc.T @ Yc
    n = len(X)

    def spec(Z, C):
        a = (Z * Z).sum(1)
        return _Spec(n=n, p=Z.shape[1], trace=float(a.sum()), fro2=float((C**2).sum()), aa=float(a @ a))

    r = ((Xc @ Cxy) * Yc).sum(1)
    return r, ((Xc @ Cxx) * Xc).sum(1), ((Yc @ Cyy) * Yc).sum(1), spec(Xc, Cxx), spec(Yc, Cyy)


def _recs(n, rng, max_clips=3):
    """Recording ids with 1..max_clips clips each, in clip order."""
    out, r = [], 0
    while len(out) < n:
        out += [f"r{r:03d}"] * int(rng.integers(1, max_clips + 1))
        r += 1
    return np.array(out[:n])


def _wcka(X, Y, w):
    """CKA of the weighted empirical distribution (weights w >= 0): the functional the expansion linearises."""
    w = w / w.sum()
    A = (X - w @ X) * np.sqrt(w)[:, None]
    B = (Y - w @ Y) * np.sqrt(w)[:, None]
    return np.linalg.norm(A.T @ B) ** 2 / (np.linalg.norm(A.T @ A) * np.linalg.norm(B.T @ B))


def test_resampler_equals_the_weight_matrix():
    rng = np.random.default_rng(0)
    rec = _recs(80, rng)
    psi = rng.normal(size=80)
    W = stats.bootstrap_weights(rec, 50, 7, stats.SIMILARITY_STREAM)
    got = _Resampler(rec, 50, 7, stats.SIMILARITY_STREAM).delta(psi)
    np.testing.assert_allclose(got, W @ psi / W.sum(1), rtol=1e-12, atol=1e-14)


def test_cka_replicates_match_a_brute_force_weighted_recomputation():
    rng = np.random.default_rng(1)
    n = 300
    X, Y = related(rng, n=n, p1=6, p2=9)
    rec = _recs(n, rng)
    r, qx, qy, sx, sy = _parts(X, Y)
    c0 = ref_cka(X, Y)
    reps = _replicates(
        "cka", c0, _Resampler(rec, 200, 3, stats.SIMILARITY_STREAM).delta(_cka_psi(r, qx, qy, sx, sy, c0, n))
    )
    W = stats.bootstrap_weights(rec, 200, 3, stats.SIMILARITY_STREAM)
    brute = np.array([_wcka(X, Y, w) for w in W])
    assert np.corrcoef(reps, brute)[0, 1] > 0.98
    # first order: the typical gap is a small fraction of the spread (the weighted plug-in adds a second-order bias)
    assert np.median(np.abs(reps - brute)) < 0.25 * brute.std() and np.abs(reps - brute).max() < brute.std()
    assert reps.std() == pytest.approx(brute.std(), rel=0.1)


def test_dcka_influence_is_the_derivative_of_a_reweighting():
    """For large n the expansion of debiased CKA is that of the weighted functional with unbiased plug-ins: its
    influence values are exactly the reweighting derivatives of the V-statistic HSIC scaled by the unbiased
    self terms, and they sum to 0."""
    rng = np.random.default_rng(2)
    X, Y = related(rng, n=60, p1=4, p2=5)
    n = len(X)
    r, qx, qy, sx, sy = _parts(X, Y)
    d0 = ref_cka_debiased(X, Y)
    psi = _dcka_psi(r, qx, qy, sx, sy, d0, n)
    assert abs(psi.sum()) < 1e-9 * np.abs(psi).sum()
    hx = sim.measures._hsic1(sx.fro2, sx.aa, sx.trace, sx.trace, n) / (n * (n - 3))
    hy = sim.measures._hsic1(sy.fro2, sy.aa, sy.trace, sy.trace, n) / (n * (n - 3))

    def T(A, B, w):  # ||Sigma_ab||_F^2 of the weighted distribution
        w = w / w.sum()
        Ac, Bc = A - w @ A, B - w @ B
        return np.linalg.norm((Ac * w[:, None]).T @ Bc) ** 2

    def dT(A, B, w, eps):  # d T / d (weight of one row) x n, by a forward difference
        return (T(A, B, w) - T(A, B, np.ones(len(w)))) / eps * len(w)

    eps = 1e-6
    for i in (0, 31, 59):
        w = np.ones(n)
        w[i] += eps
        want = dT(X, Y, w, eps) / np.sqrt(hx * hy) - d0 * (dT(X, X, w, eps) / hx + dT(Y, Y, w, eps) / hy) / 2
        assert psi[i] == pytest.approx(want, rel=1e-4, abs=1e-7)


def test_dcka_replicates_follow_a_naive_recording_bootstrap():
    rng = np.random.default_rng(3)
    n = 300
    X, Y = related(rng, n=n, p1=6, p2=9)
    rec = _recs(n, rng)
    r, qx, qy, sx, sy = _parts(X, Y)
    d0 = ref_cka_debiased(X, Y)
    reps = _replicates(
        "cka_debiased", d0, _Resampler(rec, 150, 4, stats.SIMILARITY_STREAM).delta(_dcka_psi(r, qx, qy, sx, sy, d0, n))
    )
    W = stats.bootstrap_weights(rec, 150, 4, stats.SIMILARITY_STREAM).astype(int)
    naive = np.array([ref_cka_debiased(np.repeat(X, w, 0), np.repeat(Y, w, 0)) for w in W])
    assert np.corrcoef(reps, naive)[0, 1] > 0.9
    assert reps.std() == pytest.approx(naive.std(), rel=0.3)


def test_cka_chance_and_zero_dcka_chance_by_enumeration():
    """Over all n! permutations of the rows of one side: mean CKA = tr K tr L / ((n-1) ||K|| ||L||), mean
    debiased CKA = 0 (up to rounding)."""
    rng = np.random.default_rng(4)
    n = 7
    X, Y = rng.normal(size=(n, 3)) ** 3, rng.normal(size=(n, 2))
    _, _, _, sx, sy = _parts(X, Y)
    ck, dk = [], []
    for p in itertools.permutations(range(n)):
        ck.append(ref_cka(X[list(p)], Y))
        dk.append(ref_cka_debiased(X[list(p)], Y))
    assert np.mean(ck) == pytest.approx(cka_chance(sx, sy, n), rel=1e-12)
    assert abs(np.mean(dk)) < 1e-12
    assert np.std(dk) > 0.1  # not trivially zero


def test_r2_chance_levels_by_enumeration():
    """Over all n! permutations of the rows of one side: mean r2_lr = r_b / (n-1), mean r2_cca = max(r_a, r_b) /
    (n-1), mean r2_svcca = max(d_a, d_b) / (n-1) (exactly: E[permuted projection] = r/(n-1) (I - 11'/n))."""
    rng = np.random.default_rng(6)
    n = 5  # 120 permutations; ranks 2 and 3 stay below n - 1
    X, Y = rng.normal(size=(n, 2)) ** 3, rng.normal(size=(n, 3))
    ms = ["r2_lr", "r2_cca", "r2_svcca"]
    cfg = dict(svcca_variance=0.8)
    got = np.array(
        [[sim.all_measures(X[list(p)], Y, ms, **cfg)[m] for m in ms] for p in itertools.permutations(range(n))]
    )

    def svcca_dim(A):  # the smallest k whose leading squared singular values hold svcca_variance of the total
        lam = np.linalg.eigvalsh(_c(A).T @ _c(A))[::-1]
        return int(np.argmax(np.cumsum(lam) / lam.sum() >= cfg["svcca_variance"])) + 1

    sx, sy = _Spec(n=n, p=2, trace=0, fro2=0, aa=0, rank=2), _Spec(n=n, p=3, trace=0, fro2=0, aa=0, rank=3)
    sx.d, sy.d = svcca_dim(X), svcca_dim(Y)
    want = [eig_chance(sx, sy, n, m) for m in ms]
    assert want[:2] == [3 / 4, 3 / 4] and want[2] == max(sx.d, sy.d) / 4
    np.testing.assert_allclose(got.mean(0), want, rtol=1e-10)
    assert (got.std(0) > 0.05).all()  # not trivially constant


def test_permutation_rows_move_recordings():
    rng = np.random.default_rng(5)
    single = np.array([f"r{i}" for i in rng.permutation(30)])
    g = permutation_rows(single, 0, 1)
    assert sorted(g) == list(range(30)) and (g != np.arange(30)).any()
    np.testing.assert_array_equal(g, stats.permute_by_recording(np.arange(30), single, 0, 1001))
    rec = _recs(40, rng)
    g = permutation_rows(rec, 0, 2)
    for r in np.unique(rec):  # the clips of one recording take rows of one recording
        assert len(set(rec[g[rec == r]])) == 1
    assert not np.array_equal(permutation_rows(rec, 0, 2), permutation_rows(rec, 0, 3))


def test_null_band_matches_a_permutation_loop():
    rng = np.random.default_rng(6)
    n = 40
    X, Y1 = related(rng, n=n, p1=5, p2=8)
    Y2 = rng.normal(size=(n, 30))
    K = lambda Z: torch.from_numpy(_c(Z) @ _c(Z).T)  # noqa: E731
    # recordings of 1-3 clips (rows repeated: re-centred) and of one clip each (true permutations)
    for rec in (_recs(n, rng), np.array([f"r{i}" for i in range(n)])):
        maps = [permutation_rows(rec, 9, t) for t in range(15)]
        band = null_band(K(X), torch.stack([K(Y1), K(Y2)]), maps, 0.9, ["cka", "cka_debiased"])
        _check_band(band, maps, X, Y1, Y2)


def _check_band(band, maps, X, Y1, Y2):
    for j, Y in enumerate((Y1, Y2)):
        for m, ref in (("cka", ref_cka), ("cka_debiased", ref_cka_debiased)):
            loop = np.array([ref(X[g], Y) for g in maps])
            np.testing.assert_allclose(band[m][2][:, j], loop, rtol=1e-9, atol=1e-12)
            lo, hi = np.quantile(loop, [0.05, 0.95])
            assert band[m][0][j] == pytest.approx(lo, abs=1e-12) and band[m][1][j] == pytest.approx(hi, abs=1e-12)


@pytest.fixture
def files(tmp_path):
    """The toy dataset of tests/test_similarity.py: mel.h5 (recordings of two clips), deep.h5, handcrafted.h5."""
    n = 60
    _, meta = write_fake_mel(tmp_path / "mel.h5", n=n, n_mels=16, n_frames=16)
    deep = write_deep(tmp_path / "deep.h5", n)
    hc = write_hc(tmp_path / "handcrafted.h5", n)
    return tmp_path, meta["split"].to_numpy() == 0, deep, hc


STATS = {"resamples": 64, "seed": 5, "chance_permutations": 12, "chance_max_clips": 30}


def _run_deep(tmp, params, table="deep.csv", boot="deep.boot.h5"):
    return sim.similarity_deep(
        model=None,
        deep=tmp / "deep.h5",
        features=tmp / "handcrafted.h5",
        mel=tmp / "mel.h5",
        table=tmp / table,
        boot=tmp / boot,
        settings={"similarity": params, "deep": DEEP, "stats": STATS},
        dataset="toy",
    )


def _recordings_of(tmp):
    import h5py

    with h5py.File(tmp / "mel.h5") as f:
        return f["meta"]["recording"].asstr()[:], f["meta"]["clip_id"].asstr()[:]


@pytest.mark.parametrize("gram_max_clips", [10000, 25])
def test_similarity_deep_replicates_and_chance(files, gram_max_clips):
    tmp, train, deep, hc = files
    params = dict(bootstrap=20, seed=3, device="cpu", gram_max_clips=gram_max_clips)
    df = _run_deep(tmp, params)
    rec, ids = _recordings_of(tmp)
    keys, values, reps, attrs = read_replicates(tmp / "deep.boot.h5")
    sel = df[df["measure"].isin(["cka", "cka_debiased"])].reset_index(drop=True)
    assert list(keys.columns) == BOOT_KEYS and len(keys) == len(sel)
    assert (keys["measure"] == sel["measure"]).all() and (keys["layer_a"] == sel["layer_a"].astype(str)).all()
    assert (keys["seed_a"] == "1").all()
    np.testing.assert_array_equal(values, sel["value"].to_numpy())
    assert reps.shape == (len(sel), 64)
    assert attrs["stream"] == stats.SIMILARITY_STREAM and attrs["unit"] == "training clips"
    assert attrs["clips"] == fingerprint(ids[train]) and attrs["seed"] == 5
    full = (sel["n"] == train.sum()).to_numpy()
    assert np.isfinite(reps[full]).all() and np.isnan(reps[~full]).all()
    if gram_max_clips < train.sum():
        assert (~full).any()
    # a row's replicates equal the first-order expansion computed from the arrays themselves
    W = stats.bootstrap_weights(rec[train], 64, 5, stats.SIMILARITY_STREAM)
    for i in np.flatnonzero(full)[:: max(1, full.sum() // 12)]:
        row = sel.iloc[i]
        X = deep[row["trained_a"], row["layer_a"]][train].astype(np.float64)
        if row["comparison"] == "deep_vs_handcrafted":
            Y = zscore(hc[row["feature_b"]], train)[train].astype(np.float64)
        else:
            Y = deep[row["trained_b"], row["layer_b"]][train].astype(np.float64)
        r, qx, qy, sx, sy = _parts(X, Y)
        v, n = row["value"], len(X)
        psi = _cka_psi(r, qx, qy, sx, sy, v, n) if row["measure"] == "cka" else _dcka_psi(r, qx, qy, sx, sy, v, n)
        want = _replicates(row["measure"], v, W @ psi / W.sum(1))
        bound = np.max(np.abs(want - v)) / 65534  # int16 offsets: 1/65534 of the row's largest deviation
        np.testing.assert_allclose(reps[i], want, rtol=0, atol=bound * (1 + 1e-6) + 1e-12)
        if row["measure"] == "cka":
            assert row["chance"] == pytest.approx(cka_chance(sx, sy, n), rel=1e-9)
    # chance columns
    cka = df[df["measure"] == "cka"]
    assert cka["chance"].between(0, 1).all() and (cka["null_lo"] <= cka["null_hi"]).all()
    assert (df.loc[df["measure"] == "cka_debiased", "chance"] == 0).all()
    assert df.loc[~df["measure"].isin(["cka", "cka_debiased"]), ["null_lo", "null_hi"]].isna().all().all()
    # r2_lr / r2_cca / r2_svcca: the exact chance rank / (n - 1) wherever the value is defined; none for the rest
    r2 = df[df["measure"].isin(["r2_lr", "r2_cca", "r2_svcca"])]
    assert (r2["chance"].notna() == r2["value"].notna()).all() and r2["chance"].dropna().between(0, 1).all()
    assert r2["value"].notna().any()
    k = r2["chance"].dropna() * (r2.loc[r2["chance"].notna(), "n"] - 1)
    np.testing.assert_allclose(k, np.round(k), atol=1e-9)  # an integer rank or SVCCA dimension
    other = ~df["measure"].isin(["cka", "cka_debiased", "r2_lr", "r2_cca", "r2_svcca"])
    assert df.loc[other, "chance"].isna().all()
    rel = cka[cka["comparison"] == "layer_vs_layer"]  # layers of one state share a 3-d signal
    assert (rel["value"] > rel["null_hi"]).all()
    assert (rel["value"] > rel["chance"]).all()
    from deepfeat.formats.tables import read_similarity

    assert read_similarity([tmp / "deep.csv"])["null_hi"].dtype == np.float64


def test_replicates_of_a_file_job_and_unchanged_old_columns(files):
    """The stats settings add columns and a file; every column the table had is unchanged by them."""
    tmp, train, _, _ = files
    params = dict(bootstrap=10, seed=3, device="cpu")
    a = _run_deep(tmp, params)
    b = _run_deep(tmp, params, table="deep2.csv", boot="deep2.boot.h5")
    for c in a.columns:
        np.testing.assert_array_equal(a[c].to_numpy(), b[c].to_numpy())  # deterministic
    st2 = dict(STATS, resamples=32, chance_permutations=5)
    c = sim.similarity_deep(
        model=None,
        deep=tmp / "deep.h5",
        features=tmp / "handcrafted.h5",
        mel=tmp / "mel.h5",
        table=tmp / "deep3.csv",
        boot=tmp / "deep3.boot.h5",
        settings={"similarity": params, "deep": DEEP, "stats": st2},
        dataset="toy",
    )
    old = [k for k in a.columns if k not in ("chance", "null_lo", "null_hi")]
    assert a[old].equals(c[old])
    assert read_replicates(tmp / "deep3.boot.h5")[2].shape[1] == 32


def test_similarity_cross_replicates(files):
    tmp, train, _, _ = files
    paths = []
    for seed in (1, 10):
        p = tmp / f"Regular{seed}.h5"
        write_deep(p, 60, arch="Regular", seed=seed)
        paths.append(p)
    settings = {
        "similarity": {"device": "cpu", "bootstrap": 10, "measures": ["cka_debiased", "r2_svcca"]},
        "deep": DEEP,
    }
    df = sim.similarity_cross(
        models=[],
        deep=paths,
        mel=tmp / "mel.h5",
        table=tmp / "cross.csv",
        boot=tmp / "cross.boot.h5",
        settings={**settings, "stats": STATS},
        dataset="toy",
    )
    keys, values, reps, _ = read_replicates(tmp / "cross.boot.h5")
    sel = df[df["measure"] == "cka_debiased"]
    assert len(keys) == len(sel) and set(keys["measure"]) == {"cka_debiased"}
    assert np.isfinite(reps).all() and (keys["seed_b"] == "10").all()
    assert (sel["chance"] == 0).all() and sel["null_lo"].notna().all()


# ---------------------------------------------------------------------------------------------------------
# Procrustes
# ---------------------------------------------------------------------------------------------------------
def ref_procrustes(X, Y):
    """arccos of the optimal alignment of the centred, unit-Frobenius sides (zero-padded to one width) by
    scipy's orthogonal Procrustes: min_R ||X R - Y||^2 = 2 - 2 ||X'Y||_*."""
    import scipy.linalg

    Xc, Yc = _c(X), _c(Y)
    Xc, Yc = Xc / np.linalg.norm(Xc), Yc / np.linalg.norm(Yc)
    p = max(Xc.shape[1], Yc.shape[1])
    Xp = np.pad(Xc, ((0, 0), (0, p - Xc.shape[1])))
    Yp = np.pad(Yc, ((0, 0), (0, p - Yc.shape[1])))
    R, _ = scipy.linalg.orthogonal_procrustes(Xp, Yp)
    return np.arccos(np.clip(1 - np.linalg.norm(Xp @ R - Yp) ** 2 / 2, -1, 1))


@pytest.mark.parametrize("p1,p2", [(5, 8), (40, 70), (8, 3)])
def test_procrustes_feature_and_gram_forms_equal_scipy(p1, p2):
    rng = np.random.default_rng(11)
    X, Y = related(rng, n=50, p1=p1, p2=p2)
    want = ref_procrustes(X, Y)
    for method in ("feature", "gram"):
        if method == "feature" and max(p1, p2) >= 50:
            continue
        got = sim.all_measures(X, Y, measures=("procrustes",), method=method)["procrustes"]
        assert got == pytest.approx(want, abs=1e-7), method
    # a rotated, scaled, shifted copy is at distance 0; unrelated noise is far
    Q, _ = np.linalg.qr(rng.normal(size=(p1, p1)))
    assert sim.all_measures(X, 3 * X @ Q + 1, measures=("procrustes",))["procrustes"] == pytest.approx(0, abs=1e-6)
    assert sim.all_measures(X, rng.normal(size=(50, 2)), measures=("procrustes",))["procrustes"] > 1.0


def test_similarity_deep_procrustes_matches_in_memory(files):
    tmp, train, deep, hc = files
    params = dict(bootstrap=0, device="cpu", measures=["cka", "procrustes"])
    df = _run_deep(tmp, params)
    pr = df[df["measure"] == "procrustes"]
    assert pr["value"].notna().all()
    for _, row in pr.sample(25, random_state=1).iterrows():
        X = deep[row["trained_a"], row["layer_a"]][train]
        if row["comparison"] == "deep_vs_handcrafted":
            Y = zscore(hc[row["feature_b"]], train)[train]
        else:
            Y = deep[row["trained_b"], row["layer_b"]][train]
        assert row["value"] == pytest.approx(ref_procrustes(X.astype(np.float64), Y.astype(np.float64)), abs=1e-7)


# ---------------------------------------------------------------------------------------------------------
# Held-out measures
# ---------------------------------------------------------------------------------------------------------
def ref_heldout(Xtr, Ytr, Xte, Yte, variance=0.99):
    """Naive held-out measures: least squares and CCA / SVCCA fitted on the training rows (SVD whitening),
    evaluated on the test rows."""
    mx, my = Xtr.mean(0), Ytr.mean(0)
    Xc, Yc = Xtr - mx, Ytr - my
    W = np.linalg.lstsq(Yc, Xc, rcond=None)[0]
    pred = (Yte - my) @ W + mx
    out = {"r2_lr_test": 1 - ((Xte - pred) ** 2).sum() / ((Xte - Xte.mean(0)) ** 2).sum()}

    def white(Z, d=None):  # columns -> whitened principal axes of the training rows (first d)
        U, s, Vt = np.linalg.svd(Z, full_matrices=False)
        d = int((s > 1e-5 * s[0]).sum()) if d is None else d  # the rank (a constant column adds nothing)
        return Vt[:d].T / s[:d]

    def dim(Z):
        s2 = np.linalg.svd(Z, compute_uv=False) ** 2
        return int(np.searchsorted(np.cumsum(s2) / s2.sum(), variance) + 1)

    for name, dx, dy in (("cca", None, None), ("svcca", dim(Xc), dim(Yc))):
        Tx, Ty = white(Xc, dx), white(Yc, dy)
        U, _, Vt = np.linalg.svd(Tx.T @ Xc.T @ Yc @ Ty)
        K = min(Tx.shape[1], Ty.shape[1])
        u, v = (Xte - Xte.mean(0)) @ Tx @ U[:, :K], (Yte - Yte.mean(0)) @ Ty @ Vt[:K].T
        corr = (u * v).sum(0) / np.sqrt((u * u).sum(0) * (v * v).sum(0))
        out[f"r2_{name}_test"], out[f"rho_{name}_test"] = (corr**2).mean(), corr.mean()
    return out


HELD = ["r2_lr_test", "r2_cca_test", "rho_cca_test", "r2_svcca_test", "rho_svcca_test"]


def _check_heldout(df, deep, hc, train, methods=("feature", "gram")):
    """Every finite held-out value of ``df`` (rows of ``methods``) against :func:`ref_heldout` on all clips."""
    test = ~train
    rows = df[df["method"].isin(methods) & df["measure"].isin(HELD) & df["value"].notna()]
    for _, row in rows.iterrows():
        X = deep[row["trained_a"], row["layer_a"]].astype(np.float64)
        if row["comparison"] == "deep_vs_handcrafted":
            Y = zscore(hc[row["feature_b"]], train).astype(np.float64)
        else:
            Y = deep[row["trained_b"], row["layer_b"]].astype(np.float64)
        want = ref_heldout(X[train], Y[train], X[test], Y[test])[row["measure"]]
        tol = dict(rel=1e-7, abs=1e-9) if row["method"] == "feature" else dict(rel=1e-6, abs=1e-8)
        assert row["value"] == pytest.approx(want, **tol), (
            row["method"],
            row["measure"],
            row["layer_a"],
            row["feature_b"],
            row["layer_b"],
        )
    return rows


def test_similarity_deep_heldout_matches_a_naive_fit(files):
    tmp, train, deep, hc = files
    params = dict(bootstrap=0, device="cpu", measures=["cka", "r2_lr", *HELD])
    df = _run_deep(tmp, params)
    feat = df[(df["method"] == "feature") & df["measure"].isin(HELD)]
    assert len(feat) and feat["value"].notna().all()
    gram = df[(df["method"] == "gram") & df["measure"].isin(HELD)]
    # Gram form (Gram space): r2_lr_test unless the regressor's rank reaches n - 1 (the training fit interpolates,
    # NaN as the in-sample r2_lr); CCA/SVCCA where the subspaces do not intersect (rank_a + rank_b <= n - 1: else
    # tied unit canonical correlations, no unique directions)
    lr = gram[gram["measure"] == "r2_lr_test"]
    lr_nan = lr["value"].isna()
    assert lr_nan.any() and (~lr_nan).any()
    assert lr.loc[lr_nan, "flag"].str.contains(">=n-1=").all() and (lr.loc[~lr_nan, "flag"] == "").all()
    key = ["comparison", "layer_a", "trained_a", "layer_b", "trained_b", "feature_b"]
    both = lr.merge(df[df["measure"] == "r2_lr"], on=key, suffixes=("", "_in"))
    assert len(both) == len(lr) and (both["value"].isna() == both["value_in"].isna()).all()  # the rule of r2_lr
    nan = gram[gram["value"].isna() & (gram["measure"] != "r2_lr_test")]
    assert nan["measure"].isin(HELD[1:]).all() and nan["flag"].str.contains(">n-1=").all()
    assert gram["value"].notna().sum() > (~lr_nan).sum()
    _check_heldout(df, deep, hc, train)
    # on average the in-sample fit explains more than it predicts on the held-out clips
    f = df[df["method"] == "feature"]
    assert f.loc[f["measure"] == "r2_lr", "value"].mean() > f.loc[f["measure"] == "r2_lr_test", "value"].mean()


def test_similarity_deep_heldout_gram_form_equals_feature_form(files):
    """Every block forced into the Gram form (max_features = 1; Gram space on all training clips): the held-out
    values of the feature-form pairs are unchanged."""
    tmp, train, deep, hc = files
    params = dict(bootstrap=0, device="cpu", measures=["cka", "r2_lr", *HELD])
    ref = _run_deep(tmp, params)
    df = _run_deep(tmp, {**params, "max_features": 1}, table="gram.csv", boot="gram.boot.h5")
    assert (df["method"] == "gram").all()
    key = ["comparison", "layer_a", "trained_a", "layer_b", "trained_b", "feature_b", "measure"]
    both = ref.merge(df, on=key, suffixes=("_f", "_g"))
    both = both[both["method_f"] == "feature"]
    held = both[both["measure"].isin(HELD)]
    assert len(held) and held["value_g"].notna().all()
    np.testing.assert_allclose(held["value_g"], held["value_f"], rtol=1e-7, atol=1e-9)
    _check_heldout(df, deep, hc, train)


def test_similarity_deep_heldout_gram_subset_and_test_cap(files):
    """Gram subset (gram_max_clips < n): the held-out fit uses the m subset clips, evaluated on a seeded subset of
    at most gram_max_clips test clips; against a naive fit on exactly those clips."""
    from deepfeat.formats.cliptable import seeded_subset
    from deepfeat.similarity.gram import GRAM_STREAM
    from deepfeat.similarity.gram_space import HELDOUT_STREAM

    tmp, train, deep, hc = files
    cap = 12
    params = dict(bootstrap=0, device="cpu", measures=["cka", *HELD], max_features=1, gram_max_clips=cap)
    df = _run_deep(tmp, params)
    rows = np.flatnonzero(train)
    sub = np.zeros(len(train), bool)
    sub[rows[seeded_subset(len(rows), cap, 0, GRAM_STREAM)]] = True
    tst = np.flatnonzero(~train)
    assert len(tst) > cap
    te = np.zeros(len(train), bool)
    te[tst[seeded_subset(len(tst), cap, 0, HELDOUT_STREAM)]] = True
    lr = df[df["measure"] == "r2_lr_test"]
    assert len(lr) and (lr["n"] == cap).all()
    nan = lr["value"].isna()  # a regressor of rank n - 1 = 11 on the 12 subset clips interpolates them
    assert (~nan).any() and lr.loc[nan, "flag"].str.contains(f">=n-1={cap - 1}").all()
    for _, row in lr[~nan].iterrows():
        X = deep[row["trained_a"], row["layer_a"]].astype(np.float64)
        if row["comparison"] == "deep_vs_handcrafted":
            Y = zscore(hc[row["feature_b"]], train).astype(np.float64)
        else:
            Y = deep[row["trained_b"], row["layer_b"]].astype(np.float64)
        want = ref_heldout(X[sub], Y[sub], X[te], Y[te])["r2_lr_test"]
        assert row["value"] == pytest.approx(want, rel=1e-6, abs=1e-8)
