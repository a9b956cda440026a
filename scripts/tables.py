"""Snakemake script of rule `tables`: aggregate one dataset's probe, similarity and training outputs."""
from deepfeat.io import rule_log
from deepfeat.tables import build_tables


def main(smk):
    with rule_log(smk) as log:
        inputs = {name: smk.input[name] for name in smk.input.keys()}
        build_tables(inputs, smk.output.tables, smk.params.dataset, log)


main(snakemake)  # noqa: F821
