"""Synthesis primitives: the SoundFont, the synthesiser, single notes, levels and 16-bit WAV files.

Levels are in full-scale units (1.0 = the 16-bit maximum); :func:`peak_dbfs` is 20 log10 max|y|. A raw render
peaking below :data:`SILENCE_PEAK` has no sound; every written file peaks above :data:`MIN_PEAK_DBFS`.
"""

from __future__ import annotations

import math
import zlib
from pathlib import Path

import numpy as np

from deepfeat import config
from deepfeat.formats.files import atomic_path
from deepfeat.runtime import UserError

SILENCE_PEAK = 1e-5  # a raw render peaking below this (about -100 dBFS) has no sound (no sample for the key)
MIN_PEAK_DBFS = -60.0  # every written file peaks above this level


class RenderError(UserError, ValueError):
    """A bad render configuration, a missing SoundFont or an unusable score; the message names the key/file
    (an expected error: reported without a traceback)."""


def seed_key(s: str) -> int:
    """A stable integer for a string (CRC32), used as a component of seeds."""
    return zlib.crc32(s.encode())


def default_soundfont() -> Path:
    """``TimGM6mb.sf2``, the General MIDI SoundFont inside the installed ``pretty_midi`` package."""
    import pretty_midi

    return Path(pretty_midi.__file__).resolve().parent / "TimGM6mb.sf2"


def resolve_soundfont(path: str | None) -> Path:
    """The SoundFont to use: ``path`` (relative to the working directory) or, for None, :func:`default_soundfont`."""
    if path is None:
        p = default_soundfont()
        if not p.is_file():
            raise RenderError(
                f"render.soundfont is null but the default SoundFont {p} (shipped with pretty_midi) "
                "is missing; reinstall pretty_midi or set render.soundfont to a GM .sf2 file"
            )
        return p
    p = Path(path).expanduser()
    if not p.is_file():
        raise RenderError(
            f"render.soundfont: '{path}' does not exist (resolved to {p.resolve()}); give a General "
            "MIDI .sf2/.sf3 file, e.g. /usr/share/sounds/sf2/FluidR3_GM.sf2 (Debian package "
            "fluid-soundfont-gm), or null for the TimGM6mb.sf2 shipped with pretty_midi"
        )
    return p.resolve()


def new_synth(sf_bytes: bytes, sr: int):
    """(TinySoundFont synthesiser at ``sr`` Hz, id of the SoundFont ``sf_bytes`` loaded into it)."""
    try:
        import tinysoundfont
    except ImportError as e:
        raise RenderError(
            "rendering the demo data needs the package tinysoundfont: "
            "pip install --no-deps tinysoundfont==0.3.7 (see the Makefile)"
        ) from e

    synth = tinysoundfont.Synth(samplerate=int(sr))
    sfid = synth.sfload(sf_bytes)
    return synth, sfid


def check_loadable(sf_bytes: bytes, path: Path) -> None:
    """RenderError naming ``path`` unless TinySoundFont can load the SoundFont ``sf_bytes``."""
    try:
        new_synth(sf_bytes, 16000)
    except Exception as e:  # tinysoundfont raises a bare exception for garbage
        raise RenderError(f"render.soundfont: {path} is not a readable SoundFont ({type(e).__name__}: {e})") from e


def generate(synth, out: np.ndarray, start: int, stop: int) -> None:
    """Render samples [start, stop) of the stereo float32 buffer ``out`` (n x 2) with the synth's current state."""
    if stop > start:
        synth.generate_simple(stop - start, buffer=memoryview(out[start:stop]).cast("B"))


def flush(synth, sr: int) -> None:
    """Silence every voice and render until the output is exactly zero: the synth is then as good as new.

    (Checked: a note rendered after a flush is bit-identical to the same note from a freshly loaded synth.)
    """
    synth.sounds_off()
    buf = np.zeros((256, 2), np.float32)
    for _ in range(int(10 * sr / 256)):
        generate(synth, buf, 0, 256)
        if not buf.any():
            return
    raise RenderError("the synthesiser did not fall silent within 10 s after sounds_off")


