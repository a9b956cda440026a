"""Snakemake rule `train`: one network (task x arch x seed) on one mel.h5 -> model file + history CSV."""
from deepfeat.io import rule_log
from deepfeat.train import train_model


def main(smk):
    with rule_log(smk) as log:
        train_model(
            mel_h5=smk.input.mel,
            task=smk.wildcards.task,
            arch=smk.wildcards.arch,
            seed=int(smk.wildcards.seed),
            params=dict(smk.params.models),
            out_model=smk.output.model,
            out_history=smk.output.history,
            checkpoint=smk.params.checkpoint,
            log=log,
        )


main(snakemake)  # noqa: F821
