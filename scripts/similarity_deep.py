"""Rule `similarity_deep`: one model's layers vs hand-crafted features, trained vs untrained, layer vs layer."""

from deepfeat.similarity import similarity_deep
from deepfeat.workflow import run_job

run_job(snakemake, similarity_deep)  # noqa: F821
