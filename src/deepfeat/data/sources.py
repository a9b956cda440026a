"""The sources of a dataset: the notes of an NSynth folder or the recordings of a metadata CSV, with their labels,
and the clips cut from each source.

Layouts
- ``nsynth``: ``root/examples.json`` (note id -> fields) and ``root/audio/<note id>.wav``. Notes are filtered
  by ``nsynth.instrument_sources`` (field ``instrument_source``), notes whose ``instrument_family_str`` is in
  ``nsynth.drop_families`` are dropped, then ``nsynth.max_clips`` notes are sampled without replacement with
  ``numpy.random.default_rng(nsynth.sample_seed)`` from the sorted ids
  (:func:`deepfeat.formats.cliptable.seeded_subset`). One clip per note: its first clip_seconds (a shorter note
  is a bad file). A task's ``label`` names an examples.json field.
- ``recordings``: ``root/<recordings.metadata>`` CSV with a ``recordings.path_column`` (relative to root) and
  label columns. Each recording is cut into non-overlapping clips from its start, the short tail dropped. A path
  that leaves the dataset folder (absolute, or climbing out with ``..``; judged on the text, so symbolic links
  inside the folder are followed) is a bad row unless ``recordings.allow_outside`` is true.

An unusable source (a row of the metadata, or its file) is reported as a :class:`Problem` to the ``bad``
callback of the caller, which skips it or collects it (``ingest.on_error``).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePath

import numpy as np
import pandas as pd

from deepfeat.data.audio import AudioError, AudioInfo, probe_audio, read_audio, resample
from deepfeat.formats.cliptable import seeded_subset
from deepfeat.runtime import UserError


class IngestError(UserError, ValueError):
    """Bad input data or metadata; the message names the file, row, field or column at fault (an expected
    error: reported without a traceback)."""


class BadItem(Exception):
    """One source file/row cannot be used (skippable with on_error='skip'); the message is the reason, without
    the row's location (the :class:`Problem` adds it)."""


@dataclass(frozen=True)
class Problem:
    """One unusable source: ``file`` as the metadata names it (or the note id), ``line`` its place in the
    metadata ("line 8 (x.wav)", "note 'x'"), ``reason``, ``source`` (the metadata file) and ``index`` (its
    position there: problems are listed in the metadata's order)."""

    file: str
    line: str
    reason: str
    source: str
    index: int = 0

    def text(self) -> str:
        """The whole message: "<metadata file> <line>: <reason>"."""
        return f"{self.source} {self.line}: {self.reason}"


@dataclass
class Item:
    """One source: an NSynth note or a recording, with its raw label values."""

    name: str  # note id or the CSV path: meta/recording
    path: Path
    labels: dict = field(default_factory=dict)  # task name -> value
    group: str | None = None
    line: str = ""  # "note 'x'" or "line 7 (x.wav)": its place in ``source``, for messages
    source: str = ""  # the metadata file (examples.json or the CSV)
    index: int = 0  # its position in ``source``

    def problem(self, reason: str) -> Problem:
        return Problem(self.name, self.line, reason, self.source, self.index)


def source_items(
    fmt: str, root: Path, ds: dict, tasks: list[dict], group_by: str, bad, log, name: str = "<name>"
) -> list[Item]:
    """The usable sources of the dataset ``name`` of format ``fmt`` (``bad(problem)`` is called with a
    :class:`Problem` for each unusable one)."""
    if fmt == "nsynth":
        return nsynth_items(root, ds["nsynth"], tasks, group_by, bad, log)
    return recording_items(root, ds["recordings"], tasks, group_by, bad, log, name)


