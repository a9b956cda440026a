"""Built-in demo data (deepfeat.data.render): NSynth layout, recordings layouts, determinism, levels, ingest."""

from __future__ import annotations

import copy
import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import yaml

from deepfeat import config, workflow
from deepfeat.config import ConfigError
from deepfeat.data import render as R
from deepfeat.data.ingest import ingest_dataset
from deepfeat.formats.clips import clip_audio
from deepfeat.formats.cliptable import read_clip_table
from deepfeat.formats.files import open_h5

ROOT = Path(__file__).resolve().parents[1]
NSYNTH_FIELDS = {
    "note",
    "note_str",
    "instrument",
    "instrument_str",
    "instrument_family",
    "instrument_family_str",
    "instrument_source",
    "instrument_source_str",
    "pitch",
    "velocity",
    "sample_rate",
    "qualities",
    "qualities_str",
}

NOTES = {
    "kind": "notes",
    "seed": 1,
    "soundfont": None,
    "programs_per_family": 1,
    "notes_per_program": 4,
    "velocities": [25, 50, 75, 100, 127],
    "hold_seconds": 3.0,
    "release_seconds": 1.0,
}
SCORES = {
    "kind": "scores",
    "seed": 2,
    "soundfont": None,
    "composers": ["bach", "palestrina"],
    "works_per_composer": 1,
    "max_seconds_per_work": 12,
}
ENSEMBLES = {
    "kind": "ensembles",
    "seed": 3,
    "soundfont": None,
    "composer": "bach",
    "works": 2,
    "max_seconds_per_work": 12,
    "ensembles": 2,
}


def default_dataset(name: str, render: dict) -> dict:
    """The config.yaml dataset entry with a tiny render section, validated (defaults filled) like the workflow."""
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    ds = copy.deepcopy(cfg["datasets"][name])
    ds["render"] = copy.deepcopy(render)
    return config.validate({"datasets": {name: ds}})["datasets"][name]


def render(folder: Path, cfg: dict, sr: int) -> dict:
    """The render job, called as the workflow calls it (the manifest's folder is the output folder)."""
    return R.render_dataset(
        manifest=Path(folder) / "manifest.json", settings={"dataset": {"render": cfg, "sample_rate": sr}}
    )


def ingest(folder: Path, ds: dict, name: str, out: Path) -> dict:
    return ingest_dataset(clips=out, settings={"dataset": ds}, root=folder, dataset=name)


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """One tiny render of each kind (module scoped: music21 parsing is the slow part)."""
    base = tmp_path_factory.mktemp("render")
    out = {}
    for kind, cfg, sr in (("notes", NOTES, 16000), ("scores", SCORES, 22050), ("ensembles", ENSEMBLES, 22050)):
        m = render(base / kind, copy.deepcopy(cfg), sr)
        out[kind] = (base / kind, m)
    return out


# ----------------------------------------------------------------------------------------------------------
# Layouts and label consistency
# ----------------------------------------------------------------------------------------------------------
def test_notes_follow_the_nsynth_layout_and_labels_match_the_audio(rendered):
    folder, m = rendered["notes"]
    ex = json.loads((folder / "examples.json").read_text())
    wavs = sorted(p.stem for p in (folder / "audio").glob("*.wav"))
    assert sorted(ex) == wavs and len(ex) == 8 * 1 * 4 == m["n_files"]
    assert sorted({e["note"] for e in ex.values()}) == list(range(len(ex)))
    for nid, e in ex.items():
        assert set(e) == NSYNTH_FIELDS, nid
        fam = e["instrument_family_str"]
        assert fam in R.ACOUSTIC_FAMILIES and e["instrument_family"] == R.NSYNTH_FAMILY_IDS[fam]
        assert re.fullmatch(r"[a-z]+_acoustic_\d{3}-\d{3}-\d{3}", nid) and e["note_str"] == nid
        assert nid == f"{fam}_acoustic_{e['instrument']:03d}-{e['pitch']:03d}-{e['velocity']:03d}"
        assert e["instrument_str"] == nid.split("-")[0]
        assert e["instrument"] in R.FAMILY_PROGRAMS[fam]
        _, lo, hi = R.PROGRAM_RANGES[e["instrument"]]
        assert lo <= e["pitch"] <= hi and e["velocity"] in NOTES["velocities"]
        assert e["instrument_source"] == 0 and e["instrument_source_str"] == "acoustic"
        assert e["qualities"] == [0] * 10 and e["qualities_str"] == [] and e["sample_rate"] == 16000
        info = sf.info(str(folder / "audio" / f"{nid}.wav"))
        assert (info.samplerate, info.channels, info.subtype, info.frames) == (16000, 1, "PCM_16", 64000)
    assert {e["instrument_family_str"] for e in ex.values()} == set(R.ACOUSTIC_FAMILIES)


