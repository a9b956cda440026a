"""Rule `probe_handcrafted`: every hand-crafted feature x every task (and its control) x the probe seeds."""

from deepfeat.probe import probe_handcrafted
from deepfeat.workflow import run_job

run_job(snakemake, probe_handcrafted)  # noqa: F821
