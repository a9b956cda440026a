"""The workflow's wiring: config validation, settings declarations, code fingerprints, scripts, lint, dry run."""

from __future__ import annotations

import ast
import copy
import importlib
import json
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from snakemake.utils import validate

from deepfeat import config as cf
from deepfeat import workflow as wf

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = str(ROOT / "src" / "deepfeat" / "config.schema.yaml")
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
PACKAGE = ROOT / "src" / "deepfeat"


def load(name="config.yaml"):
    return yaml.safe_load((ROOT / name).read_text())


# ----------------------------------------------------------------------------------------------------------
# Config and schema
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["config.yaml", "configs/ci.yaml", "configs/paper.yaml"])
def test_shipped_configs_validate(name):
    cfg = load(name)
    validate(cfg, SCHEMA)
    for ds_name, ds in cfg["datasets"].items():
        if "render" in ds:
            wf.check_dataset(ds_name, ds, ROOT)
        wf.train_tasks(ds, cfg["models"])


def test_snakemake_and_the_package_fill_the_same_defaults():
    cfg = {"datasets": copy.deepcopy(load()["datasets"])}
    ours = cf.validate(cfg)
    validate(cfg, SCHEMA)
    assert ours == cfg
    assert cfg["mel"]["hop_length"] == 502 and cfg["mel"]["n_fft"] == 2048
    assert cfg["models"]["epochs"] == 150 and cfg["models"]["lr"] == 0.005
    assert cfg["datasets"]["notes"]["split"]["test_fraction"] == 0.3
    # defaults that depend on the render kind come from the schema too
    assert cfg["datasets"]["notes"]["render"]["normalize"] == "instrument"
    assert cfg["datasets"]["composers"]["render"]["normalize"] == "file"
    assert cfg["datasets"]["composers"]["render"]["ensembles"] == 1


@pytest.mark.parametrize(
    "mutate, needle",
    [
        (lambda c: c.update(bogus_key=1), "bogus_key"),
        (lambda c: c.update(seed=0), "seed"),  # the top-level seed was read by nothing: it is gone
        (lambda c: c["mel"].update(n_mels="many"), "many"),
        (lambda c: c["models"].update(architectures=["ResNet"]), "ResNet"),
        (lambda c: c["datasets"]["notes"]["tasks"][0].update(type="ordinal"), "ordinal"),
        (lambda c: c["datasets"]["notes"].update(sampel_rate=3), "sampel_rate"),
    ],
)
def test_bad_config_is_rejected_naming_the_key(mutate, needle):
    cfg = load()
    mutate(cfg)
    with pytest.raises(Exception) as e:
        validate(cfg, SCHEMA)
    assert needle in str(e.value)
    with pytest.raises(cf.ConfigError) as e:
        cf.validate(cfg)
    assert needle in str(e.value)


def test_settings_reject_unknown_keys_and_fill_defaults():
    got = cf.settings("similarity", {"bootstrap": 7}, ["bootstrap", "seed"])
    assert got == {"bootstrap": 7, "seed": cf.schema()["properties"]["similarity"]["properties"]["seed"]["default"]}
    with pytest.raises(cf.ConfigError, match=r"similarity\.bootstrp: unknown key"):
        cf.settings("similarity", {"bootstrp": 7}, ["bootstrap"])
    with pytest.raises(cf.ConfigError, match=r"similarity\.bootstrap: -1 is less than the minimum"):
        cf.settings("similarity", {"bootstrap": -1}, ["bootstrap"])
    with pytest.raises(cf.ConfigError, match="unknown config section"):
        cf.settings("similarty", {}, [])

    @cf.job(reads={"probe": ("epochs",)}, tunes={"probe": ("device",)})
    def fake(*, settings):
        return settings

    assert fake(settings={"probe": {"epochs": 3}}) == {"probe": {"epochs": 3, "device": "auto"}}
    assert fake(settings={"probe": {"epochs": 3, "lr": 0.1}, "mel": {}})["probe"] == {"epochs": 3, "device": "auto"}
    with pytest.raises(cf.ConfigError, match=r"probe\.epoch: unknown key"):
        fake(settings={"probe": {"epoch": 3}})
    with pytest.raises(cf.ConfigError):
        cf.job(reads={"probe": ("no_such_key",)})  # a declaration naming a key the schema lacks fails at import


