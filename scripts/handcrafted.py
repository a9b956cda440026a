"""Snakemake script of rule `handcrafted`: clips.h5 + mel.h5 -> handcrafted.h5 (one dataset per feature)."""
from deepfeat.handcrafted import build_store
from deepfeat.io import rule_log


def main(smk):
    with rule_log(smk) as log:
        build_store(smk.input.clips, smk.input.mel, smk.output.features, dict(smk.params.handcrafted),
                    dict(smk.params.mel), log=log)


main(snakemake)  # noqa: F821
