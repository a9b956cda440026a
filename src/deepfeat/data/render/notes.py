"""Kind ``notes`` (NSynth-like): single notes of the 8 acoustic NSynth families, in NSynth's published layout.

Per family, ``programs_per_family`` GM programs are drawn (seeded) from :data:`FAMILY_PROGRAMS`; per program,
``notes_per_program`` distinct (pitch, velocity) pairs are drawn (seeded, without replacement) from its playable
range (:data:`PROGRAM_RANGES`) x ``velocities``. Keys for which the SoundFont has no sample render silent and are
replaced by the next drawn pair; a program with too few sounding pairs is replaced by the family's next program
in the seeded order. A note is held ``hold_seconds`` (note-on at t = 0), then released for ``release_seconds``.
Written as ``examples.json`` + ``audio/<note_str>.wav`` (16-bit PCM, mono). ``normalize: instrument`` scales all
notes of one GM program by one gain so that the program's loudest note peaks at ``peak_dbfs`` (velocity
loudness survives); ``normalize: file`` scales every note to ``peak_dbfs``.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from deepfeat.data.render.synth import (
    MIN_PEAK_DBFS,
    SILENCE_PEAK,
    NoteRenderer,
    RenderError,
    peak_dbfs,
    seed_key,
    write_pcm16,
)
from deepfeat.formats.files import write_json

# NSynth's instrument family ids (as published) and the 8 acoustic families the method keeps.
NSYNTH_FAMILY_IDS = {
    "bass": 0,
    "brass": 1,
    "flute": 2,
    "guitar": 3,
    "keyboard": 4,
    "mallet": 5,
    "organ": 6,
    "reed": 7,
    "string": 8,
    "synth_lead": 9,
    "vocal": 10,
}
ACOUSTIC_FAMILIES = ("brass", "flute", "guitar", "keyboard", "mallet", "reed", "string", "vocal")
NSYNTH_QUALITIES = 10  # length of NSynth's `qualities` vector (all zero here: no quality annotations)

# GM programs (0-based) that stand for each family. Ranges follow the GM program families (keyboard 0-7,
# mallet 8-15, guitar 24-31, string 40-51, vocal 52-54, brass 56-63, reed 64-71, flute 72-79) minus the
# programs that are not acoustic members of the family: 47 Timpani (a drum), 50-51 Synth Strings and
# 62-63 Synth Brass (synthesisers). Vocal keeps 54 (Synth Voice, a sampled voice timbre) since GM has only
# three voice programs.
FAMILY_PROGRAMS: dict[str, tuple[int, ...]] = {
    "keyboard": (0, 1, 2, 3, 4, 5, 6, 7),
    "mallet": (8, 9, 10, 11, 12, 13, 14, 15),
    "guitar": (24, 25, 26, 27, 28, 29, 30, 31),
    "string": (40, 41, 42, 43, 44, 45, 46, 48, 49),
    "vocal": (52, 53, 54),
    "brass": (56, 57, 58, 59, 60, 61),
    "reed": (64, 65, 66, 67, 68, 69, 70, 71),
    "flute": (72, 73, 74, 75, 76, 77, 78, 79),
}

# Playable range of each GM program as sounding MIDI pitches (lowest, highest), from the usual orchestration
# ranges of the instrument the program imitates (piano A0-C8 = 21-108, violin G3-G7, cello C2-E5, trumpet
# F#3-Bb5, flute C4-C7 ...). Notes are only drawn inside these ranges.
PROGRAM_RANGES: dict[int, tuple[str, int, int]] = {
    0: ("Acoustic Grand Piano", 21, 108),
    1: ("Bright Acoustic Piano", 21, 108),
    2: ("Electric Grand Piano", 28, 103),
    3: ("Honky-tonk Piano", 21, 108),
    4: ("Electric Piano 1", 28, 88),
    5: ("Electric Piano 2", 28, 100),
    6: ("Harpsichord", 29, 89),
    7: ("Clavinet", 29, 88),
    8: ("Celesta", 60, 108),
    9: ("Glockenspiel", 79, 108),
    10: ("Music Box", 60, 96),
    11: ("Vibraphone", 53, 89),
    12: ("Marimba", 45, 96),
    13: ("Xylophone", 65, 108),
    14: ("Tubular Bells", 60, 77),
    15: ("Dulcimer", 48, 88),
    24: ("Acoustic Guitar (nylon)", 40, 83),
    25: ("Acoustic Guitar (steel)", 40, 86),
    26: ("Electric Guitar (jazz)", 40, 86),
    27: ("Electric Guitar (clean)", 40, 86),
    28: ("Electric Guitar (muted)", 40, 76),
    29: ("Overdriven Guitar", 40, 86),
    30: ("Distortion Guitar", 40, 86),
    31: ("Guitar Harmonics", 52, 88),
    40: ("Violin", 55, 103),
    41: ("Viola", 48, 88),
    42: ("Cello", 36, 76),
    43: ("Contrabass", 28, 67),
    44: ("Tremolo Strings", 28, 96),
    45: ("Pizzicato Strings", 28, 96),
    46: ("Orchestral Harp", 24, 103),
    48: ("String Ensemble 1", 28, 96),
    49: ("String Ensemble 2", 28, 96),
    52: ("Choir Aahs", 48, 79),
    53: ("Voice Oohs", 48, 79),
    54: ("Synth Voice", 48, 84),
    56: ("Trumpet", 54, 82),
    57: ("Trombone", 40, 72),
    58: ("Tuba", 28, 58),
    59: ("Muted Trumpet", 54, 82),
    60: ("French Horn", 41, 77),
    61: ("Brass Section", 36, 84),
    64: ("Soprano Sax", 56, 87),
    65: ("Alto Sax", 49, 80),
    66: ("Tenor Sax", 44, 75),
    67: ("Baritone Sax", 36, 68),
    68: ("Oboe", 58, 91),
    69: ("English Horn", 52, 81),
    70: ("Bassoon", 34, 75),
    71: ("Clarinet", 50, 91),
    72: ("Piccolo", 74, 108),
    73: ("Flute", 60, 96),
    74: ("Recorder", 72, 98),
    75: ("Pan Flute", 60, 96),
    76: ("Blown Bottle", 60, 84),
    77: ("Shakuhachi", 55, 84),
    78: ("Whistle", 72, 96),
    79: ("Ocarina", 60, 84),
}


def note_str(family: str, program: int, pitch: int, velocity: int) -> str:
    """NSynth note id ``<family>_acoustic_<nnn>-<ppp>-<vvv>``; the instrument number nnn is the GM program."""
    return f"{family}_acoustic_{program:03d}-{pitch:03d}-{velocity:03d}"


def program_order(family: str, seed: int, available=None) -> list[int]:
    """The family's GM programs (those for which ``available(program)`` holds) in a seeded random order.

    The first ``programs_per_family`` programs that can play ``notes_per_program`` sounding notes are used.
    """
    cands = [p for p in FAMILY_PROGRAMS[family] if available is None or available(p)]
    rng = np.random.default_rng([int(seed), seed_key("programs"), NSYNTH_FAMILY_IDS[family]])
    return [int(cands[i]) for i in rng.permutation(len(cands))]


def note_candidates(program: int, velocities: list[int], seed: int) -> np.ndarray:
    """All (pitch, velocity) pairs of a program's range x velocities, in a seeded random order (k x 2)."""
    _, lo, hi = PROGRAM_RANGES[program]
    grid = np.stack(np.meshgrid(np.arange(lo, hi + 1), np.asarray(velocities), indexing="ij"), -1).reshape(-1, 2)
    rng = np.random.default_rng([int(seed), seed_key("notes"), int(program)])
    return grid[rng.permutation(len(grid))]