def test_the_pitch_label_is_the_sounding_pitch(tmp_path):
    """The fundamental of a rendered flute note is at the frequency of its MIDI pitch (labels match audio)."""
    nr = R.NoteRenderer(R.default_soundfont().read_bytes(), 16000, 1.0, 0.0)
    for pitch in (62, 69, 76):
        y = nr.render(73, pitch, 100)[4000:16000] * np.hanning(12000)
        spec = np.abs(np.fft.rfft(y, 2**19))
        f = np.fft.rfftfreq(2**19, 1 / 16000)
        f0 = 440.0 * 2 ** ((pitch - 69) / 12)
        band = (f > f0 * 0.8) & (f < f0 * 1.2)
        peak = f[band][spec[band].argmax()]
        assert abs(1200 * math.log2(peak / f0)) < 50, (pitch, peak, f0)  # within a quarter tone


def test_recordings_metadata_match_the_audio_files(rendered):
    folder, m = rendered["scores"]
    md = pd.read_csv(folder / "metadata.csv")
    assert list(md.columns) == ["path", "composer", "work"] and len(md) == 2 == m["n_files"]
    assert sorted(md["composer"]) == ["bach", "palestrina"]
    for r in md.itertuples():
        assert r.path == f"audio/{r.composer}/{r.work}.flac"
        info = sf.info(str(folder / r.path))
        assert (info.samplerate, info.channels, info.subtype) == (22050, 1, "PCM_16")
        assert R.MIN_WORK_SECONDS * 22050 <= info.frames <= 12 * 22050
    assert {w["work"] for w in m["works"]} == set(md["work"])

    folder, m = rendered["ensembles"]
    md = pd.read_csv(folder / "metadata.csv")
    assert list(md.columns) == ["path", "ensemble", "work", "region"] and len(md) == 2 * 2
    assert md.groupby("ensemble")["work"].nunique().tolist() == [2, 2]
    assert md.drop_duplicates("ensemble").set_index("ensemble")["region"].to_dict() == {
        "ensemble_00": "european",
        "ensemble_01": "american",
    }
    for r in md.itertuples():
        assert r.path == f"audio/{r.ensemble}/{r.work}.flac"
        # every ensemble plays the full max_seconds_per_work of every work (the works are chosen long enough)
        assert sf.info(str(folder / r.path)).frames == 12 * 22050
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.flac")) == sorted(md["path"])


# ----------------------------------------------------------------------------------------------------------
# Levels: nothing clips, nothing is silent; velocity survives the normalisation of notes
# ----------------------------------------------------------------------------------------------------------
def test_no_file_clips_and_none_is_silent(rendered):
    for kind, (folder, _) in rendered.items():
        for p in [*folder.rglob("*.wav"), *folder.rglob("*.flac")]:
            q, _ = sf.read(str(p), dtype="int16")
            peak = np.abs(q.astype(np.int64)).max()
            assert peak <= round(32767 * 10 ** (-1 / 20)), (p, peak)  # peak_dbfs -1: never at full scale
            assert 20 * np.log10(peak / 32767) > R.MIN_PEAK_DBFS, p
            y = q / 32767.0
            sec = 16000 if kind == "notes" else 22050
            rms_first = np.sqrt(np.mean(y[:sec] ** 2))
            assert 20 * np.log10(rms_first) > -60, (p, rms_first)  # sounds from the start
            assert R.quiet_chunks(y, sec) == []  # every 4 s clip the ingest stage will cut has sound
    assert rendered["scores"][1]["quiet_chunks"] == [] and rendered["ensembles"][1]["quiet_chunks"] == []


def test_quiet_chunks_finds_silent_clips():
    y = np.ones(12 * 100) * 0.5
    y[400:800] = 1e-4  # the second 4 s chunk at 100 Hz peaks at -80 dBFS
    assert R.quiet_chunks(y, 100) == [4.0]


