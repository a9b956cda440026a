"""Rule `handcrafted_moments`: the hand-crafted features' similarity self terms on the training clips."""

from deepfeat.similarity import handcrafted_moments
from deepfeat.workflow import run_job

run_job(snakemake, handcrafted_moments)  # noqa: F821
