"""Ensembles (performance styles), their rooms, and performing a score by an ensemble.

An :class:`Ensemble` fixes a GM program per register, a tuning (A4 in Hz), a tempo factor, an articulation
(sounding fraction of each written note), dynamics (a velocity factor and a slow sinusoidal swell) and a room
(:func:`room_response`: the direct sound plus a seeded, exponentially decaying noise tail). Kind ``scores``
plays every work with :func:`neutral_ensemble`; kind ``ensembles`` draws virtual ensembles of two regions
(:func:`draw_ensembles`, style ranges :data:`REGION_STYLES`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from deepfeat.data.render.scores import ScoreEvents
from deepfeat.data.render.synth import generate, new_synth, seed_key

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
_STYLE_KEYS = "a4_hz tempo articulation velocity_scale swell_depth swell_period rt60 wet predelay".split()
REGION_STYLES: dict[str, dict[str, tuple[float, float]]] = {
    region: dict(zip(_STYLE_KEYS, ranges, strict=True))
    for region, ranges in (
        # (lo, hi) of each key of _STYLE_KEYS, in its order
        (
            "european",
            (
                (430.0, 440.0),
                (0.85, 1.02),
                (0.8, 1.0),
                (0.75, 0.95),
                (0.1, 0.35),
                (8.0, 16.0),
                (1.2, 2.2),
                (0.4, 0.8),
                (0.015, 0.04),
            ),
        ),
        (
            "american",
            (
                (438.0, 446.0),
                (0.98, 1.15),
                (0.6, 0.9),
                (0.85, 1.1),
                (0.0, 0.2),
                (4.0, 12.0),
                (0.6, 1.4),
                (0.25, 0.6),
                (0.005, 0.02),
            ),
        ),
    )
}
REGIONS = tuple(REGION_STYLES)
RELEASE_TAIL_SECONDS = 1.0  # rendered after the last note-off of a work (inside max_seconds_per_work)


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
    return Ensemble(
        "neutral",
        "",
        dict(NEUTRAL_PROGRAMS),
        room_seed=int(np.random.default_rng([int(seed), seed_key("neutral room")]).integers(2**31)),
    )


def draw_ensembles(n: int, seed: int) -> list[Ensemble]:
    """``n`` virtual ensembles ``ensemble_00`` ...: the first ceil(n/2) of region "european", the rest "american".

    Each ensemble draws (seeded by ``seed`` and its index) one GM program per register from
    :data:`REGISTER_POOLS` and every style value uniformly from its region's range in :data:`REGION_STYLES`.
    """
    out = []
    n_eu = (n + 1) // 2
    for i in range(n):
        region = REGIONS[0] if i < n_eu else REGIONS[1]
        rng = np.random.default_rng([int(seed), seed_key("ensemble"), i])
        programs = {reg: int(rng.choice(pool)) for reg, pool in REGISTER_POOLS.items()}
        style = {k: float(rng.uniform(lo, hi)) for k, (lo, hi) in REGION_STYLES[region].items()}
        out.append(
            Ensemble(
                f"ensemble_{i:02d}",
                region,
                programs,
                swell_phase=float(rng.uniform(0, 2 * math.pi)),
                room_seed=int(rng.integers(2**31)),
                **style,
            )
        )
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
    synth, sfid = new_synth(sf_bytes, sr)
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
            generate(synth, out, pos, t)
            pos = t
        if pos >= n_out:
            break
        if kinds[i]:
            synth.noteon(int(chans[i]), int(keys[i]), int(vels[i]))
        else:
            synth.noteoff(int(chans[i]), int(keys[i]))
    generate(synth, out, pos, n_out)
    y = out.mean(axis=1, dtype=np.float64)
    from scipy.signal import fftconvolve

    return fftconvolve(y, room_response(ens, sr))[:n_out]