def test_file_normalisation_peaks_every_file_at_the_target(tmp_path):
    m = render(tmp_path, {**NOTES, "families": ["brass", "string"], "normalize": "file", "peak_dbfs": -3.0}, 16000)
    target = round(32767 * 10 ** (-3 / 20))
    for p in (tmp_path / "audio").glob("*.wav"):
        q, _ = sf.read(str(p), dtype="int16")
        assert abs(int(np.abs(q.astype(np.int64)).max()) - target) <= 1, p
    assert m["render"]["normalize"] == "file"


def test_instrument_normalisation_keeps_velocity_loudness(rendered):
    """TinySoundFont plays velocity as a pure gain, so within a program peak ratios equal velocity ratios."""
    folder, _ = rendered["notes"]
    ex = json.loads((folder / "examples.json").read_text())
    by_prog: dict[int, list] = {}
    for nid, e in ex.items():
        q, _ = sf.read(str(folder / "audio" / f"{nid}.wav"), dtype="int16")
        by_prog.setdefault(e["instrument"], []).append((e["velocity"], e["pitch"], np.abs(q.astype(float)).max()))
    loudest = [max(p for _, _, p in v) for v in by_prog.values()]
    assert all(abs(p - round(32767 * 10 ** (-1 / 20))) <= 1 for p in loudest)
    # same program, same pitch, two velocities: rendered directly, the level ratio is the velocity ratio
    nr = R.NoteRenderer(R.default_soundfont().read_bytes(), 16000, 1.0, 0.5)
    a, b = nr.render(56, 60, 25), nr.render(56, 60, 100)
    assert np.abs(a).max() / np.abs(b).max() == pytest.approx(25 / 100, rel=1e-3)


# ----------------------------------------------------------------------------------------------------------
# Determinism
# ----------------------------------------------------------------------------------------------------------
def test_same_seed_gives_byte_identical_files_and_another_seed_does_not(rendered, tmp_path):
    for kind, cfg, sr in (("notes", NOTES, 16000), ("ensembles", ENSEMBLES, 22050)):
        folder, _ = rendered[kind]
        again = tmp_path / f"{kind}_again"
        render(again, copy.deepcopy(cfg), sr)
        a, b = files_of(folder), files_of(again)
        a.pop("manifest.json"), b.pop("manifest.json")
        assert a.keys() == b.keys() and all(a[k] == b[k] for k in a), kind
        assert (
            json.loads((folder / "manifest.json").read_text())["render"]
            == json.loads((again / "manifest.json").read_text())["render"]
        )
    other = tmp_path / "notes_seed9"
    render(other, {**NOTES, "seed": 9}, 16000)
    assert files_of(other)["examples.json"] != files_of(rendered["notes"][0])["examples.json"]


def test_flushing_the_synth_is_as_good_as_a_fresh_one():
    b = R.default_soundfont().read_bytes()
    nr = R.NoteRenderer(b, 16000, 0.5, 0.25)
    seq = [nr.render(p, k, v) for p, k, v in ((0, 60, 127), (40, 67, 50), (73, 72, 100))]
    for (p, k, v), y in zip(((0, 60, 127), (40, 67, 50), (73, 72, 100)), seq):
        fresh = R.NoteRenderer(b, 16000, 0.5, 0.25).render(p, k, v)
        assert np.array_equal(fresh, y)


def test_a_program_without_enough_sounding_notes_is_replaced_by_the_next_one(tmp_path):
    """TimGM6mb's Whistle (78) has no samples above MIDI 78: of its 25 nominal pitches only 7 sound."""
    nr = R.NoteRenderer(R.default_soundfont().read_bytes(), 16000, 0.2, 0.0)
    sounding = [k for k in range(72, 97) if np.abs(nr.render(78, k, 127)).max() >= R.SILENCE_PEAK]
    assert sounding == list(range(72, 79))
    seed = next(s for s in range(100) if R.program_order("flute", s)[0] == 78)
    m = render(tmp_path, {**NOTES, "seed": seed, "families": ["flute", "brass"], "notes_per_program": 36}, 16000)
    assert 78 not in [p["program"] for p in m["programs"]["flute"]]
    assert any(s["item"] == "program 78 (Whistle)" for s in m["skipped"])
    assert m["class_counts"]["instrument_family_str"] == {"flute": 36, "brass": 36}


