"""Benchmark of the logistic decoding probe (deepfeat.probe.logistic) against two baselines, on the same features.

Baselines, timed in the same run on the same standardised synthetic features (n clips x d dims, C classes,
70/30 split):
  * scikit-learn LogisticRegression(solver="lbfgs") (multinomial for C > 2; L2 with C=1 by default), at its
    default max_iter=100 and run to convergence (max_iter=2000);
  * the same SGD protocol written the usual way: nn.Linear + CrossEntropyLoss + optim.SGD(lr, momentum) over
    DataLoader(TensorDataset(X, y), batch_size=64, shuffle=True, generator=Generator().manual_seed(seed)),
    started from the same initial weights (so its accuracy must equal ours);
  * batching: S probe seeds (and F features of one width) trained as one bmm model vs one probe at a time.

  * primal vs dual form (--deep): probe_deep and probe_handcrafted end to end on realistic stage files, the
    logistic probes forced into the primal form (SGD on W, the baseline) vs the automatic choice (the dual
    form W = W0 + A Z wherever it is cheaper); the tables must agree (accuracies identical, RMSE to 1e-9),
    except on probes whose float32 SGD is chaotic (random labels on a very wide layer: logits in the hundreds;
    there the float32 primal form itself lands ~6 % away, in W, from the same SGD in float64, and the two forms
    may differ by a test clip or so).

Usage: OMP_NUM_THREADS=1 .venv/bin/python bench/bench_probe.py [--n 2000 --d 2000 --classes 8 --epochs 100]
       [--pipeline]  (adds probe_handcrafted on demo-scale files: grouped vs feature by feature)
       OMP_NUM_THREADS=1 .venv/bin/python bench/bench_probe.py --deep [--workdir DIR] [--archs 1dF Regular]
         (builds, or reuses from DIR, an ensembles-like set (480 clips, 22,050 Hz, tasks ensemble/work/region)
         and a notes-like set (816 clips, 16 kHz, family/pitch/velocity): fake audio and mel spectrograms, the
         real default hand-crafted store (deepfeat.features.build_store) and real deep files
         (deepfeat.nets.build_model + deepfeat.nets.extract_features, default deep config))
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from deepfeat.probe import fit_logistic_many, init_linear, probe_deep, probe_handcrafted, standardise  # noqa: E402


def synthetic(n, d, n_classes, seed=0, rank=16, scale=0.07):
    """Classes differ along a few random directions; most dimensions are noise (like a wide CNN layer).
    ``scale`` sets the class separation (0.07: test accuracies well below 1 for 2,000 x 2,000)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n)
    basis = rng.normal(size=(rank, d)) / np.sqrt(rank)
    centres = rng.normal(0, scale, (n_classes, rank))
    X = (centres[y] @ basis + rng.normal(size=(n, d))).astype(np.float32)
    split = np.zeros(n, bool)
    split[rng.permutation(n)[: int(0.3 * n)]] = True
    Ztr, Zte = standardise(X[~split], X[split])
    return Ztr, y[~split], Zte, y[split]


def dataloader_sgd(Ztr, ytr, Zte, yte, n_classes, seed, epochs, lr=0.01, momentum=0.9, batch_size=64):
    lin = torch.nn.Linear(Ztr.shape[1], n_classes)
    w, b = init_linear(Ztr.shape[1], n_classes, seed)
    with torch.no_grad():
        lin.weight.copy_(w)
        lin.bias.copy_(b)
    opt = torch.optim.SGD(lin.parameters(), lr=lr, momentum=momentum)
    loss_fn = torch.nn.CrossEntropyLoss()
    dl = DataLoader(
        TensorDataset(torch.from_numpy(Ztr), torch.from_numpy(ytr)),
        batch_size=batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )
    for _ in range(epochs):
        for xb, yb in dl:
            opt.zero_grad()
            loss_fn(lin(xb), yb).backward()
            opt.step()
    with torch.no_grad():
        return float((lin(torch.from_numpy(Zte)).argmax(1).numpy() == yte).mean())


