"""End to end: the tiny config through every stage, then incremental reruns and faults (issue: cluster,
incremental reruns and fault tolerance). One complete run is shared by the module (a few minutes)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time

import h5py
import numpy as np
import pandas as pd
import pytest
import yaml
from e2e import SNAKEMAKE, copy_checkout, env, job_counts, snakemake

pytestmark = pytest.mark.slow
CI = ["--configfile", "configs/ci.yaml", "--cores", "2"]


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    """A fresh copy of the checkout with the tiny config run to completion."""
    work = copy_checkout(tmp_path_factory.mktemp("e2e"))
    t0 = time.time()
    snakemake(work, *CI)
    print(f"complete tiny run: {time.time() - t0:.0f} s")
    return work


def override(work, name, data) -> list[str]:
    """Arguments that run the tiny config with ``data`` merged over it (a second --configfile, typed YAML)."""
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return ["--configfile", "configs/ci.yaml", path.name, "--cores", "2"]


def cfg(work):
    return yaml.safe_load((work / "configs" / "ci.yaml").read_text())


def test_every_stage_produced_valid_outputs(done):
    from deepfeat.formats import open_h5, read_clip_table

    c = cfg(done)
    for ds in c["datasets"]:
        r = done / "results" / ds
        with open_h5(r / "mel.h5", "mel") as f:
            mel = f["mel"]
            assert mel.shape[1] == 128 and mel.shape[2] == (128 if ds == "notes" else 176)
            df, tasks, main = read_clip_table(f)
            assert set(df["split"]) == {0, 1}
        with open_h5(r / "handcrafted.h5", "handcrafted") as f:
            assert len(f["features"]) > 10
        for arch in c["models"]["architectures"]:
            for seed in c["models"]["seeds"]:
                assert (r / "models" / main / arch / f"seed{seed}.pt").exists()
                assert not (r / "models" / main / arch / f"seed{seed}.ckpt").exists()
        assert (r / "findings.md").stat().st_size > 200
        assert any((r / "figures").glob("*.png"))
        table1 = next((r / "tables").glob("*table1*.csv"), None)
        assert table1 is not None, sorted(p.name for p in (r / "tables").iterdir())
    leftovers = [p for p in (done / "results").rglob(".*.tmp")] + list((done / "results").rglob(".*.h5"))
    assert not leftovers, leftovers


def test_nothing_to_do_after_a_complete_run(done):
    r = snakemake(done, *CI, "-n")
    assert "Nothing to be done" in r.stdout + r.stderr, (r.stdout + r.stderr)[-3000:]


def test_handcrafted_parameter_reruns_only_the_store_and_its_consumers(done):
    r = snakemake(done, *override(done, "widths", {"handcrafted": {"ricker_widths": [1, 5, 10, 25, 50]}}), "-n")
    jobs = job_counts(r.stdout + r.stderr)
    n_ds = len(cfg(done)["datasets"])
    assert jobs.get("handcrafted") == n_ds, jobs
    for rule in ("render_demo", "ingest", "melspec", "train", "extract", "similarity_channels", "similarity_cross"):
        assert rule not in jobs, (rule, jobs)
    assert jobs.get("probe_handcrafted") == n_ds and "similarity_deep" in jobs and "tables" in jobs


def test_adding_a_seed_runs_only_the_new_branch_and_the_aggregates(done):
    c = cfg(done)
    seeds = c["models"]["seeds"] + [99]
    r = snakemake(done, *override(done, "seeds", {"models": {"seeds": seeds}}), "-n")
    jobs = job_counts(r.stdout + r.stderr)
    n_ds, archs = len(c["datasets"]), c["models"]["architectures"]
    conv = [a for a in archs if a != "FeedForward"]
    assert jobs.get("train") == n_ds * len(archs), jobs
    assert jobs.get("probe_deep") == n_ds * len(conv) and jobs.get("similarity_deep") == n_ds * len(conv), jobs
    assert "extract" not in jobs, jobs  # activations are computed by their consumers, not stored
    for rule in ("render_demo", "ingest", "melspec", "handcrafted", "probe_handcrafted"):
        assert rule not in jobs, (rule, jobs)
    assert jobs.get("tables") == n_ds


@pytest.mark.parametrize(
    "module, reruns, untouched",
    [
        ("features/families.py", {"handcrafted"}, {"train", "melspec", "extract"}),
        ("similarity/channels.py", {"similarity_channels"}, {"similarity_deep", "similarity_cross", "probe_deep"}),
        ("formats/mel.py", {"melspec", "train"}, {"render_demo"}),
    ],
)
def test_a_package_code_change_reruns_the_rules_that_run_it(done, module, reruns, untouched):
    src = done / "src" / "deepfeat" / module
    original = src.read_text()
    try:
        src.write_text(original + "\n# an edit\n")
        r = snakemake(done, *CI, "-n")
        jobs = job_counts(r.stdout + r.stderr)
        assert reruns <= set(jobs) and not untouched & set(jobs), jobs
    finally:
        src.write_text(original)
    r = snakemake(done, *CI, "-n")
    assert "Nothing to be done" in r.stdout + r.stderr


@pytest.mark.parametrize(
    "change, reruns, untouched",
    [
        # a setting that changes results reruns exactly the jobs that read it (and the aggregates after them)
        ({"similarity": {"channel_max_clips": 64}}, {"similarity_channels"}, {"similarity_deep", "similarity_cross"}),
        ({"probe": {"concat_features": ["Mean Wavelet (25)"]}}, {"probe_deep"}, {"probe_handcrafted", "train"}),
        # the deep settings rerun the consumers of deep features, and no training
        (
            {"deep": {"point": "activated"}},
            {"probe_deep", "similarity_deep", "similarity_cross", "similarity_channels"},
            {"train", "probe_handcrafted", "handcrafted_moments"},
        ),
        (
            {"deep": {"layers": ["pool1", "conv3"]}},
            {"probe_deep", "similarity_deep", "similarity_cross"},
            {"train", "probe_handcrafted", "similarity_channels"},
        ),
        ({"report": {"measure": "cka_debiased"}}, {"findings"}, {"tables", "figures"}),
        # settings of speed, memory and device rerun nothing
        (
            {
                "similarity": {"memory_mb": 1000, "chunk_size": 100},
                "deep": {"batch_size": 32},
                "probe": {"device": "cpu"},
                "models": {"checkpoint_every": 2},
                "handcrafted": {"chunk_size": 16},
            },
            set(),
            None,
        ),
    ],
)
def test_a_setting_reruns_exactly_the_jobs_that_read_it(done, change, reruns, untouched):
    r = snakemake(done, *override(done, "change", change), "-n")
    out = r.stdout + r.stderr
    if not reruns:
        assert "Nothing to be done" in out, out[-3000:]
        return
    jobs = job_counts(out)
    assert reruns <= set(jobs) and not untouched & set(jobs), jobs


def test_a_setting_of_one_architecture_reruns_only_its_networks(done):
    c = cfg(done)
    r = snakemake(done, *override(done, "deform", {"models": {"deformable": "reference"}}), "-n")
    jobs = job_counts(r.stdout + r.stderr)
    assert jobs.get("train") == len(c["datasets"]) * len(c["models"]["seeds"]), jobs  # the Deformable ones


def _same_table(got, want: pd.DataFrame) -> None:
    """The table ``got`` (a CSV path) equals ``want``: keys exactly, values to float64 rounding (the workflow's jobs
    and this process may sum in a different thread order)."""
    pd.testing.assert_frame_equal(pd.read_csv(got), want, check_exact=False, rtol=1e-10, atol=1e-12)


def test_activations_on_demand_equal_the_stored_features(done, tmp_path):
    """The consumers of deep features compute the activations from the model files; run on the features that
    ``deep.store`` exports for the same models they give the same tables (bitwise on the CPU)."""

    from deepfeat import config as cf
    from deepfeat import workflow as wf
    from deepfeat.probe import probe_deep
    from deepfeat.similarity import similarity_cross, similarity_deep

    work = scratch_copy(done, tmp_path)
    layers = ["conv1", "pool1", "conv2", "pool2", "conv3"]
    args = override(work, "store", {"deep": {"store": layers}})
    jobs = job_counts(snakemake(work, *args, "-n").stdout)
    assert set(jobs) - {"all"} == {"extract"}, jobs  # exporting reruns nothing else
    snakemake(work, *args)
    c = cf.validate(yaml.safe_load((work / "configs" / "ci.yaml").read_text()))
    n_checked = 0
    for ds, d in c["datasets"].items():
        r, main = work / "results" / ds, d["main_task"]

        def settings(rule, ds=ds):
            s = wf.rule_settings(c, rule, ds)
            for sec, v in json.loads(wf.rule_tuning(c, rule, ds)).items():
                s.setdefault(sec, {}).update(v)
            return s

        deep = sorted((r / "deep" / main).glob("*/seed*.h5"))
        assert deep, f"no exported features for {ds}"
        for f in deep:
            arch, seed = f.parent.name, f.stem
            model, out = r / "models" / main / arch / f"{seed}.pt", tmp_path / ds / arch / seed
            got, _ = probe_deep(
                model=model,
                deep=f,
                features=r / "handcrafted.h5",
                mel=r / "mel.h5",
                scores=out / "p.csv",
                confusion=out / "c.csv",
                boot=out / "p.boot.h5",
                settings=settings("probe_deep"),
                dataset=ds,
            )
            want = pd.read_csv(r / "probes" / "deep" / main / arch / f"{seed}.csv")
            _same_table(out / "p.csv", want)
            _same_replicates(out / "p.boot.h5", r / "probes" / "deep" / main / arch / f"{seed}.boot.h5")
            similarity_deep(
                model=model,
                deep=f,
                features=r / "handcrafted.h5",
                mel=r / "mel.h5",
                table=out / "s.csv",
                boot=out / "s.boot.h5",
                moments=r / "similarity" / "handcrafted_moments.h5",
                settings=settings("similarity_deep"),
                dataset=ds,
            )
            want = pd.read_csv(r / "similarity" / "deep" / main / arch / f"{seed}.csv")
            _same_table(out / "s.csv", want)
            _same_replicates(out / "s.boot.h5", r / "similarity" / "deep" / main / arch / f"{seed}.boot.h5")
            n_checked += 2
        similarity_cross(
            models=[r / "models" / main / f.parent.name / f"{f.stem}.pt" for f in deep],
            deep=deep,
            mel=r / "mel.h5",
            table=tmp_path / ds / "x.csv",
            settings=settings("similarity_cross"),
            dataset=ds,
        )
        want = pd.read_csv(r / "similarity" / "cross" / f"{main}.csv")
        _same_table(tmp_path / ds / "x.csv", want)
        with h5py.File(deep[0]) as h:
            assert json.loads(h.attrs["layers"]) == layers and np.isfinite(h["trained/conv3"][:]).all()
    assert n_checked >= 2 * len(c["datasets"])


def _same_replicates(got, want) -> None:
    """Two replicate files hold the same keys and resamples, and values and replicates to float64 rounding."""
    from deepfeat.formats.replicates import read_replicates

    kg, vg, rg, ag = read_replicates(got)
    kw, vw, rw, aw = read_replicates(want)
    pd.testing.assert_frame_equal(kg, kw)
    assert {k: ag[k] for k in ("seed", "stream", "clips", "resamples")} == {
        k: aw[k] for k in ("seed", "stream", "clips", "resamples")
    }
    np.testing.assert_allclose(vg, vw, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(rg, rw, rtol=1e-9, atol=1e-9, equal_nan=True)


def scratch_copy(done, tmp_path):
    """A copy of the completed run (mtimes kept) for tests that damage or redo outputs."""
    work = tmp_path / "work"
    shutil.copytree(done, work, symlinks=True)
    return work


def test_sigkill_during_training_then_rerun_gives_complete_valid_outputs(done, tmp_path):
    """Kill the whole workflow mid-training; the rerun resumes the checkpoint and ends like an uninterrupted run."""
    import torch

    done = scratch_copy(done, tmp_path)
    c = cfg(done)
    main = c["datasets"]["notes"]["main_task"]
    model = done / "results" / "notes" / "models" / main / "Regular" / "seed1.pt"
    reference = torch.load(model, map_location="cpu", weights_only=False)
    ckpt = model.with_suffix(".ckpt")
    target = str(model.relative_to(done))
    # more epochs make a longer job to kill; params change, so this reruns only this model's training
    args = override(done, "epochs", {"models": {"epochs": 12}})
    p = subprocess.Popen(
        [SNAKEMAKE, *args, target, "--forcerun", target],
        cwd=done,
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 300
    while not ckpt.exists() and time.time() < deadline and p.poll() is None:
        time.sleep(0.2)
    assert ckpt.exists(), "no epoch checkpoint appeared"
    time.sleep(1.0)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    # a killed Snakemake leaves its lock (it cannot tell a crash from a concurrent run): unlock, then rerun
    snakemake(done, *args, "--unlock")
    snakemake(done, *args, target)
    assert not ckpt.exists()
    got = torch.load(model, map_location="cpu", weights_only=False)
    assert got["meta"]["epochs"] == 12
    log = (done / "logs" / "notes" / "train" / main / "Regular" / "seed1.log").read_text()
    assert "resum" in log.lower(), log[-2000:]
    # an uninterrupted 12-epoch run, straight through the package, gives the same weights
    from deepfeat.nets import train_model

    params = dict(c["models"], epochs=12)
    fresh = done / "fresh.pt"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the workflow's jobs (OMP_NUM_THREADS = threads = 1): same reductions
    try:
        train_model(
            mel=done / "results/notes/mel.h5",
            model=fresh,
            history=done / "fresh.csv",
            task=main,
            arch="Regular",
            seed=1,
            checkpoint=done / "fresh.ckpt",
            settings={"models": {k: v for k, v in params.items() if k in ("epochs", "batch_size", "lr", "momentum")}},
        )
    finally:
        torch.set_num_threads(threads)
    straight = torch.load(fresh, map_location="cpu", weights_only=False)
    for k, v in straight["final_state"].items():
        assert torch.equal(v, got["final_state"][k]), k
    assert reference["meta"]["epochs"] == c["models"]["epochs"]


def test_a_corrupt_output_is_detected_not_read(done, tmp_path):
    from deepfeat.formats import CorruptOutputError, open_h5

    done = scratch_copy(done, tmp_path)
    src = done / "results" / "notes" / "handcrafted.h5"
    bad = tmp_path / "handcrafted.h5"
    data = src.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptOutputError, match="not a readable HDF5"):
        open_h5(bad, "handcrafted")
    with h5py.File(tmp_path / "unfinished.h5", "w") as f:
        f.attrs["deepfeat_kind"] = "handcrafted"
    with pytest.raises(CorruptOutputError, match="incomplete"):
        open_h5(tmp_path / "unfinished.h5", "handcrafted")
    # and through the workflow: a truncated store makes its consumer fail with that message
    src.write_bytes(data[: len(data) // 2])
    r = snakemake(done, *CI, "--forcerun", "probe_handcrafted", "--until", "probe_handcrafted", check=False)
    assert r.returncode != 0
    assert "not a readable HDF5" in r.stdout + r.stderr + _logs(done, "probe_handcrafted")


def _logs(work, rule):
    return "".join(p.read_text(errors="replace") for p in (work / "logs").rglob(f"{rule}*.log"))


def test_tables_are_tidy(done):
    t = pd.read_csv(done / "results" / "notes" / "probes" / "handcrafted.csv")
    assert {"dataset", "feature", "probe_task", "metric", "split", "value"} <= set(t.columns)
    assert t["value"].notna().all()
