"""Snakemake rule `extract`: frozen activations of the trained and untrained weights of one model file."""
from deepfeat.extract import extract_features
from deepfeat.io import rule_log


def main(smk):
    with rule_log(smk) as log:
        extract_features(smk.input.model, smk.input.mel, smk.output.deep, dict(smk.params.deep), log=log)


main(snakemake)  # noqa: F821
