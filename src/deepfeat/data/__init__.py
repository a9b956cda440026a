"""The data stages: built-in demo audio (:mod:`deepfeat.data.render`), the clips of a dataset
(:mod:`deepfeat.data.ingest`: ``clips.h5``) and their dB mel-spectrograms (:mod:`deepfeat.data.mel`: ``mel.h5``).

This file only re-exports; import the job entry points from their modules (``deepfeat.data.ingest``, ...).
"""

from deepfeat.data.audio import AudioError, load_audio, read_audio, resample
from deepfeat.data.sources import IngestError

__all__ = ["AudioError", "IngestError", "load_audio", "read_audio", "resample"]
