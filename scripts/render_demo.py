"""Snakemake script of rule `render_demo`: render a built-in demo dataset into results/{dataset}/raw/.

Everything goes into the folder of ``output.manifest``; ``manifest.json`` is written last (see deepfeat.render).
"""
import json
from pathlib import Path

from deepfeat.io import rule_log
from deepfeat.render import render_dataset


def main(smk):
    with rule_log(smk) as log:
        out_dir = Path(smk.output.manifest).parent
        render = json.loads(json.dumps(dict(smk.params.render)))  # plain types, a private copy
        manifest = render_dataset(out_dir, render, int(smk.params.sample_rate), log=log)
        log.info(f"done: {manifest['n_files']} files, {manifest['audio_seconds']:.0f} s of audio in {out_dir}")


main(snakemake)  # noqa: F821
