"""Snakemake script of rule similarity_deep: every layer (trained and untrained) of one model vs every
hand-crafted feature, trained vs untrained per layer, and layer vs layer, on the training clips (hand-crafted self
terms read from the dataset's handcrafted_moments.h5)."""
from deepfeat.io import rule_log, write_csv
from deepfeat.similarity import similarity_deep


def main(smk):
    with rule_log(smk) as log:
        df = similarity_deep(smk.input.deep, smk.input.features, smk.input.mel, dict(smk.params.similarity),
                             smk.params.dataset, log, moments_h5=smk.input.moments)
        write_csv(df, smk.output.table)
        log.info(f"wrote {smk.output.table} ({len(df)} rows)")


main(snakemake)  # noqa: F821