def _job_functions():
    out = {}
    for rule, target in wf.JOBS.items():
        module, func = target.split(":")
        out[rule] = getattr(importlib.import_module(module), func)
    return out


def test_every_rule_has_a_declared_job_and_the_static_reading_matches_the_code():
    for rule, fn in _job_functions().items():
        spec = fn.job
        static = wf.job_spec(rule)
        assert static["reads"] == {s: list(k) for s, k in spec.reads.items()}, rule
        assert static["tunes"] == {s: list(k) for s, k in spec.tunes.items()}, rule


def test_reads_and_tunes_never_overlap_and_cover_the_schema():
    """Schema and code agree: every key a job declares exists (checked at import), every schema key of every
    section is read by some job or by the workflow itself, and no module keeps a DEFAULTS table of its own."""
    used: dict[str, set] = {}
    for rule in wf.JOBS:
        spec = wf.job_spec(rule)
        for s in set(spec["reads"]) & set(spec["tunes"]):
            assert not set(spec["reads"][s]) & set(spec["tunes"][s]), (rule, s)
        for part in (spec["reads"], spec["tunes"]):
            for s, keys in part.items():
                used.setdefault(s, set()).update(keys)
    for s, keys in wf.WORKFLOW_KEYS.items():
        used.setdefault(s or "", set()).update(keys)
    for section in list(cf.schema()["properties"]) + ["dataset"]:
        if section in ("datasets", "results"):
            continue
        unused = set(cf.section_keys(section)) - used.get(section, set())
        if section == "dataset":
            unused -= {"path"}  # read by the workflow (check_dataset, the ingest root)
        assert not unused, f"schema keys of '{section}' that nothing reads: {sorted(unused)}"
    for p in PACKAGE.rglob("*.py"):
        assert not re.search(r"^\s*DEFAULTS\s*[:=]", p.read_text(), re.M), f"{p}: a DEFAULTS table besides the schema"


def test_rule_settings_pass_exactly_the_declared_keys():
    cfg = cf.validate(load())
    got = wf.rule_settings(cfg, "similarity_channels", "notes")
    assert set(got["similarity"]) == set(wf.job_spec("similarity_channels")["reads"]["similarity"])
    assert "channel_max_clips" in got["similarity"] and "memory_mb" not in got["similarity"]
    assert "channel_max_clips" not in wf.rule_settings(cfg, "similarity_deep", "notes")["similarity"]
    tuning = json.loads(wf.rule_tuning(cfg, "similarity_deep", "notes"))
    assert set(tuning["similarity"]) == {"device", "chunk_size", "memory_mb"}
    deform = {a: wf.rule_settings(cfg, "train", "notes", a)["models"] for a in ("Deformable", "Regular")}
    assert "deformable" in deform["Deformable"] and "deformable" not in deform["Regular"]
    ingest = wf.rule_settings(cfg, "ingest", "composers")
    assert ingest["dataset"]["sample_rate"] == 22050 and "render" not in ingest["dataset"]


# ----------------------------------------------------------------------------------------------------------
# Code fingerprints
# ----------------------------------------------------------------------------------------------------------
def _fake_package(tmp_path, monkeypatch):
    pkg = tmp_path / "deepfeat"
    (pkg / "sub").mkdir(parents=True)
    files = {
        "__init__.py": '"""facade"""\n',
        "base.py": "X = 1\n",
        "other.py": "Y = 2\n",
        "sub/__init__.py": "from deepfeat.sub.inner import f\nfrom deepfeat.sub.unused import g\n",
        "sub/inner.py": "from deepfeat import base\n\ndef f():\n    from .helper import h\n    return h\n",
        "sub/helper.py": "def h():\n    return 1\n",
        "sub/unused.py": "def g():\n    return 2\n",
        "jobmod.py": "from deepfeat.sub import f\n",
    }
    for rel, text in files.items():
        (pkg / rel).write_text(text)
    monkeypatch.setattr(wf, "PACKAGE_DIR", pkg)
    monkeypatch.setattr(wf, "JOBS", {"a": "deepfeat.jobmod:main", "b": "deepfeat.other:main"})
    for fn in (wf.code_hash, wf.code_modules, wf._tree):
        fn.cache_clear()
    return pkg


def _hashes():
    for fn in (wf.code_hash, wf.code_modules, wf._tree):
        fn.cache_clear()
    return wf.code_hash("a"), wf.code_hash("b")


