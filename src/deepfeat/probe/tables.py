"""The probe jobs' tidy output tables (docs/formats.md): scores, long confusion matrices and the bootstrap
replicates of the test scores.

* **Scores** (:data:`deepfeat.formats.tables.PROBE_COLUMNS`): one row per value; accuracy as a fraction in
  [0, 1], rmse in target units; train and test split; ``labels`` "task" or "control" (the same probe on the
  control task, :func:`deepfeat.probe.control.control_tasks`).
* **Confusions** (:data:`deepfeat.formats.tables.CONFUSION_COLUMNS`): the test split's true x predicted counts,
  class names, zeros kept; task probes only.
* **Replicates** (``*.boot.h5``, :mod:`deepfeat.formats.replicates`): one row per test score (task and control),
  the stats.resamples recording-level bootstrap replicates of that score over the test clips
  (:meth:`ProbeTables.replicates`), from the per-test-clip correctness (accuracy) or squared error (rmse) kept
  by :meth:`ProbeTables.add_scores`.

Rows are ordered by feature (as given), trained before untrained, probe task (as given), task before control,
so the order does not depend on how the probes were grouped for training.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from deepfeat.formats.tables import CONFUSION_COLUMNS, PROBE_COLUMNS
from deepfeat.stats import weighted_mean

KEY_COLUMNS = [c for c in PROBE_COLUMNS if c not in ("metric", "split", "value")]  # what identifies one probe
BOOT_COLUMNS = [c for c in PROBE_COLUMNS if c not in ("split", "value")]  # the key columns of a *.boot.h5 row
LABELS = ("task", "control")


class ProbeTables:
    """Collects the score and confusion rows of one job (dataset ``dataset``), and the per-test-clip results
    (correctness or squared error) behind each test score."""

    def __init__(self, dataset: str):
        self.dataset = dataset
        self.scores: list[dict] = []
        self.confusion: list[tuple[dict, list[str], np.ndarray]] = []
        self.per_clip: list[np.ndarray] = []  # per test score (in order of the test rows of ``scores``)

    def keys(self, feature, probe_task, probe_seed="", arch="", seed="", layer="", trained="", train_task=""):
        """The key columns of one probe ('' where they do not apply, e.g. for hand-crafted features); ``labels``
        is "task" (:meth:`add_scores` sets it)."""
        return {
            "dataset": self.dataset,
            "feature": feature,
            "arch": arch,
            "seed": seed,
            "layer": layer,
            "trained": trained,
            "train_task": train_task,
            "probe_task": probe_task,
            "probe_seed": probe_seed,
            "labels": "task",
        }

    def add_scores(
        self, keys: dict, metric: str, train: float, test: float, per_clip=None, labels: str = "task"
    ) -> None:
        """The train and test score of one probe on the task's labels or its control (``labels``). ``per_clip``:
        the (test clips,) correctness (accuracy) or squared error (rmse) whose mean (rmse: its root) is ``test``;
        the replicates need it (None: NaN replicates)."""
        if labels not in LABELS:
            raise ValueError(f"labels must be one of {LABELS}, got {labels!r}")
        keys = {**keys, "labels": labels}
        self.scores.append({**keys, "metric": metric, "split": "train", "value": float(train)})
        self.scores.append({**keys, "metric": metric, "split": "test", "value": float(test)})
        self.per_clip.append(None if per_clip is None else np.asarray(per_clip, np.float64))

    def add_confusion(self, keys: dict, classes: list[str], cm: np.ndarray) -> None:
        self.confusion.append(({**keys, "labels": "task"}, list(classes), np.asarray(cm)))

    def frames(self, features: list[str], tasks: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Both tables, rows ordered by feature (as given), trained before untrained, task (as given), task
        before control; the order therefore does not depend on how probes were grouped for training."""
        scores = pd.DataFrame(self.scores, columns=PROBE_COLUMNS)
        sizes = np.array([len(c) ** 2 for _, c, _ in self.confusion], dtype=np.int64)
        cols = {
            k: np.repeat(np.array([keys[k] for keys, _, _ in self.confusion], dtype=object), sizes) for k in KEY_COLUMNS
        }
        cols["split"] = np.full(int(sizes.sum()), "test", dtype=object)
        cls = [np.asarray(c, dtype=object) for _, c, _ in self.confusion]
        cols["true"] = np.concatenate([np.repeat(c, len(c)) for c in cls] or [np.empty(0, object)])
        cols["predicted"] = np.concatenate([np.tile(c, len(c)) for c in cls] or [np.empty(0, object)])
        cols["count"] = np.concatenate([cm.reshape(-1) for _, _, cm in self.confusion] or [np.empty(0, np.int64)])
        conf = pd.DataFrame({k: cols[k] for k in CONFUSION_COLUMNS}, columns=CONFUSION_COLUMNS)
        return self._sorted(scores, features, tasks), self._sorted(conf, features, tasks)

    def replicates(self, weights: np.ndarray, features: list[str], tasks: list[str]):
        """(keys, values, replicates) of every test score, rows in the order of the test rows of :meth:`frames`:
        ``keys`` the :data:`BOOT_COLUMNS` as text (as the CSV writes them), ``values`` the test scores,
        ``replicates`` (rows x B) the score on each weighted resample of ``weights`` (B x test clips, e.g.
        :func:`deepfeat.stats.bootstrap_weights`): sum_i w_bi c_i / sum_i w_bi (accuracy; c the correctness) or
        its root over squared errors (rmse), all rows by one matrix product. Rows without per-clip results, and
        resamples without clips, are NaN."""
        weights = np.asarray(weights, np.float64)
        B, n_te = weights.shape
        test = pd.DataFrame([s for s in self.scores if s["split"] == "test"], columns=PROBE_COLUMNS)
        test["_row"] = np.arange(len(test))
        test = self._sorted(test, features, tasks)
        rows = test["_row"].to_numpy()
        known = np.array([self.per_clip[i] is not None for i in rows], dtype=bool)
        M = np.zeros((len(rows), n_te))
        for j, i in enumerate(rows):
            if known[j]:
                if self.per_clip[i].shape != (n_te,):
                    raise ValueError(f"per-clip results of {self.per_clip[i].shape} for {n_te} test clips")
                M[j] = self.per_clip[i]
        reps = weighted_mean(M.T, weights).T  # (rows x B): every row's weighted mean by one product
        rmse = (test["metric"] == "rmse").to_numpy()
        reps[rmse] = np.sqrt(reps[rmse])
        reps[~known] = np.nan
        keys = pd.DataFrame({c: test[c].map(_text).to_numpy(dtype=object) for c in BOOT_COLUMNS}, columns=BOOT_COLUMNS)
        return keys, test["value"].to_numpy(np.float64), reps

    @staticmethod
    def _sorted(df: pd.DataFrame, features: list[str], tasks: list[str]) -> pd.DataFrame:
        rank = {
            "feature": {v: i for i, v in enumerate(features)},
            "trained": {"": 0, "trained": 0, "untrained": 1},
            "probe_task": {v: i for i, v in enumerate(tasks)},
        }
        keys = pd.DataFrame({c: df[c].map(r) for c, r in rank.items()})
        if "labels" in df:
            keys["labels"] = df["labels"].map({v: i for i, v in enumerate(LABELS)})
        order = keys.sort_values(list(keys.columns), kind="stable").index
        return df.loc[order].reset_index(drop=True)


def _text(v) -> str:
    """A key value as the CSV writes it ('' for missing)."""
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return ""
    return str(v)
