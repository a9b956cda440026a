"""Rule `handcrafted`: clips.h5 + mel.h5 -> handcrafted.h5 (one dataset per feature)."""

from deepfeat.features import build_store
from deepfeat.workflow import run_job

run_job(snakemake, build_store)  # noqa: F821
