"""Snakemake script of rule similarity_channels: channel vs channel CKA of conv1 and pool1 of one model
(trained and untrained weights) on the training clips."""
from deepfeat.io import rule_log, write_csv
from deepfeat.similarity import similarity_channels


def main(smk):
    with rule_log(smk) as log:
        df = similarity_channels(smk.input.model, smk.input.mel, dict(smk.params.similarity), dict(smk.params.deep),
                                 log, dataset=smk.params.dataset)
        write_csv(df, smk.output.table)
        log.info(f"wrote {smk.output.table} ({len(df)} rows)")


main(snakemake)  # noqa: F821
