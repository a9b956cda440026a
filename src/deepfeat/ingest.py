"""Ingest an audio dataset (NSynth layout or recordings + metadata CSV) into ``clips.h5``.

Output (kind "clips", see docs/formats.md): ``audio`` float32 (N x L), L = round(clip_seconds x sample_rate)
mono samples at the dataset's rate, written block by block as files are read (bounded memory); root attrs
``sample_rate``, ``clip_seconds``, ``dataset``, ``source_format``, ``skipped`` (JSON list of {file, reason});
and the clip table (``deepfeat.io.write_clip_table``) with labels and the train/test split.

Layouts
- ``nsynth``: ``root/examples.json`` (note id -> fields) and ``root/audio/<note id>.wav``. Notes are filtered
  by ``nsynth.instrument_sources`` (field ``instrument_source``), notes whose ``instrument_family_str`` is in
  ``nsynth.drop_families`` are dropped, then ``nsynth.max_clips`` notes are sampled without replacement with
  ``numpy.random.default_rng(nsynth.sample_seed)`` from the sorted ids. One clip per note: its first
  clip_seconds (a shorter note is a bad file). A task's ``label`` names an examples.json field.
- ``recordings``: ``root/<recordings.metadata>`` CSV with a ``recordings.path_column`` (relative to root) and
  label columns. Each recording is cut into non-overlapping clips from its start, the short tail dropped;
  ``meta/recording`` is the path as written in the CSV, ``meta/offset`` the clip start in seconds. With
  ``recordings.part_of_piece`` the column ``part`` is derived: clip i of n -> beginning/middle/end by 3i//n.

Split (``split``): "random" = seeded random split stratified by the main task's class (every class with >= 2
clips lands on both sides); "group" = whole groups (``split.group_by``: "recording" or a metadata field/column)
go to one side, stratified by class when every group has a single class.
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from deepfeat.audio import AudioError, read_audio, resample
from deepfeat.io import TEST, TRAIN, write_clip_table, write_h5

PARTS = ("beginning", "middle", "end")
DEFAULT_CLIP_SECONDS = 4.0
_BLOCK_BYTES = 64 * 2**20  # audio rows buffered before each write to clips.h5


class IngestError(ValueError):
    """Bad input data or metadata; the message names the file, row, field or column at fault."""


class _BadItem(Exception):
    """One source file/row cannot be used (skippable with on_error='skip')."""


@dataclass
class _Item:
    """One source: an NSynth note or a recording, with its raw label values."""

    name: str  # note id or the CSV path: meta/recording
    path: Path
    labels: dict = field(default_factory=dict)  # task name -> value
    group: str | None = None
    where: str = ""  # "examples.json note 'x'" or "metadata.csv line 7": for messages


# ----------------------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------------------
def ingest_dataset(
    root: Path, ds: dict, name: str, out: Path, on_error: str = "fail", log: logging.Logger | None = None
) -> dict:
    """Read the dataset under ``root`` described by ``ds`` (one ``config["datasets"][name]`` entry) into ``out``.

    ``on_error``: "fail" raises on the first bad file/row; "skip" leaves it out, logs it and records it in the
    root attr ``skipped`` (still an error when nothing is left). Returns a summary dict: dataset, n_clips,
    n_sources, sample_rate, clip_seconds, clip_samples, skipped (list of {file, reason}), and class_counts
    ({task: {"train": {class: n}, "test": {class: n}}} for the classification tasks).
    """
    log = log or logging.getLogger("deepfeat.ingest")
    root, out = Path(root), Path(out)
    if on_error not in ("fail", "skip"):
        raise ValueError(f"ingest.on_error must be 'fail' or 'skip', got {on_error!r}")
    if not root.is_dir():
        raise IngestError(f"datasets.{name}: input folder {root} does not exist")
    fmt = ds.get("format")
    if fmt not in ("nsynth", "recordings"):
        raise IngestError(f"datasets.{name}.format: expected 'nsynth' or 'recordings', got {fmt!r}")
    tasks = _check_tasks(ds, name)
    main_task = ds["main_task"]
    sr = int(ds["sample_rate"])
    clip_seconds = _clip_seconds(ds, name)
    L = int(round(clip_seconds * sr))
    if L < 1:
        raise IngestError(f"datasets.{name}: clip_seconds={clip_seconds} at {sr} Hz is less than one sample")
    split_cfg = {"method": "random", "test_fraction": 0.3, "seed": 0, "group_by": "recording", **ds.get("split", {})}

    skipped: list[dict] = []

    def bad(item_name: str, reason: str) -> None:
        if on_error == "fail":
            raise IngestError(reason)
        skipped.append({"file": item_name, "reason": reason})
        log.warning(f"skipping {item_name}: {reason}")

    if fmt == "nsynth":
        items = _nsynth_items(root, ds, tasks, split_cfg["group_by"], bad, log)
    else:
        items = _recording_items(root, ds, tasks, split_cfg["group_by"], bad, log)
    if not items:
        raise IngestError(f"datasets.{name}: no usable source files under {root}" + _skip_note(skipped))
    derive_part = fmt == "recordings" and bool(ds.get("recordings", {}).get("part_of_piece", True))
    log.info(f"ingest {name}: {len(items)} {'notes' if fmt == 'nsynth' else 'recordings'} from {root}, "
             f"{clip_seconds:g} s clips at {sr} Hz ({L} samples)")

    rows: list[dict] = []
    buf: list[np.ndarray] = []
    block_rows = max(1, _BLOCK_BYTES // (4 * L))
    n_written = 0
    resampled: dict[int, int] = {}
    n_silent = 0
    t0 = last = time.perf_counter()
    with write_h5(out, "clips") as f:
        audio = f.create_dataset("audio", shape=(0, L), maxshape=(None, L), dtype=np.float32, chunks=(1, L))

        def flush() -> None:
            nonlocal n_written, buf
            if not buf:
                return
            block = np.concatenate(buf, axis=0)
            audio.resize((n_written + block.shape[0], L))
            audio[n_written:] = block
            n_written += block.shape[0]
            buf = []

        n_buf = 0
        for k, it in enumerate(items):
            try:
                clips = _read_clips(it, fmt, sr, L, clip_seconds, resampled, log)
            except (AudioError, _BadItem) as e:
                bad(it.name, str(e))
                continue
            n = clips.shape[0]
            n_silent += int((clips == 0).all(axis=1).sum())
            for i in range(n):
                offset = i * L / sr
                row = {"clip_id": it.name if fmt == "nsynth" else f"{it.name}@{_fmt_offset(offset)}",
                       "recording": it.name, "offset": offset, "_group": it.group, **it.labels}
                if derive_part:
                    row["_part"] = PARTS[3 * i // n]
                rows.append(row)
            buf.append(clips)
            n_buf += n
            if n_buf >= block_rows:
                flush()
                n_buf = 0
            now = time.perf_counter()
            if now - last >= 10:
                last = now
                log.info(f"ingest {name}: {k + 1}/{len(items)} files, {len(rows)} clips, "
                         f"{(k + 1) / (now - t0):.1f} files/s")
        flush()
        for rate, cnt in sorted(resampled.items()):
            msg = f"{cnt} file(s) at {rate} Hz resampled to {sr} Hz (soxr_hq)"
            (log.warning if fmt == "nsynth" else log.info)(f"ingest {name}: {msg}")
        if n_silent:
            log.warning(f"ingest {name}: {n_silent} clip(s) are digital silence (all samples 0); their dB "
                        "spectrograms are 0 dB everywhere (ref = the clip's own max, as librosa)")
        if not rows:
            raise IngestError(f"datasets.{name}: no clips left under {root}" + _skip_note(skipped))
        meta = pd.DataFrame(rows)
        for t in tasks:
            if derive_part and t["label"] == "part":
                meta[t["name"]] = meta["_part"]
        _check_classes(meta, tasks, name)
        main_labels = meta[main_task].astype(str).to_numpy()
        groups = None
        if split_cfg["method"] == "group":
            groups = meta["recording"].to_numpy(dtype=str) if split_cfg["group_by"] == "recording" \
                else meta["_group"].astype(str).to_numpy()
        meta["split"] = split_clips(main_labels, split_cfg["test_fraction"], split_cfg["seed"],
                                    method=split_cfg["method"], groups=groups, log=log)
        write_clip_table(f, meta, tasks, main_task)
        f.attrs["sample_rate"] = sr
        f.attrs["clip_seconds"] = float(clip_seconds)
        f.attrs["dataset"] = name
        f.attrs["source_format"] = fmt
        f.attrs["source_root"] = str(root)
        f.attrs["skipped"] = json.dumps(skipped)
        f.attrs["split"] = json.dumps(split_cfg)
    secs = time.perf_counter() - t0
    counts = class_counts(meta, tasks)
    n_train = int((meta["split"] == TRAIN).sum())
    log.info(f"ingest {name}: wrote {out}: {len(meta)} clips ({n_train} train, {len(meta) - n_train} test) from "
             f"{meta['recording'].nunique()} files, {len(skipped)} skipped, {secs:.1f} s")
    for t, c in counts.items():
        log.info(f"ingest {name}: task {t}: train {c['train']}, test {c['test']}")
    return {
        "dataset": name,
        "n_clips": int(len(meta)),
        "n_sources": int(meta["recording"].nunique()),
        "sample_rate": sr,
        "clip_seconds": float(clip_seconds),
        "clip_samples": L,
        "skipped": skipped,
        "class_counts": counts,
    }


def split_clips(
    labels: np.ndarray,
    test_fraction: float,
    seed: int,
    method: str = "random",
    groups: np.ndarray | None = None,
    log: logging.Logger | None = None,
) -> np.ndarray:
    """Train/test assignment (uint8: 0 train, 1 test) of clips with main-task class ``labels``.

    "random": per class (sorted), a seeded permutation puts k_c of its n_c clips in the test set, where the
    k_c are the largest-remainder apportionment of round(test_fraction * N) to test_fraction * n_c, clamped
    to [1, n_c - 1] so every class with >= 2 clips appears on both sides (a single clip goes to train).
    "group": whole groups go to one side. When every group holds one class, per class a seeded permutation of
    its groups is cut where the test share is closest to test_fraction (at least one group per side when the
    class has >= 2 groups); otherwise the same is done over all groups at once. Deterministic for a seed.
    """
    log = log or logging.getLogger("deepfeat.ingest")
    labels = np.asarray(labels).astype(str)
    N = labels.size
    if not 0 < test_fraction < 1:
        raise ValueError(f"split.test_fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    split = np.full(N, TRAIN, dtype=np.uint8)
    classes, inv, n_c = np.unique(labels, return_inverse=True, return_counts=True)
    if method == "random":
        k = _apportion(n_c, test_fraction)
        for c in range(classes.size):
            idx = np.flatnonzero(inv == c)
            split[idx[rng.permutation(idx.size)[: k[c]]]] = TEST
    elif method == "group":
        if groups is None:
            raise ValueError("split.method 'group' needs group values")
        groups = np.asarray(groups).astype(str)
        if groups.shape != labels.shape:
            raise ValueError(f"groups ({groups.shape}) and labels ({labels.shape}) differ in length")
        g_names, g_inv, g_size = np.unique(groups, return_inverse=True, return_counts=True)
        if g_names.size < 2:
            raise IngestError(f"split.group_by: only one group ({g_names[0]!r}): cannot split whole groups")
        # class of each group, if unique
        pairs = np.unique(np.stack([g_inv, inv]), axis=1)
        single = pairs.shape[1] == g_names.size
        if single:
            g_class = np.empty(g_names.size, dtype=np.int64)
            g_class[pairs[0]] = pairs[1]
            units = [np.flatnonzero(g_class == c) for c in range(classes.size)]
        else:
            log.warning("split: groups span several classes; assigning groups without class stratification")
            units = [np.arange(g_names.size)]
        g_test = np.zeros(g_names.size, dtype=bool)
        for gs in units:
            perm = gs[rng.permutation(gs.size)]
            if perm.size < 2:
                continue
            cum = np.cumsum(g_size[perm])[:-1]  # test clips after taking the first 1 .. size-1 groups
            m = int(np.argmin(np.abs(cum - test_fraction * g_size[perm].sum()))) + 1
            g_test[perm[:m]] = True
        split[g_test[g_inv]] = TEST
    else:
        raise ValueError(f"split.method must be 'random' or 'group', got {method!r}")
    n_test = int(split.sum())
    if n_test == 0 or n_test == N:
        side = "test" if n_test == 0 else "training"
        raise IngestError(f"split: the {side} set is empty ({N} clips, {classes.size} classes, method {method}); "
                          "more clips or recordings are needed")
    in_test = np.zeros(classes.size, dtype=bool)
    in_test[inv[split == TEST]] = True
    in_train = np.zeros(classes.size, dtype=bool)
    in_train[inv[split == TRAIN]] = True
    for c in np.flatnonzero(~in_test | ~in_train):
        log.warning(f"split: class '{classes[c]}' ({n_c[c]} clips) appears only in the "
                    f"{'training' if in_train[c] else 'test'} set")
    return split


def _apportion(n_c: np.ndarray, test_fraction: float) -> np.ndarray:
    """Test clips per class: largest-remainder apportionment of round(f N) to f n_c, clamped to [1, n_c - 1].

    Classes with one clip get 0 (they stay in training). Ties in the remainders go to the earlier class.
    """
    n_c = np.asarray(n_c, dtype=np.int64)
    ideal = test_fraction * n_c
    k = np.floor(ideal).astype(np.int64)
    extra = int(round(test_fraction * n_c.sum())) - int(k.sum())
    if extra > 0:
        order = np.argsort(-(ideal - k), kind="stable")
        k[order[:extra]] += 1
    k = np.where(n_c >= 2, np.clip(k, 1, n_c - 1), 0)
    return k


def class_counts(meta: pd.DataFrame, tasks: list[dict]) -> dict:
    """{task: {"train": {class: n}, "test": {class: n}}} for the classification tasks of a clip table."""
    out = {}
    for t in tasks:
        if t["type"] != "classification":
            continue
        col = meta[t["name"]].astype(str)
        out[t["name"]] = {
            side: {str(k): int(v) for k, v in col[meta["split"] == code].value_counts().sort_index().items()}
            for side, code in (("train", TRAIN), ("test", TEST))
        }
    return out


# ----------------------------------------------------------------------------------------------------------
# Configuration checks
# ----------------------------------------------------------------------------------------------------------
def _check_tasks(ds: dict, name: str) -> list[dict]:
    tasks = ds.get("tasks") or []
    if not tasks:
        raise IngestError(f"datasets.{name}.tasks: at least one task is needed")
    names = [t.get("name") for t in tasks]
    if len(set(names)) != len(names):
        raise IngestError(f"datasets.{name}.tasks: task names must be unique, got {names}")
    for t in tasks:
        if t.get("type") not in ("classification", "regression") or not t.get("label"):
            raise IngestError(f"datasets.{name}.tasks: task {t} needs a label and type classification|regression")
    if ds.get("main_task") not in names:
        raise IngestError(f"datasets.{name}.main_task: {ds.get('main_task')!r} is not one of the tasks {names}")
    if next(t for t in tasks if t["name"] == ds["main_task"])["type"] != "classification":
        raise IngestError(f"datasets.{name}.main_task: the main task must be a classification task")
    reserved = {"clip_id", "recording", "offset", "split", "_group"}
    if reserved & set(names):
        raise IngestError(f"datasets.{name}.tasks: task names {sorted(reserved & set(names))} are reserved")
    return [dict(t) for t in tasks]


def _clip_seconds(ds: dict, name: str) -> float:
    """Clip length in seconds: the dataset's ``clip_seconds`` (default 4.0)."""
    value = float(ds.get("clip_seconds", DEFAULT_CLIP_SECONDS))
    if not value > 0:
        raise IngestError(f"datasets.{name}.clip_seconds must be > 0, got {value}")
    return value


