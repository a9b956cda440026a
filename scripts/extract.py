"""Rule `extract`: frozen activations of the trained and untrained weights of one model."""

from deepfeat.nets import extract_features
from deepfeat.workflow import run_job

run_job(snakemake, extract_features)  # noqa: F821
