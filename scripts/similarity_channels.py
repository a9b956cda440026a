"""Rule `similarity_channels`: channel vs channel CKA of conv1 and pool1 of one model."""

from deepfeat.similarity import similarity_channels
from deepfeat.workflow import run_job

run_job(snakemake, similarity_channels)  # noqa: F821
