"""Rule `probe_deep`: every layer of one model on every task and its control, plus conv3 + hand-crafted
concatenations."""

from deepfeat.probe import probe_deep
from deepfeat.workflow import run_job

run_job(snakemake, probe_deep)  # noqa: F821
