"""Control tasks of the probes, and the bootstrap replicates of the probes' test scores.

* **Control task** (Hewitt & Liang 2019, here at the recording level): the task's labels (class codes, or
  regression targets) permuted across recordings by :func:`deepfeat.stats.permute_by_recording` with
  ``stats.seed`` and :data:`deepfeat.stats.CONTROL_STREAM`, over ALL clips of the clip table (all clips of one
  recording keep one label; the labels' distribution over recordings is kept), then split as usual. Every probe
  is fitted and evaluated on it too, in the same batch as the task's probe (the same standardised rows, Gram
  matrices, eigendecompositions and initial weights; a ridge penalty chosen by leave-one-out is chosen again on
  the control targets), so a feature's control score says how much of its task score a probe of that width and
  protocol reaches on labels that carry no information about the feature, only the recordings' label
  frequencies.
* **Replicates** of every test score: the recording-level bootstrap weights of the test clips
  (:func:`deepfeat.stats.bootstrap_weights`, ``stats.seed``, ``stats.resamples``,
  :data:`deepfeat.stats.PROBE_STREAM`) applied to the per-test-clip correctness or squared error
  (:meth:`deepfeat.probe.tables.ProbeTables.replicates`); the same resamples in every probe job of a dataset.
"""

from __future__ import annotations

import numpy as np

from deepfeat import stats
from deepfeat.formats.cliptable import TEST
from deepfeat.formats.files import open_h5
from deepfeat.formats.replicates import fingerprint, write_replicates

UNIT = "test clips"


def clip_meta(mel) -> tuple[np.ndarray, np.ndarray]:
    """(clip ids, recording ids) of the clip table of ``mel`` (mel.h5), in clip-table order."""
    with open_h5(mel, "mel") as f:
        return f["meta"]["clip_id"].asstr()[:], f["meta"]["recording"].asstr()[:]


def control_tasks(tasks: list[dict], recordings, split: np.ndarray, seed: int) -> None:
    """Give every task (``y`` over all clips) its control labels ``control`` (the labels permuted by recording,
    module doc) and, for classification, ``control_chance`` (the majority fraction of the control's test
    labels). In place."""
    te = split == TEST
    for t in tasks:
        t["control"] = stats.permute_by_recording(t["y"], recordings, seed, stats.CONTROL_STREAM)
        if t["type"] == "classification":
            counts = np.bincount(t["control"][te], minlength=len(t["classes"]))
            t["control_chance"] = counts.max() / max(1, counts.sum())


def write_probe_replicates(path, tables, features, tasks, clip_ids, recordings, split, st: dict, log) -> None:
    """Write the ``*.boot.h5`` of a probe job (docs/formats.md): every test score of ``tables`` and its
    ``st['resamples']`` replicates over the test clips (``st``: the job's ``stats`` settings)."""
    te = split == TEST
    W = stats.bootstrap_weights(np.asarray(recordings)[te], int(st["resamples"]), int(st["seed"]), stats.PROBE_STREAM)
    keys, values, reps = tables.replicates(W, features, tasks)
    write_replicates(
        path,
        keys,
        values,
        reps,
        seed=int(st["seed"]),
        stream=stats.PROBE_STREAM,
        unit=UNIT,
        clips=fingerprint(np.asarray(clip_ids)[te]),
    )
    log.info(f"wrote {path}: {len(keys)} test score(s) x {W.shape[0]} bootstrap replicates over {int(te.sum())} {UNIT}")


__all__ = ["UNIT", "clip_meta", "control_tasks", "write_probe_replicates"]
