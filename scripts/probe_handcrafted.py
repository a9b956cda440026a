"""Snakemake script of rule probe_handcrafted: every hand-crafted feature x every task x the probe seeds."""
from deepfeat.io import rule_log, write_csv
from deepfeat.probe import probe_handcrafted


def main(smk):
    with rule_log(smk) as log:
        scores, confusion = probe_handcrafted(smk.input.features, smk.input.mel, dict(smk.params.probe),
                                              smk.params.dataset, log)
        write_csv(scores, smk.output.scores)
        write_csv(confusion, smk.output.confusion)
        log.info(f"wrote {smk.output.scores} ({len(scores)} rows) and {smk.output.confusion} ({len(confusion)} rows)")


main(snakemake)  # noqa: F821
