"""Rule `train`: one network (task x arch x seed) -> model file (initial + final weights) and history."""

from deepfeat.nets import train_model
from deepfeat.workflow import run_job

run_job(snakemake, train_model)  # noqa: F821
