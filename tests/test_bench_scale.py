"""bench/bench_scale.py: its pure parts (config of N notes, reading runs, growth fits, extrapolation arithmetic).

Nothing here runs the workflow or times anything: the runs are synthetic benchmark / summary / metadata files.
"""

from __future__ import annotations

import base64
import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from deepfeat import config as cf
from deepfeat.data.render.dataset import check_render_config
from deepfeat.data.render.notes import FAMILY_PROGRAMS, PROGRAM_RANGES

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import bench_scale as bs  # noqa: E402

SCHEMA = yaml.safe_load((ROOT / "src" / "deepfeat" / "config.schema.yaml").read_text())


# --- the config of N notes -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [160, 2000, 8000, 32000, 24, 56])
def test_note_grid_draws_exactly_n_distinct_notes(n):
    g = bs.note_grid(n, FAMILY_PROGRAMS, PROGRAM_RANGES)
    assert 8 * g["programs_per_family"] * g["notes_per_program"] == n
    v = g["velocities"]
    assert len(set(v)) == len(v) >= 5 and all(1 <= x <= 127 for x in v) and v == sorted(v)
    # every family has programs_per_family programs with SILENT_MARGIN x the (pitch, velocity) pairs needed
    for fam, progs in FAMILY_PROGRAMS.items():
        pairs = [(PROGRAM_RANGES[p][2] - PROGRAM_RANGES[p][1] + 1) * len(v) for p in progs]
        enough = sum(k >= bs.SILENT_MARGIN * g["notes_per_program"] for k in pairs)
        assert enough >= g["programs_per_family"], fam
    check_render_config({"kind": "notes", "hold_seconds": 3.0, **g})  # the renderer's own checks pass


def test_note_grid_prefers_two_programs_and_names_bad_n():
    assert bs.note_grid(2000, FAMILY_PROGRAMS, PROGRAM_RANGES)["programs_per_family"] == 2
    assert bs.note_grid(24, FAMILY_PROGRAMS, PROGRAM_RANGES)["programs_per_family"] == 3  # 3 per family
    assert bs.note_grid(40, FAMILY_PROGRAMS, PROGRAM_RANGES)["programs_per_family"] == 1  # 5 per family
    with pytest.raises(ValueError, match="--n 100"):
        bs.note_grid(100, FAMILY_PROGRAMS, PROGRAM_RANGES)
    with pytest.raises(ValueError, match="velocities"):
        bs.note_grid(8 * 2 * 10000, FAMILY_PROGRAMS, PROGRAM_RANGES)


def test_bench_config_is_valid_and_minimal():
    cfg, dropped = bs.prune_to_schema(
        bs.bench_config(bs.note_grid(2000, FAMILY_PROGRAMS, PROGRAM_RANGES)), SCHEMA, SCHEMA
    )
    assert dropped == []
    full = cf.validate(json.loads(json.dumps(cfg)))
    assert full["models"]["architectures"] == ["Regular", "1dF"] and full["models"]["seeds"] == [1]
    assert full["models"]["epochs"] == 1 and full["models"]["train_tasks"] == "main"
    assert full["probe"]["epochs"] == 2 and full["probe"]["seeds"] == [0] and full["similarity"]["bootstrap"] == 5
    ds = full["datasets"]["notes"]
    assert [t["name"] for t in ds["tasks"]] == ["family", "pitch", "velocity"] and ds["main_task"] == "family"
    assert ds["render"]["families"] == sorted(FAMILY_PROGRAMS)  # the default: all 8
    assert set(cfg) == {"results", "datasets", "models", "probe", "similarity"}  # every other key at its default
    assert set(cfg["probe"]) == {"epochs", "seeds"} and set(cfg["similarity"]) == {"bootstrap"}


