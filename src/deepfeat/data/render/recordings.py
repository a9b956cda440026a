"""Kinds ``scores`` (Composer-like) and ``ensembles`` (Beethoven-like), both in the recordings layout.

``scores``: ``works_per_composer`` works of each of ``composers`` (seeded choice among the corpus files), every
work played by the same fixed string ensemble (:func:`~deepfeat.data.render.ensembles.neutral_ensemble`), cut at
``max_seconds_per_work``. Written as ``metadata.csv`` (columns path, composer, work) +
``audio/<composer>/<work>.flac``.

``ensembles``: ``works`` works of ``composer``, each played by ``ensembles`` virtual ensembles
(:func:`~deepfeat.data.render.ensembles.draw_ensembles`). Written as ``metadata.csv`` (columns path, ensemble,
work, region) + ``audio/<ensemble>/<work>.flac``.

Every performance is scaled so that its peak is ``peak_dbfs``; a nearly silent 4 s chunk is logged and listed in
the manifest (``quiet_chunks``).
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from deepfeat.data.render.ensembles import draw_ensembles, neutral_ensemble, perform
from deepfeat.data.render.scores import MIN_WORK_SECONDS, pick_works, work_name
from deepfeat.data.render.synth import MIN_PEAK_DBFS, normalize_peak, quiet_chunks, write_pcm16
from deepfeat.formats.files import write_csv


def write_performance(out_dir: Path, path: str, y: np.ndarray, sr: int, quiet: list, log) -> None:
    """Write one normalised performance; note (log + manifest) any 4 s chunk that is nearly silent."""
    q = quiet_chunks(y, sr)
    if q:
        quiet.append({"path": path, "offsets": q})
        log.warning(f"{path}: {len(q)} nearly silent 4 s chunk(s) (peak < {MIN_PEAK_DBFS:g} dBFS) at {q[:5]} s")
    write_pcm16(out_dir / path, y, sr)


def render_scores(out_dir: Path, cfg: dict, sr: int, sf_bytes: bytes, log) -> dict:
    """Render kind ``scores`` into ``out_dir`` (``cfg``: the checked render section); returns the manifest body."""
    ens = neutral_ensemble(cfg["seed"])
    max_s = float(cfg["max_seconds_per_work"])
    rows, works, skipped, quiet, total = [], [], [], [], 0.0
    for comp in cfg["composers"]:
        chosen, skip = pick_works(
            comp, int(cfg["works_per_composer"]), cfg["seed"], MIN_WORK_SECONDS, log, f"composer {comp}"
        )
        skipped += skip
        for rel, ev in chosen:
            name = work_name(rel)
            y = normalize_peak(perform(ev, ens, sf_bytes, sr, max_s), float(cfg["peak_dbfs"]), rel)
            path = f"audio/{comp}/{name}.flac"
            write_performance(out_dir, path, y, sr, quiet, log)
            rows.append({"path": path, "composer": comp, "work": name})
            works.append(
                {
                    "composer": comp,
                    "work": name,
                    "corpus_path": rel,
                    "seconds": y.size / sr,
                    "score_seconds": ev.seconds,
                }
            )
            total += y.size / sr
        secs = sum(w["seconds"] for w in works if w["composer"] == comp)
        log.info(f"composer {comp}: {len(chosen)} works, {secs:.0f} s of audio")
    write_csv(pd.DataFrame(rows, columns=["path", "composer", "work"]), out_dir / "metadata.csv")
    return {
        "n_files": len(rows),
        "audio_seconds": total,
        "ensemble": asdict(ens),
        "works": works,
        "skipped": skipped,
        "quiet_chunks": quiet,
    }


def render_ensembles(out_dir: Path, cfg: dict, sr: int, sf_bytes: bytes, log) -> dict:
    """Render kind ``ensembles`` into ``out_dir`` (``cfg``: the checked render section); returns the manifest body."""
    ensembles = draw_ensembles(int(cfg["ensembles"]), cfg["seed"])
    max_s = float(cfg["max_seconds_per_work"])
    fastest = max(e.tempo for e in ensembles)
    # a work must fill max_seconds at the fastest tempo, so every ensemble plays the same length of every work
    chosen, skipped = pick_works(
        cfg["composer"],
        int(cfg["works"]),
        cfg["seed"],
        max(MIN_WORK_SECONDS, max_s * fastest),
        log,
        f"composer {cfg['composer']}",
    )
    for e in ensembles:
        log.info(
            f"{e.name} ({e.region}): programs {e.programs}, A4 {e.a4_hz:.1f} Hz, tempo x{e.tempo:.3f}, "
            f"articulation {e.articulation:.2f}, velocity x{e.velocity_scale:.2f} swell {e.swell_depth:.2f}, "
            f"RT60 {e.rt60:.2f} s wet {e.wet:.2f}"
        )
    rows, works, quiet, total = [], [], [], 0.0
    t0 = time.perf_counter()
    for k, (rel, ev) in enumerate(chosen):
        name = work_name(rel)
        works.append({"work": name, "corpus_path": rel, "score_seconds": ev.seconds})
        for e in ensembles:
            y = normalize_peak(perform(ev, e, sf_bytes, sr, max_s), float(cfg["peak_dbfs"]), f"{rel} by {e.name}")
            path = f"audio/{e.name}/{name}.flac"
            write_performance(out_dir, path, y, sr, quiet, log)
            rows.append({"path": path, "ensemble": e.name, "work": name, "region": e.region})
            total += y.size / sr
        log.info(
            f"work {k + 1}/{len(chosen)} {name}: {len(ensembles)} performances "
            f"({time.perf_counter() - t0:.1f} s so far)"
        )
    write_csv(pd.DataFrame(rows, columns=["path", "ensemble", "work", "region"]), out_dir / "metadata.csv")
    return {
        "n_files": len(rows),
        "audio_seconds": total,
        "ensembles": [asdict(e) for e in ensembles],
        "works": works,
        "skipped": skipped,
        "quiet_chunks": quiet,
    }
