"""The train/test split of a dataset's clips, and the per-class counts of each side.

"random" = seeded random split stratified by the main task's class (every class with >= 2 clips lands on both
sides); "group" = whole groups (``split.group_by``: "recording" or a metadata field/column) go to one side,
stratified by class when every group has a single class.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from deepfeat import config
from deepfeat.data.sources import IngestError
from deepfeat.formats.cliptable import TEST, TRAIN


def split_clips(
    labels: np.ndarray,
    test_fraction: float,
    seed: int,
    method: str | None = None,
    groups: np.ndarray | None = None,
    log: logging.Logger | None = None,
) -> np.ndarray:
    """Train/test assignment (uint8: 0 train, 1 test) of clips with main-task class ``labels``.

    "random": per class (sorted), a seeded permutation puts k_c of its n_c clips in the test set, where the
    k_c are the largest-remainder apportionment of round(test_fraction * N) to test_fraction * n_c, clamped
    to [1, n_c - 1] so every class with >= 2 clips appears on both sides (a single clip goes to train).
    "group": whole groups go to one side. When every group holds one class, per class a seeded permutation of
    its groups is cut where the test share is closest to test_fraction (at least one group per side when the
    class has >= 2 groups); otherwise the same is done over all groups at once. Deterministic for a seed.
    ``method=None`` is the schema's default (``split.method``).
    """
    log = log or logging.getLogger(__name__)
    method = config.default("dataset", "split")["method"] if method is None else method
    labels = np.asarray(labels).astype(str)
    N = labels.size
    if not 0 < test_fraction < 1:
        raise ValueError(f"split.test_fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    split = np.full(N, TRAIN, dtype=np.uint8)
    classes, inv, n_c = np.unique(labels, return_inverse=True, return_counts=True)
    if method == "random":
        k = apportion(n_c, test_fraction)
        for c in range(classes.size):
            idx = np.flatnonzero(inv == c)
            split[idx[rng.permutation(idx.size)[: k[c]]]] = TEST
    elif method == "group":
        _group_split(split, labels, inv, classes.size, groups, test_fraction, rng, log)
    else:
        raise ValueError(f"split.method must be 'random' or 'group', got {method!r}")
    n_test = int(split.sum())
    if n_test == 0 or n_test == N:
        side = "test" if n_test == 0 else "training"
        raise IngestError(
            f"split: the {side} set is empty ({N} clips, {classes.size} classes, method {method}); "
            "more clips or recordings are needed"
        )
    in_test = np.zeros(classes.size, dtype=bool)
    in_test[inv[split == TEST]] = True
    in_train = np.zeros(classes.size, dtype=bool)
    in_train[inv[split == TRAIN]] = True
    for c in np.flatnonzero(~in_test | ~in_train):
        log.warning(
            f"split: class '{classes[c]}' ({n_c[c]} clips) appears only in the "
            f"{'training' if in_train[c] else 'test'} set"
        )
    return split


def _group_split(
    split: np.ndarray,
    labels: np.ndarray,
    inv: np.ndarray,
    n_classes: int,
    groups,
    test_fraction: float,
    rng: np.random.Generator,
    log,
) -> None:
    """The "group" method of :func:`split_clips`: sets ``split`` to TEST for the clips of the test groups."""
    if groups is None:
        raise ValueError("split.method 'group' needs group values")
    groups = np.asarray(groups).astype(str)
    if groups.shape != labels.shape:
        raise ValueError(f"groups ({groups.shape}) and labels ({labels.shape}) differ in length")
    g_names, g_inv, g_size = np.unique(groups, return_inverse=True, return_counts=True)
    if g_names.size < 2:
        raise IngestError(f"split.group_by: only one group ({g_names[0]!r}): cannot split whole groups")
    # class of each group, if unique
    pairs = np.unique(np.stack([g_inv, inv]), axis=1)
    single = pairs.shape[1] == g_names.size
    if single:
        g_class = np.empty(g_names.size, dtype=np.int64)
        g_class[pairs[0]] = pairs[1]
        units = [np.flatnonzero(g_class == c) for c in range(n_classes)]
    else:
        log.warning("split: groups span several classes; assigning groups without class stratification")
        units = [np.arange(g_names.size)]
    g_test = np.zeros(g_names.size, dtype=bool)
    for gs in units:
        perm = gs[rng.permutation(gs.size)]
        if perm.size < 2:
            continue
        cum = np.cumsum(g_size[perm])[:-1]  # test clips after taking the first 1 .. size-1 groups
        m = int(np.argmin(np.abs(cum - test_fraction * g_size[perm].sum()))) + 1
        g_test[perm[:m]] = True
    split[g_test[g_inv]] = TEST


def apportion(n_c: np.ndarray, test_fraction: float) -> np.ndarray:
    """Test clips per class: largest-remainder apportionment of round(f N) to f n_c, clamped to [1, n_c - 1].

    Classes with one clip get 0 (they stay in training). Ties in the remainders go to the earlier class.
    """
    n_c = np.asarray(n_c, dtype=np.int64)
    ideal = test_fraction * n_c
    k = np.floor(ideal).astype(np.int64)
    extra = int(round(test_fraction * n_c.sum())) - int(k.sum())
    if extra > 0:
        order = np.argsort(-(ideal - k), kind="stable")
        k[order[:extra]] += 1
    k = np.where(n_c >= 2, np.clip(k, 1, n_c - 1), 0)
    return k


def class_counts(meta: pd.DataFrame, tasks: list[dict]) -> dict:
    """{task: {"train": {class: n}, "test": {class: n}}} for the classification tasks of a clip table."""
    out = {}
    for t in tasks:
        if t["type"] != "classification":
            continue
        col = meta[t["name"]].astype(str)
        out[t["name"]] = {
            side: {str(k): int(v) for k, v in col[meta["split"] == code].value_counts().sort_index().items()}
            for side, code in (("train", TRAIN), ("test", TEST))
        }
    return out
