"""Snakemake script of rule `figures`: every figure of one dataset into its figures folder."""
from deepfeat.io import rule_log
from deepfeat.plots import make_figures


def main(smk):
    with rule_log(smk) as log:
        make_figures(smk.input.tables, smk.input.mel, smk.input.features, smk.output.figures, dict(smk.params.report), log)


main(snakemake)  # noqa: F821
