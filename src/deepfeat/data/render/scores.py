"""Scores: the works of a composer in the music21 corpus, parsed into note events in seconds.

Playable works are the corpus files with an extension in :data:`SCORE_EXTENSIONS` (one per work: the first
extension of the list wins). :func:`score_events` merges ties, applies the metronome marks and maps dynamics to
MIDI velocities; each part gets a register (:data:`REGISTER_BOUNDS` of its mean sounding pitch), which decides
the GM program an ensemble plays it with.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deepfeat.data.render.synth import RenderError, seed_key

# Score parts are given an instrument by register: the mean sounding MIDI pitch of the part's notes.
# >= 66 high, [56, 66) middle, [43, 56) low, < 43 bass.
REGISTER_BOUNDS = ((66.0, "high"), (56.0, "middle"), (43.0, "low"), (-math.inf, "bass"))
# music21 corpus files that hold playable scores (.rntxt files are roman-numeral analyses, not music).
# When one work exists in several formats the first extension of this list wins.
SCORE_EXTENSIONS = (".mxl", ".musicxml", ".xml", ".krn", ".abc", ".mid", ".midi")
MIN_WORK_SECONDS = 12.0  # a work must sound this long (three 4 s clips) to be used
ACCENTS = {"sf", "sfz", "sff", "sffz", "fz", "rf", "rfz", "fp", "sfp"}  # dynamics that apply to one onset only


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
        raise RenderError(
            f"composer '{composer}': no playable scores in the music21 corpus "
            f"({len(paths)} files; try e.g. bach, beethoven, haydn, mozart, palestrina, monteverdi)"
        )
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
    from music21 import dynamics

    parts = list(score.parts) or [score]
    mf = dynamics.Dynamic("mf").volumeScalar
    ev: tuple[list, list, list, list, list] = ([], [], [], [], [])  # start_q, end_q, pitch, vel, part_ix
    for pi, part in enumerate(parts):
        _part_notes(part.flatten(), pi, mf, ev)
    start_q, end_q, pitch, vel, part_ix = ev
    if not start_q:
        raise RenderError("score has no pitched notes")
    start, end = _seconds(score, start_q, end_q)
    t0 = start.min()
    start, end = start - t0, end - t0
    pitch_a, part_a = np.asarray(pitch, np.int64), np.asarray(part_ix, np.int64)
    registers = []
    for pi in range(len(parts)):
        sel = part_a == pi
        mean = float(pitch_a[sel].mean()) if sel.any() else 60.0
        registers.append(next(name for bound, name in REGISTER_BOUNDS if mean >= bound))
    order = np.lexsort((pitch_a, part_a, start))
    return ScoreEvents(
        start[order], end[order], pitch_a[order], np.asarray(vel, np.int64)[order], part_a[order], registers
    )


def _part_dynamics(flat) -> tuple[np.ndarray, np.ndarray, dict]:
    """(offsets, volume scalars) of the level marks of a flattened part, and {offset rounded to 6 decimals:
    volume scalar} of its accent marks (:data:`ACCENTS`)."""
    from music21 import dynamics

    lv_off, lv_val, ac_off, ac_val = [], [], [], []
    for d in flat.getElementsByClass(dynamics.Dynamic):
        scalar = d.volumeScalar
        if scalar is None:
            continue
        (ac_off if str(d.value) in ACCENTS else lv_off).append(float(d.offset))
        (ac_val if str(d.value) in ACCENTS else lv_val).append(float(scalar))
    return np.asarray(lv_off), np.asarray(lv_val), dict(zip(np.round(ac_off, 6), ac_val))


def _part_notes(flat, pi: int, mf: float, ev: tuple) -> None:
    """Append the notes of the flattened part ``pi`` (ties merged) to the event lists ``ev`` (onset and end in
    quarter lengths, MIDI pitch, velocity, part index)."""
    from music21 import chord, note

    start_q, end_q, pitch, vel, part_ix = ev
    lv_off, lv_val, accent_at = _part_dynamics(flat)
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


def _seconds(score, start_q: list, end_q: list) -> tuple[np.ndarray, np.ndarray]:
    """Onsets and ends in quarter lengths -> seconds, piecewise linear between the metronome marks."""
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
    return np.interp(start_q, knots_q, knots_s), np.interp(end_q, knots_q, knots_s)


def pick_works(composer: str, n: int, seed: int, min_seconds: float, log, what: str):
    """Seeded order of a composer's corpus works; yields (rel_path, events) of the first ``n`` usable ones."""
    works = corpus_works(composer)
    rng = np.random.default_rng([int(seed), seed_key("works"), seed_key(composer)])
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
        log.info(
            f"{what}: {rel}: {len(ev.pitch)} notes, {ev.seconds:.1f} s, parts {ev.registers} "
            f"(parsed in {time.perf_counter() - t0:.1f} s)"
        )
        chosen.append((rel, ev))
    if not chosen:
        raise RenderError(
            f"{what}: none of the {len(works)} corpus works of '{composer}' is usable "
            f"(>= {min_seconds:g} s of music); e.g. {skipped[:2]}"
        )
    if len(chosen) < n:
        log.warning(f"{what}: only {len(chosen)} of {n} works of '{composer}' are usable")
    return chosen, skipped