def test_rerendering_removes_the_files_of_an_earlier_render(tmp_path):
    render(tmp_path, {**NOTES, "families": ["brass", "flute", "reed"]}, 16000)
    m = render(tmp_path, {**NOTES, "families": ["brass", "flute"]}, 16000)
    ex = json.loads((tmp_path / "examples.json").read_text())
    assert len(list((tmp_path / "audio").glob("*.wav"))) == len(ex) == m["n_files"] == 8
    assert R.read_manifest(tmp_path)["n_files"] == 8


# ----------------------------------------------------------------------------------------------------------
# The ingest stage reads the renders like real data
# ----------------------------------------------------------------------------------------------------------
def test_ingest_reads_rendered_notes_like_nsynth_and_every_family_is_in_both_splits(rendered, tmp_path):
    folder, _ = rendered["notes"]
    ds = default_dataset("notes", NOTES)
    summary = ingest(folder, ds, "notes", tmp_path / "clips.h5")
    ex = json.loads((folder / "examples.json").read_text())
    assert summary["n_clips"] == len(ex) and summary["sample_rate"] == 16000 and not summary["skipped"]
    with open_h5(tmp_path / "clips.h5", "clips") as f:
        df, tasks, main = read_clip_table(f)
        audio = clip_audio(f)[:]
        assert f["audio"].dtype == np.int16  # the renders are mono 16-bit PCM at the rate: stored losslessly
    assert main == "family" and audio.shape == (len(ex), 64000) and summary["storage"] == "int16"
    for i, r in df.iterrows():
        e = ex[r["clip_id"]]
        assert (r["family"], r["pitch"], r["velocity"]) == (e["instrument_family_str"], e["pitch"], e["velocity"])
        y, _ = sf.read(str(folder / "audio" / f"{r['clip_id']}.wav"), dtype="float32")
        np.testing.assert_array_equal(audio[i], y)
    fams = set(R.ACOUSTIC_FAMILIES)
    assert set(df.loc[df["split"] == 0, "family"]) == fams and set(df.loc[df["split"] == 1, "family"]) == fams


def test_ingest_reads_rendered_recordings(rendered, tmp_path):
    folder, _ = rendered["scores"]
    s = ingest(folder, default_dataset("composers", SCORES), "composers", tmp_path / "c.h5")
    with open_h5(tmp_path / "c.h5", "clips") as f:
        df, _, _ = read_clip_table(f)
    assert s["n_clips"] == len(df) >= 6 and set(df["composer"]) == {"bach", "palestrina"}
    assert set(df["part"]) == {"beginning", "middle", "end"}

    folder, _ = rendered["ensembles"]
    s = ingest(folder, default_dataset("ensembles", ENSEMBLES), "ensembles", tmp_path / "e.h5")
    with open_h5(tmp_path / "e.h5", "clips") as f:
        df, _, _ = read_clip_table(f)
    assert len(df) == 2 * 2 * 3 and df.groupby("ensemble")["region"].nunique().max() == 1
    assert set(df["region"]) == {"european", "american"}


# ----------------------------------------------------------------------------------------------------------
# Score events, ensembles, room
# ----------------------------------------------------------------------------------------------------------
def test_score_events_merge_ties_apply_tempo_and_dynamics():
    from music21 import dynamics, note, stream, tempo, tie

    part = stream.Part()
    part.insert(0, tempo.MetronomeMark(number=60))
    a, b = note.Note("C4", quarterLength=1), note.Note("C4", quarterLength=1)
    a.tie, b.tie = tie.Tie("start"), tie.Tie("stop")
    part.append([a, b])
    part.insert(2, dynamics.Dynamic("f"))
    part.append(note.Note("E4", quarterLength=2))
    part.insert(4, tempo.MetronomeMark(number=120))
    part.append(note.Note("G4", quarterLength=2))
    score = stream.Score([part])
    ev = R.score_events(score)
    np.testing.assert_array_equal(ev.pitch, [60, 64, 67])
    np.testing.assert_allclose(ev.start, [0.0, 2.0, 4.0])
    np.testing.assert_allclose(ev.end, [2.0, 4.0, 5.0])  # 2 quarters at 120/min = 1 s
    np.testing.assert_array_equal(ev.velocity, [round(127 * 0.55), round(127 * 0.7), round(127 * 0.7)])
    assert ev.registers == ["middle"]


