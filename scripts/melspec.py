"""Snakemake script of rule `melspec`: results/{dataset}/clips.h5 -> results/{dataset}/mel.h5 (dB mel-spectrograms)."""
from pathlib import Path

from deepfeat.io import rule_log
from deepfeat.mel import build_mel_store


def main(smk):
    with rule_log(smk) as log:
        summary = build_mel_store(Path(smk.input.clips), Path(smk.output.mel), dict(smk.params.mel), log=log)
        log.info(f"done: {summary['shape']}, {summary['clips_per_s']:.1f} clips/s")


main(snakemake)  # noqa: F821
