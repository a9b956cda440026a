"""Rule `similarity_cross`: seed vs seed and architecture vs architecture of one training task."""

from deepfeat.similarity import similarity_cross
from deepfeat.workflow import run_job

run_job(snakemake, similarity_cross)  # noqa: F821
