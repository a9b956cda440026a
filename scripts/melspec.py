"""Rule `melspec`: clips.h5 -> mel.h5 (dB mel-spectrograms)."""

from deepfeat.data.mel import build_mel_store
from deepfeat.workflow import run_job

run_job(snakemake, build_mel_store)  # noqa: F821
