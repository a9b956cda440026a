"""Built-in demo datasets rendered from real instrument samples (a General MIDI SoundFont) and real scores.

Nothing is downloaded: the instrument sounds are the recorded samples of a General MIDI SoundFont (default
``TimGM6mb.sf2``, shipped inside the ``pretty_midi`` wheel; any GM ``.sf2``/``.sf3`` file can be named with
``render.soundfont``), played by TinySoundFont (``tinysoundfont``); the music comes from the score corpus
shipped with ``music21``. Three kinds (``render.kind``) mirror the three datasets of the method:

``notes`` (NSynth-like)
    Single notes of the 8 acoustic NSynth families. Per family, ``programs_per_family`` GM programs are drawn
    (seeded) from :data:`FAMILY_PROGRAMS`; per program, ``notes_per_program`` distinct (pitch, velocity) pairs
    are drawn (seeded, without replacement) from its playable range (:data:`PROGRAM_RANGES`) x ``velocities``.
    Keys for which the SoundFont has no sample render silent and are replaced by the next drawn pair; a program
    with too few sounding pairs is replaced by the family's next program in the seeded order.
    A note is held ``hold_seconds`` (note-on at t = 0), then released for ``release_seconds`` (NSynth: 3 + 1 s).
    Written in NSynth's published layout: ``examples.json`` + ``audio/<note_str>.wav`` (16-bit PCM, mono).
``scores`` (Composer-like)
    ``works_per_composer`` works of each of ``composers`` (seeded choice among the corpus files), every work
    played by the same fixed string ensemble (:func:`neutral_ensemble`), cut at ``max_seconds_per_work``.
    Written as ``metadata.csv`` (columns path, composer, work) + ``audio/<composer>/<work>.wav``.
``ensembles`` (Beethoven-like)
    ``works`` works of ``composer``, each played by ``ensembles`` virtual ensembles (:func:`draw_ensembles`) that
    differ in performance style: GM programs per register, tempo factor, tuning (A4 = 430..446 Hz), dynamics
    (level and a slow swell), articulation (sounding fraction of each written note) and room (a seeded
    exponentially decaying noise reverb). Half of the ensembles are of region "european", half "american";
    the regions draw their style from different ranges (:data:`REGION_STYLES`). Written as ``metadata.csv``
    (columns path, ensemble, work, region) + ``audio/<ensemble>/<work>.wav``.

Levels: samples are written as 16-bit PCM. ``normalize: file`` scales every file so its peak is ``peak_dbfs``
(default -1 dBFS); ``normalize: instrument`` (the default of ``notes``) scales all notes of one GM program by
one gain so that the program's loudest note peaks at ``peak_dbfs``: TinySoundFont applies MIDI velocity as a
pure gain (measured: peak ratio 25/127 exactly, identical waveform shape), so per-file normalisation would
erase the velocity label from the audio. Either way nothing clips and every file peaks above -60 dBFS.

Determinism: every random choice comes from ``numpy.random.default_rng`` seeded by ``render.seed`` and a
fixed key of what is being drawn (family id, program, ensemble index), so the same configuration gives
byte-identical files. ``manifest.json`` (written last, atomically) records what was rendered.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import time
import warnings
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from deepfeat.io import atomic_path, write_csv, write_json

MANIFEST_FORMAT = "deepfeat-render-1"

# NSynth's instrument family ids (as published) and the 8 acoustic families the method keeps.
NSYNTH_FAMILY_IDS = {"bass": 0, "brass": 1, "flute": 2, "guitar": 3, "keyboard": 4, "mallet": 5, "organ": 6,
                     "reed": 7, "string": 8, "synth_lead": 9, "vocal": 10}
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
    0: ("Acoustic Grand Piano", 21, 108), 1: ("Bright Acoustic Piano", 21, 108),
    2: ("Electric Grand Piano", 28, 103), 3: ("Honky-tonk Piano", 21, 108),
    4: ("Electric Piano 1", 28, 88), 5: ("Electric Piano 2", 28, 100),
    6: ("Harpsichord", 29, 89), 7: ("Clavinet", 29, 88),
    8: ("Celesta", 60, 108), 9: ("Glockenspiel", 79, 108), 10: ("Music Box", 60, 96),
    11: ("Vibraphone", 53, 89), 12: ("Marimba", 45, 96), 13: ("Xylophone", 65, 108),
    14: ("Tubular Bells", 60, 77), 15: ("Dulcimer", 48, 88),
    24: ("Acoustic Guitar (nylon)", 40, 83), 25: ("Acoustic Guitar (steel)", 40, 86),
    26: ("Electric Guitar (jazz)", 40, 86), 27: ("Electric Guitar (clean)", 40, 86),
    28: ("Electric Guitar (muted)", 40, 76), 29: ("Overdriven Guitar", 40, 86),
    30: ("Distortion Guitar", 40, 86), 31: ("Guitar Harmonics", 52, 88),
    40: ("Violin", 55, 103), 41: ("Viola", 48, 88), 42: ("Cello", 36, 76), 43: ("Contrabass", 28, 67),
    44: ("Tremolo Strings", 28, 96), 45: ("Pizzicato Strings", 28, 96), 46: ("Orchestral Harp", 24, 103),
    48: ("String Ensemble 1", 28, 96), 49: ("String Ensemble 2", 28, 96),
    52: ("Choir Aahs", 48, 79), 53: ("Voice Oohs", 48, 79), 54: ("Synth Voice", 48, 84),
    56: ("Trumpet", 54, 82), 57: ("Trombone", 40, 72), 58: ("Tuba", 28, 58), 59: ("Muted Trumpet", 54, 82),
    60: ("French Horn", 41, 77), 61: ("Brass Section", 36, 84),
    64: ("Soprano Sax", 56, 87), 65: ("Alto Sax", 49, 80), 66: ("Tenor Sax", 44, 75),
    67: ("Baritone Sax", 36, 68), 68: ("Oboe", 58, 91), 69: ("English Horn", 52, 81),
    70: ("Bassoon", 34, 75), 71: ("Clarinet", 50, 91),
    72: ("Piccolo", 74, 108), 73: ("Flute", 60, 96), 74: ("Recorder", 72, 98), 75: ("Pan Flute", 60, 96),
    76: ("Blown Bottle", 60, 84), 77: ("Shakuhachi", 55, 84), 78: ("Whistle", 72, 96), 79: ("Ocarina", 60, 84),
}

# Score parts are given an instrument by register: the mean sounding MIDI pitch of the part's notes.
# >= 66 high, [56, 66) middle, [43, 56) low, < 43 bass.
REGISTER_BOUNDS = ((66.0, "high"), (56.0, "middle"), (43.0, "low"), (-math.inf, "bass"))
NEUTRAL_PROGRAMS = {"high": 40, "middle": 41, "low": 42, "bass": 43}  # violin, viola, cello, contrabass
REGISTER_POOLS: dict[str, tuple[int, ...]] = {  # GM programs the virtual ensembles draw per register
    # Like real orchestras, every ensemble plays strings; they differ in which string samples (solo instrument
    # or one of the two section patches) play each register. (With winds and brass in the pools, the mean
    # spectrum alone identified the ensemble 90% of the time; with strings only 76%, cf. 74% of the method's
    # best single hand-crafted feature on real orchestras.)
    "high": (40, 48, 49),  # violin, string ensemble 1, string ensemble 2
    "middle": (41, 48, 49),  # viola, ...
    "low": (42, 48, 49),  # cello, ...
    "bass": (43, 42, 48),  # contrabass, cello, string ensemble 1
}
# Style ranges of the two regions of virtual ensembles, each value drawn uniformly from [lo, hi]. The ranges
# overlap: "european" ensembles lean to lower pitch, slower tempi, legato, swelling dynamics and larger rooms.
REGION_STYLES: dict[str, dict[str, tuple[float, float]]] = {
    "european": {"a4_hz": (430.0, 440.0), "tempo": (0.85, 1.02), "articulation": (0.8, 1.0),
                 "velocity_scale": (0.75, 0.95), "swell_depth": (0.1, 0.35), "swell_period": (8.0, 16.0),
                 "rt60": (1.2, 2.2), "wet": (0.4, 0.8), "predelay": (0.015, 0.04)},
    "american": {"a4_hz": (438.0, 446.0), "tempo": (0.98, 1.15), "articulation": (0.6, 0.9),
                 "velocity_scale": (0.85, 1.1), "swell_depth": (0.0, 0.2), "swell_period": (4.0, 12.0),
                 "rt60": (0.6, 1.4), "wet": (0.25, 0.6), "predelay": (0.005, 0.02)},
}
REGIONS = tuple(REGION_STYLES)

# music21 corpus files that hold playable scores (.rntxt files are roman-numeral analyses, not music).
# When one work exists in several formats the first extension of this list wins.
SCORE_EXTENSIONS = (".mxl", ".musicxml", ".xml", ".krn", ".abc", ".mid", ".midi")
MIN_WORK_SECONDS = 12.0  # a work must sound this long (three 4 s clips) to be used
RELEASE_TAIL_SECONDS = 1.0  # rendered after the last note-off of a work (inside max_seconds_per_work)
SILENCE_PEAK = 1e-5  # a raw render peaking below this (about -100 dBFS) has no sound (no sample for the key)
MIN_PEAK_DBFS = -60.0  # every written file peaks above this level

_KIND_KEYS = {
    "notes": {"required": {"programs_per_family", "notes_per_program", "velocities", "hold_seconds"},
              "optional": {"release_seconds", "families"}},
    "scores": {"required": {"composers", "works_per_composer", "max_seconds_per_work"}, "optional": {"ensembles"}},
    "ensembles": {"required": {"composer", "works", "max_seconds_per_work", "ensembles"}, "optional": set()},
}
_COMMON_KEYS = {"kind", "seed", "soundfont", "normalize", "peak_dbfs"}


class RenderError(ValueError):
    """A bad render configuration, a missing SoundFont or an unusable score; the message names the key/file."""


# ----------------------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------------------
def render_dataset(out_dir: Path, render: dict, sample_rate: int, log: logging.Logger | None = None) -> dict:
    """Render one built-in demo dataset into ``out_dir`` and return its manifest.

    ``render`` is a dataset's ``render`` config section (see the module docstring and the schema), and
    ``sample_rate`` (Hz) the dataset's rate. Files rendered by an earlier run (``audio/``, ``examples.json``,
    ``metadata.csv``, ``manifest.json``) are removed first. Every file is written atomically; the manifest
    (``out_dir/manifest.json``) is written last. Raises :class:`RenderError` for a bad config, a missing or
    unreadable SoundFont, or when nothing could be rendered.
    """
    log = log or logging.getLogger("deepfeat.render")
    out_dir = Path(out_dir)
    cfg = check_render_config(render)
    sr = int(sample_rate)
    if sr < 1000:
        raise RenderError(f"sample_rate: {sr} Hz is too low to render audio (need >= 1000)")
    sf_path = resolve_soundfont(cfg["soundfont"])
    sf_bytes = sf_path.read_bytes()
    _check_loadable(sf_bytes, sf_path)
    _clean(out_dir, log)
    t0 = time.perf_counter()
    log.info(f"render {cfg['kind']} into {out_dir} at {sr} Hz, seed {cfg['seed']}, SoundFont {sf_path}")
    if cfg["kind"] == "notes":
        body = _render_notes(out_dir, cfg, sr, sf_bytes, log)
    elif cfg["kind"] == "scores":
        body = _render_scores(out_dir, cfg, sr, sf_bytes, log)
    else:
        body = _render_ensembles(out_dir, cfg, sr, sf_bytes, log)
    manifest = {
        "format": MANIFEST_FORMAT,
        "kind": cfg["kind"],
        "layout": "nsynth" if cfg["kind"] == "notes" else "recordings",
        "sample_rate": sr,
        "render": cfg,
        "soundfont": {"path": str(sf_path), "sha256": hashlib.sha256(sf_bytes).hexdigest()},
        "versions": _versions(),
        **body,
    }
    write_json(manifest, out_dir / "manifest.json")
    secs = time.perf_counter() - t0
    log.info(f"render {cfg['kind']}: {manifest['n_files']} files, {manifest['audio_seconds']:.0f} s of audio "
             f"in {secs:.1f} s ({manifest['audio_seconds'] / 4.0 / max(secs, 1e-9):.1f} four-second clips/s)")
    return manifest


def check_render_config(render: dict) -> dict:
    """Validate a ``render`` section for its kind and return it with defaults filled (raises RenderError).

    Keys that the kind does not use are errors (so a typo or a key of another kind never passes silently).
    """
    if not isinstance(render, dict):
        raise RenderError(f"render: expected a mapping, got {type(render).__name__}")
    kind = render.get("kind")
    if kind not in _KIND_KEYS:
        raise RenderError(f"render.kind: expected one of {sorted(_KIND_KEYS)}, got {kind!r}")
    spec = _KIND_KEYS[kind]
    allowed = _COMMON_KEYS | spec["required"] | spec["optional"]
    extra = sorted(set(render) - allowed)
    if extra:
        raise RenderError(f"render: key(s) {extra} are not used by kind '{kind}' (allowed: {sorted(allowed)})")
    missing = sorted(spec["required"] - set(render))
    if missing:
        raise RenderError(f"render: kind '{kind}' needs the key(s) {missing}")
    cfg = {"seed": 0, "soundfont": None, "normalize": "instrument" if kind == "notes" else "file",
           "peak_dbfs": -1.0, **render}
    if kind == "notes":
        cfg.setdefault("release_seconds", 1.0)
        cfg.setdefault("families", list(ACOUSTIC_FAMILIES))
    if kind == "scores":
        cfg.setdefault("ensembles", 1)
    if not isinstance(cfg["seed"], (int, np.integer)) or isinstance(cfg["seed"], bool):
        raise RenderError(f"render.seed: expected an integer, got {cfg['seed']!r}")
    if cfg["normalize"] not in ("file", "instrument") or (cfg["normalize"] == "instrument" and kind != "notes"):
        ok = "'file' or 'instrument'" if kind == "notes" else "'file'"
        raise RenderError(f"render.normalize: expected {ok} for kind '{kind}', got {cfg['normalize']!r}")
    if not (MIN_PEAK_DBFS < float(cfg["peak_dbfs"]) <= 0.0):
        raise RenderError(f"render.peak_dbfs: expected a level in ({MIN_PEAK_DBFS:g}, 0] dBFS, got {cfg['peak_dbfs']}")
    if kind == "notes":
        _pos_int(cfg, "programs_per_family")
        _pos_int(cfg, "notes_per_program")
        fams = cfg["families"]
        if not isinstance(fams, list) or len(fams) < 2 or len(set(fams)) != len(fams):
            raise RenderError(f"render.families: expected a list of >= 2 distinct families, got {fams!r}")
        bad = [f for f in fams if f not in FAMILY_PROGRAMS]
        if bad:
            raise RenderError(f"render.families: {bad} unknown; choose from {list(ACOUSTIC_FAMILIES)}")
        vel = cfg["velocities"]
        if (not isinstance(vel, list) or not vel or len(set(vel)) != len(vel)
                or any(not isinstance(v, (int, np.integer)) or not 1 <= v <= 127 for v in vel)):
            raise RenderError(f"render.velocities: expected distinct MIDI velocities in 1..127, got {vel!r}")
        if not float(cfg["hold_seconds"]) > 0 or not float(cfg["release_seconds"]) >= 0:
            raise RenderError("render.hold_seconds must be > 0 and render.release_seconds >= 0, got "
                              f"{cfg['hold_seconds']} and {cfg['release_seconds']}")
        for fam in fams:
            n = len(FAMILY_PROGRAMS[fam])
            if cfg["programs_per_family"] > n:
                raise RenderError(f"render.programs_per_family: {cfg['programs_per_family']} > the {n} GM programs "
                                  f"of family '{fam}' {list(FAMILY_PROGRAMS[fam])}")
    else:
        if not float(cfg["max_seconds_per_work"]) >= MIN_WORK_SECONDS:
            raise RenderError(f"render.max_seconds_per_work: expected >= {MIN_WORK_SECONDS:g} s, "
                              f"got {cfg['max_seconds_per_work']}")
    if kind == "scores":
        _pos_int(cfg, "works_per_composer")
        comps = cfg["composers"]
        if not isinstance(comps, list) or len(comps) < 2 or len(set(comps)) != len(comps):
            raise RenderError(f"render.composers: expected a list of >= 2 distinct composers, got {comps!r}")
        if cfg["ensembles"] != 1:
            raise RenderError(f"render.ensembles: kind 'scores' plays every work with one ensemble (1), "
                              f"got {cfg['ensembles']!r}; use kind 'ensembles' for several")
    if kind == "ensembles":
        _pos_int(cfg, "works")
        _pos_int(cfg, "ensembles")
        if cfg["ensembles"] < 2:
            raise RenderError(f"render.ensembles: need >= 2 ensembles (two regions), got {cfg['ensembles']}")
        if not isinstance(cfg["composer"], str) or not cfg["composer"]:
            raise RenderError(f"render.composer: expected a composer name, got {cfg['composer']!r}")
    return cfg


def default_soundfont() -> Path:
    """``TimGM6mb.sf2``, the General MIDI SoundFont inside the installed ``pretty_midi`` package."""
    import pretty_midi

    return Path(pretty_midi.__file__).resolve().parent / "TimGM6mb.sf2"


def resolve_soundfont(path: str | None) -> Path:
    """The SoundFont to use: ``path`` (relative to the working directory) or, for None, :func:`default_soundfont`."""
    if path is None:
        p = default_soundfont()
        if not p.is_file():
            raise RenderError(f"render.soundfont is null but the default SoundFont {p} (shipped with pretty_midi) "
                              "is missing; reinstall pretty_midi or set render.soundfont to a GM .sf2 file")
        return p
    p = Path(path).expanduser()
    if not p.is_file():
        raise RenderError(f"render.soundfont: '{path}' does not exist (resolved to {p.resolve()}); give a General "
                          "MIDI .sf2/.sf3 file, e.g. /usr/share/sounds/sf2/FluidR3_GM.sf2 (Debian package "
                          "fluid-soundfont-gm), or null for the TimGM6mb.sf2 shipped with pretty_midi")
    return p.resolve()


# ----------------------------------------------------------------------------------------------------------
# Synthesis primitives
# ----------------------------------------------------------------------------------------------------------
def _new_synth(sf_bytes: bytes, sr: int):
    try:
        import tinysoundfont
    except ImportError as e:
        raise RenderError("rendering the demo data needs the package tinysoundfont: "
                          "pip install --no-deps tinysoundfont==0.3.7 (see the Makefile)") from e

    synth = tinysoundfont.Synth(samplerate=int(sr))
    sfid = synth.sfload(sf_bytes)
    return synth, sfid


def _check_loadable(sf_bytes: bytes, path: Path) -> None:
    try:
        _new_synth(sf_bytes, 16000)
    except Exception as e:  # tinysoundfont raises a bare exception for garbage
        raise RenderError(f"render.soundfont: {path} is not a readable SoundFont ({type(e).__name__}: {e})") from e


def _generate(synth, out: np.ndarray, start: int, stop: int) -> None:
    """Render samples [start, stop) of the stereo float32 buffer ``out`` (n x 2) with the synth's current state."""
    if stop > start:
        synth.generate_simple(stop - start, buffer=memoryview(out[start:stop]).cast("B"))


