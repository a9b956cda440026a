"""Decoding probes: how well a feature (hand-crafted or a CNN layer) decodes each task of a dataset.

* :mod:`~deepfeat.probe.standardisation`: z-scoring with training statistics (also streamed); Gram matrices
  (also summed over column groups).
* :mod:`~deepfeat.probe.rows`: a feature's standardised rows held in memory or computed on demand (from a
  stage file or a network, batch by batch) behind one interface.
* :mod:`~deepfeat.probe.logistic`: classification probes (batched SGD logistic regression, primal or dual form,
  exactly the reference ``nn.Linear`` + ``optim.SGD`` + ``DataLoader`` protocol).
* :mod:`~deepfeat.probe.linear`: regression probes (OLS, or ridge with a fixed or leave-one-out penalty; the
  covariance form when the feature is narrower than the training split, else the Gram form).
* :mod:`~deepfeat.probe.plan`: how each feature is probed within the memory budget (held, dual from a Gram
  matrix over column groups, or rows recomputed), by estimated cost.
* :mod:`~deepfeat.probe.loading`, :mod:`~deepfeat.probe.tables`: reading features into standardised slabs; the
  tidy output tables (docs/formats.md).
* :mod:`~deepfeat.probe.runner`, :mod:`~deepfeat.probe.pipeline`: running a feature by its plan; the jobs
  :func:`probe_handcrafted` and :func:`probe_deep`.
* :mod:`~deepfeat.probe.control`: the control tasks (labels permuted by recording) every probe is also fitted on,
  and the bootstrap replicates of the test scores (``*.boot.h5``).
"""

from deepfeat.probe.linear import RIDGE_GRID, fit_linear
from deepfeat.probe.logistic import confusion_matrix, fit_logistic, fit_logistic_many, init_linear
from deepfeat.probe.pipeline import CONCAT_LAYER, probe_deep, probe_handcrafted
from deepfeat.probe.plan import logistic_costs
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
