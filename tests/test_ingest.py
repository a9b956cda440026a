"""Ingest: NSynth and recordings layouts -> clips.h5 (counts, labels, filters, splits, errors, skip mode)."""

from __future__ import annotations

import copy
import json
import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from deepfeat import config, workflow
from deepfeat.config import ConfigError
from deepfeat.data.audio import AudioError, load_audio, read_audio
from deepfeat.data.ingest import PARTS, ingest_dataset
from deepfeat.data.sources import IngestError
from deepfeat.data.split import split_clips
from deepfeat.formats.clips import clip_audio
from deepfeat.formats.cliptable import read_clip_table
from deepfeat.formats.files import open_h5

NS_SR, REC_SR = 16000, 22050


def with_defaults(ds: dict) -> dict:
    """A dataset entry as the workflow sees it: validated against the schema, defaults filled."""
    return config.validate({"datasets": {"d": copy.deepcopy(ds)}})["datasets"]["d"]


def ingest(root, ds: dict, name: str, out, on_error: str = "fail") -> dict:
    """The ingest job on one dataset entry, called as the workflow calls it."""
    return ingest_dataset(
        clips=out, settings={"dataset": ds, "ingest": {"on_error": on_error}}, root=root, dataset=name
    )


def tone(seconds: float, sr: int, freq: float = 440.0, amp: float = 0.3, channels: int = 1, seed: int = 0):
    t = np.arange(int(round(seconds * sr))) / sr
    y = amp * np.sin(2 * np.pi * freq * t) + 0.01 * np.random.default_rng(seed).normal(size=t.size)
    if channels > 1:
        y = np.stack([y * (c + 1) / channels for c in range(channels)], axis=1)
    return y.astype(np.float32)


# ----------------------------------------------------------------------------------------------------------
# NSynth layout
# ----------------------------------------------------------------------------------------------------------
FAMILIES = {"bass": 0, "brass": 1, "flute": 2, "guitar": 3, "organ": 6, "string": 8}


def make_nsynth(root: Path, per_family: int = 3, electronic: int = 2) -> dict:
    """examples.json + audio/*.wav: per_family acoustic and `electronic` electronic notes per family."""
    (root / "audio").mkdir(parents=True)
    examples = {}
    for fam, fid in FAMILIES.items():
        for j in range(per_family + electronic):
            src = 0 if j < per_family else 1
            pitch = 40 + 7 * j + fid
            vel = [25, 50, 75, 100, 127][j % 5]
            nid = f"{fam}_{['acoustic', 'electronic'][src]}_{j:03d}-{pitch:03d}-{vel:03d}"
            examples[nid] = {
                "note_str": nid,
                "instrument_family": fid,
                "instrument_family_str": fam,
                "instrument_source": src,
                "instrument_source_str": ["acoustic", "electronic"][src],
                "instrument_str": f"{fam}_{['acoustic', 'electronic'][src]}_{j % 2:03d}",
                "pitch": pitch,
                "velocity": vel,
                "sample_rate": NS_SR,
                "qualities": [0] * 10,
            }
            f0 = 440.0 * 2 ** ((pitch - 69) / 12)
            sf.write(
                root / "audio" / f"{nid}.wav",
                tone(4.0, NS_SR, f0, vel / 254, seed=len(examples)),
                NS_SR,
                subtype="PCM_16",
            )
    (root / "examples.json").write_text(json.dumps(examples))
    return examples


NS_DS = {
    "format": "nsynth",
    "sample_rate": NS_SR,
    "tasks": [
        {"name": "family", "type": "classification", "label": "instrument_family_str"},
        {"name": "pitch", "type": "regression", "label": "pitch"},
        {"name": "velocity", "type": "regression", "label": "velocity"},
    ],
    "main_task": "family",
}


@pytest.fixture(scope="module")
def nsynth_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("nsynth")
    return root, make_nsynth(root)


