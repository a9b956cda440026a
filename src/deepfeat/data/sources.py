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
  label columns. Each recording is cut into non-overlapping clips from its start, the short tail dropped.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from deepfeat.data.audio import AudioError, read_audio, resample
from deepfeat.formats.cliptable import seeded_subset


class IngestError(ValueError):
    """Bad input data or metadata; the message names the file, row, field or column at fault."""


class BadItem(Exception):
    """One source file/row cannot be used (skippable with on_error='skip')."""


@dataclass
class Item:
    """One source: an NSynth note or a recording, with its raw label values."""

    name: str  # note id or the CSV path: meta/recording
    path: Path
    labels: dict = field(default_factory=dict)  # task name -> value
    group: str | None = None
    where: str = ""  # "examples.json note 'x'" or "metadata.csv line 7": for messages


def source_items(fmt: str, root: Path, ds: dict, tasks: list[dict], group_by: str, bad, log) -> list[Item]:
    """The usable sources of a dataset of format ``fmt`` (``bad(name, reason)`` is called for each unusable one)."""
    if fmt == "nsynth":
        return nsynth_items(root, ds["nsynth"], tasks, group_by, bad, log)
    return recording_items(root, ds["recordings"], tasks, group_by, bad, log)


def label_value(value, task: dict, where: str):
    """Validate one raw label value (classification -> str, regression -> float); raise BadItem if unusable."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or str(value).strip() == "":
        raise BadItem(f"{where}: empty label in {task['label']!r} (task {task['name']!r})")
    if isinstance(value, (list, dict)):
        raise BadItem(f"{where}: label {task['label']!r} is a {type(value).__name__}, expected a single value")
    if task["type"] == "regression":
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise BadItem(
                f"{where}: label {task['label']!r} = {value!r} is not a number (task {task['name']!r} is a regression)"
            ) from None
        if not math.isfinite(v):
            raise BadItem(f"{where}: label {task['label']!r} = {value!r} is not finite")
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
    for nid in keep:
        e = examples[nid]
        where = f"{ex_path} note {nid!r}"
        try:
            labels = {}
            for t in tasks:
                if t["label"] not in e:
                    raise BadItem(f"{where}: no field {t['label']!r} (label of task {t['name']!r})")
                labels[t["name"]] = label_value(e[t["label"]], t, where)
            group = None
            if group_by != "recording":
                if group_by not in e or str(e[group_by]).strip() == "":
                    raise BadItem(f"{where}: empty or missing split.group_by field {group_by!r}")
                group = str(e[group_by])
        except BadItem as err:
            bad(nid, str(err))
            continue
        items.append(Item(nid, root / "audio" / f"{nid}.wav", labels, group, where))
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


def recording_items(root: Path, rc: dict, tasks: list[dict], group_by: str, bad, log) -> list[Item]:
    """The recordings listed in a metadata CSV (``rc``: the ``recordings`` settings) that have every label."""
    df, csv = _read_metadata(root, rc, tasks, group_by, log)
    pcol = rc["path_column"]
    part = bool(rc["part_of_piece"])
    items, seen = [], {}
    for i, row in enumerate(df.itertuples(index=False)):
        r = dict(zip(df.columns, row))
        where = f"{csv} line {i + 2}"
        rel = str(r[pcol]).strip()
        try:
            if not rel:
                raise BadItem(f"{where}: empty path in column {pcol!r}")
            if rel in seen:
                raise BadItem(f"{where}: recording {rel!r} already listed on line {seen[rel]}")
            labels = {
                t["name"]: label_value(r[t["label"]], t, f"{where} ({rel})")
                for t in tasks
                if not (t["label"] == "part" and part)
            }
            group = None
            if group_by != "recording":
                group = str(r[group_by]).strip()
                if not group:
                    raise BadItem(f"{where} ({rel}): empty split.group_by column {group_by!r}")
        except BadItem as err:
            bad(rel or where, str(err))
            continue
        seen[rel] = i + 2
        items.append(Item(rel, root / rel, labels, group, where))
    return items


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
        kind = "note" if fmt == "nsynth" else "recording"
        raise BadItem(f"{it.path}: {kind} is shorter than one clip ({y.size / sr:.3f} s < {clip_seconds:g} s)")
    if fmt == "nsynth":
        n = 1
    return y[: n * L].reshape(n, L)
