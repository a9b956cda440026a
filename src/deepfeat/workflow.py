"""The workflow's side of the package: the job grid, what each rule passes to its job, code fingerprints, and
the one function every rule script calls.

* :data:`JOBS` maps each rule to its job entry point (``module:function``). The entry point declares what it
  reads with :func:`deepfeat.config.job`; :func:`job_spec` reads that declaration from the source, without
  importing the module (the Snakefile must parse without torch, e.g. when jobs run in a conda environment).
* :func:`rule_settings` / :func:`rule_tuning`: the settings a rule passes, exactly the declared ones: ``reads``
  as ``params.settings`` (a change reruns the job), ``tunes`` as the JSON string resource ``tuning`` (a change
  reruns nothing: speed, memory and device do not change results beyond floating-point rounding).
* :func:`code_hash`: a fingerprint of the package code a job runs, found by following its imports (so an edit
  reruns exactly the jobs that import the edited module). Package ``__init__`` files are facades that only
  re-export (a test checks it): they are hashed, and a name imported through one is followed to the module that
  defines it, but the other modules they import are not part of the job's code.
* :func:`run_job`: what every script in ``scripts/`` does: unpack ``snakemake.*`` and call the job.

This module imports only the standard library, so the Snakefile can import it in any Python environment.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import json
import os
from functools import cache
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
PACKAGE = "deepfeat"

#: rule -> job entry point ("module:function"), the single list of what runs where
JOBS = {
    "render_demo": "deepfeat.data.render:render_dataset",
    "ingest": "deepfeat.data.ingest:ingest_dataset",
    "melspec": "deepfeat.data.mel:build_mel_store",
    "handcrafted": "deepfeat.features:build_store",
    "handcrafted_moments": "deepfeat.similarity:handcrafted_moments",
    "train": "deepfeat.nets:train_model",
    "extract": "deepfeat.nets:extract_features",
    "probe_handcrafted": "deepfeat.probe:probe_handcrafted",
    "probe_deep": "deepfeat.probe:probe_deep",
    "similarity_deep": "deepfeat.similarity:similarity_deep",
    "similarity_channels": "deepfeat.similarity:similarity_channels",
    "similarity_cross": "deepfeat.similarity:similarity_cross",
    "tables": "deepfeat.report:build_tables",
    "figures": "deepfeat.report:make_figures",
    "findings": "deepfeat.report:write_findings",
}

#: config keys the workflow itself reads (the grid and the results folder), besides the jobs' settings
WORKFLOW_KEYS = {"": ("results", "datasets"), "models": ("architectures", "seeds", "train_tasks")}


# ----------------------------------------------------------------------------------------------------------
# The grid
# ----------------------------------------------------------------------------------------------------------
def task_names(ds: dict) -> list[str]:
    return [t["name"] for t in ds["tasks"]]


def check_dataset(name: str, ds: dict, root: Path) -> None:
    """Semantic checks the JSON schema cannot express; raise ValueError naming the key."""
    names = task_names(ds)
    if len(set(names)) != len(names):
        raise ValueError(f"datasets.{name}.tasks: task names must be unique, got {names}")
    if ds["main_task"] not in names:
        raise ValueError(f"datasets.{name}.main_task: '{ds['main_task']}' is not one of the tasks {names}")
    main = next(t for t in ds["tasks"] if t["name"] == ds["main_task"])
    if main["type"] != "classification":
        raise ValueError(f"datasets.{name}.main_task: the main task must be a classification task")
    if "render" not in ds:
        if "path" not in ds:
            raise ValueError(f"datasets.{name}: give either 'path' (your data) or 'render' (built-in demo data)")
        p = Path(ds["path"])
        p = p if p.is_absolute() else root / p
        if not p.is_dir():
            raise ValueError(f"datasets.{name}.path: folder '{ds['path']}' does not exist")
        recordings = ds.get("recordings", {})
        marker = p / ("examples.json" if ds["format"] == "nsynth" else recordings.get("metadata", "metadata.csv"))
        if not marker.is_file():
            raise ValueError(f"datasets.{name}.path: '{marker}' not found (format '{ds['format']}' needs it)")
    else:
        want = {"notes": "nsynth", "scores": "recordings", "ensembles": "recordings"}[ds["render"]["kind"]]
        if ds["format"] != want:
            raise ValueError(f"datasets.{name}.format: render kind '{ds['render']['kind']}' produces '{want}' data")


def train_tasks(ds: dict, models: dict) -> list[str]:
    """Tasks the networks are trained on: 'main', 'all', or an explicit list (validated)."""
    sel = models.get("train_tasks", "main")
    names = task_names(ds)
    if sel == "main":
        return [ds["main_task"]]
    if sel == "all":
        return names
    bad = [t for t in sel if t not in names]
    if bad:
        raise ValueError(f"models.train_tasks: {bad} not among the tasks {names}")
    return list(sel)


# ----------------------------------------------------------------------------------------------------------
# Reading the package's source: modules, imports, job declarations
# ----------------------------------------------------------------------------------------------------------
def module_file(module: str) -> Path | None:
    """The source file of a ``deepfeat`` module (its ``__init__.py`` for a package), or None if there is none."""
    if module != PACKAGE and not module.startswith(PACKAGE + "."):
        return None
    base = PACKAGE_DIR.joinpath(*module.split(".")[1:])
    for p in (base / "__init__.py", base.with_suffix(".py")):
        if p.is_file():
            return p
    return None


@cache
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _absolute(module: str, path: Path, node: ast.ImportFrom) -> str:
    """The absolute module name of a (possibly relative) ``from ... import`` inside ``module``."""
    if not node.level:
        return node.module or ""
    pkg = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for _ in range(node.level - 1):
        pkg = pkg.rpartition(".")[0]
    return f"{pkg}.{node.module}" if node.module else pkg


def _defining_module(module: str, name: str, seen: frozenset = frozenset()) -> str:
    """The module that defines ``name`` as seen from ``module``: a submodule of that name, or the module a package
    facade re-exports it from, else ``module`` itself."""
    path = module_file(module)
    if path is None:
        return module
    if path.name == "__init__.py" and module_file(f"{module}.{name}") is not None:
        return f"{module}.{name}"
    if path.name == "__init__.py" and (module, name) not in seen:
        for node in _tree(path).body:
            if isinstance(node, ast.ImportFrom) and any((a.asname or a.name) == name for a in node.names):
                src = _absolute(module, path, node)
                orig = next(a.name for a in node.names if (a.asname or a.name) == name)
                return _defining_module(src, orig, seen | {(module, name)})
    return module


def _imports(module: str) -> set[str]:
    """The ``deepfeat`` modules whose code ``module`` runs (its direct imports, resolved by
    :func:`_defining_module`), plus the package ``__init__`` files that Python executes on the way."""
    path = module_file(module)
    out: set[str] = set()
    if path is None:
        return out
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if module_file(a.name) is not None)
        elif isinstance(node, ast.ImportFrom):
            src = _absolute(module, path, node)
            if module_file(src) is None:
                continue
            out.add(src)
            out.update(_defining_module(src, a.name) for a in node.names)
    for m in list(out):  # parents of every module are executed first
        parts = m.split(".")
        out.update(".".join(parts[:i]) for i in range(1, len(parts)))
    return {m for m in out if module_file(m) is not None}


@cache
def code_modules(module: str) -> tuple[str, ...]:
    """Every ``deepfeat`` module whose code ``module`` runs, itself included (sorted). Facades (``__init__``
    files) are included but not followed (see the module docstring)."""
    parts = module.split(".")
    todo, seen = [module], {module} | {".".join(parts[:i]) for i in range(1, len(parts))}
    while todo:
        m = todo.pop()
        if module_file(m).name == "__init__.py" and m != module:
            continue  # a facade reached on the way: hashed, not followed
        for dep in _imports(m):
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return tuple(sorted(seen))


def _entry(rule: str) -> tuple[str, str]:
    if rule not in JOBS:
        raise KeyError(f"no job for rule '{rule}'; known: {sorted(JOBS)}")
    module, func = JOBS[rule].split(":")
    return _defining_module(module, func), func


@cache
def code_hash(rule: str) -> str:
    """SHA-256 (first 16 hex digits) of the source of every package module the job of ``rule`` runs.

    Passed to the rule as ``params.code``: Snakemake reruns a job whose params changed, while for ``script:``
    rules it watches only the script file itself.
    """
    module, _ = _entry(rule)
    h = hashlib.sha256()
    for m in code_modules(module):
        h.update(m.encode())
        h.update(module_file(m).read_bytes())
    return h.hexdigest()[:16]


@cache
def job_spec(rule: str) -> dict:
    """{"reads": {section: [keys]}, "tunes": {...}} of the job of ``rule``, read from its ``@job(...)`` decorator
    in the source, or from ``@NAME`` where the module binds ``NAME = job(...)`` (the arguments must be literals)."""
    module, func = _entry(rule)
    path = module_file(module)
    body = _tree(path).body
    bound = {
        t.id: node.value
        for node in body
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)
        for t in node.targets
        if isinstance(t, ast.Name)
    }
    for node in body:
        if isinstance(node, ast.FunctionDef) and node.name == func:
            for dec in node.decorator_list:
                call = bound.get(dec.id) if isinstance(dec, ast.Name) else dec
                call = call if isinstance(call, ast.Call) else None
                name = getattr(call.func, "id", getattr(call.func, "attr", "")) if call else ""
                if name == "job":
                    spec = {"reads": {}, "tunes": {}}
                    for kw in call.keywords:
                        spec[kw.arg] = {
                            s: [k] if isinstance(k, str) else list(k) for s, k in ast.literal_eval(kw.value).items()
                        }
                    return spec
            raise ValueError(f"{path}: {func} has no @job(...) declaration")
    raise ValueError(f"{path}: no function {func} (the job of rule '{rule}')")


def _section_values(config: dict, section: str, keys, dataset: str | None) -> dict:
    if section == "dataset":
        if dataset is None:
            raise ValueError("dataset settings need the dataset name")
        src = config["datasets"][dataset]
    else:
        src = config.get(section, {})
    return {k: src[k] for k in keys if k in src}


#: settings that change the results of one architecture only: (section, key) -> the architectures they concern;
#: a rule with an ``arch`` wildcard passes them only to those jobs (the others do not rerun when they change)
ARCH_SETTINGS = {("models", "deformable"): ("Deformable",)}


def rule_settings(config: dict, rule: str, dataset: str | None = None, arch: str | None = None) -> dict:
    """The settings that change the results of ``rule``'s job ({section: {key: value}}), from a validated config
    (for the network ``arch`` when the rule has one: see :data:`ARCH_SETTINGS`)."""
    out = {s: _section_values(config, s, ks, dataset) for s, ks in job_spec(rule)["reads"].items()}
    for (s, k), archs in ARCH_SETTINGS.items():
        if arch is not None and arch not in archs and k in out.get(s, {}):
            del out[s][k]
    return out


def rule_tuning(config: dict, rule: str, dataset: str | None = None) -> str:
    """The speed/memory/device settings of ``rule``'s job, as compact JSON (a rule resource: no rerun trigger)."""
    t = {s: _section_values(config, s, ks, dataset) for s, ks in job_spec(rule)["tunes"].items()}
    return json.dumps(t, sort_keys=True, separators=(",", ":"))