def test_tuning_moves_the_pitch_by_the_ensemble_a4():
    b = R.default_soundfont().read_bytes()
    ev = R.ScoreEvents(np.array([0.0]), np.array([3.0]), np.array([69]), np.array([100]), np.array([0]), ["high"])
    peaks = []
    for a4 in (430.0, 440.0, 446.0):
        ens = R.Ensemble("x", "", {"high": 40}, a4_hz=a4, wet=1e-9, rt60=0.01)
        y = R.perform(ev, ens, b, 22050, 12.0)[11025:55125] * np.hanning(44100)
        spec, f = np.abs(np.fft.rfft(y, 2**20)), np.fft.rfftfreq(2**20, 1 / 22050)
        band = (f > 380) & (f < 500)
        peaks.append(f[band][spec[band].argmax()])
    assert peaks[0] / peaks[1] == pytest.approx(430 / 440, abs=2e-4)
    assert peaks[2] / peaks[1] == pytest.approx(446 / 440, abs=2e-4)


def test_ensembles_split_into_two_regions_with_their_style_ranges():
    ens = R.draw_ensembles(10, seed=3)
    assert [e.region for e in ens] == ["european"] * 5 + ["american"] * 5
    assert len({e.name for e in ens}) == 10
    for e in ens:
        for k, (lo, hi) in R.REGION_STYLES[e.region].items():
            assert lo <= getattr(e, k) <= hi, (e.name, k)
        assert all(e.programs[r] in R.REGISTER_POOLS[r] for r in R.REGISTER_POOLS)
    assert [e.programs for e in ens] == [e.programs for e in R.draw_ensembles(10, seed=3)]
    assert [e.a4_hz for e in ens] != [e.a4_hz for e in R.draw_ensembles(10, seed=4)]


def test_room_response_has_the_direct_sound_and_a_decaying_tail_of_energy_wet_squared():
    e = R.Ensemble("x", "", {}, rt60=1.0, wet=0.5, predelay=0.01, room_seed=7)
    ir = R.room_response(e, 1000)
    assert ir[0] == 1.0 and np.all(ir[1:10] == 0)
    assert np.sum(ir[1:] ** 2) == pytest.approx(0.25)
    first, last = np.sum(ir[10:110] ** 2), np.sum(ir[-100:] ** 2)
    assert 10 * np.log10(first / last) > 45  # ~54 dB from the first to the last tenth of a 60 dB decay


# ----------------------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------------------
def test_a_missing_soundfont_is_a_clear_error(tmp_path):
    with pytest.raises(R.RenderError, match=r"render.soundfont: '.*nope.sf2' does not exist"):
        render(tmp_path, {**NOTES, "soundfont": str(tmp_path / "nope.sf2")}, 16000)
    bad = tmp_path / "bad.sf2"
    bad.write_bytes(b"not a soundfont")
    with pytest.raises(R.RenderError, match="not a readable SoundFont"):
        render(tmp_path, {**NOTES, "soundfont": str(bad)}, 16000)
    assert not (tmp_path / "manifest.json").exists()


@pytest.mark.parametrize(
    "change, error, msg",
    [
        ({"ensembles": 3}, R.RenderError, r"key\(s\) \['ensembles'\] are not used by kind 'notes'"),
        ({"programs_per_family": 4}, R.RenderError, "programs_per_family: 4 > the 3 GM programs of family 'vocal'"),
        ({"notes_per_program": 1000}, R.RenderError, "of family 'brass' can play 1000 sounding notes"),
        # the schema's checks (the job validates its settings first): ConfigError naming the key
        ({"velocities": [0, 50]}, ConfigError, "render.velocities"),
        ({"normalize": "loud"}, ConfigError, "render.normalize"),
        ({"kind": "chords"}, ConfigError, "render.kind"),
    ],
)
def test_bad_render_configs_name_the_key(tmp_path, change, error, msg):
    with pytest.raises(error, match=msg):
        render(tmp_path, {**NOTES, **change}, 16000)


def test_unknown_composer_is_a_clear_error(tmp_path):
    with pytest.raises(R.RenderError, match="composer 'nobody': no playable scores"):
        render(tmp_path, {**SCORES, "composers": ["bach", "nobody"]}, 22050)


