"""Ingest an audio dataset (NSynth layout or recordings + metadata CSV) into ``clips.h5``.

Output (kind "clips", see docs/formats.md and :mod:`deepfeat.formats.clips`): ``audio`` (N x L),
L = round(clip_seconds x sample_rate) mono samples at the dataset's rate, int16 (scale 1/32768) when every file
is mono 16-bit PCM at that rate, else float32, written block by block as files are read (bounded memory); root
attrs ``sample_rate``, ``clip_seconds``, ``dataset``, ``source_format``, ``source_root``, ``skipped`` (JSON list
of {file, reason}), ``split`` (JSON of the split settings); and the clip table
(:func:`deepfeat.formats.cliptable.write_clip_table`) with labels and the train/test split.

Layouts (:mod:`deepfeat.data.sources`)
- ``nsynth``: ``root/examples.json`` + ``root/audio/<note id>.wav``, one clip per note (its first clip_seconds).
- ``recordings``: ``root/<recordings.metadata>`` CSV; each recording is cut into non-overlapping clips from its
  start, the short tail dropped; ``meta/recording`` is the path as written in the CSV, ``meta/offset`` the clip
  start in seconds. With ``recordings.part_of_piece`` the column ``part`` is derived: clip i of n ->
  beginning/middle/end by 3i//n.

Split (``split``, :mod:`deepfeat.data.split`): "random" = seeded random split stratified by the main task's
class (every class with >= 2 clips lands on both sides); "group" = whole groups (``split.group_by``:
"recording" or a metadata field/column) go to one side, stratified by class when every group has a single class.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from deepfeat import config
from deepfeat.data.audio import AudioError
from deepfeat.data.sources import BadItem, IngestError, Item, Problem, probe_items, read_clips, source_items
from deepfeat.data.split import class_counts, split_clips
from deepfeat.formats.clips import KIND, AudioWriter, finish_clips
from deepfeat.formats.cliptable import TRAIN
from deepfeat.formats.files import write_h5

PARTS = ("beginning", "middle", "end")
_BLOCK_BYTES = 64 * 2**20  # audio rows buffered before each write to clips.h5
SPLIT_KEYS = ("method", "test_fraction", "seed", "group_by")  # the order of the ``split`` attribute's JSON
RESERVED = {"clip_id", "recording", "offset", "split", "_group"}  # columns of the clip table: not task names
MAX_LISTED = 200  # bad rows listed per metadata file in the one error of on_error fail


@config.job(
    reads={
        "dataset": ("format", "sample_rate", "nsynth", "recordings", "clip_seconds", "tasks", "main_task", "split"),
        "ingest": ("on_error",),
    }
)
def ingest_dataset(*, clips, settings, root, dataset: str, log: logging.Logger | None = None) -> dict:
    """Read the dataset under ``root`` (the input folder) into ``clips`` (the clips.h5 to write).

    ``dataset`` is the dataset's name; ``settings["dataset"]`` its config entry. Every source is checked first
    (its metadata row, then its file's header: missing, unreadable, truncated, too short). ``ingest.on_error``:
    "fail" raises one IngestError listing every bad row (metadata line, file, reason) before anything is decoded,
    or, for problems only decoding finds, at the end, before the file is renamed into place (nothing is written);
    "skip" leaves each bad source out, logs it and records it in the root attr ``skipped`` (still an error when
    nothing is left). The audio is stored as int16 when every clip is exact 16-bit PCM, else float32
    (:mod:`deepfeat.formats.clips`). Returns a summary dict: dataset, n_clips, n_sources, sample_rate,
    clip_seconds, clip_samples, storage, skipped (list of {file, reason}), and class_counts ({task: {"train":
    {class: n}, "test": {class: n}}} for the classification tasks).
    """
    log = log or logging.getLogger(__name__)
    ds, name = settings["dataset"], dataset
    root, out = Path(root), Path(clips)
    if not root.is_dir():
        raise IngestError(f"datasets.{name}: input folder {root} does not exist")
    fmt, sr, clip_seconds = ds["format"], int(ds["sample_rate"]), float(ds["clip_seconds"])
    tasks = check_tasks(ds, name)
    L = int(round(clip_seconds * sr))
    if L < 1:
        raise IngestError(f"datasets.{name}: clip_seconds={clip_seconds} at {sr} Hz is less than one sample")
    split_cfg = {k: ds["split"][k] for k in SPLIT_KEYS}
    bad = Problems(settings["ingest"]["on_error"], name, fmt, log)
    t0 = time.perf_counter()
    items, storage = _checked_sources(fmt, root, ds, tasks, split_cfg, sr, L, clip_seconds, bad, log)
    derive_part = fmt == "recordings" and bool(ds["recordings"]["part_of_piece"])
    log.info(
        f"ingest {name}: {len(items)} {'notes' if fmt == 'nsynth' else 'recordings'} from {root}, "
        f"{clip_seconds:g} s clips at {sr} Hz ({L} samples), stored as {storage}; sources checked in "
        f"{time.perf_counter() - t0:.1f} s"
    )
    with write_h5(out, KIND) as f:
        writer = AudioWriter(f, L, storage)
        rows = _write_audio(writer, items, fmt, sr, clip_seconds, derive_part, bad, name, t0, log)
        bad.raise_collected()  # on_error fail: problems only decoding found; nothing is written
        if not rows:
            raise IngestError(f"datasets.{name}: no clips left under {root}" + _skip_note(bad.skipped))
        meta = _clip_meta(rows, tasks, ds["main_task"], split_cfg, derive_part, name, log)
        attrs = {"sample_rate": sr, "clip_seconds": clip_seconds, "dataset": name, "source_format": fmt}
        attrs.update(source_root=str(root), skipped=bad.skipped, split=split_cfg)
        finish_clips(f, meta, tasks, ds["main_task"], attrs)
    secs = time.perf_counter() - t0
    counts = class_counts(meta, tasks)
    n_train = int((meta["split"] == TRAIN).sum())
    log.info(
        f"ingest {name}: wrote {out}: {len(meta)} clips ({n_train} train, {len(meta) - n_train} test) from "
        f"{meta['recording'].nunique()} files, {len(bad.skipped)} skipped, {storage} samples, {secs:.1f} s"
    )
    for t, c in counts.items():
        log.info(f"ingest {name}: task {t}: train {c['train']}, test {c['test']}")
    return {
        "dataset": name,
        "n_clips": int(len(meta)),
        "n_sources": int(meta["recording"].nunique()),
        "sample_rate": sr,
        "clip_seconds": clip_seconds,
        "clip_samples": L,
        "storage": storage,
        "skipped": bad.skipped,
        "class_counts": counts,
    }


class Problems:
    """The bad sources of one ingest, called once per :class:`~deepfeat.data.sources.Problem`.

    ``on_error`` "skip": each is logged and recorded in ``skipped`` ({file, reason}); "fail": they are
    collected and :meth:`raise_collected` raises one IngestError listing them all (at most
    :data:`MAX_LISTED` lines) with the way out.
    """

    def __init__(self, on_error: str, name: str, fmt: str, log):
        self.fail, self.name, self.fmt, self.log = on_error == "fail", name, fmt, log
        self.found: list[Problem] = []
        self._skipped: list[Problem] = []

    def __call__(self, problem: Problem) -> None:
        if self.fail:
            self.found.append(problem)
            return
        self._skipped.append(problem)
        self.log.warning(f"skipping {problem.file}: {problem.text()}")

    @property
    def skipped(self) -> list[dict]:
        """The skipped sources ({file, reason}) in the metadata's order."""
        return [{"file": p.file, "reason": p.text()} for p in sorted(self._skipped, key=lambda p: p.index)]

    def raise_collected(self) -> None:
        if not self.found:
            return
        noun = "note" if self.fmt == "nsynth" else "row"
        lines = []
        for source in dict.fromkeys(p.source for p in self.found):
            mine = sorted((p for p in self.found if p.source == source), key=lambda p: p.index)
            lines.append(f"{len(mine)} bad {noun}{'s' * (len(mine) > 1)} in {source}:")
            lines += [f"  {p.line}: {p.reason}" for p in mine[:MAX_LISTED]]
            if len(mine) > MAX_LISTED:
                lines.append(f"  ... and {len(mine) - MAX_LISTED} more")
        raise IngestError(
            f"datasets.{self.name}: nothing was written; " + "\n".join(lines) + "\nFix or remove these "
            f"{noun}s, or set ingest.on_error: skip to leave them out (each skipped {noun} is then listed in the "
            "log and in the 'skipped' attribute of clips.h5)"
        )


def _checked_sources(fmt, root, ds, tasks, split_cfg, sr, L, clip_seconds, bad: Problems, log):
    """The usable sources (every metadata row checked, then every file's header) and the storage of their clips
    ("int16" when every file is mono 16-bit PCM at ``sr``, else "float32"). With on_error fail, every problem
    found so far is raised here, before anything is decoded."""
    items = source_items(fmt, root, ds, tasks, split_cfg["group_by"], bad, log, bad.name)
    infos = probe_items(items, sr, L, clip_seconds, fmt, bad)
    bad.raise_collected()
    kept = [(it, info) for it, info in zip(items, infos) if info is not None]
    if not kept:
        raise IngestError(f"datasets.{bad.name}: no usable source files left under {root}" + _skip_note(bad.skipped))
    storage = "int16" if all(info.exact_pcm16(sr) for _, info in kept) else "float32"
    return [it for it, _ in kept], storage


def _write_audio(
    writer: AudioWriter,
    items: list[Item],
    fmt: str,
    sr: int,
    clip_seconds: float,
    derive_part: bool,
    bad: Problems,
    name: str,
    t0: float,
    log,
) -> list[dict]:
    """Read every source and append its clips to ``writer`` in blocks of about ``_BLOCK_BYTES``; returns the
    clip table's rows (one per clip, in file order). Once a problem is collected (on_error fail) the remaining
    sources are still decoded, to find every problem, but no longer written."""
    L = writer.L
    rows: list[dict] = []
    buf: list[np.ndarray] = []
    block_rows = max(1, _BLOCK_BYTES // (4 * L))
    resampled: dict[int, int] = {}
    n_silent = n_buf = 0
    last = t0
    for k, it in enumerate(items):
        try:
            clips = read_clips(it, fmt, sr, L, clip_seconds, resampled, log)
        except (AudioError, BadItem) as e:
            bad(it.problem(str(e)))
            continue
        n = clips.shape[0]
        n_silent += int((clips == 0).all(axis=1).sum())
        rows += _clip_rows(it, fmt, n, L, sr, derive_part)
        if not bad.found:
            buf.append(clips)
            n_buf += n
        if n_buf >= block_rows:
            writer.append(np.concatenate(buf, axis=0))
            buf, n_buf = [], 0
        now = time.perf_counter()
        if now - last >= 10:
            last = now
            log.info(
                f"ingest {name}: {k + 1}/{len(items)} files, {len(rows)} clips, {(k + 1) / (now - t0):.1f} files/s"
            )
    if buf and not bad.found:
        writer.append(np.concatenate(buf, axis=0))
    for rate, cnt in sorted(resampled.items()):
        msg = f"{cnt} file(s) at {rate} Hz resampled to {sr} Hz (soxr_hq)"
        (log.warning if fmt == "nsynth" else log.info)(f"ingest {name}: {msg}")
    if n_silent:
        log.warning(
            f"ingest {name}: {n_silent} clip(s) are digital silence (all samples 0); their dB "
            "spectrograms are 0 dB everywhere (ref = the clip's own max, as librosa)"
        )
    return rows


def _clip_rows(it: Item, fmt: str, n: int, L: int, sr: int, derive_part: bool) -> list[dict]:
    """The clip-table rows of the ``n`` clips of one source."""
    rows = []
    for i in range(n):
        offset = i * L / sr
        row = {
            "clip_id": it.name if fmt == "nsynth" else f"{it.name}@{_fmt_offset(offset)}",
            "recording": it.name,
            "offset": offset,
            "_group": it.group,
            **it.labels,
        }
        if derive_part:
            row["_part"] = PARTS[3 * i // n]
        rows.append(row)
    return rows


def _clip_meta(
    rows: list[dict], tasks: list[dict], main_task: str, split_cfg: dict, derive_part: bool, name: str, log
) -> pd.DataFrame:
    """The clip table: the rows with the derived part of piece, checked classes and the train/test split."""
    meta = pd.DataFrame(rows)
    for t in tasks:
        if derive_part and t["label"] == "part":
            meta[t["name"]] = meta["_part"]
    _check_classes(meta, tasks, name)
    main_labels = meta[main_task].astype(str).to_numpy()
    groups = None
    if split_cfg["method"] == "group":
        groups = (
            meta["recording"].to_numpy(dtype=str)
            if split_cfg["group_by"] == "recording"
            else meta["_group"].astype(str).to_numpy()
        )
    meta["split"] = split_clips(
        main_labels, split_cfg["test_fraction"], split_cfg["seed"], method=split_cfg["method"], groups=groups, log=log
    )
    return meta


def check_tasks(ds: dict, name: str) -> list[dict]:
    """The dataset's tasks (copies), checked for what the schema cannot express: unique names, non-empty labels,
    a main task that is one of them and a classification, no reserved names. Raises IngestError naming the key."""
    tasks = ds["tasks"]
    names = [t["name"] for t in tasks]
    if len(set(names)) != len(names):
        raise IngestError(f"datasets.{name}.tasks: task names must be unique, got {names}")
    for t in tasks:
        if not t["label"]:
            raise IngestError(f"datasets.{name}.tasks: task {t} needs a label and type classification|regression")
    if ds["main_task"] not in names:
        raise IngestError(f"datasets.{name}.main_task: {ds['main_task']!r} is not one of the tasks {names}")
    if next(t for t in tasks if t["name"] == ds["main_task"])["type"] != "classification":
        raise IngestError(f"datasets.{name}.main_task: the main task must be a classification task")
    if RESERVED & set(names):
        raise IngestError(f"datasets.{name}.tasks: task names {sorted(RESERVED & set(names))} are reserved")
    return [dict(t) for t in tasks]


def _check_classes(meta: pd.DataFrame, tasks: list[dict], name: str) -> None:
    for t in tasks:
        if t["type"] != "classification":
            continue
        vals = meta[t["name"]].astype(str).unique()
        if vals.size < 2:
            raise IngestError(
                f"datasets.{name}.tasks: task {t['name']!r} (label {t['label']!r}) has one class "
                f"only ({vals[0]!r} for all {len(meta)} clips): a classification task needs >= 2"
            )


def _skip_note(skipped: list[dict]) -> str:
    if not skipped:
        return ""
    return f" ({len(skipped)} skipped, e.g. {skipped[0]['reason']})"


def _fmt_offset(seconds: float) -> str:
    """Clip start for clip ids: up to microseconds, no trailing zeros (0, 4, 8, 2.5 ...)."""
    return f"{seconds:.6f}".rstrip("0").rstrip(".")
