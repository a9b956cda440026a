"""The hand-crafted features: a registry of feature families (:mod:`~deepfeat.features.registry`), the chunk they
are computed on (:mod:`~deepfeat.features.chunk`), their numerics (:mod:`~deepfeat.features.ricker`,
:mod:`~deepfeat.features.stats`), the built-in families (:mod:`~deepfeat.features.families`, where the table of
what each family computes lives) and the job that builds ``handcrafted.h5`` (:func:`build_store`,
:mod:`~deepfeat.features.store`).

Adding a feature
----------------
Write one function that takes the :class:`Chunk` being processed and returns a list of :class:`Feature`
(display name, ``(B, ...)`` values, definition, params), decorate it with ``@register("my_family")`` and
add ``my_family`` to ``handcrafted.features`` in ``config.yaml``::

    import librosa
    from deepfeat.features import Chunk, Feature, register

    @register("zero_crossing_rate")
    def _zcr(ctx: Chunk) -> list[Feature]:
        hop, n_fft = ctx.mel_params["hop_length"], ctx.mel_params["n_fft"]
        z = librosa.feature.zero_crossing_rate(ctx.audio, frame_length=n_fft, hop_length=hop)[:, 0]
        return [Feature("Zero Crossing Rate", z, "fraction of sign changes per frame",
                        {"frame_length": n_fft, "hop_length": hop})]

The function must be in a module that :mod:`deepfeat.features.store` imports (the built-in ones are in
:mod:`deepfeat.features.families`) so that the workflow's job registers it. ``ctx.audio`` (B x L float64),
``ctx.mel`` (B x F x T float64 dB), ``ctx.stft_magnitude()``, ``ctx.wavelet_stats(axis, width)`` and
``ctx.time_to_db(threshold)`` are computed once per chunk and shared between families; ``ctx.state`` persists
across chunks (e.g. a random generator). New parameters go into the ``handcrafted`` section of ``config.yaml``
and of ``src/deepfeat/config.schema.yaml`` (the one place of their defaults), and into the ``reads`` of
:func:`build_store`.

This file only re-exports.
"""

from deepfeat.features.chunk import WAVELET_AXES, Chunk, make_plan
from deepfeat.features.registry import FEATURES, Feature, FeatureFn, register
from deepfeat.features.ricker import (
    ricker,
    ricker_bins_mean,
    ricker_matrix,
    ricker_time_mean,
    ricker_transform,
    ricker_transform_bins,
)
from deepfeat.features.stats import COMBINED_STATS, STATS, kurtosis, summary_stats, time_to_db
from deepfeat.features.store import build_store, check_settings
from deepfeat.formats.handcrafted import feature_key, list_features, read_feature

__all__ = [
    "COMBINED_STATS",
    "Chunk",
    "FEATURES",
    "Feature",
    "FeatureFn",
    "STATS",
    "WAVELET_AXES",
    "build_store",
    "check_settings",
    "feature_key",
    "kurtosis",
    "list_features",
    "make_plan",
    "read_feature",
    "register",
    "ricker",
    "ricker_bins_mean",
    "ricker_matrix",
    "ricker_time_mean",
    "ricker_transform",
    "ricker_transform_bins",
    "summary_stats",
    "time_to_db",
]