def test_code_hash_follows_the_import_graph(tmp_path, monkeypatch):
    pkg = _fake_package(tmp_path, monkeypatch)
    assert wf.code_modules("deepfeat.jobmod") == (
        "deepfeat",
        "deepfeat.base",
        "deepfeat.jobmod",
        "deepfeat.sub",
        "deepfeat.sub.helper",
        "deepfeat.sub.inner",
    )
    a, b = _hashes()
    for rel, reruns_a in (
        ("sub/helper.py", True),  # imported inside a function, relatively
        ("base.py", True),  # imported by an imported module
        ("sub/unused.py", False),  # re-exported by the facade, but not used by the job
        ("sub/__init__.py", True),
    ):  # the facade itself executes
        (pkg / rel).write_text((pkg / rel).read_text() + "# edit\n")
        a2, b2 = _hashes()
        assert (a2 != a) == reruns_a, rel
        assert b2 == b, rel
        a = a2
    for fn in (wf.code_hash, wf.code_modules, wf._tree):
        fn.cache_clear()


def test_package_facades_only_reexport():
    """Facades (``__init__`` files) hold a docstring, imports and ``__all__``: no code of their own, so following
    names through them (and not the rest of what they import) is exact."""
    for init in PACKAGE.rglob("__init__.py"):
        for node in ast.parse(init.read_text()).body:
            ok = (
                isinstance(node, (ast.Import, ast.ImportFrom))
                or (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant))
                or (
                    isinstance(node, (ast.Assign, ast.AnnAssign))
                    and getattr((node.targets[0] if isinstance(node, ast.Assign) else node.target), "id", "")
                    in ("__all__", "__version__")
                )
            )
            assert ok, f"{init}: line {node.lineno} is code in a facade"


def test_real_jobs_hash_only_their_own_code():
    mods = {rule: set(wf.code_modules(wf._entry(rule)[0])) for rule in wf.JOBS}
    assert not any(m.startswith("deepfeat.similarity") for m in mods["train"])
    assert not any(m.startswith("deepfeat.probe") for m in mods["similarity_deep"])
    assert "deepfeat.similarity.channels" not in mods["similarity_deep"]
    assert any(m.startswith("deepfeat.nets") for m in mods["similarity_channels"])
    assert any(m.startswith("deepfeat.features") for m in mods["handcrafted"])
    for rule, ms in mods.items():
        assert "deepfeat.config" in ms, rule  # every job is declared with config.job


# ----------------------------------------------------------------------------------------------------------
# Scripts
# ----------------------------------------------------------------------------------------------------------
def test_every_rule_script_runs_its_job_and_nothing_else():
    rules = "\n".join(p.read_text() for p in (ROOT / "rules").glob("*.smk"))
    found = dict(re.findall(r'rule (\w+):.*?script:\s*\n\s*"\.\./scripts/(\w+)\.py"', rules, re.S))
    assert set(found) == set(wf.JOBS), sorted(set(found) ^ set(wf.JOBS))
    for rule, script in found.items():
        text = (ROOT / "scripts" / f"{script}.py").read_text()
        module, func = wf.JOBS[rule].split(":")
        assert f"from {module} import {func}" in text, script
        assert f"run_job(snakemake, {func})" in text, script
        assert "snakemake.config" not in text and len(text.splitlines()) < 12, script


def test_rules_pass_settings_code_and_tuning_of_their_job():
    rules = "\n".join(p.read_text() for p in (ROOT / "rules").glob("*.smk"))
    for rule in wf.JOBS:
        body = re.search(rf"rule {rule}:(.*?)(?=\nrule |\Z)", rules, re.S).group(1)
        assert f'settings=settings("{rule}")' in body and f'code=code_hash("{rule}")' in body, rule
        assert (f'tuning=tuning("{rule}")' in body) == bool(wf.job_spec(rule)["tunes"]), rule


