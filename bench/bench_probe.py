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

  * growth with the number of clips (--scale): probe_deep (one model per architecture, layers computed on
    demand) and probe_handcrafted, each in a fresh process, on NSynth-like files of N clips (n_train ~0.7 N):
    wall time, peak RSS (VmHWM), the plans the jobs logged (resident / gram / recompute) and how many regression
    probes were fitted on a subset (probe.dual_max_clips, covariance_max_width); then the growth exponents of
    time and memory in N (least squares on log-log, and between consecutive sizes).

Usage: OMP_NUM_THREADS=1 .venv/bin/python bench/bench_probe.py [--n 2000 --d 2000 --classes 8 --epochs 100]
       [--pipeline]  (adds probe_handcrafted on 1,440 NSynth-like clips: grouped vs feature by feature)
       OMP_NUM_THREADS=1 .venv/bin/python bench/bench_probe.py --deep [--workdir DIR] [--archs 1dF Regular]
         (builds, or reuses from DIR, an ensembles-like set (480 clips, 22,050 Hz, tasks ensemble/work/region)
         and a notes-like set (816 clips, 16 kHz, family/pitch/velocity): fake audio and mel spectrograms, the
         real default hand-crafted store (deepfeat.features.build_store) and model files (two seeded
         initialisations as untrained and trained weights; the layers are computed by the job))
       OMP_NUM_THREADS=1 .venv/bin/python bench/bench_probe.py --ridge   (the regression route of a 128-wide feature)
       OMP_NUM_THREADS=1 .venv/bin/python bench/bench_probe.py --scale [2000 8000 32000] --epochs 2
         [--archs Regular 1dF] [--memory-mb MB] [--workdir DIR --keep]   (hours at 32,000 on one thread)
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


def pipeline(epochs, seeds):
    """probe_handcrafted at the demo's scale, equal-width features batched (default) vs one feature at a time."""
    import logging
    import tempfile
    from pathlib import Path

    from deepfeat.probe import loading

    log = logging.getLogger("bench")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        scale_files(tmp, 1440, [])
        n_feat = len(SCALE_FEATURES)
        params = {"epochs": epochs, "seeds": seeds, "device": "cpu"}
        t_b, (s_b, _) = timed(lambda: run_handcrafted(tmp, params, "demo", log))
        budget, loading.GROUP_BYTES = loading.GROUP_BYTES, 0  # every feature its own model (seeds still batched)
        try:
            t_1, (s_1, _) = timed(lambda: run_handcrafted(tmp, params, "demo", log))
        finally:
            loading.GROUP_BYTES = budget
    same = np.array_equal(s_b["value"].to_numpy(), s_1["value"].to_numpy())
    print(
        f"\n[probe_handcrafted, 1440 NSynth-like clips, {n_feat} features, tasks family/pitch/velocity, "
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
        boot=folder / "tables" / "handcrafted.boot.h5",
        settings={"probe": params},
        dataset=dataset,
        log=log,
    )


def run_deep(model, folder, params, dataset, log, deep_settings=None):
    """probe_deep on the model file ``model`` (layers computed on demand) with folder/{handcrafted,mel}.h5, tables
    written to folder/tables/."""
    return probe_deep(
        model=model,
        features=folder / "handcrafted.h5",
        mel=folder / "mel.h5",
        scores=folder / "tables" / "deep.csv",
        confusion=folder / "tables" / "deep.confusion.csv",
        boot=folder / "tables" / "deep.boot.h5",
        settings={"probe": params, "deep": deep_settings or {}},
        dataset=dataset,
        log=log,
    )