def test_prune_to_schema_drops_only_unknown_keys():
    cfg = bs.bench_config(bs.note_grid(160, FAMILY_PROGRAMS, PROGRAM_RANGES))
    cfg["deep"] = {"layers": ["conv3"], "no_such_key": [1]}
    cfg["no_such_section"] = {"a": 1}
    cfg["datasets"]["notes"]["render"]["bogus"] = 3
    out, dropped = bs.prune_to_schema(cfg, SCHEMA, SCHEMA)
    assert sorted(dropped) == ["datasets.notes.render.bogus", "deep.no_such_key", "no_such_section"]
    assert out["deep"] == {"layers": ["conv3"]} and "bogus" not in out["datasets"]["notes"]["render"]
    cf.validate(out)


def test_calibration_config_doubles_probe_epochs_and_bootstrap_only():
    cfg = bs.bench_config(bs.note_grid(160, FAMILY_PROGRAMS, PROGRAM_RANGES))
    cal = bs.calibration_config(cfg)
    assert cal["probe"]["epochs"] == 4 and cal["similarity"]["bootstrap"] == 10
    assert cfg["probe"]["epochs"] == 2 and {k: v for k, v in cal.items() if k not in ("probe", "similarity")} == {
        k: v for k, v in cfg.items() if k not in ("probe", "similarity")
    }
    assert bs.calibration_config({"models": {"epochs": 1}}) == {"models": {"epochs": 1}}


# --- reading a run ---------------------------------------------------------------------------------------------------
TSV = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def _bench(root: Path, rel: str, s: float, rss, cpu: float) -> None:
    f = root / f"{rel}.tsv"
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_text(TSV + f"{s}\t0:00:01\t{rss}\t1\t1\t1\t0\t0\t50\t{cpu}\n")


def test_read_benchmarks_names_rule_job_and_arch(tmp_path):
    _bench(tmp_path, "notes/ingest", 4.5, 129.7, 4.0)
    _bench(tmp_path, "notes/train/family/1dF/seed1", 40.0, 744.6, 70.0)
    _bench(tmp_path, "notes/similarity_cross/family", 3.0, "NA", 2.5)
    (tmp_path / "notes" / "empty.tsv").write_text(TSV)
    df = bs.read_benchmarks(tmp_path).set_index("job")
    assert sorted(df.index) == ["notes/ingest", "notes/similarity_cross/family", "notes/train/family/1dF/seed1"]
    t = df.loc["notes/train/family/1dF/seed1"]
    assert (t["rule"], t["arch"], t["s"], t["rss_mb"]) == ("train", "1dF", 40.0, 744.6)
    assert t["cpu_s"] == pytest.approx(70.0 * 40 / 15)  # last sampled at 15 s: carried on to the end
    assert df.loc["notes/ingest", "cpu_s"] == 4.0  # sampled to its end
    assert df.loc["notes/ingest", "arch"] == "" and np.isnan(df.loc["notes/similarity_cross/family", "rss_mb"])


def test_last_sample_follows_snakemakes_schedule():
    from snakemake.benchmark import BENCHMARK_INTERVAL, BENCHMARK_INTERVAL_SHORT

    assert (BENCHMARK_INTERVAL_SHORT, BENCHMARK_INTERVAL) == (0.5, 30)  # the defaults of last_sample
    assert [bs.last_sample(s) for s in (3.0, 15.0, 44.9, 45.0, 200.0)] == [3.0, 15.0, 15.0, 45.0, 195.0]


def test_metadata_jobs_one_row_per_job(tmp_path):
    meta = tmp_path / ".snakemake" / "metadata"
    meta.mkdir(parents=True)
    for path, rule, t0, t1 in [
        ("results/notes/findings.md", "findings", 100.0, 112.0),
        ("results/notes/findings.html", "findings", 100.2, 112.0),
        ("results/notes/models/family/Regular/seed1.pt", "train", 50.0, 60.0),
    ]:
        (meta / base64.b64encode(path.encode()).decode()).write_text(
            json.dumps(dict(rule=rule, starttime=t0, endtime=t1))
        )
    (meta / "bm90anNvbg==").write_text("not json")
    df = bs.metadata_jobs(tmp_path).set_index("rule")
    assert len(df) == 2 and df.loc["findings", "s"] == pytest.approx(12.0)
    assert df.loc["findings", "job"] == "results/notes/findings.html" and df.loc["train", "arch"] == "Regular"


