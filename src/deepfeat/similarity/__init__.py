"""Representational similarity of deep and hand-crafted features (the method's Experiments 2 and 3).

The measures (linear CKA, debiased CKA, LR R^2, CCA and SVCCA, their held-out twins and the Procrustes shape
distance) are defined in :mod:`deepfeat.similarity.measures`;
:func:`all_measures` and its one-measure shortcuts compute them for a pair of in-memory arrays. The jobs compare
blocks of columns on the training clips through one engine (:mod:`deepfeat.similarity.engine`): deep layers computed
from the model file on the rows each pass needs (or read from an exported deep-feature file) and the features of
``handcrafted.h5`` (:mod:`~deepfeat.similarity.sources`), as streamed covariance blocks (feature form,
:mod:`~deepfeat.similarity.moments`, :mod:`~deepfeat.similarity.feature_form`) or, for wide blocks, the exact Gram
form on a seeded subset of clips (:mod:`~deepfeat.similarity.gram`, :mod:`~deepfeat.similarity.gram_form`,
:mod:`~deepfeat.similarity.gram_space`, :mod:`~deepfeat.similarity.gram_blocks`), with bootstrap intervals of CKA
(:mod:`~deepfeat.similarity.bootstrap`; with the ``stats`` settings also their recording-level replicates, written
to ``*.boot.h5``), chance levels and permutation bands (:mod:`~deepfeat.similarity.chance`), every phase planned
within ``memory_mb``. Hand-crafted columns are z-scored
with training statistics first (:mod:`~deepfeat.similarity.reader`).

Job entry points: :func:`handcrafted_moments` (the hand-crafted self terms, once per dataset; the file format is
:mod:`deepfeat.formats.moments`), :func:`similarity_deep` (one model file: every layer vs every hand-crafted
feature, trained vs untrained per layer, layer vs layer), :func:`similarity_cross` (the model files of one training
task: seed vs seed and architecture vs architecture at the same layer) and :func:`similarity_channels` (channel vs
channel CKA of conv1/pool1 on a seeded subset of at most ``channel_max_clips`` training clips; channels are written
as layer ``conv1/ch3``). Output columns: :data:`deepfeat.formats.tables.SIMILARITY_COLUMNS` (docs/formats.md).
"""

from deepfeat.formats.moments import HandcraftedMoments, read_handcrafted_moments, write_handcrafted_moments
from deepfeat.formats.tables import MEASURES
from deepfeat.similarity.cache import MOMENT_SETTINGS, handcrafted_moments
from deepfeat.similarity.channels import channel_cka, similarity_channels
from deepfeat.similarity.comparisons import similarity_cross, similarity_deep
from deepfeat.similarity.moments import Moments
from deepfeat.similarity.pair import all_measures, cca, cka, cka_debiased, lr_r2, svcca

__all__ = [
    "MEASURES",
    "MOMENT_SETTINGS",
    "HandcraftedMoments",
    "Moments",
    "all_measures",
    "cca",
    "channel_cka",
    "cka",
    "cka_debiased",
    "handcrafted_moments",
    "lr_r2",
    "read_handcrafted_moments",
    "similarity_channels",
    "similarity_cross",
    "similarity_deep",
    "svcca",
    "write_handcrafted_moments",
]
