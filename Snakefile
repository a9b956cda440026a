# deepfeat: relate the deep features of audio CNNs to hand-crafted signal-processing features.
# Run `make run` (sets up .venv on first use) or, inside the venv, `snakemake --profile profiles/default`.
import os
import sys
from pathlib import Path

from snakemake.utils import min_version, validate

min_version("9.0")

# config.yaml is the default; a --configfile given on the command line replaces it (instead of being merged
# into it, which would silently keep the demo datasets of config.yaml in a run on your own data).
if not workflow.overwrite_configfiles:

    configfile: "config.yaml"


report: "report/workflow.rst"


# The schema is the one source of every default: validation fills them into `config`.
validate(config, "src/deepfeat/config.schema.yaml")

# The package lives in src/: make it importable in every job (local, conda env or SLURM job step)
# without requiring an install, so rules always run the code of this checkout.
_SRC = str(Path(workflow.basedir) / "src")
sys.path.insert(0, _SRC)
from deepfeat.workflow import export_pythonpath

export_pythonpath(_SRC)


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/handcrafted.smk"
include: "rules/models.smk"
include: "rules/probes.smk"
include: "rules/similarity.smk"
include: "rules/report.smk"


rule all:
    default_target: True
    input:
        all_targets(),