def fake_models(folder, archs, n_frames: int, n_classes: int, task: str) -> dict:
    """One model file per architecture under ``folder`` for folder/mel.h5 (128 mel bins): its 'untrained' and
    'trained' weights are two seeded initialisations (the probe job computes its layers). Existing ones are kept."""
    import h5py

    from deepfeat.formats.models import save_model
    from deepfeat.nets import build_model, cpu_state

    with h5py.File(folder / "mel.h5", "r") as f:
        stats = {k: float(f.attrs[k]) for k in ("train_mean", "train_std")}
    models = {}
    for arch in archs:
        models[arch] = folder / f"{arch}.pt"
        if not models[arch].exists():
            torch.manual_seed(1)
            init = build_model(arch, 128, n_frames, n_classes)
            torch.manual_seed(1001)
            final = build_model(arch, 128, n_frames, n_classes)
            shape = [1, 128, n_frames]
            meta = {"arch": arch, "seed": 1, "task": task, "input_shape": shape, "n_outputs": n_classes, **stats}
            save_model(models[arch], meta, cpu_state(init), cpu_state(final))
    return models


NOTES_TASKS = [
    {"name": "family", "type": "classification", "label": "family"},
    {"name": "pitch", "type": "regression", "label": "pitch"},
    {"name": "velocity", "type": "regression", "label": "velocity"},
]


def clip_table(kind: str, n: int, codes: np.ndarray, rng):
    """(clip table, tasks) of an ensembles-like (ensemble/work/region) or notes-like (family/pitch/velocity) set
    of n clips whose main classes are ``codes``; 70/30 random split."""
    import pandas as pd

    if kind == "ensembles":
        tasks = [{"name": t, "type": "classification", "label": t} for t in ("ensemble", "work", "region")]
        cols = {
            "ensemble": [f"ensemble_{c:02d}" for c in codes],
            "work": [f"work{w}" for w in rng.integers(0, 6, n)],
            "region": np.where(codes < 5, "european", "american"),
        }
    else:
        tasks = NOTES_TASKS
        cols = {
            "family": [f"family{c}" for c in codes],
            "pitch": rng.integers(21, 109, n) * 1.0,
            "velocity": rng.choice([25.0, 50, 75, 100, 127], n),
        }
    split = np.zeros(n, np.uint8)
    split[rng.permutation(n)[: int(round(0.3 * n))]] = 1
    ids = [f"c{i:06d}" for i in range(n)]
    meta = pd.DataFrame({"clip_id": ids, "recording": ids, "offset": 0.0, "split": split, **cols})
    return meta, tasks


def realistic_files(folder, kind: str, arch_list, seed: int = 0):
    """Stage files of one demo dataset under ``folder/kind``: mel.h5 and clips.h5 (fake but class-dependent
    audio and spectrograms), handcrafted.h5 (build_store, config.yaml's handcrafted section) and one model file
    per architecture (:func:`fake_models`). Files already present are reused."""
    from pathlib import Path

    import yaml

    from deepfeat.features import build_store
    from deepfeat.formats.cliptable import write_clip_table
    from deepfeat.formats.files import write_h5

    cfg = yaml.safe_load(open(Path(__file__).resolve().parents[1] / "config.yaml"))
    folder = Path(folder) / kind
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "ensembles":
        n, sr, n_frames, n_classes, main = 480, 22050, 176, 10, "ensemble"
    else:
        n, sr, n_frames, n_classes, main = 816, 16000, 128, 8, "family"
    if not (folder / "handcrafted.h5").exists():
        rng = np.random.default_rng(seed)
        codes = rng.integers(0, n_classes, n)
        meta, tasks = clip_table(kind, n, codes, rng)
        split = meta["split"].to_numpy()
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
            tr = mel[split == 0]
            f.attrs.update(sample_rate=sr, train_mean=float(tr.mean(dtype=np.float64)), train_std=float(tr.std()))
            write_clip_table(f, meta, tasks, main)
        t0 = time.perf_counter()
        mel_cfg = {k: cfg["mel"][k] for k in ("n_fft", "hop_length")}
        paths = {"clips": folder / "clips.h5", "mel": folder / "mel.h5", "features": folder / "handcrafted.h5"}
        build_store(**paths, settings={"handcrafted": cfg["handcrafted"], "mel": mel_cfg})
        print(f"  built {folder / 'handcrafted.h5'} in {time.perf_counter() - t0:.0f} s", flush=True)
    return folder, fake_models(folder, arch_list, n_frames, n_classes, main), {**cfg["probe"], "device": "cpu"}


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
            folder, models, params = realistic_files(work, kind, arch_list)
            for arch, path in models.items():
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


