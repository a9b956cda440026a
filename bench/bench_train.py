"""Training throughput: deepfeat's device-resident loop vs a plain DataLoader loop, same model and data.

Both loops train the same network from the same initial weights with SGD (lr 0.005, momentum 0.9) on the same
synthetic standardised spectrograms, for the same number of epochs, shuffled each epoch:
- ours: :func:`deepfeat.nets.train.train_epoch` (whole split one tensor, batches ``x.index_select(0, idx)`` of a
  seeded randperm);
- baseline: ``DataLoader(TensorDataset(x, y), batch_size, shuffle=True)`` (per-sample indexing + default collate).
After one warm-up epoch each, the loops run in interleaved rounds (the machine is shared, so load hits both
alike) and the median epoch is reported: clips/s of each and the ratio ours / baseline, for the full training
step and for the data path alone (producing every batch of an epoch, no model).

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_train.py --arch Regular --n 512 --epochs 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from deepfeat.nets.models import build_model
from deepfeat.nets.train import batch_indices, deterministic, train_epoch


def dataloader_epoch(model, opt, loader):
    model.train()
    for xb, yb in loader:
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="Regular")
    ap.add_argument("--n", type=int, default=512, help="training clips")
    ap.add_argument("--n-mels", type=int, default=128)
    ap.add_argument("--frames", type=int, default=128)
    ap.add_argument("--classes", type=int, default=8)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=2, help="timed epochs (rounds) per loop, after one warm-up epoch")
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    dev = torch.device(a.device)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(a.n, 1, a.n_mels, a.frames, generator=g).to(dev)
    y = torch.randint(0, a.classes, (a.n,), generator=g).to(dev)

    torch.manual_seed(1)
    init = build_model(a.arch, a.n_mels, a.frames, a.classes).state_dict()

    def fresh():
        m = build_model(a.arch, a.n_mels, a.frames, a.classes)
        m.load_state_dict(init)
        m.to(dev)
        return m, torch.optim.SGD(m.parameters(), lr=0.005, momentum=0.9)

    def timed(fn):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    gen = torch.Generator().manual_seed(1)
    loader = DataLoader(
        TensorDataset(x, y), batch_size=a.batch, shuffle=True, generator=torch.Generator().manual_seed(1)
    )
    m_ours, o_ours = fresh()
    m_base, o_base = fresh()
    loops = {
        "train: ours (device-resident, randperm index)": lambda: train_epoch(
            m_ours, o_ours, x, y, "classification", a.batch, gen
        ),
        "train: baseline (DataLoader, TensorDataset)": lambda: dataloader_epoch(m_base, o_base, loader),
        # batches produced and dropped one by one, as a training loop consumes them
        "data only: ours (index_select batches)": lambda: [
            x.index_select(0, i).shape for i in batch_indices(a.n, a.batch, gen, dev)
        ],
        "data only: baseline (DataLoader batches)": lambda: [b[0].shape for b in loader],
    }
    times = {k: [] for k in loops}
    with deterministic(dev):
        for fn in loops.values():  # warm-up
            fn()
        for _ in range(a.epochs):  # interleaved rounds: load from other processes hits both loops alike
            for k, fn in loops.items():
                times[k].append(timed(fn))
    rate = {k: a.n / statistics.median(v) for k, v in times.items()}

    print(
        f"{a.arch}, {a.n} clips of 1x{a.n_mels}x{a.frames}, batch {a.batch}, median of {a.epochs} interleaved "
        f"epochs, device {dev}, torch threads {torch.get_num_threads()}"
    )
    for k, v in rate.items():
        print(f"  {k:48s} {v:10.1f} clips/s")
    keys = list(rate)
    print(f"  ratio ours / baseline, training loop: {rate[keys[0]] / rate[keys[1]]:.2f}x")
    print(f"  ratio ours / baseline, data path only: {rate[keys[2]] / rate[keys[3]]:.2f}x")


if __name__ == "__main__":
    main()
