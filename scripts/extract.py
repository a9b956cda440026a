"""Snakemake rule `extract`: frozen activations of the trained and untrained weights of one model file."""
from deepfeat.extract import extract_features
from deepfeat.io import get_logger


def main(smk):
    log = get_logger(smk.log[0])
    try:
        extract_features(smk.input.model, smk.input.mel, smk.output.deep, dict(smk.params.deep), log=log)
    except Exception:
        log.exception("extract failed")
        raise


main(snakemake)  # noqa: F821