# ----------------------------------------------------------------------------------------------------------
# The job's settings: the kind's defaults come from the schema, check_render_config keeps the kind's rules
# ----------------------------------------------------------------------------------------------------------
def test_render_declares_its_settings_and_the_workflow_reads_them():
    assert R.render_dataset.job.reads == {"dataset": ("render", "sample_rate")} and R.render_dataset.job.tunes == {}
    assert workflow.job_spec("render_demo") == {"reads": {"dataset": ["render", "sample_rate"]}, "tunes": {}}


def test_the_kind_defaults_are_filled_from_the_schema():
    notes = {k: v for k, v in NOTES.items() if k not in ("seed", "soundfont", "release_seconds")}
    cfg = R.check_render_config(notes)
    assert cfg == {
        **notes,
        "seed": 0,
        "soundfont": None,
        "peak_dbfs": -1.0,
        "normalize": "instrument",
        "release_seconds": 1.0,
        "families": list(R.ACOUSTIC_FAMILIES),
    }
    assert notes == {k: v for k, v in NOTES.items() if k not in ("seed", "soundfont", "release_seconds")}  # a copy
    scores = {k: v for k, v in SCORES.items() if k != "seed"}
    assert R.check_render_config(scores) == {
        **scores,
        "seed": 0,
        "peak_dbfs": -1.0,
        "normalize": "file",
        "ensembles": 1,
    }
    assert R.check_render_config(ENSEMBLES) == {**ENSEMBLES, "peak_dbfs": -1.0, "normalize": "file"}
    # the workflow's validated config holds the same values (the schema fills them in there too)
    ds = default_dataset("notes", notes)
    assert ds["render"] == cfg and R.check_render_config(ds["render"]) == cfg


@pytest.mark.parametrize(
    "render_cfg, sr, error, msg",
    [
        ({**SCORES, "normalize": "instrument"}, 22050, R.RenderError, r"render\.normalize: expected 'file' for kind"),
        ({**SCORES, "ensembles": 2}, 22050, R.RenderError, r"render\.ensembles: kind 'scores' plays every work"),
        ({**ENSEMBLES, "ensembles": 1}, 22050, R.RenderError, r"render\.ensembles: need >= 2"),
        ({**ENSEMBLES, "composer": ""}, 22050, R.RenderError, r"render\.composer: expected a composer name"),
        (
            {k: v for k, v in NOTES.items() if k != "hold_seconds"},
            16000,
            R.RenderError,
            r"kind 'notes' needs the key\(s\) \['hold_seconds'\]",
        ),
        ({**NOTES, "families": ["brass"]}, 16000, ConfigError, r"render\.families"),
        ({**NOTES, "peak_dbfs": -70}, 16000, ConfigError, r"render\.peak_dbfs"),
        ({**NOTES, "seeed": 1}, 16000, ConfigError, r"render.*seeed"),
        (NOTES, 800, ConfigError, r"dataset\.sample_rate"),
    ],
)
def test_bad_settings_are_refused_before_anything_is_rendered(tmp_path, render_cfg, sr, error, msg):
    with pytest.raises(error, match=msg):
        render(tmp_path, render_cfg, sr)
    assert not (tmp_path / "manifest.json").exists() and not (tmp_path / "audio").exists()


def test_unknown_dataset_settings_are_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"dataset\.sample_rte: unknown key"):
        R.render_dataset(
            manifest=tmp_path / "manifest.json", settings={"dataset": {"render": NOTES, "sample_rte": 16000}}
        )
    with pytest.raises(ConfigError, match=r"dataset\.sample_rate: required"):
        R.render_dataset(manifest=tmp_path / "manifest.json", settings={"dataset": {"render": NOTES}})


def test_the_schema_agrees_with_the_render_constants():
    """The rules check_render_config leaves to the schema use the same values as the code."""
    props = config.schema()["$defs"]["dataset"]["properties"]["render"]["properties"]
    assert props["families"]["items"]["enum"] == list(R.ACOUSTIC_FAMILIES) == sorted(R.FAMILY_PROGRAMS)
    assert props["max_seconds_per_work"]["minimum"] == R.MIN_WORK_SECONDS
    assert props["peak_dbfs"]["exclusiveMinimum"] == R.MIN_PEAK_DBFS
    assert props["kind"]["enum"] == ["notes", "scores", "ensembles"]