def _flush(synth, sr: int) -> None:
    """Silence every voice and render until the output is exactly zero: the synth is then as good as new.

    (Checked: a note rendered after a flush is bit-identical to the same note from a freshly loaded synth.)
    """
    synth.sounds_off()
    buf = np.zeros((256, 2), np.float32)
    for _ in range(int(10 * sr / 256)):
        _generate(synth, buf, 0, 256)
        if not buf.any():
            return
    raise RenderError("the synthesiser did not fall silent within 10 s after sounds_off")


class NoteRenderer:
    """Renders single notes of a SoundFont: note-on at t = 0, note-off after ``hold`` s, then ``release`` s.

    One synth is reused for all notes and flushed to silence between notes (:func:`_flush`), which is exact
    and ~3x faster than reloading the SoundFont per note.
    """

    def __init__(self, sf_bytes: bytes, sr: int, hold: float, release: float):
        self.sr = int(sr)
        self.n_hold = int(round(hold * sr))
        self.n_total = self.n_hold + int(round(release * sr))
        self.synth, self.sfid = _new_synth(sf_bytes, sr)

    def has_program(self, program: int) -> bool:
        return self.synth.sfpreset_name(self.sfid, 0, int(program)) is not None

    def render(self, program: int, pitch: int, velocity: int) -> np.ndarray:
        """Mono float64 samples (mean of the synth's two channels), ``hold + release`` seconds long."""
        s = self.synth
        s.program_select(0, self.sfid, 0, int(program))
        out = np.zeros((self.n_total, 2), np.float32)
        s.noteon(0, int(pitch), int(velocity))
        _generate(s, out, 0, self.n_hold)
        s.noteoff(0, int(pitch))
        _generate(s, out, self.n_hold, self.n_total)
        _flush(s, self.sr)
        return out.mean(axis=1, dtype=np.float64)