def test_summary_and_output_bytes_per_rule(tmp_path):
    summary = (
        "output_file\tdate\trule\tlog-file(s)\tstatus\tplan\n"
        "results/notes/clips.h5\tTue\tingest\tlogs/x.log\tok\tno update\n"
        "results/notes/raw/manifest.json\tTue\trender_demo\tlogs/y.log\tok\tno update\n"
        "results/notes/figures\tTue\tfigures\tlogs/z.log\tok\tno update\n"
        "results/notes/models/family/1dF/seed1.pt\tTue\ttrain\tlogs/t.log\tok\tno update\n"
    )
    s = bs.parse_summary(summary)
    assert list(s["rule"]) == ["ingest", "render_demo", "figures", "train"]
    files = {
        "results/notes/clips.h5": 1000,
        "results/notes/raw/manifest.json": 10,
        "results/notes/raw/audio/a.wav": 300,  # not an output: the render's, beside its manifest
        "results/notes/figures/a.png": 20,
        "results/notes/figures/b.png": 30,
        "results/notes/models/family/1dF/seed1.pt": 7,
        "results/notes/stray.bin": 5,  # beside outputs of two rules: unattributed
    }
    for rel, size in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x" * size)
    b = bs.output_bytes(s, tmp_path)
    per = b.groupby("rule")["bytes"].sum().to_dict()
    assert per == {"ingest": 1000, "render_demo": 310, "figures": 50, "train": 7, "(unattributed)": 5}
    assert b.set_index("path").loc["results/notes/models/family/1dF/seed1.pt", "arch"] == "1dF"


def test_rule_kinds_from_benchmark_paths(tmp_path):
    (tmp_path / "a.smk").write_text(
        'rule ingest:\n    benchmark:\n        "benchmarks/{dataset}/ingest.tsv"\n'
        'rule train:\n    benchmark:\n        "benchmarks/{dataset}/train/{task}/{arch}/seed{seed}.tsv"\n'
        'rule probe_deep:\n    benchmark:\n        "benchmarks/{dataset}/probe_deep/{task}/{conv_arch}/s{seed}.tsv"\n'
        'rule similarity_cross:\n    benchmark:\n        "benchmarks/{dataset}/similarity_cross/{task}.tsv"\n'
    )
    kinds = bs.rule_kinds(tmp_path)
    assert kinds == {"ingest": "dataset", "train": "model", "probe_deep": "conv_model", "similarity_cross": "task"}
    real = bs.rule_kinds(ROOT / "rules")
    assert real["train"] == "model" and real["ingest"] == "dataset"


# --- growth and extrapolation ----------------------------------------------------------------------------------------
def test_fit_exponent_recovers_power_laws():
    ns = [2000, 8000, 32000]
    assert bs.fit_exponent(ns, [3 * n**1.7 for n in ns]) == pytest.approx(1.7)
    assert bs.fit_exponent(ns, [5.0, 5.0, 5.0]) == pytest.approx(0.0, abs=1e-12)
    assert bs.fit_exponent([2000, 8000], [1.0, 4.0]) == pytest.approx(1.0)
    assert bs.fit_exponent(ns, [0.0, 4.0, np.nan]) != bs.fit_exponent(ns, [0.0, 4.0, np.nan])  # one point: NaN
    assert math.isnan(bs.fit_exponent([2000], [1.0]))
    noisy = [n * (1.1 if i % 2 else 0.9) for i, n in enumerate(ns)]  # least squares, not the end points
    assert bs.fit_exponent(ns, noisy) == pytest.approx(np.polyfit(np.log(ns), np.log(noisy), 1)[0])


