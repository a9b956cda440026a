"""Snakemake script of rule `findings`: the dataset's findings page (Markdown + HTML) from its tables."""
from deepfeat.findings import write_findings
from deepfeat.io import get_logger


def main(smk):
    log = get_logger(smk.log[0])
    write_findings(smk.input.tables, smk.output.md, smk.output.html, smk.params.dataset, dict(smk.params.report), log)


main(snakemake)  # noqa: F821