def _check_classes(meta: pd.DataFrame, tasks: list[dict], name: str) -> None:
    for t in tasks:
        if t["type"] != "classification":
            continue
        vals = meta[t["name"]].astype(str).unique()
        if vals.size < 2:
            raise IngestError(f"datasets.{name}.tasks: task {t['name']!r} (label {t['label']!r}) has one class "
                              f"only ({vals[0]!r} for all {len(meta)} clips): a classification task needs >= 2")


def _skip_note(skipped: list[dict]) -> str:
    if not skipped:
        return ""
    return f" ({len(skipped)} skipped, e.g. {skipped[0]['reason']})"


def _fmt_offset(seconds: float) -> str:
    """Clip start for clip ids: up to microseconds, no trailing zeros (0, 4, 8, 2.5 ...)."""
    return f"{seconds:.6f}".rstrip("0").rstrip(".")


def _label_value(value, task: dict, where: str):
    """Validate one raw label value (classification -> str, regression -> float); raise _BadItem if unusable."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or str(value).strip() == "":
        raise _BadItem(f"{where}: empty label in {task['label']!r} (task {task['name']!r})")
    if isinstance(value, (list, dict)):
        raise _BadItem(f"{where}: label {task['label']!r} is a {type(value).__name__}, expected a single value")
    if task["type"] == "regression":
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise _BadItem(f"{where}: label {task['label']!r} = {value!r} is not a number "
                           f"(task {task['name']!r} is a regression)") from None
        if not math.isfinite(v):
            raise _BadItem(f"{where}: label {task['label']!r} = {value!r} is not finite")
        return v
    return str(value).strip()


# ----------------------------------------------------------------------------------------------------------
# Sources
# ----------------------------------------------------------------------------------------------------------
def _nsynth_items(root: Path, ds: dict, tasks: list[dict], group_by: str, bad, log) -> list[_Item]:
    ex_path = root / "examples.json"
    if not ex_path.is_file():
        raise IngestError(f"{ex_path}: not found (the NSynth layout needs examples.json and audio/)")
    try:
        examples = json.loads(ex_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise IngestError(f"{ex_path}: not valid JSON ({e})") from e
    if not isinstance(examples, dict) or not examples:
        raise IngestError(f"{ex_path}: expected a non-empty object mapping note ids to fields")
    ns = {"instrument_sources": [0], "drop_families": ["bass", "organ"], "max_clips": None, "sample_seed": 0,
          **ds.get("nsynth", {})}
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
        raise IngestError(f"{ex_path}: no notes left after filtering instrument_source in {sorted(sources)} "
                          f"and dropping families {sorted(drop)} ({len(examples)} notes in the file)")
    if ns["max_clips"] is not None and int(ns["max_clips"]) < len(keep):
        rng = np.random.default_rng(int(ns["sample_seed"]))
        pick = np.sort(rng.choice(len(keep), size=int(ns["max_clips"]), replace=False))
        keep = [keep[i] for i in pick]
    log.info(f"nsynth: {len(examples)} notes, {n_all} after filters, {len(keep)} used")
    fields = {t["label"] for t in tasks} | ({group_by} if group_by != "recording" else set())
    for fld in sorted(fields):
        if not any(fld in examples[n] for n in keep):
            avail = sorted(set().union(*(examples[n].keys() for n in keep[:100])))
            raise IngestError(f"{ex_path}: field {fld!r} (a task label or split.group_by) does not exist; "
                              f"fields: {avail}")
    items = []
    for nid in keep:
        e = examples[nid]
        where = f"{ex_path} note {nid!r}"
        try:
            labels = {}
            for t in tasks:
                if t["label"] not in e:
                    raise _BadItem(f"{where}: no field {t['label']!r} (label of task {t['name']!r})")
                labels[t["name"]] = _label_value(e[t["label"]], t, where)
            group = None
            if group_by != "recording":
                if group_by not in e or str(e[group_by]).strip() == "":
                    raise _BadItem(f"{where}: empty or missing split.group_by field {group_by!r}")
                group = str(e[group_by])
        except _BadItem as err:
            bad(nid, str(err))
            continue
        items.append(_Item(nid, root / "audio" / f"{nid}.wav", labels, group, where))
    return items


def _recording_items(root: Path, ds: dict, tasks: list[dict], group_by: str, bad, log) -> list[_Item]:
    rc = {"metadata": "metadata.csv", "path_column": "path", "part_of_piece": True, **ds.get("recordings", {})}
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
        raise IngestError(f"{csv}: path column {pcol!r} (recordings.path_column) does not exist; "
                          f"columns: {list(df.columns)}")
    for t in tasks:
        if t["label"] == "part" and part:
            continue
        if t["label"] not in df.columns:
            hint = " (set recordings.part_of_piece: true to derive 'part')" if t["label"] == "part" else ""
            raise IngestError(f"{csv}: label column {t['label']!r} of task {t['name']!r} does not exist; "
                              f"columns: {list(df.columns)}{hint}")
    if part and "part" in df.columns:
        log.warning(f"{csv}: column 'part' is replaced by the derived part of piece (recordings.part_of_piece)")
    if group_by != "recording" and group_by not in df.columns:
        raise IngestError(f"{csv}: split.group_by column {group_by!r} does not exist; columns: {list(df.columns)}")
    items, seen = [], {}
    for i, row in enumerate(df.itertuples(index=False)):
        r = dict(zip(df.columns, row))
        where = f"{csv} line {i + 2}"
        rel = str(r[pcol]).strip()
        try:
            if not rel:
                raise _BadItem(f"{where}: empty path in column {pcol!r}")
            if rel in seen:
                raise _BadItem(f"{where}: recording {rel!r} already listed on line {seen[rel]}")
            labels = {t["name"]: _label_value(r[t["label"]], t, f"{where} ({rel})")
                      for t in tasks if not (t["label"] == "part" and part)}
            group = None
            if group_by != "recording":
                group = str(r[group_by]).strip()
                if not group:
                    raise _BadItem(f"{where} ({rel}): empty split.group_by column {group_by!r}")
        except _BadItem as err:
            bad(rel or where, str(err))
            continue
        seen[rel] = i + 2
        items.append(_Item(rel, root / rel, labels, group, where))
    return items


def _read_clips(it: _Item, fmt: str, sr: int, L: int, clip_seconds: float, resampled: dict, log) -> np.ndarray:
    """(n, L) float32 clips of one source; raises AudioError / _BadItem naming the file."""
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
        raise _BadItem(f"{it.path}: {kind} is shorter than one clip ({y.size / sr:.3f} s < {clip_seconds:g} s)")
    if fmt == "nsynth":
        n = 1
    return y[: n * L].reshape(n, L)