def _run(n: int, jobs: list[dict], byts: list[dict] | None = None) -> dict:
    info = {"wall_s": 10.0, "cores": 2, "load_before": 1, "load_mean": 1.5, "load_max": 2, "load_after": 1}
    return {
        "n": n,
        "info": info | {"results_bytes": 1e6},
        "jobs": pd.DataFrame(jobs),
        "bytes": pd.DataFrame(byts or []),
    }


def _job(rule, arch, s, rss, cpu=None):
    return {
        "rule": rule,
        "job": f"notes/{rule}/{arch}",
        "arch": arch,
        "s": s,
        "cpu_s": s if cpu is None else cpu,
        "rss_mb": rss,
    }


def test_per_rule_and_growth_flag_fast_growing_rules():
    runs = [
        _run(n, [_job("ingest", "", n / 1000, 100), _job("sim", "Regular", (n / 1000) ** 2.5, 100 * n / 1000)])
        for n in (1000, 4000)
    ]
    runs[0]["jobs"] = pd.concat([runs[0]["jobs"], pd.DataFrame([_job("sim", "1dF", 1.0, 50)])], ignore_index=True)
    runs[0]["bytes"] = pd.DataFrame([{"path": "p", "rule": "ingest", "arch": "", "bytes": 10}])
    runs[1]["bytes"] = pd.DataFrame([{"path": "p", "rule": "ingest", "arch": "", "bytes": 40}])
    t = bs.per_rule(runs).set_index(["rule", "n"])
    assert t.loc[("sim", 1000), "jobs"] == 2 and t.loc[("sim", 1000), "s_sum"] == pytest.approx(2.0)
    assert t.loc[("sim", 1000), "s_max"] == 1.0 and t.loc[("sim", 1000), "rss_mb"] == 100
    assert t.loc[("ingest", 4000), "bytes"] == 40 and np.isnan(t.loc[("sim", 4000), "bytes"])
    g = bs.growth(bs.per_rule(runs))
    assert g.loc["ingest", "time_exp"] == pytest.approx(1.0) and g.loc["ingest", "flag"] == ""
    assert g.loc["ingest", "bytes_exp"] == pytest.approx(1.0) and g.loc["ingest", "rss_exp"] == pytest.approx(0.0)
    assert "time" in g.loc["sim", "flag"] and "rss" not in g.loc["sim", "flag"]


def test_calibration_fractions():
    specs = {
        "probe_handcrafted": {"reads": {"probe": ["epochs", "seeds"]}},
        "similarity_deep": {"reads": {"similarity": ["bootstrap"]}},
        "both": {"reads": {"probe": ["epochs"], "similarity": ["bootstrap"]}},
        "train": {"reads": {"models": ["epochs"]}},
        "gone": {"reads": {"similarity": ["bootstrap"]}},
        "noisy": {"reads": {"similarity": ["bootstrap"]}},
    }
    base = pd.DataFrame(
        [_job(r, "", 10.0, 1) for r in ("probe_handcrafted", "similarity_deep", "both", "gone", "noisy")]
    )
    cal = pd.DataFrame([_job("probe_handcrafted", "", 15.0, 1), _job("similarity_deep", "", 20.0, 1)])
    cal = pd.concat([cal, pd.DataFrame([_job("both", "", 25.0, 1), _job("noisy", "", 9.0, 1)])], ignore_index=True)
    f = bs.calibration_fractions(base, cal, specs)
    assert f["probe_handcrafted"] == pytest.approx(0.5) and f["similarity_deep"] == pytest.approx(1.0)
    assert f["both"] == pytest.approx(0.5)  # (25 / 10 - 1) / (2^2 - 1)
    assert f["noisy"] == 0.0 and math.isnan(f["gone"]) and "train" not in f