def demo_files(folder, n=1440, seed=0):
    """A mel.h5 clip table (8 families, pitch, velocity; 70/30 split) + a handcrafted.h5 with the demo's
    feature widths: 70 features of 128 dims, Wavelet Combined 768, Top 4 Combined 1152, 4 DWT maps."""
    import json

    import pandas as pd

    from deepfeat.formats.cliptable import write_clip_table
    from deepfeat.formats.files import write_h5

    rng = np.random.default_rng(seed)
    fam = rng.integers(0, 8, n)
    meta = pd.DataFrame(
        {
            "clip_id": [f"c{i}" for i in range(n)],
            "recording": [f"c{i}" for i in range(n)],
            "offset": np.zeros(n),
            "split": (rng.random(n) < 0.3).astype(np.uint8),
            "family": [f"fam{c}" for c in fam],
            "pitch": rng.integers(21, 109, n).astype(float),
            "velocity": rng.choice([25, 50, 75, 100, 127], n).astype(float),
        }
    )
    tasks = [
        {"name": "family", "type": "classification", "label": "family"},
        {"name": "pitch", "type": "regression", "label": "pitch"},
        {"name": "velocity", "type": "regression", "label": "velocity"},
    ]
    with write_h5(folder / "mel.h5", "mel") as f:
        write_clip_table(f, meta, tasks, "family")
    widths = {f"feature {i}": 128 for i in range(70)}
    widths.update(
        {
            "Wavelet Combined": 768,
            "Top 4 Combined": 1152,
            "DWT db10 (horizontal)": 5329,
            "DWT db10 (vertical)": 5329,
            "DWT bior1.3 (horizontal)": 4356,
            "DWT bior1.3 (vertical)": 4356,
        }
    )
    with write_h5(folder / "handcrafted.h5", "handcrafted") as f:
        for i, (name, d) in enumerate(widths.items()):
            X = rng.normal(size=(n, d)).astype(np.float32)
            X[:, :8] += 0.8 * np.eye(8, dtype=np.float32)[fam]
            ds = f.create_dataset(f"features/f{i:03d}", data=X)
            ds.attrs["name"] = name
            ds.attrs["shape"] = json.dumps([d])
    return len(widths)


def pipeline(epochs, seeds):
    """probe_handcrafted at the demo's scale, equal-width features batched (default) vs one feature at a time."""
    import logging
    import tempfile
    from pathlib import Path

    from deepfeat.probe import loading

    log = logging.getLogger("bench")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        n_feat = demo_files(tmp)
        params = {"epochs": epochs, "seeds": seeds, "device": "cpu"}
        t_b, (s_b, _) = timed(lambda: run_handcrafted(tmp, params, "demo", log))
        budget, loading.GROUP_BYTES = loading.GROUP_BYTES, 0  # every feature its own model (seeds still batched)
        try:
            t_1, (s_1, _) = timed(lambda: run_handcrafted(tmp, params, "demo", log))
        finally:
            loading.GROUP_BYTES = budget
    same = np.array_equal(s_b["value"].to_numpy(), s_1["value"].to_numpy())
    print(
        f"\n[probe_handcrafted, demo scale: 1440 clips, {n_feat} features, tasks family/pitch/velocity, "
        f"{len(seeds)} seeds, {epochs} epochs] grouped {t_b:.1f} s, feature by feature {t_1:.1f} s: "
        f"ratio {t_1 / t_b:.2f}x (identical tables: {same})"
    )


def run_handcrafted(folder, params, dataset, log):
    """probe_handcrafted on folder/{handcrafted,mel}.h5, its tables written to folder/tables/."""
    return probe_handcrafted(
        features=folder / "handcrafted.h5",
        mel=folder / "mel.h5",
        scores=folder / "tables" / "handcrafted.csv",
        confusion=folder / "tables" / "handcrafted.confusion.csv",
        settings={"probe": params},
        dataset=dataset,
        log=log,
    )


def run_deep(deep, folder, params, dataset, log):
    """probe_deep on the deep file ``deep`` with folder/{handcrafted,mel}.h5, tables written to folder/tables/."""
    return probe_deep(
        deep=deep,
        features=folder / "handcrafted.h5",
        mel=folder / "mel.h5",
        scores=folder / "tables" / "deep.csv",
        confusion=folder / "tables" / "deep.confusion.csv",
        settings={"probe": params},
        dataset=dataset,
        log=log,
    )