def peak_dbfs(y: np.ndarray) -> float:
    """Peak level of samples in full-scale units, in dBFS (20 log10 max|y|; -inf for all zeros)."""
    p = float(np.max(np.abs(y))) if y.size else 0.0
    return 20.0 * math.log10(p) if p > 0 else -math.inf


def write_wav(path: Path, y: np.ndarray, sr: int) -> None:
    """Write mono samples (full scale = 1.0) as 16-bit PCM WAV, atomically; values are rounded, never clipped.

    Raises RenderError if a sample would exceed the 16-bit range (the caller normalises first).
    """
    import soundfile as sf

    q = np.round(np.asarray(y, np.float64) * 32767.0)
    if q.size == 0 or np.abs(q).max() > 32767:
        raise RenderError(f"{path}: samples outside [-1, 1] (peak {peak_dbfs(y):.2f} dBFS) or empty")
    with atomic_path(path, suffix=".wav") as tmp:
        sf.write(str(tmp), q.astype(np.int16), int(sr), subtype="PCM_16", format="WAV")


# ----------------------------------------------------------------------------------------------------------
# kind "notes"
# ----------------------------------------------------------------------------------------------------------
def note_str(family: str, program: int, pitch: int, velocity: int) -> str:
    """NSynth note id ``<family>_acoustic_<nnn>-<ppp>-<vvv>``; the instrument number nnn is the GM program."""
    return f"{family}_acoustic_{program:03d}-{pitch:03d}-{velocity:03d}"


