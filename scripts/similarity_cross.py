"""Snakemake script of rule similarity_cross: seed vs seed and architecture vs architecture at the same layer,
over every deep-feature file of one training task, on the training clips."""
from deepfeat.io import rule_log, write_csv
from deepfeat.similarity import similarity_cross


def main(smk):
    with rule_log(smk) as log:
        df = similarity_cross(list(smk.input.deep), smk.input.mel, dict(smk.params.similarity), smk.params.dataset,
                              log)
        write_csv(df, smk.output.table)
        log.info(f"wrote {smk.output.table} ({len(df)} rows)")


main(snakemake)  # noqa: F821
