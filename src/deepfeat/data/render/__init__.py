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
    Written as ``metadata.csv`` (columns path, composer, work) + ``audio/<composer>/<work>.flac``.
``ensembles`` (Beethoven-like)
    ``works`` works of ``composer``, each played by ``ensembles`` virtual ensembles (:func:`draw_ensembles`) that
    differ in performance style: GM programs per register, tempo factor, tuning (A4 = 430..446 Hz), dynamics
    (level and a slow swell), articulation (sounding fraction of each written note) and room (a seeded
    exponentially decaying noise reverb). Half of the ensembles are of region "european", half "american";
    the regions draw their style from different ranges (:data:`REGION_STYLES`). Written as ``metadata.csv``
    (columns path, ensemble, work, region) + ``audio/<ensemble>/<work>.flac``.

Levels: samples are written as 16-bit PCM. ``normalize: file`` scales every file so its peak is ``peak_dbfs``
(default -1 dBFS); ``normalize: instrument`` (the default of ``notes``) scales all notes of one GM program by
one gain so that the program's loudest note peaks at ``peak_dbfs``: TinySoundFont applies MIDI velocity as a
pure gain (measured: peak ratio 25/127 exactly, identical waveform shape), so per-file normalisation would
erase the velocity label from the audio. Either way nothing clips and every file peaks above -60 dBFS.

Determinism: every random choice comes from ``numpy.random.default_rng`` seeded by ``render.seed`` and a
fixed key of what is being drawn (family id, program, ensemble index), so the same configuration gives
byte-identical files. ``manifest.json`` (written last, atomically) records what was rendered.

Modules: :mod:`~deepfeat.data.render.dataset` (the job :func:`render_dataset`, :func:`check_render_config`,
:func:`read_manifest`), :mod:`~deepfeat.data.render.synth` (SoundFont, synthesiser, single notes, levels, WAV
files), :mod:`~deepfeat.data.render.notes`, :mod:`~deepfeat.data.render.scores` (corpus, score events),
:mod:`~deepfeat.data.render.ensembles` (ensembles, performance, room) and :mod:`~deepfeat.data.render.recordings`
(the kinds ``scores`` and ``ensembles``). This file only re-exports.
"""

from deepfeat.data.render.dataset import MANIFEST_FORMAT, check_render_config, read_manifest, render_dataset
from deepfeat.data.render.ensembles import (
    REGION_STYLES,
    REGIONS,
    REGISTER_POOLS,
    Ensemble,
    draw_ensembles,
    neutral_ensemble,
    perform,
    room_response,
)
from deepfeat.data.render.notes import (
    ACOUSTIC_FAMILIES,
    FAMILY_PROGRAMS,
    NSYNTH_FAMILY_IDS,
    PROGRAM_RANGES,
    note_candidates,
    note_str,
    program_order,
)
from deepfeat.data.render.scores import MIN_WORK_SECONDS, ScoreEvents, corpus_works, load_score, score_events, work_name
from deepfeat.data.render.synth import (
    MIN_PEAK_DBFS,
    SILENCE_PEAK,
    NoteRenderer,
    RenderError,
    default_soundfont,
    normalize_peak,
    peak_dbfs,
    quiet_chunks,
    resolve_soundfont,
    write_pcm16,
)

__all__ = [
    "ACOUSTIC_FAMILIES",
    "FAMILY_PROGRAMS",
    "MANIFEST_FORMAT",
    "MIN_PEAK_DBFS",
    "MIN_WORK_SECONDS",
    "NSYNTH_FAMILY_IDS",
    "PROGRAM_RANGES",
    "REGIONS",
    "REGION_STYLES",
    "REGISTER_POOLS",
    "SILENCE_PEAK",
    "Ensemble",
    "NoteRenderer",
    "RenderError",
    "ScoreEvents",
    "check_render_config",
    "corpus_works",
    "default_soundfont",
    "draw_ensembles",
    "load_score",
    "neutral_ensemble",
    "normalize_peak",
    "note_candidates",
    "note_str",
    "peak_dbfs",
    "perform",
    "program_order",
    "quiet_chunks",
    "read_manifest",
    "render_dataset",
    "resolve_soundfont",
    "room_response",
    "score_events",
    "work_name",
    "write_pcm16",
]
