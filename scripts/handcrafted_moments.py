"""Snakemake script of rule handcrafted_moments: the self terms of every hand-crafted feature on the training
clips (z-scoring, covariance spectra, Gram-subset factors), computed once per dataset for similarity_deep."""
from deepfeat.io import get_logger
from deepfeat.similarity import handcrafted_moments, write_handcrafted_moments


def main(smk):
    log = get_logger(smk.log[0])
    try:
        hm = handcrafted_moments(smk.input.features, smk.input.mel, dict(smk.params.similarity), log)
        write_handcrafted_moments(hm, smk.output.moments, smk.input.features)
    except Exception:
        log.exception("handcrafted_moments failed")
        raise
    log.info(f"wrote {smk.output.moments} ({len(hm.keys)} features, {hm.n} training clips, Gram subset {hm.m})")


main(snakemake)  # noqa: F821
