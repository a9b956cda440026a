"""How the workflow scales with the number of clips: per-rule time, memory and disk at N notes, and the method's grid.

Per N (``--n``; default 2,000, 8,000, 32,000) it copies this checkout into a folder of its own, writes a config of
one NSynth-like ``notes`` dataset of exactly N notes (built-in renderer, all 8 families; tasks family, pitch,
velocity) on a minimal grid (Regular + 1dF, one seed, 1 training epoch, 2 probe epochs, one probe seed, 5 bootstrap
resamples; every other key at its schema default; keys the copied schema lacks are dropped), runs ``snakemake
--cores C --configfile bench_scale.yaml`` there and reads per job the wall and CPU seconds and peak RSS of
``benchmarks/**/*.tsv`` (no ``benchmark:``: wall time from Snakemake's job metadata) and per rule the bytes of its
outputs (``snakemake --summary``; a file no output lists goes to the rule with outputs in its folder). At the
largest N (``--calibrate N``: at N; 0: none, all of the time scaled, an upper bound) a calibration run doubles
``probe.epochs`` and ``similarity.bootstrap``: the fraction of each such job's CPU time that grows with them is
what is scaled to the full grid's values. It prints (``--out``: also writes) Markdown tables: per rule and N the
measurements; the growth exponents in N (least squares on log-log; above 1.15 flagged); the extrapolation to the
method's full grid (configs/paper.yaml: NSynth 50,000 clips, Composer 19,667, Beethoven 52,999; 6 architectures x
5 seeds x every task, 150 epochs, its probe epochs / seeds and bootstrap) and its assumptions.

    .venv/bin/python bench/bench_scale.py                              # 2,000, 8,000, 32,000 notes (hours)
    .venv/bin/python bench/bench_scale.py --n 2000 8000 --rev HEAD --workdir /tmp/scale --out scale.md
    .venv/bin/python bench/bench_scale.py --from-dir /tmp/scale        # the tables again, nothing run

Snakemake samples a job every 0.5 s for 15 s, then every 30 s: RSS peaks between samples are missed, and the CPU
seconds after the last sample are estimated at the job's rate until then (wall time is exact, but stretched by the
load of a shared machine).
Each N's folder keeps its measurements in ``bench_scale/`` (what ``--from-dir`` reads); its ``results/`` is deleted
once measured unless ``--keep``; a temporary folder (no ``--workdir``) is deleted at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ENV = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")  # the venv's snakemake and python
DEFAULT_N = (2000, 8000, 32000)
LIMIT = 1.15  # growth exponents above this are flagged
SNAP, CONFIG, CAL_CONFIG = "bench_scale", "bench_scale.yaml", "bench_scale.calibration.yaml"
ARCHS = ("Regular", "Deformable", "Dilated", "1dF", "1dT", "FeedForward")
CONV_ARCHS = ARCHS[:5]
# the measured architecture each one of the full grid is scaled from (FeedForward, only trained: as Regular)
BASE_ARCH = {a: "1dF" if a.startswith("1d") else "Regular" for a in ARCHS}
REPORT_RULES = ("tables", "figures", "findings")  # read every model's tables: scaled by the number of models
NOT_IN_GRID = ("render_demo",)  # the full grid ingests recorded data
BENCH = {"archs": ["Regular", "1dF"], "seeds": [1], "epochs": 1, "probe_epochs": 2, "probe_seeds": [0], "bootstrap": 5}
BENCH_DATASET = {"frames": 128, "tasks": 3, "classification": 1, "models": 2}
# the method's datasets (configs/paper.yaml): clips, mel frames of a 4 s clip (16,000 / 22,050 Hz, hop 502)
FULL_DATASETS = {"nsynth": (50000, 128), "composer": (19667, 176), "beethoven": (52999, 176)}
TASKS = [{"name": "family", "type": "classification", "label": "instrument_family_str"}]
TASKS += [{"name": t, "type": "regression", "label": t} for t in ("pitch", "velocity")]
COLS = ("s", "cpu_s", "rss_mb")  # per job: wall seconds, CPU seconds, peak RSS (MB)
SILENT_MARGIN = 1.25  # (pitch, velocity) pairs per program >= this x notes_per_program (silent keys are replaced)
# settings a job's time is taken proportional to: (section, key, key of the full grid's value, the bench's value)
SCALED = (
    ("probe", "epochs", "probe_epochs", BENCH["probe_epochs"]),
    ("probe", "seeds", "probe_seeds", len(BENCH["probe_seeds"])),
    ("similarity", "bootstrap", "bootstrap", BENCH["bootstrap"]),
    ("models", "epochs", "epochs", BENCH["epochs"]),
)


# --- The config of one N ----------------------------------------------------------------------------------------------
def note_grid(n: int, family_programs: dict, program_ranges: dict) -> dict:
    """render.programs_per_family (2, else 3, else 1) / notes_per_program / velocities (evenly spaced, enough for that
    many programs of every family to have SILENT_MARGIN x the pairs they need): exactly ``n`` distinct notes."""
    fams = sorted(family_programs)
    if n <= 0 or n % len(fams):
        raise ValueError(f"--n {n}: the number of notes must be a positive multiple of {len(fams)} (the families)")
    per_family, fewest = n // len(fams), min(map(len, family_programs.values()))
    ppf = next((p for p in (2, 3, 1) if per_family % p == 0 and p <= fewest), 1)
    npp = per_family // ppf
    ranges = {f: sorted(program_ranges[p][2] - program_ranges[p][1] + 1 for p in family_programs[f]) for f in fams}
    n_vel = max(5, math.ceil(SILENT_MARGIN * npp / min(r[-ppf] for r in ranges.values())))
    if n_vel > 127:
        raise ValueError(f"--n {n}: {npp} notes per program need more than the 127 MIDI velocities")
    velocities = sorted({round(127 * (k + 1) / n_vel) for k in range(n_vel)})
    return {"programs_per_family": ppf, "notes_per_program": npp, "velocities": velocities}


def bench_config(grid: dict) -> dict:
    """The benchmark's config for the notes of ``grid`` (:func:`note_grid`); every other key at its default."""
    render = {"kind": "notes", "seed": 1, "soundfont": None, **grid, "hold_seconds": 3.0, "release_seconds": 1.0}
    dataset = {"format": "nsynth", "sample_rate": 16000, "render": render, "tasks": TASKS, "main_task": "family"}
    dataset["split"] = {"method": "random", "test_fraction": 0.3, "seed": 0}
    return {
        "results": "results",
        "datasets": {"notes": dataset},
        "models": {"architectures": BENCH["archs"], "seeds": BENCH["seeds"], "train_tasks": "main", "epochs": 1},
        "probe": {"epochs": BENCH["probe_epochs"], "seeds": BENCH["probe_seeds"]},
        "similarity": {"bootstrap": BENCH["bootstrap"]},
    }