def realistic_files(folder, kind: str, arch_list, seed: int = 0):
    """Stage files of one demo dataset under ``folder/kind``: mel.h5 and clips.h5 (fake but class-dependent
    audio and spectrograms), handcrafted.h5 (build_store, config.yaml's handcrafted section) and one deep file
    per architecture (a model whose 'untrained' and 'trained' weights are two seeded initialisations,
    extracted with config.yaml's deep section). Files already present are reused."""
    from pathlib import Path

    import h5py
    import pandas as pd
    import yaml

    from deepfeat.features import build_store
    from deepfeat.formats.cliptable import write_clip_table
    from deepfeat.formats.files import write_h5
    from deepfeat.formats.models import save_model
    from deepfeat.nets import build_model, cpu_state, extract_features

    root = Path(__file__).resolve().parents[1]
    cfg = yaml.safe_load(open(root / "config.yaml"))
    folder = Path(folder) / kind
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "ensembles":
        n, sr, n_frames, n_classes, main = 480, 22050, 176, 10, "ensemble"
    else:
        n, sr, n_frames, n_classes, main = 816, 16000, 128, 8, "family"
    if not (folder / "handcrafted.h5").exists():
        rng = np.random.default_rng(seed)
        codes = rng.integers(0, n_classes, n)
        if kind == "ensembles":
            tasks = [{"name": t, "type": "classification", "label": t} for t in ("ensemble", "work", "region")]
            meta = pd.DataFrame(
                {
                    "ensemble": [f"ensemble_{c:02d}" for c in codes],
                    "work": [f"work{w}" for w in rng.integers(0, 6, n)],
                    "region": np.where(codes < 5, "european", "american"),
                }
            )
        else:
            tasks = [
                {"name": "family", "type": "classification", "label": "family"},
                {"name": "pitch", "type": "regression", "label": "pitch"},
                {"name": "velocity", "type": "regression", "label": "velocity"},
            ]
            meta = pd.DataFrame(
                {
                    "family": [f"family{c}" for c in codes],
                    "pitch": rng.integers(21, 109, n) * 1.0,
                    "velocity": rng.choice([25.0, 50, 75, 100, 127], n),
                }
            )
        split = np.zeros(n, np.uint8)
        split[rng.permutation(n)[: int(round(0.3 * n))]] = 1
        meta.insert(0, "split", split)
        meta.insert(0, "offset", 0.0)
        meta.insert(0, "recording", [f"r{i}" for i in range(n)])
        meta.insert(0, "clip_id", [f"c{i:05d}" for i in range(n)])
        t = np.arange(4 * sr) / sr
        audio = np.empty((n, t.size), np.float32)
        for i in range(n):  # harmonic tones whose pitch depends on the class, decays, noise
            f0 = 110 * 2 ** (codes[i] / 4 + rng.uniform(0, 0.2))
            y = sum(np.sin(2 * np.pi * f0 * h * t) / h for h in range(1, 4)) * np.exp(-t * rng.uniform(0.2, 3))
            audio[i] = 0.3 * y + 0.01 * rng.standard_normal(t.size)
        with write_h5(folder / "clips.h5", "clips") as f:
            f.create_dataset("audio", data=audio)
            f.attrs.update(sample_rate=sr, clip_seconds=4.0)
            write_clip_table(f, meta, tasks, main)
        mel = rng.normal(-40, 8, (n, 128, n_frames))
        for c in range(n_classes):
            mel[codes == c, 5 + 12 * c : 12 + 12 * c, :] += 25
        mel = np.clip(mel, -80, 0).astype(np.float32)
        with write_h5(folder / "mel.h5", "mel") as f:
            f.create_dataset("mel", data=mel, chunks=(1, 128, n_frames))
            f.attrs.update(
                sample_rate=sr,
                train_mean=float(mel[split == 0].mean(dtype=np.float64)),
                train_std=float(mel[split == 0].std(dtype=np.float64)),
            )
            write_clip_table(f, meta, tasks, main)
        t0 = time.perf_counter()
        build_store(
            clips=folder / "clips.h5",
            mel=folder / "mel.h5",
            features=folder / "handcrafted.h5",
            settings={"handcrafted": cfg["handcrafted"], "mel": {k: cfg["mel"][k] for k in ("n_fft", "hop_length")}},
        )
        print(f"  built {folder / 'handcrafted.h5'} in {time.perf_counter() - t0:.0f} s", flush=True)
    deep = {}
    for arch in arch_list:
        out = folder / arch / "seed1.h5"
        if not out.exists():
            with h5py.File(folder / "mel.h5", "r") as f:
                stats = {k: float(f.attrs[k]) for k in ("train_mean", "train_std")}
            torch.manual_seed(1)
            init = build_model(arch, 128, n_frames, n_classes)
            torch.manual_seed(1001)
            final = build_model(arch, 128, n_frames, n_classes)
            save_model(
                folder / f"{arch}.pt",
                {
                    "arch": arch,
                    "seed": 1,
                    "task": main,
                    "input_shape": [1, 128, n_frames],
                    "n_outputs": n_classes,
                    **stats,
                },
                cpu_state(init),
                cpu_state(final),
            )
            out.parent.mkdir(exist_ok=True)
            extract_features(
                model=folder / f"{arch}.pt",
                mel=folder / "mel.h5",
                deep=out,
                settings={"deep": {**cfg["deep"], "device": "cpu"}},
            )
        deep[arch] = out
    return folder, deep, cfg["probe"]