def program_order(family: str, seed: int, available=None) -> list[int]:
    """The family's GM programs (those for which ``available(program)`` holds) in a seeded random order.

    The first ``programs_per_family`` programs that can play ``notes_per_program`` sounding notes are used.
    """
    cands = [p for p in FAMILY_PROGRAMS[family] if available is None or available(p)]
    rng = np.random.default_rng([int(seed), _key("programs"), NSYNTH_FAMILY_IDS[family]])
    return [int(cands[i]) for i in rng.permutation(len(cands))]


def note_candidates(program: int, velocities: list[int], seed: int) -> np.ndarray:
    """All (pitch, velocity) pairs of a program's range x velocities, in a seeded random order (k x 2)."""
    _, lo, hi = PROGRAM_RANGES[program]
    grid = np.stack(np.meshgrid(np.arange(lo, hi + 1), np.asarray(velocities), indexing="ij"), -1).reshape(-1, 2)
    rng = np.random.default_rng([int(seed), _key("notes"), int(program)])
    return grid[rng.permutation(len(grid))]


def _program_notes(nr: NoteRenderer, fam: str, prog: int, cfg: dict, n: int):
    """Up to ``n`` sounding notes of a program in the seeded candidate order: ([(pitch, vel)], [audio], [silent])."""
    notes, audio, silent = [], [], []
    for pitch, vel in note_candidates(prog, cfg["velocities"], cfg["seed"]):
        y = nr.render(prog, pitch, vel)
        if np.abs(y).max() < SILENCE_PEAK:
            silent.append({"item": note_str(fam, prog, int(pitch), int(vel)),
                           "reason": "silent (the SoundFont has no sample for this key)"})
            continue
        notes.append((int(pitch), int(vel)))
        audio.append(y)
        if len(notes) == n:
            break
    return notes, audio, silent