def test_calibration_prefers_cpu_time():
    specs = {"similarity_deep": {"reads": {"similarity": ["bootstrap"]}}}
    base = pd.DataFrame([_job("similarity_deep", "", 10.0, 1, cpu=10.0)])
    cal = pd.DataFrame([_job("similarity_deep", "", 40.0, 1, cpu=15.0)])  # wall time stretched by load
    assert bs.calibration_fractions(base, cal, specs)["similarity_deep"] == pytest.approx(0.5)
    cal["cpu_s"] = np.nan
    assert bs.calibration_fractions(base, cal, specs)["similarity_deep"] == 1.0  # wall time: 40 / 10 - 1, clipped


def test_cross_scale_splits_widest_pair_and_pair_count():
    facts = _facts()
    w = facts["widths"]
    width, work = bs.job_scale("similarity_cross", "task", "", facts["paper"]["datasets"]["nsynth"], facts)
    full = [w[a]["128"] + w[b]["128"] for a, b in bs.cross_pairs(list(bs.CONV_ARCHS), 5)]
    assert width == pytest.approx(max(full) / 1100)  # the widest pair (1dF + 1dT) over Regular + 1dF
    assert width * work == pytest.approx(sum(full) / 1100)  # time: every pair
    assert bs.job_scale("ingest", "dataset", "", facts["paper"]["datasets"]["beethoven"], facts) == (176 / 128, 1.0)
    width, work = bs.job_scale("tables", "dataset", "", facts["paper"]["datasets"]["nsynth"], facts)
    assert (width, work) == (1.0, 3 * 5 * 6 / 2)


def test_cross_pairs_counts():
    assert bs.cross_pairs(["Regular", "1dF"], 1) == [("Regular", "1dF")]
    full = bs.cross_pairs(list(bs.CONV_ARCHS), 5)
    assert len(full) == 5 * 10 + 5 * 10 and full.count(("Regular", "Regular")) == 10


def _facts() -> dict:
    widths = {a: {"128": 100, "176": 150} for a in bs.ARCHS} | {"Dilated": {"128": 200, "176": 300}}
    widths |= {"1dF": {"128": 1000, "176": 1400}, "1dT": {"128": 1000, "176": 1500}}
    specs = {
        "ingest": {"reads": {"dataset": ["format"]}},
        "train": {"reads": {"models": ["epochs", "lr"]}},
        "probe_handcrafted": {"reads": {"probe": ["epochs", "seeds"]}},
        "similarity_deep": {"reads": {"similarity": ["bootstrap"]}},
    }
    kinds = {"ingest": "dataset", "train": "model", "probe_handcrafted": "dataset", "similarity_deep": "conv_model"}
    kinds |= {"render_demo": "dataset"}
    paper = {
        "archs": list(bs.ARCHS),
        "seeds": 5,
        "epochs": 150,
        "probe_epochs": 100,
        "probe_seeds": 5,
        "bootstrap": 100,
    }
    paper["datasets"] = {
        "nsynth": {"clips": 50000, "frames": 128, "tasks": 3, "classification": 1},
        "beethoven": {"clips": 20000, "frames": 176, "tasks": 2, "classification": 2},
    }
    return {"widths": widths, "specs": specs, "kinds": kinds, "paper": paper}


