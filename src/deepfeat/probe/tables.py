"""The probe jobs' tidy output tables (docs/formats.md): scores and long confusion matrices.

* **Scores** (:data:`deepfeat.formats.tables.PROBE_COLUMNS`): one row per value; accuracy as a fraction in
  [0, 1], rmse in target units; train and test split.
* **Confusions** (:data:`deepfeat.formats.tables.CONFUSION_COLUMNS`): the test split's true x predicted counts,
  class names, zeros kept.

Rows are ordered by feature (as given), trained before untrained, probe task (as given), so the order does not
depend on how the probes were grouped for training.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from deepfeat.formats.tables import CONFUSION_COLUMNS, PROBE_COLUMNS

KEY_COLUMNS = [c for c in PROBE_COLUMNS if c not in ("metric", "split", "value")]  # what identifies one probe


class ProbeTables:
    """Collects the score and confusion rows of one job (dataset ``dataset``)."""

    def __init__(self, dataset: str):
        self.dataset = dataset
        self.scores: list[dict] = []
        self.confusion: list[tuple[dict, list[str], np.ndarray]] = []

    def keys(self, feature, probe_task, probe_seed="", arch="", seed="", layer="", trained="", train_task=""):
        """The key columns of one probe ('' where they do not apply, e.g. for hand-crafted features)."""
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
        }

    def add_scores(self, keys: dict, metric: str, train: float, test: float) -> None:
        self.scores.append({**keys, "metric": metric, "split": "train", "value": float(train)})
        self.scores.append({**keys, "metric": metric, "split": "test", "value": float(test)})

    def add_confusion(self, keys: dict, classes: list[str], cm: np.ndarray) -> None:
        self.confusion.append((keys, list(classes), np.asarray(cm)))

    def frames(self, features: list[str], tasks: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Both tables, rows ordered by feature (as given), trained before untrained, task (as given); the
        order therefore does not depend on how probes were grouped for training."""
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
        conf = pd.DataFrame(cols, columns=CONFUSION_COLUMNS)
        return self._sorted(scores, features, tasks), self._sorted(conf[CONFUSION_COLUMNS], features, tasks)

    @staticmethod
    def _sorted(df: pd.DataFrame, features: list[str], tasks: list[str]) -> pd.DataFrame:
        rank = {
            "feature": {v: i for i, v in enumerate(features)},
            "trained": {"": 0, "trained": 0, "untrained": 1},
            "probe_task": {v: i for i, v in enumerate(tasks)},
        }
        keys = pd.DataFrame({c: df[c].map(r) for c, r in rank.items()})
        order = keys.sort_values(list(rank), kind="stable").index
        return df.loc[order].reset_index(drop=True)
