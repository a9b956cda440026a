"""The opt-in export of deep features: the layers ``deep.store`` of a model's trained and untrained networks, for
every clip, as ``deep/{task}/{arch}/seed{seed}.h5`` (kind ``deep``, docs/formats.md, :mod:`deepfeat.formats.deep`).

Nothing in the workflow reads these files: every consumer computes the activations it needs from the model file
(:class:`deepfeat.nets.features.ModelFeatures`, the same computation). They are for users who want the arrays, and
they cost 4 bytes x clips x width x 2 weight states each (all five layers of 1dF at T = 128: 1.2 MB per clip).

Layout: groups ``trained/`` and ``untrained/``, one float32 (N x d) dataset per layer, rows aligned with the clip
table of mel.h5 (both splits, file order), attributes ``shape`` (JSON per-clip shape: [H, W] when averaged over
channels, else [C, H, W]; a row reshapes to it in C order), ``averaged_channels``, ``point``.

Memory: streamed batch by batch into pre-sized chunked HDF5 datasets (chunk rows divide the batch size, no chunk
cache), so the peak does not depend on the number of clips: one batch of ``deep.batch_size`` clips (~2 MB per clip
for Regular at T = 128); tests/test_extract.py checks that the peak RSS does not grow from N = 150 to N = 2,000.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from deepfeat.config import ConfigError, job
from deepfeat.formats.deep import STATES, write_deep
from deepfeat.formats.files import remove_stale_temporaries
from deepfeat.formats.mel import open_mel
from deepfeat.nets.features import ModelFeatures

REPORT_EVERY_S = 30.0  # seconds between progress lines


@job(reads={"deep": ("store", "point", "average_channels")}, tunes={"deep": ("batch_size", "device")})
def extract_features(*, model, mel, deep, settings, log: logging.Logger | None = None) -> dict:
    """Write the deep-feature file ``deep`` with the layers ``deep.store`` of the model file ``model`` over every
    clip of ``mel`` (mel.h5). ``batch_size`` and ``device`` change only speed and memory. Returns {layer: stored
    per-clip shape}."""
    log = log or logging.getLogger(__name__)
    d = settings["deep"]
    if not d["store"]:
        raise ConfigError("deep.store: empty, so there is nothing to export (name the layers to store)")
    remove_stale_temporaries(deep, log=log)
    t_start = time.perf_counter()
    store = list(d["store"])
    src = ModelFeatures(model, mel, store, d["point"], d["average_channels"], d["device"], d["batch_size"])
    with src, open_mel(mel) as f:
        n, avg = src.n_clips, set(d["average_channels"]) & set(store)
        log.info(
            f"exporting {src.arch} seed {src.seed} ({src.task}) at {d['point']} point: "
            + ", ".join(f"{a} {src.shapes[a]}{' (channel mean)' if a in avg else ''}" for a in store)
            + f" for {n} clips, trained + untrained, batch {d['batch_size']}, device {src.device}"
        )
        info = dict(arch=src.arch, seed=src.seed, task=src.task, layers=store, point=d["point"], averaged=avg)
        with write_deep(
            deep, f, n, **info, model=Path(model).name, shapes=src.shapes, batch_size=int(d["batch_size"])
        ) as dsets:
            t0, next_report, rows = time.perf_counter(), 0.0, np.arange(n)
            for i, state in enumerate(STATES):
                for pos, acts in src.batches(state, rows):
                    for a in store:
                        dsets[state, a][pos] = acts[a].cpu().numpy()
                    done = i * n + pos.stop
                    el = time.perf_counter() - t0
                    if el >= next_report or done == 2 * n:
                        log.info(
                            f"{done}/{2 * n} clip-states ({100 * done / (2 * n):.0f}%), {done / max(el, 1e-9):.0f}/s"
                        )
                        next_report = el + REPORT_EVERY_S
    log.info(f"wrote {deep} in {time.perf_counter() - t_start:.1f} s")
    return src.shapes


__all__ = ["extract_features"]