def test_nsynth_filters_labels_round_trip(nsynth_root, tmp_path):
    root, examples = nsynth_root
    out = tmp_path / "clips.h5"
    s = ingest(root, with_defaults(NS_DS), "notes", out)
    keep = sorted(
        k
        for k, e in examples.items()
        if e["instrument_source"] == 0 and e["instrument_family_str"] not in ("bass", "organ")
    )
    assert s["n_clips"] == len(keep) == 12
    with open_h5(out, "clips") as f:
        meta, tasks, main = read_clip_table(f)
        audio = clip_audio(f)[:]
        # 16-bit mono files at the rate: stored as int16 (lossless), read back as float32 through clip_audio
        assert f["audio"].dtype == np.int16 and f["audio"].attrs["scale"] == 1 / 32768 and s["storage"] == "int16"
        assert audio.dtype == np.float32 and audio.shape == (12, 4 * NS_SR)
        assert f.attrs["sample_rate"] == NS_SR and f.attrs["clip_seconds"] == 4.0
        assert f.attrs["source_format"] == "nsynth" and f.attrs["dataset"] == "notes"
        assert json.loads(f.attrs["skipped"]) == []
    assert main == "family" and [t["name"] for t in tasks] == ["family", "pitch", "velocity"]
    assert list(meta["clip_id"]) == keep and list(meta["recording"]) == keep
    assert (meta["offset"] == 0).all()
    # label decoding round trip against examples.json
    for field, task in (("instrument_family_str", "family"), ("pitch", "pitch"), ("velocity", "velocity")):
        want = [examples[k][field] for k in keep]
        got = list(meta[task])
        assert got == (want if task == "family" else [float(v) for v in want])
    assert sorted(tasks[0]["classes"]) == ["brass", "flute", "guitar", "string"]
    # audio is the first 4 s of each file, unchanged
    for i, k in enumerate(keep[:3]):
        y, sr = sf.read(root / "audio" / f"{k}.wav", dtype="float32")
        np.testing.assert_array_equal(audio[i], y[: 4 * NS_SR])
    # class counts in the summary match the table
    cc = s["class_counts"]["family"]
    assert sum(cc["train"].values()) + sum(cc["test"].values()) == 12
    assert all(cc["train"].get(c, 0) >= 1 and cc["test"].get(c, 0) >= 1 for c in ("brass", "flute", "guitar", "string"))


def test_nsynth_seeded_sampling_and_source_filter(nsynth_root, tmp_path):
    root, examples = nsynth_root
    ds = with_defaults({**NS_DS, "nsynth": {"max_clips": 5, "sample_seed": 3}})
    ids = []
    for rep in range(2):
        out = tmp_path / f"c{rep}.h5"
        ingest(root, ds, "notes", out)
        with open_h5(out, "clips") as f:
            ids.append(list(f["meta/clip_id"].asstr()[:]))
    assert ids[0] == ids[1] and len(ids[0]) == 5
    keep = sorted(
        k
        for k, e in examples.items()
        if e["instrument_source"] == 0 and e["instrument_family_str"] not in ("bass", "organ")
    )
    pick = np.sort(np.random.default_rng(3).choice(len(keep), 5, replace=False))
    assert ids[0] == [keep[i] for i in pick]
    ds2 = with_defaults({**NS_DS, "nsynth": {"max_clips": 5, "sample_seed": 4}})
    ingest(root, ds2, "notes", tmp_path / "c2.h5")
    with open_h5(tmp_path / "c2.h5", "clips") as f:
        assert list(f["meta/clip_id"].asstr()[:]) != ids[0]
    # electronic notes only, keeping bass
    ds3 = with_defaults({**NS_DS, "nsynth": {"instrument_sources": [1], "drop_families": []}})
    s = ingest(root, ds3, "notes", tmp_path / "c3.h5")
    assert s["n_clips"] == 2 * len(FAMILIES)
    with open_h5(tmp_path / "c3.h5", "clips") as f:
        assert all("_electronic_" in c for c in f["meta/clip_id"].asstr()[:])


def test_nsynth_resamples_other_rate_with_warning(tmp_path, caplog):
    root = tmp_path / "ns"
    make_nsynth(root, per_family=2, electronic=0)
    nid = sorted(json.loads((root / "examples.json").read_text()))[-1]
    sf.write(root / "audio" / f"{nid}.wav", tone(4.0, 8000), 8000)
    with caplog.at_level(logging.WARNING, logger="deepfeat.data.ingest"):
        s = ingest(root, with_defaults(NS_DS), "notes", tmp_path / "c.h5")
    assert s["n_clips"] == 8
    assert any("8000 Hz" in r.getMessage() and "resampl" in r.getMessage() for r in caplog.records)


