"""Snakemake script of rule `ingest`: audio source folder -> results/{dataset}/clips.h5 (see docs/formats.md)."""
from pathlib import Path

from deepfeat.ingest import ingest_dataset
from deepfeat.io import rule_log


def main(smk):
    with rule_log(smk) as log:
        summary = ingest_dataset(
            Path(smk.params.root),
            dict(smk.params.dataset),
            smk.params.name,
            Path(smk.output.clips),
            on_error=smk.params.on_error,
            log=log,
        )
        log.info(f"done: {summary['n_clips']} clips, {len(summary['skipped'])} files skipped")


main(snakemake)  # noqa: F821
