"""Rule `render_demo`: render a built-in demo dataset into results/{dataset}/raw/ (manifest.json last)."""

from deepfeat.data.render import render_dataset
from deepfeat.workflow import run_job

run_job(snakemake, render_dataset)  # noqa: F821