def test_extrapolation_arithmetic():
    n = 10000
    jobs = [_job("ingest", "", 10.0, 200.0, cpu=20.0), _job("render_demo", "", 99.0, 1.0)]
    jobs += [_job("train", "Regular", 30.0, 1000.0), _job("train", "1dF", 60.0, 2000.0)]
    jobs += [_job("probe_handcrafted", "", 100.0, 500.0), _job("similarity_deep", "Regular", 8.0, 400.0)]
    jobs += [_job("similarity_deep", "1dF", 16.0, 800.0)]
    byts = [{"path": "c", "rule": "ingest", "arch": "", "bytes": 1e9}]
    byts += [{"path": "m", "rule": "train", "arch": "Regular", "bytes": 1e6}]
    byts += [{"path": "m2", "rule": "train", "arch": "1dF", "bytes": 4e6}]
    run = _run(n, jobs, byts)
    grow = pd.DataFrame(
        {"time_exp": [1.0, 1.0, 2.0, 1.0], "cpu_exp": [0.5, 1.0, 2.0, 1.0], "rss_exp": [0.0, 1.0, 0.0, 0.5]}
        | {"bytes_exp": [1.0, 0.0, 0.0, 0.0]},
        index=["ingest", "train", "probe_handcrafted", "similarity_deep"],
    )
    fractions = {"probe_handcrafted": 0.25, "similarity_deep": 0.5}
    ext = bs.extrapolate(run, grow, fractions, _facts())
    assert "render_demo" not in ext.index
    # ingest: one job per dataset, x clips ratio ^ 1 x frames ratio
    s5, s2, r176 = 5.0, 2.0, 176 / 128
    assert ext.loc["ingest", "jobs"] == 2
    assert ext.loc["ingest", "wall_h"] == pytest.approx(10 * (s5 + s2 * r176) / 3600)
    assert ext.loc["ingest", "cpu_h"] == pytest.approx(20 * (s5**0.5 + s2**0.5 * r176) / 3600)  # its CPU exponent
    assert ext.loc["ingest", "disk_gb"] == pytest.approx(1 * (s5 + s2 * r176))
    assert ext.loc["ingest", "rss_gb"] == pytest.approx(200 / 1024)  # RSS exponent 0
    # width ratios to the measured architecture (Regular or 1dF at 128 frames) at 128 and 176 frames
    w128 = {"Regular": 1, "Deformable": 1, "Dilated": 2, "1dF": 1, "1dT": 1, "FeedForward": 1}
    w176 = {"Regular": 1.5, "Deformable": 1.5, "Dilated": 3, "1dF": 1.4, "1dT": 1.5, "FeedForward": 1.5}
    base = {a: ("1dF" if a.startswith("1d") else "Regular") for a in w128}
    # train: tasks x 5 seeds per architecture, x 150 epochs, x width ratio
    t_of, rss_of, b_of = {"Regular": 30, "1dF": 60}, {"Regular": 1000, "1dF": 2000}, {"Regular": 1e6, "1dF": 4e6}
    want = sum(15 * t_of[base[a]] * s5 * w128[a] * 150 + 10 * t_of[base[a]] * s2 * w176[a] * 150 for a in w128)
    assert ext.loc["train", "jobs"] == (3 + 2) * 5 * 6
    assert ext.loc["train", "wall_h"] == pytest.approx(want / 3600)
    rss = max(max(rss_of[base[a]] * s5 * w128[a], rss_of[base[a]] * s2 * w176[a]) for a in w128)
    assert ext.loc["train", "rss_gb"] == pytest.approx(rss / 1024)  # RSS exponent 1
    disk = sum(15 * b_of[base[a]] * w128[a] + 10 * b_of[base[a]] * w176[a] for a in w128)  # bytes exponent 0
    assert ext.loc["train", "disk_gb"] == pytest.approx(disk / 1e9)
    # probe_handcrafted: (1 - f) x tasks ratio + f x classification ratio x (100 / 2 epochs x 5 / 1 seeds)
    g5, g2 = 0.75 * 1 + 0.25 * 1 * 250, 0.75 * 2 / 3 + 0.25 * 2 * 250
    assert ext.loc["probe_handcrafted", "wall_h"] == pytest.approx(100 * (s5**2 * g5 + s2**2 * r176 * g2) / 3600)
    # similarity_deep: conv architectures only; (1 - f) + f x 100 / 5 bootstrap
    assert ext.loc["similarity_deep", "jobs"] == (3 + 2) * 5 * 5
    t_of, rss_of, conv = {"Regular": 8, "1dF": 16}, {"Regular": 400, "1dF": 800}, list(bs.CONV_ARCHS)
    want = sum(15 * t_of[base[a]] * s5 * w128[a] * 10.5 + 10 * t_of[base[a]] * s2 * w176[a] * 10.5 for a in conv)
    assert ext.loc["similarity_deep", "wall_h"] == pytest.approx(want / 3600)
    rss = max(max(rss_of[base[a]] * (s5 * w128[a]) ** 0.5, rss_of[base[a]] * (s2 * w176[a]) ** 0.5) for a in conv)
    assert ext.loc["similarity_deep", "rss_gb"] == pytest.approx(rss / 1024)
    tot = ext.loc["total"]
    assert tot["jobs"] == ext.drop("total")["jobs"].sum() and tot["rss_gb"] == ext.drop("total")["rss_gb"].max()
    assert tot["wall_h"] == pytest.approx(ext.drop("total")["wall_h"].sum())