def _resolve(node, schema: dict) -> dict:
    while isinstance(node, dict) and "$ref" in node:
        node = schema["$defs"][node["$ref"].split("/")[-1]]
    return node if isinstance(node, dict) else {}


def prune_to_schema(value, node: dict, schema: dict, path: str = "") -> tuple[object, list[str]]:
    """``value`` without the mapping keys the schema (``node`` there) does not define, and their dotted names."""
    node = _resolve(node, schema)
    if not isinstance(value, dict):
        return value, []
    props, extra = node.get("properties", {}), _resolve(node.get("additionalProperties"), schema)
    out, dropped = {}, []
    for k, v in value.items():
        sub = props[k] if k in props else (extra or None)
        if sub is None and (props or node.get("additionalProperties") is False):
            dropped.append(f"{path}{k}")
            continue
        out[k], d = prune_to_schema(v, sub or {}, schema, f"{path}{k}.")
        dropped += d
    return out, dropped


def calibration_config(cfg: dict) -> dict:
    """``cfg`` with probe.epochs and similarity.bootstrap doubled (those of them it has)."""
    cal = json.loads(json.dumps(cfg))
    for section, key in (("probe", "epochs"), ("similarity", "bootstrap")):
        if key in cal.get(section, {}):
            cal[section][key] *= 2
    return cal


# --- Reading a run ----------------------------------------------------------------------------------------------------
def _arch_of(parts) -> str:
    return next((p for p in parts if p in ARCHS), "")