def forms(workdir, arch_list):
    """probe_deep (one model file per architecture and dataset) and probe_handcrafted (notes-like, 816 clips),
    forced primal form (baseline) vs automatic choice, on realistic files at the default config."""
    import logging
    import tempfile
    from pathlib import Path

    import pandas as pd

    from deepfeat.probe import pipeline as probe_pipeline

    log = logging.getLogger("bench")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(workdir or tmp)
        print(f"\n[primal vs dual form, default probe config, files in {work}]")
        runs = []
        for kind in ("ensembles", "notes"):
            folder, deep, params = realistic_files(work, kind, arch_list)
            for arch, path in deep.items():
                runs.append(
                    (f"probe_deep {kind} {arch}", lambda p=path, f=folder, q=params, k=kind: run_deep(p, f, q, k, log))
                )
        runs.append(
            ("probe_handcrafted notes (816 clips)", lambda f=folder, q=params: run_handcrafted(f, q, "notes", log))
        )
        for name, fn in runs:
            probe_pipeline.FORM = "primal"
            try:
                t_p, (s_p, c_p) = timed(fn)
            finally:
                probe_pipeline.FORM = "auto"
            t_a, (s_a, c_a) = timed(fn)
            pd.testing.assert_frame_equal(s_p.drop(columns="value"), s_a.drop(columns="value"))
            acc = (s_p["metric"] == "accuracy").to_numpy()
            diff = np.abs(s_p["value"].to_numpy() - s_a["value"].to_numpy())
            rel = float((diff[~acc] / np.abs(s_p["value"].to_numpy()[~acc])).max()) if (~acc).any() else 0.0
            print(
                f"  {name:40s} primal {t_p:6.1f} s, auto {t_a:6.1f} s: ratio {t_p / t_a:5.1f}x "
                f"(accuracies identical: {int((diff[acc] == 0).sum())}/{int(acc.sum())}, max |difference| "
                f"{diff[acc].max():.4f}; max relative RMSE difference {rel:.1e})"
            )


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--d", type=int, default=2000)
    ap.add_argument("--classes", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--features", type=int, default=20, help="features of width --small-d for the batching case")
    ap.add_argument("--small-d", type=int, default=128)
    ap.add_argument("--pipeline", action="store_true", help="also time probe_handcrafted on demo-scale files")
    ap.add_argument("--deep", action="store_true", help="only the primal vs dual comparison on realistic files")
    ap.add_argument("--workdir", default=None, help="--deep: build/reuse the stage files here (default: temp dir)")
    ap.add_argument("--archs", nargs="+", default=["1dF", "Regular"], help="--deep: architectures to extract")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    if args.deep:
        print(f"threads {torch.get_num_threads()}, torch {torch.__version__}")
        forms(args.workdir, args.archs)
        return
    params = {"epochs": args.epochs, "device": "cpu"}
    C = args.classes
    print(
        f"threads {torch.get_num_threads()}, torch {torch.__version__}, n {args.n}, d {args.d}, "
        f"{C} classes, {args.epochs} epochs, batch 64"
    )

    Ztr, ytr, Zte, yte = synthetic(args.n, args.d, C)
    fit_logistic_many(Ztr[:64], ytr[:64], Zte[:8], yte[:8], [C], [0], {"epochs": 1, "device": "cpu"})  # warm-up

    t_ours, r = timed(lambda: fit_logistic_many(Ztr, ytr, Zte, yte, [C], [0], params))
    acc_ours = float(r["test_acc"][0, 0, 0])
    t_dl, acc_dl = timed(lambda: dataloader_sgd(Ztr, ytr, Zte, yte, C, 0, args.epochs))
    with threadpool_limits(int(os.environ["OMP_NUM_THREADS"])), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        t_sk, sk = timed(lambda: LogisticRegression(solver="lbfgs").fit(Ztr, ytr))
        t_sk2, sk2 = timed(lambda: LogisticRegression(solver="lbfgs", max_iter=2000).fit(Ztr, ytr))
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    conv = "" if converged else " (max_iter=100 did not converge)"
    print(f"\n[single probe] {len(ytr)} train x {args.d} dims")
    print(f"  ours (closed-form grad, index batches) {t_ours:8.2f} s  test acc {acc_ours:.4f}")
    print(f"  DataLoader + nn.Linear + optim.SGD     {t_dl:8.2f} s  test acc {acc_dl:.4f}  ratio {t_dl / t_ours:6.1f}x")
    print(
        f"  sklearn lbfgs max_iter=100             {t_sk:8.2f} s  test acc {sk.score(Zte, yte):.4f}  "
        f"ratio {t_sk / t_ours:6.1f}x  n_iter {int(sk.n_iter_[0])}{conv}"
    )
    print(
        f"  sklearn lbfgs max_iter=2000            {t_sk2:8.2f} s  test acc {sk2.score(Zte, yte):.4f}  "
        f"ratio {t_sk2 / t_ours:6.1f}x  n_iter {int(sk2.n_iter_[0])}"
    )

    S = args.seeds
    seeds = list(range(S))
    t_b, rb = timed(lambda: fit_logistic_many(Ztr, ytr, Zte, yte, [C], seeds, params))
    t_l, rl = timed(lambda: [fit_logistic_many(Ztr, ytr, Zte, yte, [C], [s], params) for s in seeds])
    same = all(rb["test_acc"][i, 0, 0] == rl[i]["test_acc"][0, 0, 0] for i in range(S))
    print(
        f"\n[{S} seeds, d {args.d}] batched {t_b:.2f} s, one at a time {t_l:.2f} s: ratio {t_l / t_b:.2f}x "
        f"(identical accuracies: {same}; mean test acc {rb['test_acc'].mean():.4f})"
    )

    F, d = args.features, args.small_d
    feats = [synthetic(args.n, d, C, seed=100 + f) for f in range(F)]
    # all features share one label vector here (same clips): take the first's labels for every feature
    y_tr, y_te = feats[0][1], feats[0][3]
    Xtr = [f[0] for f in feats]
    Xte = [f[2] for f in feats]
    t_b, rb = timed(lambda: fit_logistic_many(Xtr, y_tr, Xte, y_te, [C], seeds, params))
    t_l, rl = timed(
        lambda: [[fit_logistic_many(Xtr[f], y_tr, Xte[f], y_te, [C], [s], params) for s in seeds] for f in range(F)]
    )
    same = all(rb["test_acc"][s, f, 0] == rl[f][s]["test_acc"][0, 0, 0] for f in range(F) for s in range(S))
    print(
        f"[{F} features x {S} seeds, d {d}] batched {t_b:.2f} s, one at a time {t_l:.2f} s: "
        f"ratio {t_l / t_b:.2f}x (identical accuracies: {same})"
    )
    if args.pipeline:
        pipeline(30, [0, 1, 2])


if __name__ == "__main__":
    main()
