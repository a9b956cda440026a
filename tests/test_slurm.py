"""The SLURM profile against a real one-node SLURM cluster (started by .ci/run from ../shared/slurm/).

The run uses profiles/slurm exactly as shipped, overriding only what differs on the test cluster (its one
partition is 'debug', it has no accounting and 2 CPUs), and checks that every job went through sbatch and
that GPU-tagged jobs asked for a GPU.
"""
from __future__ import annotations

import shutil
import subprocess
import time

import pytest
import yaml

from e2e import copy_checkout, snakemake

pytestmark = [pytest.mark.slow, pytest.mark.slurm]


def cluster_up() -> bool:
    if not shutil.which("sinfo"):
        return False
    r = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True)
    return r.returncode == 0 and any(s.startswith(("idle", "mix", "alloc")) for s in r.stdout.split())


@pytest.mark.skipif(not shutil.which("sinfo"), reason="SLURM is not installed (.ci/run installs and starts it)")
def test_tiny_workflow_runs_through_slurm(tmp_path):
    assert cluster_up(), "SLURM is installed but no node is up: run ../shared/slurm/start-local-slurm.sh"
    work = copy_checkout(tmp_path / "work")
    cfg = yaml.safe_load((work / "configs" / "ci.yaml").read_text())
    cfg["datasets"] = {"notes": cfg["datasets"]["notes"]}
    cfg["models"].update(architectures=["Regular", "FeedForward"], seeds=[1])
    (work / "slurm_test.yaml").write_text(yaml.safe_dump(cfg))

    profile = yaml.safe_load((work / "profiles" / "slurm" / "config.yaml").read_text())
    assert profile["executor"] == "slurm"
    overrides = [f"{rule}:slurm_partition=debug" for rule in profile["set-resources"]]
    overrides += [f"{rule}:cpus_per_task=1" for rule in profile["set-resources"]]
    t0 = time.time()
    r = snakemake(
        work,
        "--profile", "profiles/slurm",
        "--configfile", "slurm_test.yaml",
        "--slurm-no-account",
        "--slurm-status-command", "squeue",
        "--slurm-init-seconds-before-status-checks", "5",
        "--default-resources", "slurm_partition=debug", "cpus_per_task=1", "mem_mb=2000", "runtime=30",
        "--set-resources", *overrides,
        "--jobs", "4",
        timeout=1500,
    )
    out = r.stdout + r.stderr
    print(f"SLURM run: {time.time() - t0:.0f} s")
    assert (work / "results" / "notes" / "findings.md").exists()
    submitted = out.count("has been submitted with SLURM jobid") + out.count("submitted with SLURM jobid")
    assert submitted >= 8, out[-4000:]
    logs = work / ".snakemake" / "slurm_logs"
    rules_seen = {p.name for p in logs.iterdir()} if logs.exists() else set()
    assert {"rule_train", "rule_extract", "rule_melspec"} <= rules_seen, rules_seen
    # GPU-tagged rules were submitted with a GPU request and saw the (fake) device
    train_logs = "".join(p.read_text(errors="replace") for p in (logs / "rule_train").rglob("*.log"))
    assert "CUDA_VISIBLE_DEVICES" in out + train_logs or "--gpus" in out, out[-3000:]
