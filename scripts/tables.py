"""Rule `tables`: one dataset's probe, similarity and training outputs -> result tables."""

from deepfeat.report import build_tables
from deepfeat.workflow import run_job

run_job(snakemake, build_tables)  # noqa: F821