# ----------------------------------------------------------------------------------------------------------
# The rule scripts
# ----------------------------------------------------------------------------------------------------------
def job_arguments(smk, fn) -> dict:
    """The keyword arguments of job ``fn`` from a Snakemake script object: named inputs and outputs (paths, or
    lists of paths), the wildcards and params that ``fn`` accepts, and ``settings`` (params.settings merged with
    the ``tuning`` resource)."""
    accepted = set(inspect.signature(fn).parameters)
    kw = {}
    for name, value in list(smk.input.items()) + list(smk.output.items()):
        if name in accepted:
            kw[name] = value
    missing = [n for n, _ in smk.output.items() if n not in accepted]
    if missing:
        raise TypeError(f"{fn.__name__} does not take the rule's output(s) {missing}")
    for name, value in list(smk.wildcards.items()) + list(smk.params.items()):
        if name in accepted and name not in ("settings", "code"):
            kw[name] = value
    settings = {s: dict(v) for s, v in dict(smk.params.get("settings", {}) or {}).items()}
    tuning = getattr(smk.resources, "tuning", None)
    for s, v in (json.loads(tuning) if tuning else {}).items():
        settings.setdefault(s, {}).update(v)
    kw["settings"] = settings
    return kw


def run_job(smk, fn) -> None:
    """Run job ``fn`` in a rule script: the rule's logger (:func:`deepfeat.runtime.rule_log`), then
    ``fn(**job_arguments(smk, fn), log=log)``."""
    from deepfeat.runtime import rule_log

    with rule_log(smk) as log:
        fn(**job_arguments(smk, fn), log=log)


def export_pythonpath(src: str) -> None:
    """Put ``src`` first on PYTHONPATH so every job (local, conda env, SLURM job step) imports this checkout."""
    parts = [src] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != src]
    os.environ["PYTHONPATH"] = os.pathsep.join(parts)
