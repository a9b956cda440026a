"""Benchmark: rendering the built-in demo data (deepfeat.data.render).

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_render.py --notes 240

1. Single notes, in memory: the obvious baseline (a fresh ``tinysoundfont.Synth`` + ``sfload`` per note, as in
   tinysoundfont's examples) vs ours (:class:`deepfeat.data.render.NoteRenderer`: one synth, flushed to silence
   between notes). Same notes, same output (checked bit for bit); prints notes/s of both and the speed-up.
2. End to end, ``render_dataset`` of each kind into a temporary folder (rendering + 16-bit WAV writing, and
   music21 parsing for the score kinds); prints files, seconds of audio and four-second clips per second.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--notes", type=int, default=240, help="notes for part 1")
    ap.add_argument("--sr", type=int, default=16000)
    ap.add_argument("--skip-datasets", action="store_true", help="only part 1")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    import numpy as np
    import tinysoundfont

    from deepfeat.data import render as R

    sf_bytes = R.default_soundfont().read_bytes()
    rng = np.random.default_rng(0)
    progs = [p for ps in R.FAMILY_PROGRAMS.values() for p in ps]
    notes = []
    for _ in range(args.notes):
        p = int(rng.choice(progs))
        _, lo, hi = R.PROGRAM_RANGES[p]
        notes.append((p, int(rng.integers(lo, hi + 1)), int(rng.choice([25, 50, 75, 100, 127]))))
    hold, rel, sr = 3.0, 1.0, args.sr

    def baseline(p, k, v):
        s = tinysoundfont.Synth(samplerate=sr)
        sfid = s.sfload(sf_bytes)
        s.program_select(0, sfid, 0, p)
        s.noteon(0, k, v)
        a = np.frombuffer(s.generate(int(round(hold * sr))), np.float32).reshape(-1, 2)
        s.noteoff(0, k)
        b = np.frombuffer(s.generate(int(round(rel * sr))), np.float32).reshape(-1, 2)
        return np.concatenate([a, b]).mean(axis=1, dtype=np.float64)

    t0 = time.perf_counter()
    base = [baseline(*n) for n in notes]
    t_base = time.perf_counter() - t0
    t0 = time.perf_counter()
    nr = R.NoteRenderer(sf_bytes, sr, hold, rel)
    ours = [nr.render(*n) for n in notes]
    t_ours = time.perf_counter() - t0
    same = all(np.array_equal(a, b) for a, b in zip(base, ours))
    print(
        f"notes ({args.notes} x {hold + rel:g} s at {sr} Hz): baseline fresh synth per note "
        f"{args.notes / t_base:.0f} notes/s, ours {args.notes / t_ours:.0f} notes/s, "
        f"speed-up x{t_base / t_ours:.2f}, identical output: {same}"
    )
    if args.skip_datasets:
        return
    cfgs = [
        (
            "notes",
            16000,
            {
                "kind": "notes",
                "seed": 1,
                "programs_per_family": 3,
                "notes_per_program": 10,
                "velocities": [25, 50, 75, 100, 127],
                "hold_seconds": 3.0,
                "release_seconds": 1.0,
            },
        ),
        (
            "scores",
            22050,
            {
                "kind": "scores",
                "seed": 2,
                "composers": ["bach", "haydn", "palestrina"],
                "works_per_composer": 2,
                "max_seconds_per_work": 40,
            },
        ),
        (
            "ensembles",
            22050,
            {
                "kind": "ensembles",
                "seed": 3,
                "composer": "mozart",
                "works": 2,
                "max_seconds_per_work": 40,
                "ensembles": 10,
            },
        ),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for kind, rate, cfg in cfgs:
            t0 = time.perf_counter()
            m = R.render_dataset(
                manifest=Path(tmp) / kind / "manifest.json", settings={"dataset": {"render": cfg, "sample_rate": rate}}
            )
            dt = time.perf_counter() - t0
            print(
                f"render_dataset {kind}: {m['n_files']} files, {m['audio_seconds']:.0f} s of audio in {dt:.1f} s "
                f"= {m['audio_seconds'] / 4 / dt:.1f} four-second clips/s"
            )


if __name__ == "__main__":
    sys.exit(main())
