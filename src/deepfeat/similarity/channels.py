"""Channel vs channel similarity: linear CKA (and debiased CKA) between the channels of conv1 and pool1.

Channel c of a layer is its (H x W) map, flattened, computed from the model file on demand
(:class:`deepfeat.nets.features.ModelFeatures`, in batches of :data:`BATCH` clips); the representations are compared
over a seeded subset of at most ``channel_max_clips`` training clips (:data:`CHANNEL_STREAM` is its random stream,
see :func:`deepfeat.formats.cliptable.seeded_subset`) in the exact Gram form: the centred m x m Gram of every
channel (float64, one dsyrk per channel), then all channel pairs at once (F = <K_c, K_d> in one product); the
bootstrap of :mod:`deepfeat.similarity.bootstrap` from r_i = sum_j K_c,ij K_d,ij. Layers are written
``conv1/ch{c}``.

Cost: capped by ``channel_max_clips`` (m): O(m^2 C D) time and (C + 2) m^2 x 8 bytes for the Grams, plus the
subset's activations (m C D x 4 bytes) when they fit ``memory_mb``; else the Grams are streamed over row blocks
with the activations recomputed per block. Nothing grows with the number of clips beyond the m-clip subset.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from itertools import combinations

import numpy as np
import pandas as pd
import torch

from deepfeat.config import job
from deepfeat.formats.cliptable import seeded_subset, train_mask
from deepfeat.formats.deep import STATES
from deepfeat.formats.files import write_csv
from deepfeat.formats.tables import SIMILARITY_COLUMNS, similarity_row
from deepfeat.nets.features import ModelFeatures
from deepfeat.runtime import pick_device
from deepfeat.similarity.bootstrap import _bootstrap_ci, _cka_psi
from deepfeat.similarity.gram import _GramAcc
from deepfeat.similarity.measures import F64, _Spec, _t64, canonical

CHANNEL_LAYERS = ("conv1", "pool1")
CHANNEL_STREAM = 104729  # random stream of the channel subset: seeded_subset(n_train, m, seed, CHANNEL_STREAM)
BATCH = 32  # clips per forward pass: small batches keep the layer maps in cache (~20% faster here than 128)


def _channel_stats(block_fn: Callable, m: int, block: int, need_rows: bool, log=None, what: str = ""):
    """Exact centred-Gram statistics of C channel representations over m rows, streamed in row blocks.

    ``block_fn(idx)`` -> {name: centred activations (len(idx), C, D) float64}; the Gram of channel c is
    K_c = A_c A_c' (m x m). Returns {name: (F (C x C) = sum_ij K_c,ij K_d,ij, a (C x m) = diag K_c,
    r (C x C x m) = row sums of K_c * K_d or None)}; only row blocks j0 >= i0 are formed (K symmetric).
    """
    starts = list(range(0, m, block))
    out = {}
    t0, nxt = time.perf_counter(), 30.0
    total = len(starts) * (len(starts) + 1) // 2
    done = 0
    for bi, i0 in enumerate(starts):
        rows_i = np.arange(i0, min(i0 + block, m))
        A_i = block_fn(rows_i)
        for j0 in starts[bi:]:
            rows_j = np.arange(j0, min(j0 + block, m))
            A_j = A_i if j0 == i0 else block_fn(rows_j)
            for name, A in A_i.items():
                B = A_j[name]
                C = A.shape[1]
                if name not in out:
                    dev = A.device
                    out[name] = [
                        torch.zeros(C, C, dtype=F64, device=dev),
                        torch.zeros(C, m, dtype=F64, device=dev),
                        torch.zeros(C, C, m, dtype=F64, device=dev) if need_rows else None,
                    ]
                F, a, r = out[name]
                K = torch.bmm(A.transpose(0, 1), B.permute(1, 2, 0))  # (C, |rows_i|, |rows_j|)
                Kf = K.reshape(C, -1)
                w = 1.0 if j0 == i0 else 2.0
                F.addmm_(Kf, Kf.T, alpha=w)
                if j0 == i0:
                    a[:, i0 : i0 + len(rows_i)] = K.diagonal(dim1=1, dim2=2)
                if r is not None:
                    r[:, :, i0 : i0 + len(rows_i)] += torch.einsum("cij,dij->cdi", K, K)
                    if j0 != i0:
                        r[:, :, j0 : j0 + len(rows_j)] += torch.einsum("cij,dij->cdj", K, K)
            done += 1
            el = time.perf_counter() - t0
            if log is not None and (el >= nxt or done == total):
                log.info(f"  {what}: {done}/{total} Gram blocks, {el:.0f} s")
                nxt = el + 30.0
    return {k: tuple(v) for k, v in out.items()}


def _channel_measures(F, a, m: int, measures):
    """(cka, cka_debiased) C x C matrices (numpy) from the channel Gram statistics."""
    d = F.diagonal()
    den = torch.sqrt(torch.outer(d, d))
    cka_m = torch.where(den > 0, F / torch.where(den > 0, den, torch.ones_like(den)), torch.full_like(F, float("nan")))
    out = {"cka": cka_m.cpu().numpy()}
    if "cka_debiased" in measures:
        tr = a.sum(1)
        ab = a @ a.T
        h = F - m / (m - 2) * ab + torch.outer(tr, tr) / ((m - 1) * (m - 2))
        hd = h.diagonal()
        den = torch.sqrt(torch.outer(hd.clamp_min(0), hd.clamp_min(0)))
        out["cka_debiased"] = (
            torch.where(den > 0, h / torch.where(den > 0, den, torch.ones_like(den)), torch.full_like(h, float("nan")))
            .cpu()
            .numpy()
        )
    return out


def channel_cka(acts) -> np.ndarray:
    """Linear CKA between the channels of one layer: acts (N, C, H, W) -> (C, C), channel c's representation
    being its (H x W) map flattened, centred over the N clips (exact Gram form, float64)."""
    A = _t64(acts, "cpu" if not isinstance(acts, torch.Tensor) else acts.device)
    if A.ndim != 4 or A.shape[0] < 2:
        raise ValueError(f"channel_cka: expected activations (N >= 2, C, H, W), got {tuple(A.shape)}")
    A = A.reshape(A.shape[0], A.shape[1], -1)
    A = A - A.mean(0)
    F, a, _ = _channel_stats(
        lambda idx: {"x": A[torch.as_tensor(idx, device=A.device)]}, A.shape[0], min(A.shape[0], 512), False
    )["x"]
    return _channel_measures(F, a, A.shape[0], ("cka",))["cka"]


def _channel_grams(parts: list, Kout: torch.Tensor, device, bufs: dict) -> None:
    """Centred Gram of every channel: ``parts`` = the activations of consecutive row batches, each (B, C, D)
    float32 on the CPU (m rows in all); Kout[c] = A_c A_c' (m x m, float64, A_c centred over the m rows), one BLAS
    dsyrk per channel (a product on CUDA). A channel's float64 copy is made in one pass (mean from the float32
    values, then subtract-and-cast straight from the batches into a reused buffer)."""
    m = sum(int(t.shape[0]) for t in parts)
    C, D = int(parts[0].shape[1]), int(parts[0].shape[2])
    nps = [t.numpy() for t in parts]
    if "x" not in bufs or bufs["x"].size < m * D:
        bufs["x"] = torch.empty(m * D, dtype=F64).numpy()
    if "k" not in bufs or bufs["k"].size < m * m:
        bufs["k"] = torch.empty(m * m, dtype=F64).numpy()
    o = bufs["x"][: m * D].reshape(m, D)
    for c in range(C):
        mean = sum(x[:, c].sum(0, dtype=np.float64) for x in nps) / m
        i0 = 0
        for x in nps:
            np.subtract(x[:, c], mean, out=o[i0 : i0 + len(x)])
            i0 += len(x)
        acc = _GramAcc(m, device, bufs["k"][: m * m] if device.type == "cpu" else None)
        acc.add(torch.from_numpy(o).to(device))
        acc.full(out=Kout[c])


def _channel_stats_memory(K: torch.Tensor, need_rows: bool):
    """(F, a, r) of :func:`_channel_stats` from the channel Grams K (C, m, m) held in memory."""
    C, m, _ = K.shape
    Kf = K.reshape(C, m * m)
    F = Kf @ Kf.T
    a = K.diagonal(dim1=1, dim2=2).clone()
    r = None
    if need_rows:  # r[c, d, i] = sum_j K_c,ij K_d,ij, batched over rows i
        r3 = torch.empty(m, C, C, dtype=F64, device=K.device)
        step = max(1, int(32e6 / (8 * m * 2 * C)))
        for i0 in range(0, m, step):
            i1 = min(i0 + step, m)
            torch.bmm(K[:, i0:i1].permute(1, 0, 2), K[:, i0:i1].permute(1, 2, 0), out=r3[i0:i1])
        r = r3.permute(1, 2, 0)
    return F, a, r


def _subset_rows(mel, cfg: dict, device, log) -> np.ndarray:
    """The clip indices (sorted) of the seeded subset of m = min(n_train, channel_max_clips) training clips of
    ``mel.h5``."""
    train, _ = train_mask(mel, minimum=4)
    rows_train = np.flatnonzero(train)
    m = min(len(rows_train), cfg["channel_max_clips"])
    log.info(
        f"channel vs channel CKA on {m} of {len(rows_train)} training clips"
        + (
            f" (seeded subset: similarity.channel_max_clips = {cfg['channel_max_clips']}, seed {cfg['seed']})"
            if m < len(rows_train)
            else " (all)"
        )
        + f", device {device}"
    )
    return rows_train[seeded_subset(len(rows_train), m, cfg["seed"], CHANNEL_STREAM)]


def _acts(feats, state, idx, layers, chans) -> dict:
    """{layer: float32 activations (len(idx), C, D) on the CPU} of the clip rows ``idx``."""
    got = feats.rows(state, idx, layers)
    return {a: torch.from_numpy(got[a].reshape(len(idx), chans[a], -1)) for a in layers}


def _stats_in_memory(feats, state, rows, layers, chans, dims, device, boot: bool, gbufs: dict) -> tuple[dict, float]:
    """({layer: (F, a, r)}, the time the forward passes ended) from the activations of all m clips held in memory
    (forward in batches of :data:`BATCH`; the channel Grams in the reused buffers ``gbufs``)."""
    m = len(rows)
    acts = {a: [] for a in layers}  # per row batch
    for i0 in range(0, m, BATCH):
        got = _acts(feats, state, rows[i0 : i0 + BATCH], layers, chans)
        for a in layers:
            acts[a].append(got[a])
    t_fwd = time.perf_counter()
    stats = {}
    for a in layers:
        if gbufs.get(("K", a)) is None or gbufs[("K", a)].shape[0] != chans[a]:
            gbufs[("K", a)] = torch.empty(chans[a], m, m, dtype=F64, device=device)
        _channel_grams(acts[a], gbufs[("K", a)], device, gbufs)
        stats[a] = _channel_stats_memory(gbufs[("K", a)], boot)
    return stats, t_fwd


def _stats_streamed(feats, state, rows, layers, chans, dims, device, boot: bool, block: int, log, what: str) -> dict:
    """{layer: (F, a, r)} streamed over row blocks of ``block`` clips (activations recomputed per block)."""
    m = len(rows)

    def acts_fn(idx, means=None):
        o = {a: v.to(device=device, dtype=F64) for a, v in _acts(feats, state, rows[idx], layers, chans).items()}
        if means is not None:
            o = {a: o[a] - means[a] for a in layers}
        return o

    sums = {a: torch.zeros(chans[a], dims[a], dtype=F64, device=device) for a in layers}
    for i0 in range(0, m, block):
        got = acts_fn(np.arange(i0, min(i0 + block, m)))
        for a in layers:
            sums[a] += got[a].sum(0)
    means = {a: sums[a] / m for a in layers}
    return _channel_stats(lambda idx: acts_fn(idx, means), m, block, boot, log, what)


def _channel_ci(F, r, vals, C: int, p: int, m: int, cfg: dict) -> dict:
    """{(c, d): (ci_low, ci_high)} of the bootstrap of every channel pair c < d with a finite CKA."""
    iu = [(c, d) for c, d in combinations(range(C), 2) if np.isfinite(vals["cka"][c, d])]
    if not iu:
        return {}
    fro2 = F.diagonal()
    psi = []
    for c, d in iu:
        sc = _Spec(n=m, p=p, trace=0.0, fro2=float(fro2[c]), aa=0.0)
        sd = _Spec(n=m, p=p, trace=0.0, fro2=float(fro2[d]), aa=0.0)
        psi.append(_cka_psi(r[c, d], r[c, c], r[d, d], sc, sd, float(vals["cka"][c, d]), m).cpu().numpy())
    lo, hi = _bootstrap_ci(
        np.array([vals["cka"][c, d] for c, d in iu]), np.stack(psi, 1), cfg["bootstrap"], cfg["seed"], 2
    )
    return {p: (float(lo_), float(hi_)) for p, lo_, hi_ in zip(iu, lo, hi)}


def _layer_rows(stats, a: str, C: int, p: int, m: int, measures, boot: bool, cfg: dict, who: dict) -> list[dict]:
    """The table rows of every channel pair (c < d) of layer ``a`` (C channels of p values) of one model and weight
    state (``who``: dataset, task, arch, seed, state)."""
    F, av, r = stats
    vals = _channel_measures(F, av, m, measures)
    ci = _channel_ci(F, r, vals, C, p, m, cfg) if boot else {}
    # chance (exact, under a uniform permutation of one channel's rows): CKA tr K_c tr K_d / ((m-1) ||K_c|| ||K_d||),
    # debiased CKA 0; no permutation band here (null_lo / null_hi NaN)
    tr, fro = av.sum(1).cpu().numpy(), F.diagonal().sqrt().cpu().numpy()
    arch, seed, state = who["arch"], who["seed"], who["state"]
    rows = []
    nan2 = (float("nan"), float("nan"))
    for c, d in combinations(range(C), 2):
        for mm in measures:
            v = float(vals[mm][c, d])
            lo, hi = ci.get((c, d), nan2) if mm == "cka" else nan2
            chance = float("nan")
            if np.isfinite(v):
                chance = float(tr[c] * tr[d] / ((m - 1) * fro[c] * fro[d])) if mm == "cka" else 0.0
            side = dict(arch=arch, seed=seed, trained=state)
            rows.append(
                similarity_row(
                    who["dataset"],
                    "channel_vs_channel",
                    who["task"],
                    {**side, "layer": f"{a}/ch{c}"},
                    {**side, "layer": f"{a}/ch{d}"},
                    mm,
                    v,
                    (lo, hi),
                    m,
                    p,
                    p,
                    "gram",
                    "" if np.isfinite(v) else "zero_variance",
                    chance=chance,
                )
            )
    return rows


def _state_rows(feats, state: str, rows: np.ndarray, measures, cfg: dict, device, gbufs: dict, dataset, log):
    """The table rows of one weight state: the network's conv1/pool1 channels on the subset clips ``rows``."""
    m = len(rows)
    boot = cfg["bootstrap"] > 0 and "cka" in measures
    ts = time.perf_counter()
    layers = [a for a in CHANNEL_LAYERS if a in feats.layers]
    chans = {a: int(feats.shapes[a][0]) for a in layers}
    dims = {a: int(np.prod(feats.shapes[a][1:])) for a in layers}
    act_bytes = m * sum(chans[a] * dims[a] for a in layers) * 4
    gram_bytes = 8 * m * m * (sum(chans.values()) + 2) + (8 * m * max(chans.values()) ** 2 if boot else 0)
    shapes = ", ".join(f"{a} {chans[a]} x {dims[a]}" for a in layers)
    what = f"channels of {feats.arch} seed {feats.seed} ({state})"
    if act_bytes + gram_bytes <= cfg["memory_mb"] * 1e6:
        stats, t_fwd = _stats_in_memory(feats, state, rows, layers, chans, dims, device, boot, gbufs)
        t_fwd -= ts
        log.info(
            f"{what}: {shapes}; forward {t_fwd:.1f} s, channel Grams and pairs {time.perf_counter() - ts - t_fwd:.1f} s"
        )
    else:
        per_clip = sum(chans[a] * dims[a] for a in layers) * 8 * 3
        block = int(max(16, min(1024, cfg["memory_mb"] * 1e6 / 4 / per_clip)))
        log.info(f"{what}: {shapes}: activations of {m} clips exceed memory_mb, streamed in row blocks of {block}")
        stats = _stats_streamed(
            feats, state, rows, layers, chans, dims, device, boot, block, log, f"{feats.arch} {state}"
        )
    who = dict(dataset=dataset, task=feats.task, arch=feats.arch, seed=int(feats.seed), state=state)
    out = []
    for a in layers:
        out += _layer_rows(stats[a], a, chans[a], dims[a], m, measures, boot, cfg, who)
    return out