def last_sample(s: float, short: float = 0.5, interval: float = 30) -> float:
    """When Snakemake's benchmark last sampled a job of ``s`` wall seconds: every ``short`` s for 30 samples after
    the first, then every ``interval`` s (snakemake.benchmark's BENCHMARK_INTERVAL_SHORT / BENCHMARK_INTERVAL)."""
    burst = short * interval
    return s if s <= burst else burst + interval * ((s - burst) // interval)


def read_benchmarks(root: Path) -> pd.DataFrame:
    """One row per ``<dataset>/<rule>[/...].tsv`` under ``root``: rule, job, arch, s, cpu_s, rss_mb (last repeat).
    cpu_s is the file's cpu_time carried on to the job's end at its rate until the last sample (s / last_sample)."""
    rows = []
    for f in sorted(Path(root).rglob("*.tsv")):
        parts = f.relative_to(root).with_suffix("").parts
        t = pd.read_csv(f, sep="\t")
        if len(parts) < 2 or not len(t):
            continue
        last = pd.to_numeric(t.iloc[-1].reindex(["s", "cpu_time", "max_rss"]), errors="coerce").to_numpy(
            dtype=float, copy=True
        )
        last[1] *= last[0] / last_sample(last[0]) if last[0] > 0 else 1.0
        rows.append({"rule": parts[1], "job": "/".join(parts), "arch": _arch_of(parts[2:])} | dict(zip(COLS, last)))
    return pd.DataFrame(rows, columns=["rule", "job", "arch", *COLS])


def metadata_jobs(workdir: Path) -> pd.DataFrame:
    """The jobs of Snakemake's metadata (``.snakemake/metadata``): rule, job (its first output), arch, s."""
    rows = []
    for f in sorted((Path(workdir) / ".snakemake" / "metadata").glob("*")):
        try:
            m, path = json.loads(f.read_text()), base64.b64decode(f.name).decode()
            rows.append({"rule": m["rule"], "job": path, "end": m["endtime"], "s": m["endtime"] - m["starttime"]})
        except (ValueError, UnicodeDecodeError, KeyError, TypeError):
            continue
    df = pd.DataFrame(rows, columns=["rule", "job", "end", "s"])
    df = df.groupby(["rule", "end"], as_index=False).agg(job=("job", "min"), s=("s", "max"))  # one row per job
    return df.assign(arch=[_arch_of(Path(j).parts) for j in df["job"]])[["rule", "job", "arch", "s"]]


def parse_summary(text: str) -> pd.DataFrame:
    """``snakemake --summary`` output -> rows (path, rule)."""
    rows = [f[:3:2] for f in (line.split("\t") for line in text.splitlines()) if len(f) >= 3 and f[0] != "output_file"]
    return pd.DataFrame(rows, columns=["path", "rule"])


def _size(p: Path) -> int:
    return p.stat().st_size if p.is_file() else sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def output_bytes(summary: pd.DataFrame, workdir: Path, results: str = "results") -> pd.DataFrame:
    """Bytes of each output of ``summary`` (folders summed), plus the files under ``results`` that no output lists,
    each given to the one rule with outputs in its nearest such folder ("(unattributed)" if none or several)."""
    workdir, rows, by_dir = Path(workdir), [], {}
    for p, r in summary.values:
        rows.append({"path": p, "rule": r, "arch": _arch_of(Path(p).parts), "bytes": _size(workdir / p)})
        by_dir.setdefault(Path(p).parent, set()).add(r)
    listed = {Path(p) for p in summary["path"]}
    for f in sorted((workdir / results).rglob("*")):
        rel = f.relative_to(workdir)
        if f.is_file() and rel not in listed and not any(a in listed for a in rel.parents):
            d = next((a for a in rel.parents if a in by_dir), None)
            rule = next(iter(by_dir[d])) if d is not None and len(by_dir[d]) == 1 else "(unattributed)"
            rows.append({"path": str(rel), "rule": rule, "arch": _arch_of(rel.parts), "bytes": f.stat().st_size})
    return pd.DataFrame(rows, columns=["path", "rule", "arch", "bytes"])


def rule_kinds(rules_dir: Path) -> dict[str, str]:
    """{rule: dataset | task | model | conv_model} from the ``benchmark:`` paths of the workflow's rule files."""
    kinds = {}
    for f in sorted(Path(rules_dir).glob("*.smk")):
        for m in re.finditer(r'benchmark:\s*\n\s*f?"benchmarks/\{+dataset\}+/([^"]+)\.tsv"', f.read_text()):
            rule, _, rest = m.group(1).partition("/")
            kinds[rule] = (
                "conv_model" if "conv_arch}" in rest else "model" if "arch}" in rest else "task" if rest else "dataset"
            )
    return kinds


_PROBE = """
import json, math, sys, yaml
sys.path.insert(0, "src")
from deepfeat.workflow import JOBS, job_spec
from deepfeat.nets.models import layer_shapes
deep = yaml.safe_load(open("src/deepfeat/config.schema.yaml"))["properties"]["deep"]["properties"]
layers, avg = deep["layers"]["default"], deep["average_channels"]["default"]
def width(arch, t):
    s = layer_shapes("Regular" if arch == "FeedForward" else arch, 128, t)
    return sum(math.prod(s[a][1:]) if a in avg else math.prod(s[a]) for a in layers)
archs = ["Regular", "Deformable", "Dilated", "1dF", "1dT", "FeedForward"]
print(json.dumps({"specs": {r: job_spec(r) for r in JOBS},
                  "widths": {a: {str(t): width(a, t) for t in (128, 176)} for a in archs}}))
"""


def checkout_facts(workdir: Path) -> dict:
    """The copied checkout's job declarations (``specs``), stored deep-feature width per clip at 128 / 176 frames
    (``widths``; FeedForward: Regular's), rule ``kinds`` and the full grid of configs/paper.yaml (``paper``)."""
    r = subprocess.run([sys.executable, "-c", _PROBE], cwd=workdir, capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"{workdir}: reading its job declarations and layer widths failed:\n{r.stderr[-2000:]}")
    facts = json.loads(r.stdout) | {"kinds": rule_kinds(Path(workdir) / "rules")}
    paper = yaml.safe_load((Path(workdir) / "configs" / "paper.yaml").read_text())
    m, pr = paper["models"], paper["probe"]
    facts["paper"] = {"archs": m["architectures"], "seeds": len(m["seeds"]), "epochs": m["epochs"]}
    facts["paper"] |= {"probe_epochs": pr["epochs"], "probe_seeds": len(pr["seeds"])}
    facts["paper"]["bootstrap"] = paper["similarity"]["bootstrap"]
    facts["paper"]["datasets"] = {
        d: dict(zip(("clips", "frames"), FULL_DATASETS[d]), tasks=len(v["tasks"]))
        | {"classification": sum(t["type"] == "classification" for t in v["tasks"])}
        for d, v in paper["datasets"].items()
    }
    return facts


# --- Running one N ----------------------------------------------------------------------------------------------------
def copy_checkout(dest: Path, rev: str | None) -> None:
    """The files of git revision ``rev``, or (None) the files git tracks or would track in this checkout."""
    dest.mkdir(parents=True, exist_ok=True)
    if rev is None:
        sys.path.insert(0, str(ROOT / "tests"))
        __import__("e2e").copy_checkout(dest)
    else:
        archive = subprocess.run(["git", "archive", rev], cwd=ROOT, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)


def snakemake(folder: Path, *args: str, log: Path) -> dict:
    """Run Snakemake in ``folder`` (output to ``log``); returns wall seconds and the load averages seen."""
    loads, t0 = [os.getloadavg()[0]], time.perf_counter()
    with open(log, "w") as out:
        p = subprocess.Popen([BIN / "snakemake", *args], cwd=folder, stdout=out, stderr=subprocess.STDOUT, env=ENV)
        while p.poll() is None:  # the 1-minute load average, sampled once a minute
            time.sleep(1)
            if time.perf_counter() - t0 >= 60 * len(loads):
                loads.append(os.getloadavg()[0])
    wall = time.perf_counter() - t0
    loads.append(os.getloadavg()[0])
    if p.returncode:
        raise RuntimeError(f"snakemake {' '.join(args)} failed in {folder} ({p.returncode}); see {log}")
    load = {"load_before": loads[0], "load_mean": round(float(np.mean(loads)), 2), "load_max": max(loads)}
    return {"wall_s": round(wall, 1), **load, "load_after": loads[-1]}


def snapshot(folder: Path, name: str, info: dict, configfile: str | None) -> None:
    """Keep benchmarks, metadata jobs and (``configfile``: the run's) the bytes per output in ``bench_scale/<name>``."""
    snap = folder / SNAP / name
    shutil.rmtree(snap, ignore_errors=True)
    (snap / "benchmarks").mkdir(parents=True)
    if (folder / "benchmarks").is_dir():  # absent when no job ran
        shutil.copytree(folder / "benchmarks", snap / "benchmarks", dirs_exist_ok=True)
    metadata_jobs(folder).to_csv(snap / "metadata_jobs.csv", index=False)
    if configfile:
        cmd = [BIN / "snakemake", "--summary", "--cores", "1", "--configfile", configfile]
        out = subprocess.run(cmd, cwd=folder, capture_output=True, text=True, env=ENV, check=True).stdout
        output_bytes(parse_summary(out), folder).to_csv(snap / "bytes.csv", index=False)
        info["results_bytes"] = _size(folder / "results")
    (snap / "run.json").write_text(json.dumps(info, indent=1))


def run_n(n: int, folder: Path, cores: int, rev: str | None, calibrate: bool, keep: bool) -> None:
    """Copy the checkout into ``folder``, run the benchmark's grid for ``n`` notes (and the calibration run)."""
    from deepfeat.data.render.notes import FAMILY_PROGRAMS, PROGRAM_RANGES

    if not (folder / "Snakefile").exists():
        copy_checkout(folder, rev)
    schema = yaml.safe_load((folder / "src" / "deepfeat" / "config.schema.yaml").read_text())
    grid = note_grid(n, FAMILY_PROGRAMS, PROGRAM_RANGES)
    cfg, dropped = prune_to_schema(bench_config(grid), schema, schema)
    (folder / CONFIG).write_text(yaml.safe_dump(cfg, sort_keys=False))
    (folder / SNAP).mkdir(exist_ok=True)
    (folder / SNAP / "facts.json").write_text(json.dumps(checkout_facts(folder), indent=1))
    _say(f"N={n}: {grid}; dropped keys {dropped or 'none'}; snakemake --cores {cores} in {folder}")
    info = {"n": n, "cores": cores, "rev": rev or "working tree", "grid": grid, "dropped": dropped}
    info |= snakemake(folder, "--cores", str(cores), "--configfile", CONFIG, log=folder / SNAP / "base.log")
    snapshot(folder, "base", info, CONFIG)
    _say(f"N={n}: {info['wall_s']:.0f} s (load {info['load_before']:.1f} -> {info['load_after']:.1f})")
    if calibrate:
        (folder / CAL_CONFIG).write_text(yaml.safe_dump(calibration_config(cfg), sort_keys=False))
        shutil.rmtree(folder / "benchmarks")  # only the jobs that rerun write new ones
        log = folder / SNAP / "calibration.log"
        cal = {"n": n, "cores": cores} | snakemake(folder, "--cores", str(cores), "--configfile", CAL_CONFIG, log=log)
        snapshot(folder, "calibration", cal, None)
        _say(f"N={n}: calibration run {cal['wall_s']:.0f} s")
    else:  # a calibration of an earlier run here no longer matches
        shutil.rmtree(folder / SNAP / "calibration", ignore_errors=True)
    if not keep:
        shutil.rmtree(folder / "results", ignore_errors=True)


def _say(msg: str) -> None:
    print(f"[bench_scale {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def load_runs(workdir: Path) -> tuple[list[dict], dict | None, dict]:
    """The runs under ``workdir`` (``n<N>/bench_scale``) by N, the (largest N's) calibration run, the checkout facts."""
    runs, cal, facts = [], None, {}
    for d in sorted(Path(workdir).glob(f"n*/{SNAP}"), key=lambda p: int(p.parent.name[1:])):
        if (d / "base" / "run.json").exists():
            info = json.loads((d / "base" / "run.json").read_text())
            runs.append({"n": info["n"], "info": info} | _jobs_and_bytes(d / "base"))
            facts = json.loads((d / "facts.json").read_text())
            if (d / "calibration" / "run.json").exists():
                cal = {"n": info["n"], "base": runs[-1]["jobs"], "cal": _jobs_and_bytes(d / "calibration")["jobs"]}
    return runs, cal, facts


def _jobs_and_bytes(snap: Path) -> dict:
    jobs, meta = read_benchmarks(snap / "benchmarks"), pd.read_csv(snap / "metadata_jobs.csv")
    extra = meta[~meta["rule"].isin(set(jobs["rule"]) | {"all"})]  # rules without a benchmark file: no RSS
    jobs = pd.concat([jobs, extra.reindex(columns=jobs.columns)], ignore_index=True) if len(extra) else jobs
    b = snap / "bytes.csv"
    byts = pd.read_csv(b) if b.exists() else pd.DataFrame(columns=["path", "rule", "arch", "bytes"])
    for df in (jobs, byts):  # no architecture: "" (CSV files read it as NaN)
        df["arch"] = df["arch"].astype(object).fillna("")
    return {"jobs": jobs, "bytes": byts}


# --- Tables -----------------------------------------------------------------------------------------------------------
def per_rule(runs: list[dict]) -> pd.DataFrame:
    """Per rule and N: jobs, wall seconds (sum, max), CPU seconds, peak RSS (MB), bytes written."""
    out = []
    for r in runs:
        g = r["jobs"].groupby("rule")
        t = pd.DataFrame({"jobs": g.size(), "s_sum": g["s"].sum(), "s_max": g["s"].max()})
        t["cpu_sum"], t["rss_mb"] = g["cpu_s"].sum(min_count=1), g["rss_mb"].max()
        t = t.join(r["bytes"].groupby("rule")["bytes"].sum(), how="outer")
        t = t[t["jobs"].notna() | (t["bytes"] > 0)]  # not a rule with neither jobs nor bytes ("(unattributed)")
        out.append(t.assign(n=r["n"]).rename_axis("rule").reset_index())
    cols = ["rule", "n", "jobs", "s_sum", "s_max", "cpu_sum", "rss_mb", "bytes"]
    return pd.concat(out, ignore_index=True)[cols] if out else pd.DataFrame(columns=cols)


def fit_exponent(ns, ys) -> float:
    """Slope of log y on log n by least squares over the points with y > 0 (NaN with fewer than two N values)."""
    ns, ys = np.asarray(ns, float), np.asarray(ys, float)
    ok = (ys > 0) & np.isfinite(ys) & (ns > 0)
    enough = len(np.unique(ns[ok])) >= 2
    return float(np.polyfit(np.log(ns[ok]), np.log(ys[ok]), 1)[0]) if enough else float("nan")


GROWTH = {"time": "s_sum", "cpu": "cpu_sum", "rss": "rss_mb", "bytes": "bytes"}  # exponent name: per_rule column


def growth(table: pd.DataFrame) -> pd.DataFrame:
    """Per rule: growth exponents in N (``<GROWTH key>_exp``) and ``flag``, the names of those above LIMIT."""
    rows = []
    for rule, t in table.groupby("rule"):
        e = {f"{k}_exp": fit_exponent(t["n"], t[c]) for k, c in GROWTH.items()}
        rows.append({"rule": rule, **e, "flag": ", ".join(k[:-4] for k, v in e.items() if v > LIMIT)})
    return pd.DataFrame(rows, columns=["rule", *(f"{k}_exp" for k in GROWTH), "flag"]).set_index("rule")


def _reads(spec: dict, section: str, key: str) -> bool:
    return key in spec.get("reads", {}).get(section, ())


def settings_ratio(spec: dict, paper: dict) -> float:
    """Full grid / benchmark of the SCALED settings a job reads (probe epochs, probe seeds, bootstrap, epochs)."""
    return math.prod(paper[full] / bench for s, k, full, bench in SCALED if bench and _reads(spec, s, k))


def calibration_fractions(base: pd.DataFrame, cal: pd.DataFrame, specs: dict) -> dict[str, float]:
    """Per rule reading probe.epochs / similarity.bootstrap (k of them): its time's fraction proportional to them,
    (t_cal / t_base - 1) / (2^k - 1) in [0, 1] (NaN: no job in both); t: CPU time if known (load stretches wall)."""
    out = {}
    for rule, spec in specs.items():
        k = _reads(spec, "probe", "epochs") + _reads(spec, "similarity", "bootstrap")
        if k:
            a, b = (d[d["rule"] == rule].set_index("job") for d in (base, cal))
            col = "cpu_s" if a["cpu_s"].notna().all() and b["cpu_s"].notna().all() else "s"
            a, b = a[col], b[col]
            common = a.index.intersection(b.index)
            ok = len(common) and a[common].sum() > 0
            out[rule] = float(np.clip((b[common].sum() / a[common].sum() - 1) / (2**k - 1), 0, 1)) if ok else np.nan
    return out


def cross_pairs(archs, n_seeds: int) -> list[tuple[str, str]]:
    """The (arch, arch) of the pairs similarity_cross compares per layer: seed pairs per arch, arch pairs per seed."""
    pairs = [(a, a) for a in archs for _ in combinations(range(n_seeds), 2)]
    return pairs + [p for _ in range(n_seeds) for p in combinations(archs, 2)]


def _jobs_of(kind: str, ds: dict, paper: dict) -> list[tuple[str, int]]:
    """(arch, jobs) of a rule of ``kind`` on one dataset of the full grid (networks trained on every task)."""
    if kind in ("dataset", "task"):
        return [("", 1 if kind == "dataset" else ds["tasks"])]
    return [(a, ds["tasks"] * paper["seeds"]) for a in paper["archs"] if kind == "model" or a in CONV_ARCHS]


def job_scale(rule: str, kind: str, arch: str, ds: dict, facts: dict) -> tuple[float, float]:
    """(width, work): from the measured job of (``rule``, base arch) to a full-grid job, time and disk x width x work,
    memory x width (width per clip; per-dataset rules: frames; similarity_cross: widest pair; work: pairs, models)."""
    w, T, paper = facts["widths"], str(ds["frames"]), facts["paper"]
    if kind in ("model", "conv_model"):
        width = w[arch][T] / w[BASE_ARCH[arch]]["128"]
    elif kind == "task":
        pair = lambda a, b, t: w[a][t] + w[b][t]  # noqa: E731
        full = [pair(a, b, T) for a, b in cross_pairs([a for a in paper["archs"] if a in CONV_ARCHS], paper["seeds"])]
        bench = [pair(a, b, "128") for a, b in cross_pairs(BENCH["archs"], len(BENCH["seeds"]))]
        return (max(full) / np.mean(bench), sum(full) / max(full) / len(bench)) if bench and full else (1.0, 1.0)
    else:
        width = ds["frames"] / BENCH_DATASET["frames"]
    models = ds["tasks"] * paper["seeds"] * len(paper["archs"])
    return width, models / BENCH_DATASET["models"] if rule in REPORT_RULES else 1.0


def settings_scale(rule: str, ds: dict, facts: dict, fractions: dict) -> float:
    """Time factor of the full grid's settings, (1 - f) + f x ratio (f: calibrated fraction, 1 when unknown); for
    the probe rules (1 - f) x tasks ratio + f x classification tasks ratio x ratio."""
    spec = facts["specs"].get(rule, {})
    ratio, f = settings_ratio(spec, facts["paper"]), fractions.get(rule, 1.0)
    f = f if np.isfinite(f) else 1.0
    if _reads(spec, "probe", "epochs"):
        tasks = ds["tasks"] / BENCH_DATASET["tasks"]
        return (1 - f) * tasks + f * ds["classification"] / BENCH_DATASET["classification"] * ratio
    return (1 - f) + f * ratio if ratio != 1 else 1.0


def _pick(table: pd.DataFrame, rule: str, arch: str):
    """The row of (rule, arch), else of (rule, its base arch), else the rule's first (None if the rule has none)."""
    for key in ((rule, arch), (rule, BASE_ARCH.get(arch, arch))):
        if key in table.index:
            return table.loc[key]
    rows = table[table.index.get_level_values(0) == rule]
    return rows.iloc[0] if len(rows) else None


def extrapolate(run: dict, grow: pd.DataFrame, fractions: dict, facts: dict) -> pd.DataFrame:
    """Per rule of the full grid: jobs, disk (GB), peak RSS per job (GB), wall and CPU hours (one job at a time on
    the benchmark's machine), from the per-job figures of ``run`` (the largest N) and the growth exponents."""
    jobs = run["jobs"]
    ref = jobs.groupby(["rule", "arch"])[list(COLS)].mean()
    b = run["bytes"].groupby(["rule", "arch"])["bytes"].sum()
    ref = ref.join((b / jobs.groupby(["rule", "arch"]).size().reindex(b.index).fillna(1)).rename("bytes"), how="left")
    paper, rows = facts["paper"], []
    for rule in sorted(set(ref.index.get_level_values(0)) - set(NOT_IN_GRID)):
        kind = facts["kinds"].get(rule, "dataset")
        e = grow.reindex([rule]).iloc[0]
        a_t, a_c, a_m, a_b = (float(e[f"{k}_exp"]) if np.isfinite(e[f"{k}_exp"]) else 1.0 for k in GROWTH)
        acc = {"rule": rule, "jobs": 0, "disk_gb": 0.0, "rss_gb": 0.0, "wall_h": 0.0, "cpu_h": 0.0}
        for ds in paper["datasets"].values():
            size = ds["clips"] / run["n"]
            for arch, count in _jobs_of(kind, ds, paper):
                r = _pick(ref, rule, arch)
                width, work = job_scale(rule, kind, arch, ds, facts)
                t = count * width * work * settings_scale(rule, ds, facts, fractions) / 3600
                acc["jobs"] += count
                acc["wall_h"] += r["s"] * size**a_t * t
                acc["cpu_h"] += (r["cpu_s"] * size**a_c if np.isfinite(r["cpu_s"]) else r["s"] * size**a_t) * t
                acc["rss_gb"] = max(acc["rss_gb"], np.nan_to_num(r["rss_mb"]) * (size * width) ** a_m / 1024)
                acc["disk_gb"] += count * np.nan_to_num(r["bytes"]) * size**a_b * width * work / 1e9
        rows.append(acc)
    out = pd.DataFrame(rows, columns=["rule", "jobs", "disk_gb", "rss_gb", "wall_h", "cpu_h"]).set_index("rule")
    out.loc["total"] = out.sum().where(out.columns != "rss_gb", out["rss_gb"].max())
    return out


def md_table(df: pd.DataFrame, formats: dict) -> str:
    """A Markdown table of ``df`` (its index a column too); ``formats`` maps columns to format specs."""
    df, blank = df.reset_index(), lambda v: v is None or (isinstance(v, float) and not np.isfinite(v))  # noqa: E731
    rows = [["" if blank(v) else format(v, formats.get(c, "")) for c, v in zip(df.columns, r)] for r in df.values]
    return "\n".join(
        "| " + " | ".join(r) + " |" for r in [list(map(str, df.columns)), ["---"] * len(df.columns), *rows]
    )


def _measured(runs: list[dict], table: pd.DataFrame) -> str:
    order = table[table["n"] == table["n"].max()].sort_values("s_sum", ascending=False)["rule"].tolist()
    t = table.assign(rule=pd.Categorical(table["rule"], categories=order + sorted(set(table["rule"]) - set(order))))
    t = t.sort_values(["rule", "n"]).assign(bytes=lambda d: d["bytes"] / 1e6)
    t.columns = ["rule", "N", "jobs", "wall s (sum)", "wall s (max)", "CPU s", "peak RSS MB", "written MB"]
    fmt = {c: ",.1f" for c in ("wall s (sum)", "wall s (max)", "CPU s", "written MB")} | {"peak RSS MB": ",.0f"}
    fmt["jobs"] = ",.0f"
    load = "{load_before:.1f} / {load_mean:.1f} / {load_max:.1f} / {load_after:.1f}"
    cols = ["N", "jobs", "Snakemake wall s", "cores", "results/ MB", "load before/mean/max/after"]
    whole = [
        [r["n"], len(r["jobs"]), r["info"]["wall_s"], r["info"]["cores"], r["info"].get("results_bytes", np.nan) / 1e6]
        + [load.format(**r["info"])]
        for r in runs
    ]
    whole = md_table(pd.DataFrame(whole, columns=cols).set_index("N"), dict(zip(cols, [","] + [",.0f"] * 4)))
    return md_table(t.set_index("rule"), fmt | {"N": ","}) + "\n\nWhole runs:\n\n" + whole


def _assumptions(n_ref: int, fractions: dict, cal_n: int | None, facts: dict) -> str:
    p = facts["paper"]
    cal = ", ".join(f"{r} {f:.2f}" for r, f in sorted(fractions.items()) if np.isfinite(f))
    cal = f"(calibration run at N = {cal_n:,}) {cal}" if cal_n else "(no calibration run) 1"
    lines = [
        f"per-job figures of N = {n_ref:,} x (clips / {n_ref:,}) ^ (the rule's fitted exponent; 1 if only one N); "
        "peak RSS x (clips x width ratio) ^ (its RSS exponent)",
        "architectures: x stored deep-feature width per clip (deep.layers, deep.average_channels averaged) over the "
        "measured one's: Deformable, Dilated from Regular; 1dT from 1dF; FeedForward (trained only) as Regular; "
        "per-dataset rules x mel frames per clip (128 NSynth, 176 Composer, Beethoven)",
        f"{len(p['archs'])} architectures x {p['seeds']} seeds x every task; training x {p['epochs']} epochs (set-up "
        f"included: an upper bound); probe epochs {p['probe_epochs']} x {p['probe_seeds']} seeds, bootstrap "
        f"{p['bootstrap']}: fraction of a job's time scaled with them {cal}; the rest of a probe "
        "job scales with the tasks, that fraction with the classification tasks",
        "similarity_cross x the summed widths of the pairs it compares (seed pairs of each architecture and "
        "architecture pairs of each seed); tables, figures, findings x the number of models",
        "render_demo left out (the full grid ingests recorded data); hours: one job at a time on this machine's CPUs",
    ]
    return "\n".join(f"- {x}" for x in lines)


def report(runs: list[dict], cal: dict | None, facts: dict) -> str:
    """The Markdown tables (measured, growth, extrapolation) and the extrapolation's assumptions."""
    table = per_rule(runs)
    grow = growth(table)
    fractions = calibration_fractions(cal["base"], cal["cal"], facts["specs"]) if cal else {}
    ext = extrapolate(runs[-1], grow, fractions, facts)
    names = {"time_exp": "wall time", "cpu_exp": "CPU time", "rss_exp": "peak RSS", "bytes_exp": "written"}
    g = grow.rename(columns=names | {"flag": f"> {LIMIT}"})
    e = ext.rename(columns={"disk_gb": "disk GB", "rss_gb": "peak RSS / job GB", "wall_h": "wall h", "cpu_h": "CPU h"})
    sizes = ", ".join(f"{d} {v['clips']:,} clips" for d, v in facts["paper"]["datasets"].items())
    parts = [
        f"### Measured: notes dataset of N clips on a minimal grid ({' + '.join(BENCH['archs'])}, one seed, "
        f"{BENCH['epochs']} epoch, probe epochs {BENCH['probe_epochs']}, bootstrap {BENCH['bootstrap']})",
        _measured(runs, table),
        "### Growth exponents in N (least squares on log-log over N = " + ", ".join(f"{r['n']:,}" for r in runs) + ")",
        md_table(g, {c: ".2f" for c in names.values()}),
        f"### Extrapolation to the method's full grid (configs/paper.yaml; {sizes})",
        md_table(e, {"jobs": ",.0f"} | {c: ",.1f" for c in e.columns if c != "jobs"}),
        _assumptions(runs[-1]["n"], fractions, cal and cal["n"], facts),
    ]
    return "\n\n".join(parts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, nargs="+", default=list(DEFAULT_N), help="numbers of notes (multiples of 8)")
    ap.add_argument("--cores", type=int, default=2, help="snakemake --cores")
    ap.add_argument("--workdir", type=Path, help="run in this folder (kept) instead of a temporary one")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder and every results/")
    ap.add_argument("--from-dir", type=Path, help="recompute the tables from the runs in this folder; run nothing")
    ap.add_argument("--rev", help="copy this git revision instead of the working tree (e.g. HEAD)")
    ap.add_argument("--calibrate", type=int, help="N of the calibration run (default the largest --n; 0: none)")
    ap.add_argument("--out", type=Path, help="also write the Markdown tables to this file")
    a = ap.parse_args(argv)
    work = a.from_dir or a.workdir or Path(tempfile.mkdtemp(prefix="bench_scale_"))
    try:
        for n in [] if a.from_dir else sorted(set(a.n)):
            run_n(n, work / f"n{n}", a.cores, a.rev, n == (max(a.n) if a.calibrate is None else a.calibrate), a.keep)
        runs, cal, facts = load_runs(work)
    finally:
        if not (a.from_dir or a.workdir or a.keep):
            shutil.rmtree(work, ignore_errors=True)
    if not runs:
        print(f"{work}: no n<N>/{SNAP}/base/run.json (no finished run)", file=sys.stderr)
        return 1
    text = report(runs, cal, facts)
    print(text)
    if a.out:
        a.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