def test_job_arguments_unpack_the_snakemake_object():
    from snakemake.iocontainers import Namedlist

    def fake(*, mel, table, settings, dataset, log=None):
        return None

    smk = SimpleNamespace(
        input=Namedlist(fromdict={"mel": "m.h5", "tracking_only": "x"}),
        output=Namedlist(fromdict={"table": "t.csv"}),
        wildcards=Namedlist(fromdict={"dataset": "notes", "seed": "1"}),
        params=Namedlist(fromdict={"settings": {"similarity": {"bootstrap": 3}}, "code": "abc"}),
        resources=SimpleNamespace(tuning='{"similarity":{"device":"cpu"}}'),
    )
    kw = wf.job_arguments(smk, fake)
    assert kw == {
        "mel": "m.h5",
        "table": "t.csv",
        "dataset": "notes",
        "settings": {"similarity": {"bootstrap": 3, "device": "cpu"}},
    }
    smk.output = Namedlist(fromdict={"other": "o.csv"})
    with pytest.raises(TypeError, match="other"):
        wf.job_arguments(smk, fake)


def test_rule_log_writes_the_traceback_of_a_failure_and_reraises(tmp_path):
    from deepfeat.runtime import rule_log

    smk = SimpleNamespace(log=[str(tmp_path / "logs" / "x.log")], rule="train")
    with pytest.raises(ValueError, match="bad input"):
        with rule_log(smk) as log:
            log.info("starting")
            raise ValueError("bad input")
    text = (tmp_path / "logs" / "x.log").read_text()
    assert "starting" in text and "rule train failed" in text
    assert "Traceback" in text and "ValueError: bad input" in text


def test_no_text_points_outside_the_repository():
    """Docstrings and docs speak of this repository alone: no machine paths, no files that are not in it."""
    texts = list(PACKAGE.rglob("*.py")) + list((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]
    texts += list((ROOT / "envs").glob("*.yaml")) + list((ROOT / "rules").glob("*.smk"))
    for p in texts:
        text = p.read_text()
        for bad in ("/work/", "shared/method.md", "shared/design.md", "design.md"):
            assert bad not in text, f"{p}: mentions {bad}"
        for m in re.finditer(r"\b(tests|docs|bench|scripts|rules|configs)/[\w./-]+\.(py|md|yaml|smk)\b", text):
            assert (ROOT / m.group(0)).exists(), f"{p}: names {m.group(0)}, which does not exist"


# ----------------------------------------------------------------------------------------------------------
# Snakemake itself
# ----------------------------------------------------------------------------------------------------------
def _snakemake(*args, cwd=ROOT):
    return subprocess.run([SNAKEMAKE, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_dry_run_of_default_config_lists_the_whole_grid():
    r = _snakemake("-n", "--quiet", "rules")
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout + r.stderr
    cfg = load()
    n_models = len(cfg["models"]["architectures"]) * len(cfg["models"]["seeds"]) * len(cfg["datasets"])
    assert re.search(rf"\btrain\s+{n_models}\b", out), out[-2000:]


def test_lint_is_clean():
    r = _snakemake("--lint")
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    assert "Lints for" not in out, out[-3000:]


def test_a_configfile_on_the_command_line_replaces_config_yaml(tmp_path):
    cfg = load("configs/ci.yaml")
    cfg["datasets"] = {"mini": cfg["datasets"]["notes"]}
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump(cfg))
    r = _snakemake("-n", "--configfile", str(tmp_path / "mine.yaml"))
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout + r.stderr
    assert "results/mini/clips.h5" in out and "results/notes/" not in out and "composers" not in out


def test_workflow_times_sums_the_benchmark_files_per_rule(tmp_path, capsys):
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import workflow_times
    finally:
        sys.path.pop(0)
    head = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    for rel, sec in (
        ("notes/train/family/Regular/seed1.tsv", 20.0),
        ("notes/train/family/Regular/seed2.tsv", 30.0),
        ("notes/melspec.tsv", 4.0),
    ):
        f = tmp_path / "benchmarks" / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(head + f"{sec}\t0:00:{int(sec):02d}\t100.5\t1\t1\t1\t0\t0\t0\t{sec}\n")
    s = workflow_times.summarise(workflow_times.collect(tmp_path / "benchmarks"))
    assert s.loc["train", "jobs"] == 2 and s.loc["train", "total_s"] == 50.0 and s.loc["melspec", "mean_s"] == 4.0
    assert list(s.index) == ["train", "melspec"]
    assert workflow_times.main([str(tmp_path / "benchmarks"), "--cores", "2"]) == 0
    assert "3 jobs, 54 job-seconds" in capsys.readouterr().out
    assert workflow_times.main([str(tmp_path / "nothing")]) == 1