# ----------------------------------------------------------------------------------------------------------
# --scale: time and peak memory of the probe jobs against the number of clips
# ----------------------------------------------------------------------------------------------------------
SCALE_FEATURES = {  # display name -> width: the widths of the default hand-crafted store, fewer 128-wide ones
    **{f"feature {i}": 128 for i in range(16)},
    "Mean Power (frequency)": 128,
    "Time to -70 dB": 1,
    "Mean Wavelet (25)": 128,
    "Wavelet Combined": 768,
    "Top 4 Combined": 1152,
    "DWT db10 (horizontal)": 5329,
    "DWT bior1.3 (vertical)": 4356,
}


def scale_files(folder, n: int, archs, seed: int = 0):
    """NSynth-like stage files of n clips under ``folder``, written block by block: mel.h5 (128 x 128 fake
    spectrograms with a band per family; tasks family (8), pitch, velocity; 70/30 split), handcrafted.h5
    (:data:`SCALE_FEATURES`, family- and pitch-dependent) and one model file per architecture
    (:func:`fake_models`). Files already present are reused."""
    import json
    from pathlib import Path

    from deepfeat.formats.cliptable import write_clip_table
    from deepfeat.formats.files import write_h5

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    fam = rng.integers(0, 8, n)
    meta, tasks = clip_table("notes", n, fam, rng)
    split, pitch = meta["split"].to_numpy(), meta["pitch"].to_numpy()
    step = 1000
    if not (folder / "mel.h5").exists():
        with write_h5(folder / "mel.h5", "mel") as f:
            ds = f.create_dataset("mel", shape=(n, 128, 128), dtype=np.float32, chunks=(1, 128, 128))
            s1 = s2 = 0.0
            for a in range(0, n, step):
                b = min(n, a + step)
                x = rng.normal(-40, 8, (b - a, 128, 128)).astype(np.float32)
                for i, c in enumerate(fam[a:b]):
                    x[i, 5 + 12 * c : 12 + 12 * c] += 25
                np.clip(x, -80, 0, out=x)
                ds[a:b] = x
                tr = x[split[a:b] == 0].astype(np.float64)
                s1, s2 = s1 + tr.sum(), s2 + (tr * tr).sum()
            m = int((split == 0).sum()) * 128 * 128
            f.attrs.update(sample_rate=16000, train_mean=s1 / m, train_std=float(np.sqrt(s2 / m - (s1 / m) ** 2)))
            write_clip_table(f, meta, tasks, "family")
    if not (folder / "handcrafted.h5").exists():
        with write_h5(folder / "handcrafted.h5", "handcrafted") as f:
            for i, (name, d) in enumerate(SCALE_FEATURES.items()):
                ds = f.create_dataset(f"features/f{i:03d}", shape=(n, d), dtype=np.float32)
                for a in range(0, n, step):
                    b = min(n, a + step)
                    x = rng.normal(size=(b - a, d)).astype(np.float32)
                    x[:, : min(d, 8)] += 0.8 * np.eye(8, dtype=np.float32)[fam[a:b]][:, : min(d, 8)]
                    x[:, -1] += (pitch[a:b] / 40).astype(np.float32)
                    ds[a:b] = x
                ds.attrs.update(name=name, shape=json.dumps([d]))
    return fake_models(folder, archs, 128, 8, "family")