def label_value(value, task: dict):
    """Validate one raw label value (classification -> str, regression -> float); raise BadItem if unusable."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or str(value).strip() == "":
        raise BadItem(f"empty label in {task['label']!r} (task {task['name']!r})")
    if isinstance(value, (list, dict)):
        raise BadItem(f"label {task['label']!r} is a {type(value).__name__}, expected a single value")
    if task["type"] == "regression":
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise BadItem(
                f"label {task['label']!r} = {value!r} is not a number (task {task['name']!r} is a regression)"
            ) from None
        if not math.isfinite(v):
            raise BadItem(f"label {task['label']!r} = {value!r} is not finite")
        return v
    return str(value).strip()


# ----------------------------------------------------------------------------------------------------------
# NSynth
# ----------------------------------------------------------------------------------------------------------
def _read_examples(ex_path: Path) -> dict:
    if not ex_path.is_file():
        raise IngestError(f"{ex_path}: not found (the NSynth layout needs examples.json and audio/)")
    try:
        examples = json.loads(ex_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise IngestError(f"{ex_path}: not valid JSON ({e})") from e
    if not isinstance(examples, dict) or not examples:
        raise IngestError(f"{ex_path}: expected a non-empty object mapping note ids to fields")
    return examples


def _kept_notes(examples: dict, ns: dict, ex_path: Path, log) -> list[str]:
    """Sorted note ids that pass the source/family filters, then the seeded sample of ``nsynth.max_clips``."""
    sources = {int(s) for s in ns["instrument_sources"]}
    drop = {str(d) for d in ns["drop_families"]}
    keep = []
    for nid in sorted(examples):
        e = examples[nid]
        if not isinstance(e, dict):
            raise IngestError(f"{ex_path}: note {nid!r} is not an object of fields")
        for fld in ("instrument_source", "instrument_family_str"):
            if fld not in e:
                raise IngestError(f"{ex_path}: note {nid!r} has no field {fld!r} (needed to filter notes)")
        if int(e["instrument_source"]) in sources and str(e["instrument_family_str"]) not in drop:
            keep.append(nid)
    n_all = len(keep)
    if not keep:
        raise IngestError(
            f"{ex_path}: no notes left after filtering instrument_source in {sorted(sources)} "
            f"and dropping families {sorted(drop)} ({len(examples)} notes in the file)"
        )
    if ns["max_clips"] is not None:
        keep = [keep[i] for i in seeded_subset(len(keep), int(ns["max_clips"]), int(ns["sample_seed"]))]
    log.info(f"nsynth: {len(examples)} notes, {n_all} after filters, {len(keep)} used")
    return keep


def nsynth_items(root: Path, ns: dict, tasks: list[dict], group_by: str, bad, log) -> list[Item]:
    """The notes of an NSynth folder (``ns``: the ``nsynth`` settings) that have every label."""
    ex_path = root / "examples.json"
    examples = _read_examples(ex_path)
    keep = _kept_notes(examples, ns, ex_path, log)
    fields = {t["label"] for t in tasks} | ({group_by} if group_by != "recording" else set())
    for fld in sorted(fields):
        if not any(fld in examples[n] for n in keep):
            avail = sorted(set().union(*(examples[n].keys() for n in keep[:100])))
            raise IngestError(
                f"{ex_path}: field {fld!r} (a task label or split.group_by) does not exist; fields: {avail}"
            )
    items = []
    for k, nid in enumerate(keep):
        e = examples[nid]
        line = f"note {nid!r}"
        try:
            labels = {}
            for t in tasks:
                if t["label"] not in e:
                    raise BadItem(f"no field {t['label']!r} (label of task {t['name']!r})")
                labels[t["name"]] = label_value(e[t["label"]], t)
            group = None
            if group_by != "recording":
                if group_by not in e or str(e[group_by]).strip() == "":
                    raise BadItem(f"empty or missing split.group_by field {group_by!r}")
                group = str(e[group_by])
        except BadItem as err:
            bad(Problem(nid, line, str(err), str(ex_path), k))
            continue
        items.append(Item(nid, root / "audio" / f"{nid}.wav", labels, group, line, str(ex_path), k))
    return items


# ----------------------------------------------------------------------------------------------------------
# Recordings
# ----------------------------------------------------------------------------------------------------------
def _read_metadata(root: Path, rc: dict, tasks: list[dict], group_by: str, log) -> tuple[pd.DataFrame, Path]:
    """The metadata CSV (all columns as strings), checked to have the path, label and group columns."""
    csv = root / rc["metadata"]
    if not csv.is_file():
        raise IngestError(f"{csv}: metadata CSV not found (recordings.metadata)")
    try:
        df = pd.read_csv(csv, dtype=str, keep_default_na=False)
    except Exception as e:
        raise IngestError(f"{csv}: cannot parse the metadata CSV ({e})") from e
    df.columns = [str(c).strip() for c in df.columns]
    if len(df) == 0:
        raise IngestError(f"{csv}: no rows")
    pcol = rc["path_column"]
    part = bool(rc["part_of_piece"])
    if pcol not in df.columns:
        raise IngestError(
            f"{csv}: path column {pcol!r} (recordings.path_column) does not exist; columns: {list(df.columns)}"
        )
    for t in tasks:
        if t["label"] == "part" and part:
            continue
        if t["label"] not in df.columns:
            hint = " (set recordings.part_of_piece: true to derive 'part')" if t["label"] == "part" else ""
            raise IngestError(
                f"{csv}: label column {t['label']!r} of task {t['name']!r} does not exist; "
                f"columns: {list(df.columns)}{hint}"
            )
    if part and "part" in df.columns:
        log.warning(f"{csv}: column 'part' is replaced by the derived part of piece (recordings.part_of_piece)")
    if group_by != "recording" and group_by not in df.columns:
        raise IngestError(f"{csv}: split.group_by column {group_by!r} does not exist; columns: {list(df.columns)}")
    return df, csv


def leaves_folder(rel: str) -> bool:
    """True when the metadata path ``rel`` is absolute or climbs out of the dataset folder with ``..`` (judged on
    the text: a symbolic link inside the folder stays inside)."""
    return PurePath(rel).is_absolute() or os.path.normpath(rel).split(os.sep)[0] == ".."


def recording_items(
    root: Path, rc: dict, tasks: list[dict], group_by: str, bad, log, name: str = "<name>"
) -> list[Item]:
    """The recordings listed in a metadata CSV (``rc``: the ``recordings`` settings) that have every label and,
    unless ``recordings.allow_outside``, a path inside the dataset folder."""
    df, csv = _read_metadata(root, rc, tasks, group_by, log)
    pcol = rc["path_column"]
    part = bool(rc["part_of_piece"])
    outside_ok = bool(rc.get("allow_outside", False))
    items, seen = [], {}
    for i, row in enumerate(df.itertuples(index=False)):
        r = dict(zip(df.columns, row))
        rel = str(r[pcol]).strip()
        line = f"line {i + 2}" + (f" ({rel})" if rel else "")
        try:
            if not rel:
                raise BadItem(f"empty path in column {pcol!r}")
            if rel in seen:
                raise BadItem(f"recording {rel!r} already listed on line {seen[rel]}")
            if not outside_ok and leaves_folder(rel):
                raise BadItem(
                    f"the path leaves the dataset folder {root}; move the file into it, or set "
                    f"datasets.{name}.recordings.allow_outside: true to read files outside it"
                )
            labels = {t["name"]: label_value(r[t["label"]], t) for t in tasks if not (t["label"] == "part" and part)}
            group = None
            if group_by != "recording":
                group = str(r[group_by]).strip()
                if not group:
                    raise BadItem(f"empty split.group_by column {group_by!r}")
        except BadItem as err:
            bad(Problem(rel, line, str(err), str(csv), i))
            continue
        seen[rel] = i + 2
        items.append(Item(rel, root / rel, labels, group, line, str(csv), i))
    return items


def probe_items(items: list[Item], sr: int, L: int, clip_seconds: float, fmt: str, bad) -> list[AudioInfo | None]:
    """The header of every item's file (:func:`deepfeat.data.audio.probe_audio`), in order; None for an item whose
    file is missing, unreadable, truncated or shorter than one clip (reported to ``bad``). Costs one header read
    per file."""
    infos: list[AudioInfo | None] = []
    for it in items:
        try:
            info = probe_audio(it.path)
            n = info.samples_at(sr)
            if n < L:
                raise BadItem(_short(it, fmt, n, sr, clip_seconds))
        except (AudioError, BadItem) as e:
            bad(it.problem(str(e)))
            info = None
        infos.append(info)
    return infos


def _short(it: Item, fmt: str, n: int, sr: int, clip_seconds: float) -> str:
    kind = "note" if fmt == "nsynth" else "recording"
    return f"{it.path}: {kind} is shorter than one clip ({n / sr:.3f} s < {clip_seconds:g} s)"


# ----------------------------------------------------------------------------------------------------------
# Clips of one source
# ----------------------------------------------------------------------------------------------------------
def read_clips(it: Item, fmt: str, sr: int, L: int, clip_seconds: float, resampled: dict, log) -> np.ndarray:
    """(n, L) float32 clips of one source; raises AudioError / BadItem naming the file.

    The source is read at ``sr`` (resampled with soxr_hq when its rate differs; ``resampled`` counts the files
    per native rate). NSynth: the first clip only; recordings: every whole clip from the start.
    """
    y, native = read_audio(it.path)
    if native != sr:
        resampled[native] = resampled.get(native, 0) + 1
        if fmt == "nsynth" and resampled[native] == 1:
            log.warning(f"{it.path}: sample rate {native} Hz differs from sample_rate {sr} Hz; resampling")
        try:
            y = resample(y, native, sr)
        except Exception as e:
            raise AudioError(f"{it.path}: resampling {native} Hz -> {sr} Hz failed ({e})") from e
    n = y.size // L
    if n == 0:
        raise BadItem(_short(it, fmt, y.size, sr, clip_seconds))
    if fmt == "nsynth":
        n = 1
    return y[: n * L].reshape(n, L)
