"""Rule `findings`: the dataset's findings page (Markdown + HTML) from its tables."""

from deepfeat.report import write_findings
from deepfeat.workflow import run_job

run_job(snakemake, write_findings)  # noqa: F821