def _render_notes(out_dir: Path, cfg: dict, sr: int, sf_bytes: bytes, log) -> dict:
    hold, release = float(cfg["hold_seconds"]), float(cfg["release_seconds"])
    nr = NoteRenderer(sf_bytes, sr, hold, release)
    per_fam, per_prog = int(cfg["programs_per_family"]), int(cfg["notes_per_program"])
    target = 10.0 ** (float(cfg["peak_dbfs"]) / 20.0)
    examples, skipped, programs = {}, [], {}
    n_done, n_all = 0, len(cfg["families"]) * per_fam * per_prog
    t0 = last = time.perf_counter()
    for fam in cfg["families"]:
        order = program_order(fam, cfg["seed"], nr.has_program)
        programs[fam] = []
        for prog in order:
            if len(programs[fam]) == per_fam:
                break
            notes, audio, silent = _program_notes(nr, fam, prog, cfg, per_prog)
            skipped += silent
            if len(notes) < per_prog:
                _, lo, hi = PROGRAM_RANGES[prog]
                reason = (f"only {len(notes)} (pitch, velocity) pairs of pitches {lo}-{hi} sound in this SoundFont, "
                          f"{per_prog} needed (render.notes_per_program)")
                skipped.append({"item": f"program {prog} ({PROGRAM_RANGES[prog][0]})", "reason": reason})
                log.warning(f"family {fam}: program {prog} ({PROGRAM_RANGES[prog][0]}) not used: {reason}")
                continue
            peaks = np.array([np.abs(y).max() for y in audio])
            gains = target / peaks if cfg["normalize"] == "file" else np.full(len(audio), target / peaks.max())
            for (pitch, vel), y, g in zip(notes, audio, gains):
                nid = note_str(fam, prog, pitch, vel)
                z = y * g
                if peak_dbfs(z) < MIN_PEAK_DBFS:
                    raise RenderError(f"{nid}: peak {peak_dbfs(z):.1f} dBFS below {MIN_PEAK_DBFS:g} dBFS after "
                                      "normalisation; use render.normalize: file")
                write_wav(out_dir / "audio" / f"{nid}.wav", z, sr)
                examples[nid] = {
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
            programs[fam].append(prog)
            n_done += per_prog
            now = time.perf_counter()
            if now - last >= 10 or n_done == n_all:
                last = now
                log.info(f"notes: {n_done}/{n_all} rendered ({n_done / (now - t0):.0f} notes/s)")
        if len(programs[fam]) < per_fam:
            raise RenderError(f"render.programs_per_family / notes_per_program: only {len(programs[fam])} of the "
                              f"programs {sorted(order)} of family '{fam}' can play {per_prog} sounding notes in "
                              f"this SoundFont, {per_fam} needed")
        programs[fam].sort()
        log.info(f"family {fam}: programs " + ", ".join(f"{p} {PROGRAM_RANGES[p][0]}" for p in programs[fam]))
    for i, nid in enumerate(sorted(examples)):
        examples[nid] = {"note": i, **examples[nid]}
    examples = {k: examples[k] for k in sorted(examples)}
    write_json(examples, out_dir / "examples.json")
    fam_counts = {f: sum(e["instrument_family_str"] == f for e in examples.values()) for f in programs}
    return {
        "n_files": len(examples),
        "audio_seconds": len(examples) * (hold + release),
        "programs": {f: [{"program": p, "name": PROGRAM_RANGES[p][0], "range": list(PROGRAM_RANGES[p][1:])}
                         for p in ps] for f, ps in programs.items()},
        "class_counts": {"instrument_family_str": fam_counts},
        "skipped": skipped,
    }


# ----------------------------------------------------------------------------------------------------------
# Scores: music21 corpus -> note events
# ----------------------------------------------------------------------------------------------------------
@dataclass
class ScoreEvents:
    """Notes of a score in performance order. Times in seconds at the score's tempo (first onset at 0)."""

    start: np.ndarray  # float64 (n,) onset, s
    end: np.ndarray  # float64 (n,) written end (onset + written duration), s
    pitch: np.ndarray  # int64 (n,) sounding MIDI pitch
    velocity: np.ndarray  # int64 (n,) MIDI velocity from the written dynamics (mf when none)
    part: np.ndarray  # int64 (n,) part index (0 = top staff)
    registers: list[str]  # register of each part (REGISTER_BOUNDS of its mean pitch)

    @property
    def seconds(self) -> float:
        return float(self.end.max()) if self.end.size else 0.0


def corpus_works(composer: str) -> list[str]:
    """Playable works of ``composer`` in the music21 corpus, as sorted corpus-relative paths without duplicates.

    Files with an extension outside :data:`SCORE_EXTENSIONS` are ignored; when a work exists in several formats
    (e.g. ``movement1.krn`` and ``movement1.mxl``) the first extension of SCORE_EXTENSIONS is kept.
    """
    from music21 import corpus

    paths = [Path(p) for p in corpus.getComposer(composer)]
    root = _corpus_root()
    best: dict[str, tuple[int, str]] = {}
    for p in paths:
        ext = p.suffix.lower()
        if ext not in SCORE_EXTENSIONS:
            continue
        try:
            rel = p.resolve().relative_to(root).as_posix()
        except ValueError:
            rel = p.as_posix()
        stem = rel[: -len(p.suffix)]
        rank = SCORE_EXTENSIONS.index(ext)
        if stem not in best or rank < best[stem][0]:
            best[stem] = (rank, rel)
    works = sorted(r for _, r in best.values())
    if not works:
        raise RenderError(f"composer '{composer}': no playable scores in the music21 corpus "
                          f"({len(paths)} files; try e.g. bach, beethoven, haydn, mozart, palestrina, monteverdi)")
    return works


def _corpus_root() -> Path:
    from music21 import common

    return Path(common.getCorpusFilePath()).resolve()


def work_name(rel_path: str) -> str:
    """Label of a corpus work: its corpus path without composer folder and extension, '/' -> '_'."""
    parts = Path(rel_path).with_suffix("").parts
    return "_".join(parts[1:] if len(parts) > 1 else parts).replace(" ", "_")


def load_score(rel_path: str):
    """Parse a corpus work with music21 from its source (no cache, so parallel jobs never share a pickle)."""
    from music21 import converter, stream

    p = _corpus_root() / rel_path
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = converter.parse(str(p), forceSource=True)
    if isinstance(s, stream.Opus):
        if not s.scores:
            raise RenderError(f"{rel_path}: holds no score")
        s = s.scores[0]
    return s


def score_events(score) -> ScoreEvents:
    """Note events of a music21 score: ties merged, tempo marks applied, dynamics mapped to velocities.

    Onsets/ends in quarter lengths are mapped to seconds piecewise-linearly between the score's metronome marks
    (music21's ``metronomeMarkBoundaries``, 120 quarter notes/min when there is none). A note's velocity is
    round(127 x volumeScalar) of the last dynamic mark at or before it in its part (mf = 0.55 when none);
    accent marks (sf, sfz, fz, fp, ...) apply only to notes starting at their offset. Grace notes and
    unpitched notes are skipped. The first onset is moved to t = 0.
    """
    from music21 import chord, dynamics, note

    parts = list(score.parts) or [score]
    mf = dynamics.Dynamic("mf").volumeScalar
    accents = {"sf", "sfz", "sff", "sffz", "fz", "rf", "rfz", "fp", "sfp"}
    start_q, end_q, pitch, vel, part_ix = [], [], [], [], []
    for pi, part in enumerate(parts):
        flat = part.flatten()
        lv_off, lv_val, ac_off, ac_val = [], [], [], []
        for d in flat.getElementsByClass(dynamics.Dynamic):
            scalar = d.volumeScalar
            if scalar is None:
                continue
            (ac_off if str(d.value) in accents else lv_off).append(float(d.offset))
            (ac_val if str(d.value) in accents else lv_val).append(float(scalar))
        lv_off, lv_val = np.asarray(lv_off), np.asarray(lv_val)
        accent_at = dict(zip(np.round(ac_off, 6), ac_val))
        open_ties: dict[int, int] = {}
        for n in flat.notes:
            if not isinstance(n, (note.Note, chord.Chord)) or n.duration.isGrace or n.quarterLength <= 0:
                continue
            s_q = float(n.offset)
            e_q = s_q + float(n.quarterLength)
            k = int(np.searchsorted(lv_off, s_q, side="right")) - 1
            scalar = lv_val[k] if k >= 0 else mf
            scalar = max(scalar, accent_at.get(round(s_q, 6), 0.0))
            members = n.notes if isinstance(n, chord.Chord) else (n,)
            for m in members:
                tie = m.tie if m.tie is not None else getattr(n, "tie", None)
                t = tie.type if tie is not None else None
                midi = int(m.pitch.midi)
                if t in ("stop", "continue") and midi in open_ties:
                    end_q[open_ties[midi]] = e_q
                    if t == "stop":
                        del open_ties[midi]
                    continue
                if t in ("start", "continue"):
                    open_ties[midi] = len(start_q)
                start_q.append(s_q)
                end_q.append(e_q)
                pitch.append(midi)
                vel.append(int(np.clip(round(127 * scalar), 1, 127)))
                part_ix.append(pi)
    if not start_q:
        raise RenderError("score has no pitched notes")
    knots_q, knots_s = [0.0], [0.0]
    spq = 0.5
    for a, b, mm in score.metronomeMarkBoundaries():
        a, b = float(a), float(b)
        spq = float(mm.secondsPerQuarter())
        if b > knots_q[-1]:
            knots_s.append(knots_s[-1] + (b - max(a, knots_q[-1])) * spq)
            knots_q.append(b)
    big = max(max(end_q), knots_q[-1]) + 1.0
    knots_s.append(knots_s[-1] + (big - knots_q[-1]) * spq)
    knots_q.append(big)
    start = np.interp(start_q, knots_q, knots_s)
    end = np.interp(end_q, knots_q, knots_s)
    t0 = start.min()
    start, end = start - t0, end - t0
    pitch_a, part_a = np.asarray(pitch, np.int64), np.asarray(part_ix, np.int64)
    registers = []
    for pi in range(len(parts)):
        sel = part_a == pi
        mean = float(pitch_a[sel].mean()) if sel.any() else 60.0
        registers.append(next(name for bound, name in REGISTER_BOUNDS if mean >= bound))
    order = np.lexsort((pitch_a, part_a, start))
    return ScoreEvents(start[order], end[order], pitch_a[order], np.asarray(vel, np.int64)[order], part_a[order],
                       registers)


# ----------------------------------------------------------------------------------------------------------
# Ensembles (performance styles) and performing a score
# ----------------------------------------------------------------------------------------------------------
@dataclass
class Ensemble:
    """A performance style. Times in seconds, levels as factors, ``a4_hz`` the tuning of A4."""

    name: str
    region: str
    programs: dict  # register -> GM program
    a4_hz: float = 440.0  # tuning; applied as a channel tuning of 12 log2(a4_hz / 440) semitones
    tempo: float = 1.0  # tempo factor (> 1 faster): performed time = score time / tempo
    articulation: float = 0.95  # sounding fraction of each written note length (1 legato, 0.5 staccato)
    velocity_scale: float = 1.0  # written velocities x this factor ...
    swell_depth: float = 0.0  # ... x (1 + depth sin(2 pi t / swell_period + swell_phase)), clipped to 1..127
    swell_period: float = 10.0
    swell_phase: float = 0.0
    rt60: float = 1.0  # room: reverberation time (s) of an exponentially decaying noise tail (-60 dB at rt60)
    wet: float = 0.4  # tail energy relative to the direct sound (the IR's tail has sum of squares wet^2)
    predelay: float = 0.02  # delay of the tail after the direct sound, s
    room_seed: int = 0  # seed of the tail's noise

    @property
    def tuning_semitones(self) -> float:
        return 12.0 * math.log2(self.a4_hz / 440.0)


def neutral_ensemble(seed: int) -> Ensemble:
    """The fixed ensemble of kind ``scores``: strings by register (violin, viola, cello, contrabass), A4 = 440 Hz,
    score tempo, near-legato, written dynamics, a medium room (RT60 1 s, wet 0.4)."""
    return Ensemble("neutral", "", dict(NEUTRAL_PROGRAMS), room_seed=int(np.random.default_rng(
        [int(seed), _key("neutral room")]).integers(2**31)))


def draw_ensembles(n: int, seed: int) -> list[Ensemble]:
    """``n`` virtual ensembles ``ensemble_00`` ...: the first ceil(n/2) of region "european", the rest "american".

    Each ensemble draws (seeded by ``seed`` and its index) one GM program per register from
    :data:`REGISTER_POOLS` and every style value uniformly from its region's range in :data:`REGION_STYLES`.
    """
    out = []
    n_eu = (n + 1) // 2
    for i in range(n):
        region = REGIONS[0] if i < n_eu else REGIONS[1]
        rng = np.random.default_rng([int(seed), _key("ensemble"), i])
        programs = {reg: int(rng.choice(pool)) for reg, pool in REGISTER_POOLS.items()}
        style = {k: float(rng.uniform(lo, hi)) for k, (lo, hi) in REGION_STYLES[region].items()}
        out.append(Ensemble(f"ensemble_{i:02d}", region, programs, swell_phase=float(rng.uniform(0, 2 * math.pi)),
                            room_seed=int(rng.integers(2**31)), **style))
    return out


def room_response(ens: Ensemble, sr: int) -> np.ndarray:
    """Impulse response of the ensemble's room: 1 at t = 0 (direct sound) plus, after ``predelay``, seeded
    Gaussian noise x exp(-ln(1000) t / rt60) (-60 dB at t = rt60) scaled to total energy ``wet**2``."""
    n_tail = max(1, int(round(ens.rt60 * sr)))
    pd_ = int(round(ens.predelay * sr))
    t = np.arange(n_tail) / sr
    tail = np.random.default_rng(ens.room_seed).standard_normal(n_tail) * np.exp(-math.log(1000.0) * t / ens.rt60)
    tail *= ens.wet / math.sqrt(float(np.dot(tail, tail)))
    ir = np.zeros(pd_ + n_tail)
    ir[0] = 1.0
    ir[pd_:] += tail
    return ir


def perform(ev: ScoreEvents, ens: Ensemble, sf_bytes: bytes, sr: int, max_seconds: float) -> np.ndarray:
    """Mono float64 performance of a score by an ensemble, at most ``max_seconds`` long (before normalisation).

    Performed onset = start / tempo; performed length = max(written length x articulation / tempo, 30 ms);
    notes starting at or after ``max_seconds`` are dropped. The audio runs until the last note-off plus
    RELEASE_TAIL_SECONDS (capped at ``max_seconds``), events are sample-accurate (note-offs before note-ons at
    the same sample), each part plays on its own MIDI channel (parts > 16 share channels by program), and the
    synth's stereo output is averaged to mono and convolved with :func:`room_response`.
    """
    on = ev.start / ens.tempo
    dur = np.maximum((ev.end - ev.start) * ens.articulation / ens.tempo, 0.03)
    keep = on < max_seconds
    on, off = on[keep], (on + dur)[keep]
    pitch, part = ev.pitch[keep], ev.part[keep]
    swell = 1.0 + ens.swell_depth * np.sin(2 * math.pi * on / ens.swell_period + ens.swell_phase)
    vel = np.clip(np.round(ev.velocity[keep] * ens.velocity_scale * swell), 1, 127).astype(np.int64)
    n_out = int(round(min(max_seconds, float(off.max()) + RELEASE_TAIL_SECONDS) * sr))
    progs = [ens.programs[r] for r in ev.registers]
    if len(progs) <= 16:
        chan_of_part = list(range(len(progs)))
    else:
        uniq = sorted(set(progs))
        chan_of_part = [uniq.index(p) for p in progs]
    synth, sfid = _new_synth(sf_bytes, sr)
    for pi, prog in enumerate(progs):
        synth.program_select(chan_of_part[pi], sfid, 0, int(prog))
        synth.set_tuning(chan_of_part[pi], ens.tuning_semitones)
    chan = np.asarray(chan_of_part, np.int64)[part]
    t_on = np.round(on * sr).astype(np.int64)
    t_off = np.round(off * sr).astype(np.int64)
    # events: (sample, kind 0 = off / 1 = on, channel, key, velocity), sorted so offs precede ons at a sample
    times = np.concatenate([t_off, t_on])
    kinds = np.concatenate([np.zeros_like(t_off), np.ones_like(t_on)])
    chans, keys = np.concatenate([chan, chan]), np.concatenate([pitch, pitch])
    vels = np.concatenate([np.zeros_like(vel), vel])
    order = np.lexsort((keys, chans, kinds, times))
    out = np.zeros((n_out, 2), np.float32)
    pos = 0
    for i in order:
        t = min(int(times[i]), n_out)
        if t > pos:
            _generate(synth, out, pos, t)
            pos = t
        if pos >= n_out:
            break
        if kinds[i]:
            synth.noteon(int(chans[i]), int(keys[i]), int(vels[i]))
        else:
            synth.noteoff(int(chans[i]), int(keys[i]))
    _generate(synth, out, pos, n_out)
    y = out.mean(axis=1, dtype=np.float64)
    from scipy.signal import fftconvolve

    return fftconvolve(y, room_response(ens, sr))[:n_out]


def quiet_chunks(y: np.ndarray, sr: int, seconds: float = 4.0) -> list[float]:
    """Start times (s) of the consecutive ``seconds``-long chunks of ``y`` that peak below MIN_PEAK_DBFS."""
    L = int(round(seconds * sr))
    n = y.size // L
    if n == 0:
        return []
    peaks = np.abs(y[: n * L].reshape(n, L)).max(axis=1)
    return [i * seconds for i in np.flatnonzero(peaks < 10.0 ** (MIN_PEAK_DBFS / 20.0))]


def _write_performance(out_dir: Path, path: str, y: np.ndarray, sr: int, quiet: list, log) -> None:
    """Write one normalised performance; note (log + manifest) any 4 s chunk that is nearly silent."""
    q = quiet_chunks(y, sr)
    if q:
        quiet.append({"path": path, "offsets": q})
        log.warning(f"{path}: {len(q)} nearly silent 4 s chunk(s) (peak < {MIN_PEAK_DBFS:g} dBFS) at {q[:5]} s")
    write_wav(out_dir / path, y, sr)


def normalize_peak(y: np.ndarray, level_dbfs: float, what: str) -> np.ndarray:
    """``y`` scaled so that max|y| = 10^(level_dbfs/20); RenderError naming ``what`` if ``y`` has no sound."""
    p = float(np.max(np.abs(y))) if y.size else 0.0
    if p < SILENCE_PEAK:
        raise RenderError(f"{what}: rendered audio is silent (peak {p:.2e})")
    return y * (10.0 ** (level_dbfs / 20.0) / p)


def _pick_works(composer: str, n: int, seed: int, min_seconds: float, log, what: str):
    """Seeded order of a composer's corpus works; yields (rel_path, events) of the first ``n`` usable ones."""
    works = corpus_works(composer)
    rng = np.random.default_rng([int(seed), _key("works"), _key(composer)])
    chosen, skipped = [], []
    for j in rng.permutation(len(works)):
        if len(chosen) == n:
            break
        rel = works[j]
        t0 = time.perf_counter()
        try:
            ev = score_events(load_score(rel))
        except Exception as e:  # unparsable corpus file: skip it, the next in the seeded order is used
            skipped.append({"item": rel, "reason": f"{type(e).__name__}: {e}"})
            log.warning(f"{what}: skipping {rel}: {type(e).__name__}: {e}")
            continue
        if ev.seconds < min_seconds:
            skipped.append({"item": rel, "reason": f"too short ({ev.seconds:.1f} s < {min_seconds:g} s)"})
            continue
        log.info(f"{what}: {rel}: {len(ev.pitch)} notes, {ev.seconds:.1f} s, parts {ev.registers} "
                 f"(parsed in {time.perf_counter() - t0:.1f} s)")
        chosen.append((rel, ev))
    if not chosen:
        raise RenderError(f"{what}: none of the {len(works)} corpus works of '{composer}' is usable "
                          f"(>= {min_seconds:g} s of music); e.g. {skipped[:2]}")
    if len(chosen) < n:
        log.warning(f"{what}: only {len(chosen)} of {n} works of '{composer}' are usable")
    return chosen, skipped


def _render_scores(out_dir: Path, cfg: dict, sr: int, sf_bytes: bytes, log) -> dict:
    ens = neutral_ensemble(cfg["seed"])
    max_s = float(cfg["max_seconds_per_work"])
    rows, works, skipped, quiet, total = [], [], [], [], 0.0
    for comp in cfg["composers"]:
        chosen, skip = _pick_works(comp, int(cfg["works_per_composer"]), cfg["seed"], MIN_WORK_SECONDS, log,
                                   f"composer {comp}")
        skipped += skip
        for rel, ev in chosen:
            name = work_name(rel)
            y = normalize_peak(perform(ev, ens, sf_bytes, sr, max_s), float(cfg["peak_dbfs"]), rel)
            path = f"audio/{comp}/{name}.wav"
            _write_performance(out_dir, path, y, sr, quiet, log)
            rows.append({"path": path, "composer": comp, "work": name})
            works.append({"composer": comp, "work": name, "corpus_path": rel, "seconds": y.size / sr,
                          "score_seconds": ev.seconds})
            total += y.size / sr
        secs = sum(w["seconds"] for w in works if w["composer"] == comp)
        log.info(f"composer {comp}: {len(chosen)} works, {secs:.0f} s of audio")
    write_csv(pd.DataFrame(rows, columns=["path", "composer", "work"]), out_dir / "metadata.csv")
    return {"n_files": len(rows), "audio_seconds": total, "ensemble": asdict(ens), "works": works,
            "skipped": skipped, "quiet_chunks": quiet}


def _render_ensembles(out_dir: Path, cfg: dict, sr: int, sf_bytes: bytes, log) -> dict:
    ensembles = draw_ensembles(int(cfg["ensembles"]), cfg["seed"])
    max_s = float(cfg["max_seconds_per_work"])
    fastest = max(e.tempo for e in ensembles)
    # a work must fill max_seconds at the fastest tempo, so every ensemble plays the same length of every work
    chosen, skipped = _pick_works(cfg["composer"], int(cfg["works"]), cfg["seed"],
                                  max(MIN_WORK_SECONDS, max_s * fastest), log, f"composer {cfg['composer']}")
    for e in ensembles:
        log.info(f"{e.name} ({e.region}): programs {e.programs}, A4 {e.a4_hz:.1f} Hz, tempo x{e.tempo:.3f}, "
                 f"articulation {e.articulation:.2f}, velocity x{e.velocity_scale:.2f} swell {e.swell_depth:.2f}, "
                 f"RT60 {e.rt60:.2f} s wet {e.wet:.2f}")
    rows, works, quiet, total = [], [], [], 0.0
    t0 = time.perf_counter()
    for k, (rel, ev) in enumerate(chosen):
        name = work_name(rel)
        works.append({"work": name, "corpus_path": rel, "score_seconds": ev.seconds})
        for e in ensembles:
            y = normalize_peak(perform(ev, e, sf_bytes, sr, max_s), float(cfg["peak_dbfs"]), f"{rel} by {e.name}")
            path = f"audio/{e.name}/{name}.wav"
            _write_performance(out_dir, path, y, sr, quiet, log)
            rows.append({"path": path, "ensemble": e.name, "work": name, "region": e.region})
            total += y.size / sr
        log.info(f"work {k + 1}/{len(chosen)} {name}: {len(ensembles)} performances "
                 f"({time.perf_counter() - t0:.1f} s so far)")
    write_csv(pd.DataFrame(rows, columns=["path", "ensemble", "work", "region"]), out_dir / "metadata.csv")
    return {"n_files": len(rows), "audio_seconds": total, "ensembles": [asdict(e) for e in ensembles],
            "works": works, "skipped": skipped, "quiet_chunks": quiet}


# ----------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------
def _key(s: str) -> int:
    """A stable integer for a string (CRC32), used as a component of seeds."""
    return zlib.crc32(s.encode())


def _pos_int(cfg: dict, key: str) -> None:
    v = cfg[key]
    if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
        raise RenderError(f"render.{key}: expected a positive integer, got {v!r}")


def _clean(out_dir: Path, log) -> None:
    """Remove what an earlier render left in ``out_dir`` (only the files and folder this module writes)."""
    removed = []
    for name in ("manifest.json", "examples.json", "metadata.csv"):
        p = out_dir / name
        if p.exists():
            p.unlink()
            removed.append(name)
    if (out_dir / "audio").is_dir():
        shutil.rmtree(out_dir / "audio")
        removed.append("audio/")
    if removed:
        log.info(f"removed the earlier render's {', '.join(removed)} from {out_dir}")


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("deepfeat", "tinysoundfont", "music21", "pretty_midi"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def read_manifest(out_dir: Path) -> dict:
    """The manifest of a rendered folder (raises FileNotFoundError / ValueError for a missing or foreign one)."""
    p = Path(out_dir) / "manifest.json"
    m = json.loads(p.read_text())
    if m.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"{p}: not a deepfeat render manifest (format {m.get('format')!r})")
    return m
