"""Decoding probes: how well a feature (hand-crafted or a frozen CNN layer) decodes each task of a dataset.

* :mod:`~deepfeat.probe.standardisation`: z-scoring with training statistics; training Gram matrices.
* :mod:`~deepfeat.probe.logistic`: classification probes (batched SGD logistic regression, primal or dual form,
  exactly the reference ``nn.Linear`` + ``optim.SGD`` + ``DataLoader`` protocol).
* :mod:`~deepfeat.probe.linear`: regression probes (OLS, or ridge with a fixed or leave-one-out penalty).
* :mod:`~deepfeat.probe.loading`, :mod:`~deepfeat.probe.tables`: reading features into standardised slabs; the
  tidy output tables (docs/formats.md).
* :mod:`~deepfeat.probe.pipeline`: the jobs :func:`probe_handcrafted` and :func:`probe_deep`.
"""

from deepfeat.probe.linear import RIDGE_GRID, fit_linear
from deepfeat.probe.logistic import confusion_matrix, fit_logistic, fit_logistic_many, init_linear, logistic_costs
from deepfeat.probe.pipeline import CONCAT_LAYER, probe_deep, probe_handcrafted
from deepfeat.probe.standardisation import gram_matrix, standardise

__all__ = [
    "CONCAT_LAYER",
    "RIDGE_GRID",
    "confusion_matrix",
    "fit_linear",
    "fit_logistic",
    "fit_logistic_many",
    "gram_matrix",
    "init_linear",
    "logistic_costs",
    "probe_deep",
    "probe_handcrafted",
    "standardise",
]