def _program_notes(nr: NoteRenderer, fam: str, prog: int, cfg: dict, n: int):
    """Up to ``n`` sounding notes of a program in the seeded candidate order: ([(pitch, vel)], [audio], [silent])."""
    notes, audio, silent = [], [], []
    for pitch, vel in note_candidates(prog, cfg["velocities"], cfg["seed"]):
        y = nr.render(prog, pitch, vel)
        if np.abs(y).max() < SILENCE_PEAK:
            silent.append(
                {
                    "item": note_str(fam, prog, int(pitch), int(vel)),
                    "reason": "silent (the SoundFont has no sample for this key)",
                }
            )
            continue
        notes.append((int(pitch), int(vel)))
        audio.append(y)
        if len(notes) == n:
            break
    return notes, audio, silent


class _Progress:
    """Logs notes rendered / notes wanted at most every 10 s (and when done)."""

    def __init__(self, n_all: int, log):
        self.n_done, self.n_all, self.log = 0, n_all, log
        self.t0 = self.last = time.perf_counter()

    def add(self, n: int) -> None:
        self.n_done += n
        now = time.perf_counter()
        if now - self.last >= 10 or self.n_done == self.n_all:
            self.last = now
            self.log.info(f"notes: {self.n_done}/{self.n_all} rendered ({self.n_done / (now - self.t0):.0f} notes/s)")