def scale_job(job: str, folder: str, arch: str, epochs: int, memory_mb: float | None) -> None:
    """One probe job in this process (``--job``): its tables, log and, as the last line, a JSON record with its
    wall time, peak RSS (VmHWM) and the plans it logged."""
    import json
    import re
    from pathlib import Path

    from deepfeat.runtime import get_logger

    folder = Path(folder)
    log_path = folder / f"{job}_{arch or 'hc'}.log"
    log = get_logger(log_path, name="bench_scale_job")
    params = {"epochs": epochs, "seeds": [0], "device": "cpu"}
    if memory_mb:
        params["memory_mb"] = memory_mb
    t0 = time.perf_counter()
    if job == "deep":
        run_deep(folder / f"{arch}.pt", folder, params, "scale", log)
    else:
        run_handcrafted(folder, params, "scale", log)
    seconds = time.perf_counter() - t0
    text = log_path.read_text()
    plans = {m: len(re.findall(rf": plan {m} \(", text)) for m in ("resident", "gram", "recompute")}
    subsets = len(re.findall(r"seeded subset of the", text))
    with open("/proc/self/status") as f:
        peak = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    record = {"seconds": seconds, "peak_mb": peak, "plans": plans, "subset_fits": subsets, **log_breakdown(text)}
    print(json.dumps(record))


def log_breakdown(text: str) -> dict:
    """Seconds a probe job's log attributes to: forward passes filling held layers, Gram matrices of held
    features, logistic probes, regression probes (their eigenproblems), and features computed on demand."""
    import re

    def total(pattern):
        return round(sum(float(x) for x in re.findall(pattern, text)), 1)

    reg = re.findall(r"\| task (\S+) \| ([\d.]+) s \| (?!.*accuracy)", text)
    return {
        "passes": total(r"pass \d+/\d+: .* in ([\d.]+) s"),
        "gram": total(r"training Gram matrices .* in ([\d.]+) s"),
        "logistic": total(r"logistic probes in ([\d.]+) s"),
        "regression": round(sum(float(sec) for _, sec in reg), 1),
        "on_demand": total(r"computed on demand in ([\d.]+) s"),
    }


def _exponent(x, y) -> float:
    """Least-squares slope of log y on log x."""
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


def scale(sizes, archs, workdir, epochs: int, memory_mb: float | None, keep: bool) -> None:
    """Per size N (clips; n_train ~ 0.7 N) build the files, run probe_deep per architecture and
    probe_handcrafted each in a fresh process (OMP_NUM_THREADS threads), print time, peak RSS, the plans, and
    the growth exponents of time and memory in N."""
    import json
    import shutil
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    root = Path(workdir or tempfile.mkdtemp(prefix="bench_probe_scale_"))
    rows = []
    jobs = [("deep", a) for a in archs] + [("handcrafted", "")]
    for n in sizes:
        folder = root / f"n{n}"
        t0 = time.perf_counter()
        scale_files(folder, n, archs)
        print(f"  N={n}: files ready in {folder} ({time.perf_counter() - t0:.0f} s)", flush=True)
        for job, arch in jobs:
            cmd = [sys.executable, __file__, "--job", job, "--folder", str(folder), "--arch", arch]
            cmd += ["--epochs", str(epochs)] + (["--memory-mb", str(memory_mb)] if memory_mb else [])
            out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ})
            if out.returncode:
                raise RuntimeError(f"{job} {arch} at N={n} failed:\n{out.stderr[-3000:]}")
            r = json.loads(out.stdout.strip().splitlines()[-1])
            name = f"probe_deep {arch}" if job == "deep" else "probe_handcrafted"
            rows.append({"job": name, "N": n, **r})
            print(
                f"  N={n:6d} {name:22s} {r['seconds']:8.1f} s  peak RSS {r['peak_mb']:7.0f} MB  plans {r['plans']}"
                f"  regression subset fits {r['subset_fits']}; seconds in: held-layer passes {r['passes']}, Gram "
                f"{r['gram']}, logistic {r['logistic']}, regression {r['regression']}, on demand {r['on_demand']}",
                flush=True,
            )
        if not keep and workdir is None:
            shutil.rmtree(folder)
    print(f"\n[probe jobs vs clips: {epochs} probe epochs, one probe seed, files in {root}]")
    print(
        "| job | "
        + " | ".join(f"N={n} (n_train ~{int(0.7 * n)})" for n in sizes)
        + " | time exponent | memory exponent |"
    )
    print("|---|" + "---|" * (len(sizes) + 2))
    for name in dict.fromkeys(r["job"] for r in rows):
        rs = [r for r in rows if r["job"] == name]
        cells = [f"{r['seconds']:.0f} s, {r['peak_mb'] / 1024:.2f} GB" for r in rs]
        x = [r["N"] for r in rs]
        te = _exponent(x, [r["seconds"] for r in rs]) if len(rs) > 1 else float("nan")
        me = _exponent(x, [r["peak_mb"] for r in rs]) if len(rs) > 1 else float("nan")
        step = [_exponent(x[i : i + 2], [r["seconds"] for r in rs[i : i + 2]]) for i in range(len(rs) - 1)]
        print(
            f"| {name} | "
            + " | ".join(cells)
            + f" | {te:.2f} (steps {', '.join(f'{e:.2f}' for e in step)}) | {me:.2f} |"
        )