@job(
    reads={"similarity": ("measures", "channel_max_clips", "bootstrap", "seed"), "deep": ("point",)},
    tunes={"similarity": ("device", "memory_mb")},
)
def similarity_channels(*, model, mel, table, settings, dataset, log=None) -> pd.DataFrame:
    """Channel vs channel CKA (and debiased CKA) of conv1 and pool1 of the model file ``model``, trained and
    untrained weights; written to ``table`` and returned.

    The network (:class:`deepfeat.nets.features.ModelFeatures`, which checks that mel.h5 is the model's) runs once
    per weight state on a seeded subset of m = min(n_train, ``channel_max_clips``) training clips (seed ``seed``;
    ``n`` = m in the output), inputs standardised with the model's train_mean/train_std, activations at
    ``deep.point``; channel c of a layer is its (H x W) map. Exact Gram form: the centred m x m Gram of every
    channel (float64, one dsyrk per channel), then all channel pairs at once (F = <K_c, K_d> in one product). When
    the activations of the subset do not fit ``memory_mb``, the Grams are streamed over row blocks instead
    (activations recomputed per block). Only the measures ``cka`` and ``cka_debiased`` of ``measures`` apply.
    Layers are written ``conv1/ch{c}``.
    """
    log = log or logging.getLogger(__name__)
    cfg = canonical(settings["similarity"])
    device = pick_device(cfg["device"])
    point = settings["deep"]["point"]
    measures = [mm for mm in cfg["measures"] if mm in ("cka", "cka_debiased")]
    out_rows: list[dict] = []
    if not measures:
        log.info("similarity_channels: neither cka nor cka_debiased requested, nothing to do")
    else:
        t0 = time.perf_counter()
        rows = _subset_rows(mel, cfg, device, log)
        gbufs: dict = {}
        with ModelFeatures(model, mel, CHANNEL_LAYERS, point, (), device, BATCH) as feats:
            for state in STATES:
                out_rows += _state_rows(feats, state, rows, measures, cfg, device, gbufs, dataset, log)
        log.info(f"similarity_channels: {len(out_rows)} rows in {time.perf_counter() - t0:.1f} s")
    df = pd.DataFrame(out_rows, columns=SIMILARITY_COLUMNS)
    write_csv(df, table)
    log.info(f"wrote {table} ({len(df)} rows)")
    return df