class NoteRenderer:
    """Renders single notes of a SoundFont: note-on at t = 0, note-off after ``hold`` s, then ``release`` s.

    One synth is reused for all notes and flushed to silence between notes (:func:`flush`), which is exact
    and ~3x faster than reloading the SoundFont per note.
    """

    def __init__(self, sf_bytes: bytes, sr: int, hold: float, release: float):
        self.sr = int(sr)
        self.n_hold = int(round(hold * sr))
        self.n_total = self.n_hold + int(round(release * sr))
        self.synth, self.sfid = new_synth(sf_bytes, sr)

    def has_program(self, program: int) -> bool:
        return self.synth.sfpreset_name(self.sfid, 0, int(program)) is not None

    def render(self, program: int, pitch: int, velocity: int) -> np.ndarray:
        """Mono float64 samples (mean of the synth's two channels), ``hold + release`` seconds long."""
        s = self.synth
        s.program_select(0, self.sfid, 0, int(program))
        out = np.zeros((self.n_total, 2), np.float32)
        s.noteon(0, int(pitch), int(velocity))
        generate(s, out, 0, self.n_hold)
        s.noteoff(0, int(pitch))
        generate(s, out, self.n_hold, self.n_total)
        flush(s, self.sr)
        return out.mean(axis=1, dtype=np.float64)


def peak_dbfs(y: np.ndarray) -> float:
    """Peak level of samples in full-scale units, in dBFS (20 log10 max|y|; -inf for all zeros)."""
    p = float(np.max(np.abs(y))) if y.size else 0.0
    return 20.0 * math.log10(p) if p > 0 else -math.inf


def normalize_peak(y: np.ndarray, level_dbfs: float, what: str) -> np.ndarray:
    """``y`` scaled so that max|y| = 10^(level_dbfs/20); RenderError naming ``what`` if ``y`` has no sound."""
    p = float(np.max(np.abs(y))) if y.size else 0.0
    if p < SILENCE_PEAK:
        raise RenderError(f"{what}: rendered audio is silent (peak {p:.2e})")
    return y * (10.0 ** (level_dbfs / 20.0) / p)


def quiet_chunks(y: np.ndarray, sr: int, seconds: float | None = None) -> list[float]:
    """Start times (s) of the consecutive ``seconds``-long chunks of ``y`` that peak below MIN_PEAK_DBFS
    (``seconds=None``: the schema's default clip length, ``datasets.<name>.clip_seconds``)."""
    seconds = config.default("dataset", "clip_seconds") if seconds is None else seconds
    L = int(round(seconds * sr))
    n = y.size // L
    if n == 0:
        return []
    peaks = np.abs(y[: n * L].reshape(n, L)).max(axis=1)
    return [i * seconds for i in np.flatnonzero(peaks < 10.0 ** (MIN_PEAK_DBFS / 20.0))]


def write_pcm16(path: Path, y: np.ndarray, sr: int) -> None:
    """Write mono samples (full scale = 1.0) as 16-bit PCM, atomically: WAV for a ``.wav`` path, FLAC (lossless,
    the same samples in about half the bytes) for ``.flac``; values are rounded, never clipped.

    Raises RenderError if a sample would exceed the 16-bit range (the caller normalises first).
    """
    import soundfile as sf

    path = Path(path)
    fmt = {".wav": "WAV", ".flac": "FLAC"}.get(path.suffix.lower())
    if fmt is None:
        raise RenderError(f"{path}: write_pcm16 writes .wav or .flac files")
    q = np.round(np.asarray(y, np.float64) * 32767.0)
    if q.size == 0 or np.abs(q).max() > 32767:
        raise RenderError(f"{path}: samples outside [-1, 1] (peak {peak_dbfs(y):.2f} dBFS) or empty")
    with atomic_path(path, suffix=path.suffix) as tmp:
        sf.write(str(tmp), q.astype(np.int16), int(sr), subtype="PCM_16", format=fmt)
