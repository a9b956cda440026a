"""Rule `ingest`: the dataset's audio folder -> results/{dataset}/clips.h5 (4 s clips, labels, split)."""

from deepfeat.data.ingest import ingest_dataset
from deepfeat.workflow import run_job

run_job(snakemake, ingest_dataset)  # noqa: F821
