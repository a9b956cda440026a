"""Rule `figures`: every figure of one dataset."""

from deepfeat.report import make_figures
from deepfeat.workflow import run_job

run_job(snakemake, make_figures)  # noqa: F821