def _note_example(fam: str, prog: int, pitch: int, vel: int, sr: int) -> dict:
    """The examples.json fields of one note (without ``note``, the index added once all notes are known)."""
    nid = note_str(fam, prog, pitch, vel)
    return {
        "note_str": nid,
        "instrument": prog,
        "instrument_str": f"{fam}_acoustic_{prog:03d}",
        "instrument_family": NSYNTH_FAMILY_IDS[fam],
        "instrument_family_str": fam,
        "instrument_source": 0,
        "instrument_source_str": "acoustic",
        "pitch": pitch,
        "velocity": vel,
        "sample_rate": sr,
        "qualities": [0] * NSYNTH_QUALITIES,
        "qualities_str": [],
    }


def _write_program(out_dir: Path, fam: str, prog: int, notes, audio, cfg: dict, sr: int, examples: dict) -> None:
    """Normalise (``cfg["normalize"]``) and write the notes of one program; add them to ``examples``."""
    target = 10.0 ** (float(cfg["peak_dbfs"]) / 20.0)
    peaks = np.array([np.abs(y).max() for y in audio])
    gains = target / peaks if cfg["normalize"] == "file" else np.full(len(audio), target / peaks.max())
    for (pitch, vel), y, g in zip(notes, audio, gains):
        nid = note_str(fam, prog, pitch, vel)
        z = y * g
        if peak_dbfs(z) < MIN_PEAK_DBFS:
            raise RenderError(
                f"{nid}: peak {peak_dbfs(z):.1f} dBFS below {MIN_PEAK_DBFS:g} dBFS after "
                "normalisation; use render.normalize: file"
            )
        write_pcm16(out_dir / "audio" / f"{nid}.wav", z, sr)
        examples[nid] = _note_example(fam, prog, pitch, vel, sr)


def _render_family(
    nr: NoteRenderer,
    out_dir: Path,
    fam: str,
    cfg: dict,
    sr: int,
    examples: dict,
    skipped: list,
    progress: _Progress,
    log,
) -> list[int]:
    """Render the notes of one family; returns its (sorted) programs."""
    per_fam, per_prog = int(cfg["programs_per_family"]), int(cfg["notes_per_program"])
    order = program_order(fam, cfg["seed"], nr.has_program)
    programs: list[int] = []
    for prog in order:
        if len(programs) == per_fam:
            break
        notes, audio, silent = _program_notes(nr, fam, prog, cfg, per_prog)
        skipped.extend(silent)
        if len(notes) < per_prog:
            _, lo, hi = PROGRAM_RANGES[prog]
            reason = (
                f"only {len(notes)} (pitch, velocity) pairs of pitches {lo}-{hi} sound in this SoundFont, "
                f"{per_prog} needed (render.notes_per_program)"
            )
            skipped.append({"item": f"program {prog} ({PROGRAM_RANGES[prog][0]})", "reason": reason})
            log.warning(f"family {fam}: program {prog} ({PROGRAM_RANGES[prog][0]}) not used: {reason}")
            continue
        _write_program(out_dir, fam, prog, notes, audio, cfg, sr, examples)
        programs.append(prog)
        progress.add(per_prog)
    if len(programs) < per_fam:
        raise RenderError(
            f"render.programs_per_family / notes_per_program: only {len(programs)} of the "
            f"programs {sorted(order)} of family '{fam}' can play {per_prog} sounding notes in "
            f"this SoundFont, {per_fam} needed"
        )
    programs.sort()
    log.info(f"family {fam}: programs " + ", ".join(f"{p} {PROGRAM_RANGES[p][0]}" for p in programs))
    return programs


def render_notes(out_dir: Path, cfg: dict, sr: int, sf_bytes: bytes, log) -> dict:
    """Render kind ``notes`` into ``out_dir`` (``cfg``: the checked render section); returns the manifest body."""
    hold, release = float(cfg["hold_seconds"]), float(cfg["release_seconds"])
    nr = NoteRenderer(sf_bytes, sr, hold, release)
    per_fam, per_prog = int(cfg["programs_per_family"]), int(cfg["notes_per_program"])
    examples, skipped, programs = {}, [], {}
    progress = _Progress(len(cfg["families"]) * per_fam * per_prog, log)
    for fam in cfg["families"]:
        programs[fam] = _render_family(nr, out_dir, fam, cfg, sr, examples, skipped, progress, log)
    for i, nid in enumerate(sorted(examples)):
        examples[nid] = {"note": i, **examples[nid]}
    examples = {k: examples[k] for k in sorted(examples)}
    write_json(examples, out_dir / "examples.json")
    fam_counts = {f: sum(e["instrument_family_str"] == f for e in examples.values()) for f in programs}
    return {
        "n_files": len(examples),
        "audio_seconds": len(examples) * (hold + release),
        "programs": {
            f: [{"program": p, "name": PROGRAM_RANGES[p][0], "range": list(PROGRAM_RANGES[p][1:])} for p in ps]
            for f, ps in programs.items()
        },
        "class_counts": {"instrument_family_str": fam_counts},
        "skipped": skipped,
    }
