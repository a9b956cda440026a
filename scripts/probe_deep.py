"""Snakemake script of rule probe_deep: every layer of one model (trained and untrained) on every task, plus
trained conv3 concatenated with the configured hand-crafted features on the main task."""
from deepfeat.io import rule_log, write_csv
from deepfeat.probe import probe_deep


def main(smk):
    with rule_log(smk) as log:
        scores, confusion = probe_deep(smk.input.deep, smk.input.features, smk.input.mel, dict(smk.params.probe),
                                       smk.params.dataset, log)
        write_csv(scores, smk.output.scores)
        write_csv(confusion, smk.output.confusion)
        log.info(f"wrote {smk.output.scores} ({len(scores)} rows) and {smk.output.confusion} ({len(confusion)} rows)")


main(snakemake)  # noqa: F821
