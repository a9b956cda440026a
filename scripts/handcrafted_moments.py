"""Snakemake script of rule handcrafted_moments: the self terms of every hand-crafted feature on the training
clips (z-scoring, covariance spectra, Gram-subset factors), computed once per dataset for similarity_deep."""
from deepfeat.io import rule_log
from deepfeat.similarity import handcrafted_moments, write_handcrafted_moments


def main(smk):
    with rule_log(smk) as log:
        hm = handcrafted_moments(smk.input.features, smk.input.mel, dict(smk.params.similarity), log)
        write_handcrafted_moments(hm, smk.output.moments, smk.input.features)
        log.info(f"wrote {smk.output.moments} ({len(hm.keys)} features, {hm.n} training clips, Gram subset {hm.m})")


main(snakemake)  # noqa: F821
