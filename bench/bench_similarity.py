"""Benchmark: CKA of conv3-like deep blocks x every hand-crafted feature, reference vs deepfeat.similarity.

Reference (what public notebooks do): for every (deep block, feature) pair, from scratch, in float32 numpy:
centre X and Y, CKA = ||Y'X||_F^2 / (||X'X||_F ||Y'Y||_F). Ours: the pipeline's engine
(``deepfeat.similarity._Engine``, CKA only, no bootstrap) over the same in-memory float32 arrays (hand-crafted
features z-scored beforehand, untimed, for both): one streamed float64 pass accumulating every block's X'X once
(dsyrk) and each deep block against all features in one matmul.
Prints both times, their ratio and the largest |difference| between the two sets of CKA values.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_similarity.py              # defaults below
    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_similarity.py --no-dwt --blocks 10 --n 4000

Hand-crafted widths follow handcrafted.h5 for NSynth (T=128): 71 per-bin/per-frame features of 128 columns,
Wavelet Combined 768, Top 4 Combined 1152, DWT db10 2 x 73^2, DWT bior1.3 2 x 66^2 (30,378 columns).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time

import numpy as np
import torch

from deepfeat import similarity as sim


def hc_dims(dwt: bool) -> dict[str, int]:
    d = {f"hc{i:02d}": 128 for i in range(71)}
    d.update(wavelet_combined=768, top4_combined=1152)
    if dwt:
        d.update(dwt_db10_h=73 * 73, dwt_db10_v=73 * 73, dwt_bior_h=66 * 66, dwt_bior_v=66 * 66)
    return d


def make_data(n, blocks, p_deep, dims, seed=0):
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(n, 16)).astype(np.float32)
    deep = [(latent @ rng.normal(size=(16, p_deep)).astype(np.float32) + rng.normal(size=(n, p_deep)).astype(np.float32)
             + 3.0) for _ in range(blocks)]
    hc = {}
    for k, p in dims.items():
        x = latent @ rng.normal(size=(16, p)).astype(np.float32) * rng.uniform(0.1, 3)
        x += rng.normal(size=(n, p)).astype(np.float32)
        hc[k] = x * rng.uniform(0.5, 50) + rng.uniform(-100, 100)
    return deep, hc


def reference(deep, hc_z):
    out = np.empty((len(deep), len(hc_z)))
    for i, X in enumerate(deep):
        for j, Y in enumerate(hc_z.values()):
            Xc = X - X.mean(0, keepdims=True)
            Yc = Y - Y.mean(0, keepdims=True)
            out[i, j] = np.linalg.norm(Yc.T @ Xc) ** 2 / (np.linalg.norm(Xc.T @ Xc) * np.linalg.norm(Yc.T @ Yc))
    return out


def ours(deep, hc, H, n, chunk, memory_mb):
    """The pipeline engine on in-memory blocks; ``H`` = the z-scored features side by side, as the reference
    gets them (the pipeline z-scores inside the engine, one more pass, not part of the comparison)."""
    names = list(hc)
    sources = [sim._Source(f"d{i}", {f"d{i}": X.shape[1]}, (lambda X: lambda i0, i1, c0, c1: X[i0:i1, c0:c1])(X),
                           f"deep{i}") for i, X in enumerate(deep)]
    sources.append(sim._Source("hc", {k: hc[k].shape[1] for k in names},
                               lambda i0, i1, c0, c1: H[i0:i1, c0:c1], "handcrafted"))
    cfg = sim._config({"measures": ["cka"], "bootstrap": 0, "chunk_size": chunk, "memory_mb": memory_mb})
    log = logging.getLogger("bench")
    pairs = [(f"d{i}", k) for i in range(len(deep)) for k in names]
    res = sim._Engine(sources, np.ones(n, bool), cfg, torch.device("cpu"), log).run(pairs)
    return np.array([[res[(f"d{i}", k)]["values"]["cka"] for k in names] for i in range(len(deep))])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=6000, help="clips (rows); > 5329 keeps the DWT blocks in feature form")
    ap.add_argument("--blocks", type=int, default=4, help="deep blocks (e.g. trained/untrained conv3 of 2 seeds)")
    ap.add_argument("--p-deep", type=int, default=480, help="columns per deep block (Regular conv3: 30x4x4)")
    ap.add_argument("--no-dwt", action="store_true", help="leave out the four DWT features (5,329/4,356 columns)")
    ap.add_argument("--chunk", type=int, default=2048)
    ap.add_argument("--memory-mb", type=float, default=4000)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    dims = hc_dims(not a.no_dwt)
    print(f"grid: {a.blocks} deep blocks x {a.p_deep} columns  x  {len(dims)} hand-crafted features "
          f"({sum(dims.values())} columns), n = {a.n}; torch threads {torch.get_num_threads()}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    deep, hc = make_data(a.n, a.blocks, a.p_deep, dims)
    hc_z = {}
    for k, x in hc.items():  # the reference's input: z-scored float32 (not timed)
        x64 = x.astype(np.float64)
        hc_z[k] = ((x64 - x64.mean(0)) / x64.std(0)).astype(np.float32)

    H = np.concatenate(list(hc_z.values()), 1)
    t = time.perf_counter()
    got = ours(deep, hc_z, H, a.n, a.chunk, a.memory_mb)
    t_ours = time.perf_counter() - t
    print(f"ours      (float64, streamed moments): {t_ours:8.2f} s")
    t = time.perf_counter()
    ref = reference(deep, hc_z)
    t_ref = time.perf_counter() - t
    print(f"reference (float32, per pair)        : {t_ref:8.2f} s")
    diff = np.abs(got - ref)
    print(f"speed-up reference/ours: {t_ref / t_ours:.2f}x over {ref.size} CKA values; "
          f"largest |difference| {diff.max():.2e} (float32 reference), median {np.median(diff):.1e}; "
          f"CKA range {ref.min():.3f}..{ref.max():.3f}")


if __name__ == "__main__":
    main()
