"""The workflow's wiring: config validation, the job grid, code fingerprints, environments, lint, dry run."""
from __future__ import annotations

import copy
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from snakemake.utils import validate

from deepfeat import workflow as wf

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = str(ROOT / "schemas" / "config.schema.yaml")
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")


def load(name="config.yaml"):
    return yaml.safe_load((ROOT / name).read_text())


@pytest.mark.parametrize("name", ["config.yaml", "configs/ci.yaml", "configs/paper.yaml"])
def test_shipped_configs_validate(name):
    cfg = load(name)
    validate(cfg, SCHEMA)
    for ds_name, ds in cfg["datasets"].items():
        if "render" in ds:
            wf.check_dataset(ds_name, ds, ROOT)
        wf.train_tasks(ds, cfg["models"])


def test_defaults_are_filled():
    cfg = {"datasets": copy.deepcopy(load()["datasets"])}
    validate(cfg, SCHEMA)
    assert cfg["mel"]["hop_length"] == 502 and cfg["mel"]["n_fft"] == 2048
    assert cfg["models"]["epochs"] == 150 and cfg["models"]["lr"] == 0.005
    assert cfg["datasets"]["notes"]["split"]["test_fraction"] == 0.3


@pytest.mark.parametrize(
    "mutate, needle",
    [
        (lambda c: c.update(bogus_key=1), "bogus_key"),
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


def test_semantic_checks(tmp_path):
    ds = copy.deepcopy(load()["datasets"]["composers"])
    bad = dict(ds, main_task="nope")
    with pytest.raises(ValueError, match="main_task"):
        wf.check_dataset("composers", bad, ROOT)
    user = {k: v for k, v in ds.items() if k != "render"}
    with pytest.raises(ValueError, match="path"):
        wf.check_dataset("mine", user, ROOT)
    with pytest.raises(ValueError, match="does not exist"):
        wf.check_dataset("mine", dict(user, path=str(tmp_path / "missing")), ROOT)
    (tmp_path / "d").mkdir()
    with pytest.raises(ValueError, match="metadata.csv"):
        wf.check_dataset("mine", dict(user, path=str(tmp_path / "d")), ROOT)
    (tmp_path / "d" / "metadata.csv").write_text("path,composer\n")
    wf.check_dataset("mine", dict(user, path=str(tmp_path / "d")), ROOT)
    with pytest.raises(ValueError, match="train_tasks"):
        wf.train_tasks(ds, {"train_tasks": ["composer", "tempo"]})
    assert wf.train_tasks(ds, {"train_tasks": "all"}) == ["composer", "part"]
    assert wf.train_tasks(ds, {"train_tasks": "main"}) == ["composer"]


def test_code_hash_tracks_the_named_modules_only(tmp_path, monkeypatch):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    for m in ("io", "a", "b"):
        (pkg / f"{m}.py").write_text(f"# {m}\n")
    monkeypatch.setattr(wf, "PACKAGE_DIR", pkg)
    wf.code_hash.cache_clear()
    ha, hb = wf.code_hash("a"), wf.code_hash("b")
    (pkg / "b.py").write_text("# b changed\n")
    wf.code_hash.cache_clear()
    assert wf.code_hash("a") == ha and wf.code_hash("b") != hb
    (pkg / "io.py").write_text("# io changed\n")
    wf.code_hash.cache_clear()
    assert wf.code_hash("a") != ha
    wf.code_hash.cache_clear()


def _pins(requirements):
    return {re.split(r"==", r)[0].lower().replace("_", "-"): r for r in requirements if "==" in r}


def test_conda_envs_match_pyproject_pins():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = _pins(project["dependencies"])
    for env_file in (ROOT / "envs").glob("*.yaml"):
        env = yaml.safe_load(env_file.read_text())
        pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
        env_pins = _pins(pip)
        for name, spec in env_pins.items():
            assert pins.get(name) == spec, f"{env_file.name}: {spec} differs from pyproject ({pins.get(name)})"
        missing = set(pins) - set(env_pins) - {"snakemake", "snakemake-executor-plugin-slurm"}
        assert not missing, f"{env_file.name} lacks {sorted(missing)}"


def test_every_rule_script_exists_and_is_thin():
    rules = "\n".join(p.read_text() for p in (ROOT / "rules").glob("*.smk"))
    scripts = set(re.findall(r'script:\s*\n\s*"\.\./scripts/([\w]+\.py)"', rules))
    assert scripts, "no script rules found"
    for s in scripts:
        text = (ROOT / "scripts" / s).read_text()
        assert "snakemake.config" not in text, f"{s} reads the config directly; use params"
        assert len(text.splitlines()) < 120, f"{s} is not thin"
        assert "with rule_log(smk) as log:" in text, f"{s} does not log its failures (use deepfeat.io.rule_log)"


def test_rule_log_writes_the_traceback_of_a_failure_and_reraises(tmp_path):
    from types import SimpleNamespace

    from deepfeat.io import rule_log

    smk = SimpleNamespace(log=[str(tmp_path / "logs" / "x.log")], rule="train")
    with pytest.raises(ValueError, match="bad input"):
        with rule_log(smk) as log:
            log.info("starting")
            raise ValueError("bad input")
    text = (tmp_path / "logs" / "x.log").read_text()
    assert "starting" in text and "rule train failed" in text
    assert "Traceback" in text and "ValueError: bad input" in text


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
    for rel, sec in (("notes/train/family/Regular/seed1.tsv", 20.0), ("notes/train/family/Regular/seed2.tsv", 30.0),
                     ("notes/melspec.tsv", 4.0)):
        f = tmp_path / "benchmarks" / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(head + f"{sec}\t0:00:{int(sec):02d}\t100.5\t1\t1\t1\t0\t0\t0\t{sec}\n")
    s = workflow_times.summarise(workflow_times.collect(tmp_path / "benchmarks"))
    assert s.loc["train", "jobs"] == 2 and s.loc["train", "total_s"] == 50.0 and s.loc["melspec", "mean_s"] == 4.0
    assert list(s.index) == ["train", "melspec"]
    assert workflow_times.main([str(tmp_path / "benchmarks"), "--cores", "2"]) == 0
    assert "3 jobs, 54 job-seconds" in capsys.readouterr().out
    assert workflow_times.main([str(tmp_path / "nothing")]) == 1