def test_nsynth_short_note_is_bad_file(tmp_path):
    root = tmp_path / "ns"
    examples = make_nsynth(root, per_family=2, electronic=0)
    short = sorted(k for k, e in examples.items() if e["instrument_family_str"] == "flute")[0]
    sf.write(root / "audio" / f"{short}.wav", tone(3.5, NS_SR), NS_SR)
    with pytest.raises(IngestError, match=rf"{short}\.wav.*shorter than one clip"):
        ingest(root, with_defaults(NS_DS), "notes", tmp_path / "c.h5")
    assert not (tmp_path / "c.h5").exists()
    s = ingest(root, with_defaults(NS_DS), "notes", tmp_path / "c.h5", on_error="skip")
    assert s["n_clips"] == 7 and [d["file"] for d in s["skipped"]] == [short]


def test_nsynth_missing_label_field(nsynth_root, tmp_path):
    root, _ = nsynth_root
    ds = with_defaults(
        {**NS_DS, "tasks": NS_DS["tasks"] + [{"name": "x", "type": "classification", "label": "no_such_field"}]}
    )
    with pytest.raises(IngestError, match=r"examples\.json.*'no_such_field'"):
        ingest(root, ds, "notes", tmp_path / "c.h5")


# ----------------------------------------------------------------------------------------------------------
# Recordings layout
# ----------------------------------------------------------------------------------------------------------
# path, composer, seconds, year, (sr, channels)
RECS = [
    ("a/one.wav", "haydn", 9.0, 1790, REC_SR, 1),  # 2 clips of 4 s, 1 s tail dropped
    ("a/two.wav", "haydn", 13.0, 1791, REC_SR, 1),  # 3 clips
    ("b/three.flac", "bach", 12.5, 1720, REC_SR, 1),  # 3 clips
    ("b/four.wav", "bach", 8.2, 1721, 44100, 2),  # stereo 44.1 kHz -> 2 clips
    ("c/five.wav", "mozart", 16.0, 1785, REC_SR, 1),  # 4 clips
    ("c/six.wav", "mozart", 4.5, 1786, REC_SR, 1),  # 1 clip
]
N_CLIPS = {p: int(s // 4) for p, _, s, _, _, _ in RECS}

REC_DS = {
    "format": "recordings",
    "sample_rate": REC_SR,
    "tasks": [
        {"name": "composer", "type": "classification", "label": "composer"},
        {"name": "part", "type": "classification", "label": "part"},
        {"name": "year", "type": "regression", "label": "year"},
    ],
    "main_task": "composer",
}


def make_recordings(root: Path, recs=RECS, extra_rows: str = "") -> None:
    for i, (p, _comp, secs, _year, sr, ch) in enumerate(recs):
        (root / p).parent.mkdir(parents=True, exist_ok=True)
        sf.write(root / p, tone(secs, sr, 220 + 50 * i, channels=ch, seed=i), sr)
    lines = ["path,composer,year,work"] + [f"{p},{c},{y},w{i % 2}" for i, (p, c, _, y, _, _) in enumerate(recs)]
    (root / "metadata.csv").write_text("\n".join(lines) + "\n" + extra_rows)


@pytest.fixture(scope="module")
def rec_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("recs")
    make_recordings(root)
    return root


def test_recordings_clips_tail_part_and_labels(rec_root, tmp_path):
    out = tmp_path / "clips.h5"
    s = ingest(rec_root, with_defaults(REC_DS), "composers", out)
    assert s["n_clips"] == sum(N_CLIPS.values()) == 15 and s["skipped"] == []
    assert s["storage"] == "float32"  # a stereo 44.1 kHz file is mixed and resampled: not exact 16-bit PCM
    with open_h5(out, "clips") as f:
        meta, tasks, _ = read_clip_table(f)
        audio = clip_audio(f)[:]
        assert f["audio"].dtype == np.float32
    assert audio.shape == (15, 4 * REC_SR)
    for p, comp, _secs, year, _sr, _ch in RECS:
        m = meta[meta["recording"] == p]
        n = N_CLIPS[p]
        assert len(m) == n, p  # tail dropped
        np.testing.assert_allclose(m["offset"], 4.0 * np.arange(n))
        assert list(m["clip_id"]) == [f"{p}@{4 * i}" for i in range(n)]
        assert list(m["part"]) == [PARTS[3 * i // n] for i in range(n)]
        assert (m["composer"] == comp).all() and (m["year"] == float(year)).all()
    # mono 22,050 Hz clips cut from the start of the recording; the stereo 44.1 kHz one is averaged + resampled
    y = load_audio(rec_root / "a/two.wav", REC_SR)
    rows = np.flatnonzero(meta["recording"] == "a/two.wav")
    np.testing.assert_array_equal(audio[rows[1]], y[4 * REC_SR : 8 * REC_SR])
    st, sr = sf.read(rec_root / "b/four.wav", dtype="float32")
    assert sr == 44100 and st.ndim == 2
    mono = load_audio(rec_root / "b/four.wav", REC_SR)
    assert mono.ndim == 1 and abs(mono.size - round(st.shape[0] * REC_SR / 44100)) <= 1
    rows = np.flatnonzero(meta["recording"] == "b/four.wav")
    np.testing.assert_array_equal(audio[rows[0]], mono[: 4 * REC_SR])
    # a 440 Hz-ish tone keeps its frequency through resampling (mean of channels 1 and 2 = 0.75 x channel 2)
    spec = np.abs(np.fft.rfft(audio[rows[0]]))
    f_peak = np.argmax(spec) * REC_SR / audio.shape[1]
    assert abs(f_peak - (220 + 50 * 3)) < 1.0


def test_part_of_piece_thirds():
    for n in range(1, 12):
        parts = [PARTS[3 * i // n] for i in range(n)]
        assert parts == sorted(parts, key=PARTS.index)
    assert [PARTS[3 * i // 6] for i in range(6)] == ["beginning"] * 2 + ["middle"] * 2 + ["end"] * 2


def test_recordings_part_needs_flag(rec_root, tmp_path):
    ds = with_defaults({**REC_DS, "recordings": {"part_of_piece": False}})
    with pytest.raises(IngestError, match=r"metadata\.csv.*'part'.*part_of_piece"):
        ingest(rec_root, ds, "composers", tmp_path / "c.h5")


def test_recordings_missing_label_column(rec_root, tmp_path):
    ds = with_defaults(
        {**REC_DS, "tasks": REC_DS["tasks"] + [{"name": "orch", "type": "classification", "label": "orchestra"}]}
    )
    with pytest.raises(IngestError, match=r"metadata\.csv.*label column 'orchestra'"):
        ingest(rec_root, ds, "composers", tmp_path / "c.h5")


def test_recordings_one_class_task(rec_root, tmp_path):
    ds = with_defaults(
        {**REC_DS, "tasks": REC_DS["tasks"] + [{"name": "ones", "type": "classification", "label": "one"}]}
    )
    root = tmp_path / "r"
    make_recordings(root, RECS[:3])
    csv = pd.read_csv(root / "metadata.csv")
    csv["one"] = "x"
    csv.to_csv(root / "metadata.csv", index=False)
    with pytest.raises(IngestError, match=r"task 'ones'.*one class"):
        ingest(root, ds, "composers", tmp_path / "c.h5")


@pytest.mark.parametrize(
    "case, pattern",
    [
        ("missing", r"gone\.wav: audio file not found"),
        ("corrupt", r"bad\.wav: unreadable or corrupt"),
        ("empty", r"empty\.wav: (empty audio|unreadable)"),
        ("short", r"short\.wav: recording is shorter than one clip"),
        ("empty_label", r"1 bad row in \S*metadata\.csv:\n  line 8 \(x\.wav\): empty label in 'composer'"),
        ("bad_number", r"metadata\.csv:\n  line 8 \(x\.wav\): label 'year' = 'soon' is not a number"),
    ],
)
def test_recordings_bad_files_fail_and_skip(tmp_path, case, pattern):
    root = tmp_path / "r"
    make_recordings(root)
    row = {
        "missing": "gone.wav,bach,1700,w0",
        "corrupt": "bad.wav,bach,1700,w0",
        "empty": "empty.wav,bach,1700,w0",
        "short": "short.wav,bach,1700,w0",
        "empty_label": "x.wav,,1700,w0",
        "bad_number": "x.wav,bach,soon,w0",
    }[case]
    with open(root / "metadata.csv", "a") as fh:
        fh.write(row + "\n")
    (root / "bad.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt garbage" * 10)
    sf.write(root / "empty.wav", np.zeros(0, np.float32), REC_SR)
    sf.write(root / "short.wav", tone(3.9, REC_SR), REC_SR)
    sf.write(root / "x.wav", tone(5.0, REC_SR), REC_SR)
    out = tmp_path / "c.h5"
    with pytest.raises((IngestError, AudioError), match=pattern):
        ingest(root, with_defaults(REC_DS), "composers", out)
    assert not out.exists() and not list(tmp_path.glob(".c.h5*"))  # nothing half-written left behind
    s = ingest(root, with_defaults(REC_DS), "composers", out, on_error="skip")
    assert s["n_clips"] == 15 and len(s["skipped"]) == 1
    assert s["skipped"][0]["file"] == row.split(",")[0]
    assert f"metadata.csv line 8 ({row.split(',')[0]}): " in s["skipped"][0]["reason"]  # the row and its file
    with open_h5(out, "clips") as f:
        skipped = json.loads(f.attrs["skipped"])
        assert skipped == s["skipped"]
        assert row.split(",")[0] not in set(f["meta/recording"].asstr()[:])


def six_bad_rows(root: Path) -> list[str]:
    """The recordings folder of a new user: the good RECS plus six bad rows (lines 8 to 13), one of each kind;
    returns the expected reason patterns in CSV order."""
    make_recordings(
        root,
        extra_rows="bad.wav,bach,1700,w0\ncut.wav,bach,1700,w0\ntwo.wav,bach,1700,w0\ngone.wav,bach,1700,w0\n"
        "x.wav,,1700,w0\n../outside.wav,bach,1700,w0\n",
    )
    (root / "bad.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt garbage" * 10)
    sf.write(root / "cut.wav", tone(5.0, REC_SR), REC_SR, subtype="PCM_16")
    (root / "cut.wav").write_bytes((root / "cut.wav").read_bytes()[:20000])
    sf.write(root / "two.wav", tone(2.0, REC_SR), REC_SR)
    sf.write(root / "x.wav", tone(5.0, REC_SR), REC_SR)
    sf.write(root.parent / "outside.wav", tone(5.0, REC_SR), REC_SR)
    return [
        r"line 8 \(bad\.wav\): \S*bad\.wav: unreadable or corrupt audio",
        r"line 9 \(cut\.wav\): \S*cut\.wav: corrupt audio \(truncated",
        r"line 10 \(two\.wav\): \S*two\.wav: recording is shorter than one clip \(2\.000 s < 4 s\)",
        r"line 11 \(gone\.wav\): \S*gone\.wav: audio file not found",
        r"line 12 \(x\.wav\): empty label in 'composer'",
        r"line 13 \(\.\./outside\.wav\): the path leaves the dataset folder "
        r".*datasets\.composers\.recordings\.allow_outside: true",
    ]


def test_fail_lists_every_bad_row_at_once_and_writes_nothing(tmp_path):
    """ingest.on_error fail: one IngestError naming all six bad rows (CSV line, file, reason) in CSV order, the
    way out, and no output; skip: the same six left out, each recorded."""
    root = tmp_path / "r"
    reasons = six_bad_rows(root)
    out = tmp_path / "c.h5"
    with pytest.raises(IngestError) as err:
        ingest(root, with_defaults(REC_DS), "composers", out)
    msg = str(err.value)
    assert msg.startswith("datasets.composers: nothing was written; 6 bad rows in ") and "metadata.csv:\n" in msg
    lines = msg.splitlines()[1:7]
    assert len(lines) == 6 and all(re.match("  " + r, line) for r, line in zip(reasons, lines)), lines
    assert "set ingest.on_error: skip to leave them out" in msg.splitlines()[-1]
    assert not out.exists() and not list(tmp_path.glob(".c.h5*"))
    s = ingest(root, with_defaults(REC_DS), "composers", out, on_error="skip")
    assert s["n_clips"] == 15 and [d["file"] for d in s["skipped"]] == [
        "bad.wav",
        "cut.wav",
        "two.wav",
        "gone.wav",
        "x.wav",
        "../outside.wav",
    ]
    for r, d in zip(reasons, s["skipped"]):
        assert re.search(r, d["reason"]) and "metadata.csv line" in d["reason"], d


def test_problems_only_decoding_finds_are_listed_at_the_end(tmp_path):
    """Valid headers, bad samples (NaN in float WAVs): found while decoding, all listed in one error raised before
    the file is renamed into place."""
    root = tmp_path / "r"
    make_recordings(root, extra_rows="nan1.wav,bach,1700,w0\nnan2.wav,bach,1700,w0\n")
    for name in ("nan1.wav", "nan2.wav"):
        y = tone(5.0, REC_SR)
        y[1000] = np.nan
        sf.write(root / name, y, REC_SR, subtype="FLOAT")
    out = tmp_path / "c.h5"
    with pytest.raises(IngestError, match=r"2 bad rows .*\n  line 8 \(nan1\.wav\): .*NaN.*\n  line 9 \(nan2\.wav\)"):
        ingest(root, with_defaults(REC_DS), "composers", out)
    assert not out.exists() and not list(tmp_path.glob(".c.h5*"))


def test_paths_outside_the_folder_need_allow_outside(tmp_path):
    """../ and absolute paths are bad rows by default; recordings.allow_outside: true reads them; a symbolic link
    inside the folder is always followed."""
    root = tmp_path / "r"
    make_recordings(root, RECS[:3])
    sf.write(tmp_path / "up.wav", tone(8.0, REC_SR), REC_SR)
    sf.write(tmp_path / "abs.wav", tone(4.5, REC_SR), REC_SR)
    (root / "link.wav").symlink_to(tmp_path / "up.wav")
    with open(root / "metadata.csv", "a") as fh:
        fh.write(f"../up.wav,bach,1700,w0\n{tmp_path / 'abs.wav'},mozart,1780,w1\nlink.wav,mozart,1781,w0\n")
    with pytest.raises(IngestError, match=r"2 bad rows") as err:
        ingest(root, with_defaults(REC_DS), "composers", tmp_path / "c.h5")
    assert "line 5 (../up.wav): the path leaves" in str(err.value) and "line 6 (" in str(err.value)
    ds = with_defaults({**REC_DS, "recordings": {"allow_outside": True}})
    s = ingest(root, ds, "composers", tmp_path / "c.h5")
    assert s["skipped"] == [] and s["n_clips"] == 2 + 3 + 3 + 2 + 1 + 2
    with open_h5(tmp_path / "c.h5", "clips") as f:
        recs = set(f["meta/recording"].asstr()[:])
    assert {"../up.wav", str(tmp_path / "abs.wav"), "link.wav"} <= recs


def test_skip_mode_fails_when_nothing_left(tmp_path):
    root = tmp_path / "r"
    root.mkdir()
    sf.write(root / "short.wav", tone(1.0, REC_SR), REC_SR)
    (root / "metadata.csv").write_text("path,composer,year\nshort.wav,bach,1700\nnope.wav,haydn,1790\n")
    with pytest.raises(IngestError, match="no (clips|usable source files) left|no clips left"):
        ingest(root, with_defaults(REC_DS), "composers", tmp_path / "c.h5", on_error="skip")


def test_missing_metadata_and_path_column(tmp_path):
    root = tmp_path / "r"
    root.mkdir()
    with pytest.raises(IngestError, match=r"metadata\.csv: metadata CSV not found"):
        ingest(root, with_defaults(REC_DS), "composers", tmp_path / "c.h5")
    (root / "metadata.csv").write_text("file,composer,year\na.wav,bach,1\n")
    with pytest.raises(IngestError, match=r"metadata\.csv: path column 'path'"):
        ingest(root, with_defaults(REC_DS), "composers", tmp_path / "c.h5")
    with pytest.raises(IngestError, match=r"examples\.json: not found"):
        ingest(root, with_defaults(NS_DS), "notes", tmp_path / "c.h5")


def test_audio_errors_name_the_file(tmp_path):
    with pytest.raises(AudioError, match=r"nothing\.wav: audio file not found"):
        load_audio(tmp_path / "nothing.wav", REC_SR)
    (tmp_path / "junk.wav").write_bytes(b"\x00\x01garbage" * 100)
    with pytest.raises(AudioError, match=r"junk\.wav: unreadable or corrupt"):
        read_audio(tmp_path / "junk.wav")
    sf.write(tmp_path / "nan.wav", np.array([0.0, np.nan, 0.1] * 100, np.float32), REC_SR, subtype="FLOAT")
    with pytest.raises(AudioError, match=r"nan\.wav: corrupt audio"):
        load_audio(tmp_path / "nan.wav", REC_SR)
    sf.write(tmp_path / "cut.wav", tone(1.0, REC_SR), REC_SR, subtype="PCM_16")
    (tmp_path / "cut.wav").write_bytes((tmp_path / "cut.wav").read_bytes()[:20000])
    with pytest.raises(AudioError, match=r"cut\.wav: corrupt audio \(truncated"):
        load_audio(tmp_path / "cut.wav", REC_SR)
    sf.write(tmp_path / "ok.wav", tone(1.0, 44100, channels=2), 44100)
    y = load_audio(tmp_path / "ok.wav", REC_SR)
    assert y.dtype == np.float32 and y.ndim == 1 and y.size == REC_SR
    y, sr = read_audio(tmp_path / "ok.wav")
    assert sr == 44100 and y.size == 44100


# ----------------------------------------------------------------------------------------------------------
# Splits
# ----------------------------------------------------------------------------------------------------------
def test_random_split_stratified_and_deterministic():
    rng = np.random.default_rng(0)
    labels = rng.choice(["a", "b", "c", "d"], size=500, p=[0.55, 0.3, 0.1, 0.05])
    labels = np.concatenate([labels, ["e", "e", "f"]])  # rare classes: 2 clips -> 1+1, 1 clip -> train
    s1 = split_clips(labels, 0.3, seed=7)
    s2 = split_clips(labels, 0.3, seed=7)
    s3 = split_clips(labels, 0.3, seed=8)
    np.testing.assert_array_equal(s1, s2)
    assert (s1 != s3).any()
    assert s1.dtype == np.uint8 and set(np.unique(s1)) == {0, 1}
    assert abs(s1.mean() - 0.3) < 0.01
    for c in "abcd":
        m = labels == c
        assert abs(s1[m].mean() - 0.3) <= 1 / m.sum() + 1e-12, c  # each class 70/30 up to rounding
    assert sorted(s1[labels == "e"]) == [0, 1]
    assert s1[labels == "f"].tolist() == [0]


def test_group_split_never_straddles_and_is_deterministic():
    rng = np.random.default_rng(1)
    recs = np.repeat([f"r{i:02d}" for i in range(30)], rng.integers(1, 12, 30))
    comp = np.array([["x", "y", "z"][int(r[1:]) % 3] for r in recs])
    s1 = split_clips(comp, 0.3, seed=5, method="group", groups=recs)
    np.testing.assert_array_equal(s1, split_clips(comp, 0.3, seed=5, method="group", groups=recs))
    assert (s1 != split_clips(comp, 0.3, seed=6, method="group", groups=recs)).any()
    for r in np.unique(recs):
        assert np.unique(s1[recs == r]).size == 1, r
    for c in "xyz":  # stratified: every class on both sides
        assert set(s1[comp == c]) == {0, 1}
    assert 0.2 < s1.mean() < 0.4
    # groups that span classes: still never straddling
    works = np.array([r[:2] for r in recs])  # r0, r1, r2 -> 3 groups mixing classes
    s4 = split_clips(comp, 0.3, seed=5, method="group", groups=works)
    for w in np.unique(works):
        assert np.unique(s4[works == w]).size == 1
    with pytest.raises(IngestError, match="only one group"):
        split_clips(comp, 0.3, seed=5, method="group", groups=np.full(comp.size, "g"))


def test_group_split_through_ingest(rec_root, tmp_path):
    ds = with_defaults({**REC_DS, "split": {"method": "group", "seed": 3}})
    out = tmp_path / "c.h5"
    ingest(rec_root, ds, "composers", out)
    with open_h5(out, "clips") as f:
        meta, _, _ = read_clip_table(f)
    assert (meta.groupby("recording")["split"].nunique() == 1).all()
    assert set(meta["split"]) == {0, 1}
    # group by a CSV column: whole works on one side
    ds = with_defaults({**REC_DS, "split": {"method": "group", "seed": 3, "group_by": "work"}})
    ingest(rec_root, ds, "composers", out)
    with open_h5(out, "clips") as f:
        meta, _, _ = read_clip_table(f)
        assert json.loads(f.attrs["split"])["group_by"] == "work"
    work = meta["recording"].map({p: f"w{i % 2}" for i, (p, *_) in enumerate(RECS)}).to_numpy()
    assert all(np.unique(meta["split"][work == w]).size == 1 for w in np.unique(work))
    ds = with_defaults({**REC_DS, "split": {"method": "group", "group_by": "nope"}})
    with pytest.raises(IngestError, match=r"metadata\.csv: split\.group_by column 'nope'"):
        ingest(rec_root, ds, "composers", out)


def test_audio_written_in_blocks_is_identical(rec_root, tmp_path, monkeypatch):
    import deepfeat.data.ingest as ing

    ds = with_defaults(REC_DS)
    ingest(rec_root, ds, "composers", tmp_path / "a.h5")
    monkeypatch.setattr(ing, "_BLOCK_BYTES", 1)  # flush after every recording
    ingest(rec_root, ds, "composers", tmp_path / "b.h5")
    with open_h5(tmp_path / "a.h5", "clips") as a, open_h5(tmp_path / "b.h5", "clips") as b:
        np.testing.assert_array_equal(a["audio"][:], b["audio"][:])
        assert a["audio"].chunks == (1, 4 * REC_SR) and a["audio"].maxshape == (None, 4 * REC_SR)
        np.testing.assert_array_equal(a["meta/split"][:], b["meta/split"][:])


# ----------------------------------------------------------------------------------------------------------
# The job's settings
# ----------------------------------------------------------------------------------------------------------
def test_ingest_declares_its_settings_and_the_workflow_reads_them():
    keys = ["format", "sample_rate", "nsynth", "recordings", "clip_seconds", "tasks", "main_task", "split"]
    assert ingest_dataset.job.reads == {"dataset": tuple(keys), "ingest": ("on_error",)}
    assert ingest_dataset.job.tunes == {}
    assert workflow.job_spec("ingest") == {"reads": {"dataset": keys, "ingest": ["on_error"]}, "tunes": {}}


def test_unknown_or_bad_settings_are_rejected_naming_the_key(nsynth_root, tmp_path):
    root, _ = nsynth_root
    out = tmp_path / "c.h5"
    with pytest.raises(ConfigError, match=r"dataset\.sample_rat: unknown key"):
        ingest(root, {**NS_DS, "sample_rat": 16000}, "notes", out)
    with pytest.raises(ConfigError, match=r"ingest\.on_eror: unknown key"):
        ingest_dataset(
            clips=out, settings={"dataset": NS_DS, "ingest": {"on_eror": "skip"}}, root=root, dataset="notes"
        )
    with pytest.raises(ConfigError, match=r"ingest\.on_error"):
        ingest(root, NS_DS, "notes", out, on_error="ignore")
    with pytest.raises(ConfigError, match=r"dataset\.split.*test_fraction"):
        ingest(root, {**NS_DS, "split": {"test_fraction": 1.5}}, "notes", out)
    with pytest.raises(ConfigError, match=r"dataset\.nsynth.*max_clip"):
        ingest(root, {**NS_DS, "nsynth": {"max_clip": 3}}, "notes", out)
    with pytest.raises(ConfigError, match=r"dataset\.clip_seconds"):
        ingest(root, {**NS_DS, "clip_seconds": 0}, "notes", out)
    with pytest.raises(ConfigError, match=r"dataset\.main_task: required"):
        ingest(root, {k: v for k, v in NS_DS.items() if k != "main_task"}, "notes", out)
    with pytest.raises(IngestError, match=r"datasets\.notes\.main_task: the main task must be a classification"):
        ingest(root, {**NS_DS, "main_task": "pitch"}, "notes", out)
    assert not out.exists()


def test_defaults_come_from_the_schema(nsynth_root, tmp_path):
    """A bare dataset entry (no split / nsynth / clip_seconds) gets the schema's defaults, recorded in clips.h5."""
    root, _ = nsynth_root
    ingest(root, NS_DS, "notes", tmp_path / "a.h5")
    ingest(root, with_defaults(NS_DS), "notes", tmp_path / "b.h5")
    with open_h5(tmp_path / "a.h5", "clips") as a, open_h5(tmp_path / "b.h5", "clips") as b:
        split = config.default("dataset", "split")
        assert (
            json.loads(a.attrs["split"])
            == split
            == {"method": "random", "test_fraction": 0.3, "seed": 0, "group_by": "recording"}
        )
        assert list(json.loads(a.attrs["split"])) == ["method", "test_fraction", "seed", "group_by"]
        assert a.attrs["split"] == b.attrs["split"]
        assert a.attrs["clip_seconds"] == config.default("dataset", "clip_seconds") == 4.0
        np.testing.assert_array_equal(a["audio"][:], b["audio"][:])
        np.testing.assert_array_equal(a["meta/split"][:], b["meta/split"][:])
    # the split attribute lists the keys in the schema's order whatever order the config gives them in
    ds = {**NS_DS, "split": {"seed": 0, "group_by": "recording", "test_fraction": 0.3}}
    ingest(root, ds, "notes", tmp_path / "c.h5")
    with open_h5(tmp_path / "a.h5", "clips") as a, open_h5(tmp_path / "c.h5", "clips") as c:
        assert a.attrs["split"] == c.attrs["split"]