def test_settings_scale_uses_the_declared_reads():
    facts, ds = _facts(), _facts()["paper"]["datasets"]["nsynth"]
    assert bs.settings_scale("ingest", ds, facts, {}) == 1.0
    assert bs.settings_scale("train", ds, facts, {}) == 150.0  # no calibration: all of the time scales
    assert bs.settings_scale("similarity_deep", ds, facts, {"similarity_deep": float("nan")}) == 20.0
    assert bs.settings_scale("similarity_deep", ds, facts, {"similarity_deep": 0.0}) == 1.0


def test_report_and_from_dir(tmp_path, capsys):
    for n, scale in ((160, 1), (320, 2)):
        snap = tmp_path / f"n{n}" / bs.SNAP
        _bench(snap / "base" / "benchmarks", "notes/ingest", 2.0 * scale, 100, 2.0)
        _bench(snap / "base" / "benchmarks", "notes/train/family/Regular/seed1", 5.0 * scale, 300, 5.0)
        _bench(snap / "base" / "benchmarks", "notes/similarity_deep/family/Regular/seed1", 1.0 * scale**3, 300, 5.0)
        pd.DataFrame([{"rule": "tables", "job": "results/notes/tables", "arch": "", "s": 4.0}]).to_csv(
            snap / "base" / "metadata_jobs.csv", index=False
        )
        pd.DataFrame([{"path": "results/notes/clips.h5", "rule": "ingest", "arch": "", "bytes": 1e6 * scale}]).to_csv(
            snap / "base" / "bytes.csv", index=False
        )
        info = _run(n, [])["info"] | {"n": n}
        (snap / "base" / "run.json").write_text(json.dumps(info))
        facts = _facts()
        facts["kinds"] |= {"tables": "dataset"}
        (snap / "facts.json").write_text(json.dumps(facts))
    out = tmp_path / "scale.md"
    assert bs.main(["--from-dir", str(tmp_path), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert text.strip() == out.read_text().strip()
    for head in ("### Measured", "### Growth exponents in N", "### Extrapolation to the method's full grid"):
        assert head in text
    growth = text.split("### Growth")[1].split("###")[0]
    row = next(ln for ln in growth.splitlines() if ln.startswith("| similarity_deep |"))
    cells = [c.strip() for c in row.split("|")]
    assert cells[2:4] == ["3.00", "0.00"] and cells[6] == "time"  # wall time ~ N^3 (flagged), CPU time constant
    assert "| tables |" in text and "| total |" in text
    ext = text.split("### Extrapolation")[1]
    ingest = [c.strip() for c in next(ln for ln in ext.splitlines() if ln.startswith("| ingest |")).split("|")]
    assert ingest[2:4] == ["2", "0.5"]  # 2 datasets; 2 MB at N = 320 x (50000 + 20000 x 176 / 128) / 320 = 0.48 GB
    assert bs.main(["--from-dir", str(tmp_path / "nothing")]) == 1
