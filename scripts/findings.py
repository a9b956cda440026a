"""Snakemake script of rule `findings`: the dataset's findings page (Markdown + HTML) from its tables."""
from deepfeat.findings import write_findings
from deepfeat.io import rule_log


def main(smk):
    with rule_log(smk) as log:
        write_findings(smk.input.tables, smk.output.md, smk.output.html, smk.params.dataset, dict(smk.params.report), log)


main(snakemake)  # noqa: F821