def ridge_forms(n: int, d: int) -> None:
    """ridge auto of a d-wide feature on n training clips, 2 targets: the d x d covariance form (the route for
    d < n) against the n x n Gram eigendecomposition (the route ridge auto took before for any d), same run."""
    from deepfeat.probe import fit_linear

    rng = np.random.default_rng(0)
    X = rng.normal(size=(n + n // 2, d)).astype(np.float32)
    Y = np.column_stack(
        [X[:, :4].astype(np.float64) @ [1.0, -2, 3, 1] + rng.normal(0, 1, len(X)), rng.normal(size=len(X))]
    )
    Ztr, Zte = standardise(X[:n], X[n:])
    t_c, c = timed(lambda: fit_linear(Ztr, Y[:n], Zte, Y[n:], ridge="auto"))
    t_g, g = timed(lambda: fit_linear(Ztr, Y[:n], Zte, Y[n:], ridge="auto", form="dual"))
    rel = float(np.max(np.abs(c["test_rmse"] - g["test_rmse"]) / g["test_rmse"]))
    print(
        f"\n[ridge auto, {d} features, {n} training clips, 2 targets] covariance ({c['form']}) {t_c:.2f} s, "
        f"n x n Gram ({g['form']}, the previous route) {t_g:.2f} s: ratio {t_g / t_c:.0f}x (same penalties: "
        f"{np.array_equal(c['ridge_rel'], g['ridge_rel'])}, max relative test-RMSE difference {rel:.1e})"
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
    ap.add_argument("--archs", nargs="+", default=["1dF", "Regular"], help="--deep / --scale: architectures")
    ap.add_argument(
        "--scale", nargs="*", type=int, help="probe jobs at these numbers of clips (default 2000 8000 32000)"
    )
    ap.add_argument("--memory-mb", type=float, default=None, help="--scale: probe.memory_mb (default: the schema's)")
    ap.add_argument("--keep", action="store_true", help="--scale: keep the files of each N (with --workdir)")
    ap.add_argument("--ridge", action="store_true", help="only ridge auto at 4,365 clips x 128: covariance vs Gram")
    ap.add_argument("--job", choices=["deep", "handcrafted"], help=argparse.SUPPRESS)  # one --scale job
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    ap.add_argument("--arch", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    if args.job:
        scale_job(args.job, args.folder, args.arch, args.epochs, args.memory_mb)
        return
    if args.ridge:
        ridge_forms(4365, 128)
        return
    if args.scale is not None:
        print(f"threads {torch.get_num_threads()}, torch {torch.__version__}")
        scale(args.scale or [2000, 8000, 32000], args.archs, args.workdir, args.epochs, args.memory_mb, args.keep)
        return
    if args.deep:
        print(f"threads {torch.get_num_threads()}, torch {torch.__version__}")
        forms(args.workdir, args.archs)
        return
    baselines(args)
    if args.pipeline:
        pipeline(30, [0, 1, 2])


def baselines(args) -> None:
    """One probe against scikit-learn and the DataLoader protocol; batched seeds and features."""
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


if __name__ == "__main__":
    main()
