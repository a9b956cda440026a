# Shared definitions: the results root, the grid of datasets x tasks x architectures x seeds, and what every rule
# passes to its job: params.settings (the config settings the job reads: a change reruns it), params.code (a
# fingerprint of the package code the job runs: an edit reruns it) and the resource `tuning` (speed, memory and
# device settings: a change reruns nothing). The declarations live beside the code (deepfeat.config.job).
from snakemake.exceptions import WorkflowError

from deepfeat.workflow import check_dataset, code_hash, rule_settings, rule_tuning, train_tasks

R = config["results"]
DATASETS = list(config["datasets"])
CONV_ARCHS = [a for a in config["models"]["architectures"] if a != "FeedForward"]
ARCHS = list(config["models"]["architectures"])
SEEDS = list(config["models"]["seeds"])

for _name, _ds in config["datasets"].items():
    try:
        check_dataset(_name, _ds, Path(workflow.basedir))
        train_tasks(_ds, config["models"])
    except ValueError as _e:
        raise WorkflowError(f"config error: {_e}")


wildcard_constraints:
    dataset="|".join(DATASETS),
    task="[A-Za-z0-9_]+",
    arch="Regular|Deformable|Dilated|1dF|1dT|FeedForward",
    conv_arch="Regular|Deformable|Dilated|1dF|1dT",
    seed=r"\d+",


def settings(rule):
    """params.settings of ``rule``: exactly the config settings its job reads that change its results (settings of
    one architecture only, such as models.deformable, reach only that architecture's jobs)."""
    return lambda w: rule_settings(config, rule, w.dataset, w.get("arch"))


def tuning(rule):
    """The ``tuning`` resource of ``rule``: the job's speed/memory/device settings (JSON; no rerun trigger)."""
    return lambda w: rule_tuning(config, rule, w.dataset)


def ds_cfg(w):
    return config["datasets"][w.dataset]


def models_of(dataset, archs):
    """(task, arch, seed) of every network trained for a dataset."""
    ds = config["datasets"][dataset]
    return [(t, a, s) for t in train_tasks(ds, config["models"]) for a in archs for s in SEEDS]


def model_files(dataset):
    return [f"{R}/{dataset}/models/{t}/{a}/seed{s}.pt" for t, a, s in models_of(dataset, ARCHS)]


def history_files(dataset):
    return [f"{R}/{dataset}/models/{t}/{a}/seed{s}.history.csv" for t, a, s in models_of(dataset, ARCHS)]


def deep_files(dataset):
    """The exported deep features (only when deep.store names layers: no consumer reads them)."""
    if not config["deep"]["store"]:
        return []
    return [f"{R}/{dataset}/deep/{t}/{a}/seed{s}.h5" for t, a, s in models_of(dataset, CONV_ARCHS)]


def probe_deep_files(dataset):
    return [f"{R}/{dataset}/probes/deep/{t}/{a}/seed{s}.csv" for t, a, s in models_of(dataset, CONV_ARCHS)]


def similarity_deep_files(dataset):
    return [f"{R}/{dataset}/similarity/deep/{t}/{a}/seed{s}.csv" for t, a, s in models_of(dataset, CONV_ARCHS)]


def similarity_channel_files(dataset):
    return [f"{R}/{dataset}/similarity/channels/{t}/{a}/seed{s}.csv" for t, a, s in models_of(dataset, CONV_ARCHS)]


def similarity_cross_files(dataset):
    ds = config["datasets"][dataset]
    return [f"{R}/{dataset}/similarity/cross/{t}.csv" for t in train_tasks(ds, config["models"])]


def ingest_source(w):
    ds = ds_cfg(w)
    if "render" in ds:
        return f"{R}/{w.dataset}/raw/manifest.json"
    marker = "examples.json" if ds["format"] == "nsynth" else ds["recordings"]["metadata"]
    return os.path.join(ds["path"], marker)


def ingest_root(w):
    ds = ds_cfg(w)
    return f"{R}/{w.dataset}/raw" if "render" in ds else ds["path"]


def boot_of(csvs):
    """The bootstrap replicate files (*.boot.h5) written beside these probe or similarity CSVs."""
    return [f.removesuffix(".csv") + ".boot.h5" for f in csvs]


def conv_model_files(dataset, task):
    """The model files of the convolutional networks trained on ``task`` (the inputs of similarity_cross)."""
    return [f"{R}/{dataset}/models/{t}/{a}/seed{s}.pt" for t, a, s in models_of(dataset, CONV_ARCHS) if t == task]


def all_targets():
    out = []
    for d in DATASETS:
        out += [f"{R}/{d}/findings.md", f"{R}/{d}/findings.html", f"{R}/{d}/figures"] + deep_files(d)
    return out
