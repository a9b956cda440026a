"""The render job: check a dataset's ``render`` section, render its kind into the manifest's folder, write the
manifest last.

The section is validated against the schema (``$defs.dataset.properties.render``), which also fills in every
default, including those that depend on the kind (``normalize``, ``release_seconds``, ``families``,
``ensembles``). :func:`check_render_config` adds what the schema cannot express: keys a kind does not use are
errors (so a typo or a key of another kind never passes silently), each kind's required keys, and the
cross-key rules (``normalize: instrument`` only for notes, ``programs_per_family`` at most the family's GM
programs, one ensemble for ``scores``, at least two for ``ensembles``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from pathlib import Path

from deepfeat import config
from deepfeat.data.render.notes import FAMILY_PROGRAMS, render_notes
from deepfeat.data.render.recordings import render_ensembles, render_scores
from deepfeat.data.render.synth import RenderError, check_loadable, resolve_soundfont
from deepfeat.formats.files import write_json

MANIFEST_FORMAT = "deepfeat-render-1"
MANIFEST = "manifest.json"  # its name inside the rendered folder (read_manifest)
_KIND_KEYS = {
    "notes": {
        "required": {"programs_per_family", "notes_per_program", "velocities", "hold_seconds"},
        "optional": {"release_seconds", "families"},
    },
    "scores": {"required": {"composers", "works_per_composer", "max_seconds_per_work"}, "optional": {"ensembles"}},
    "ensembles": {"required": {"composer", "works", "max_seconds_per_work", "ensembles"}, "optional": set()},
}
_COMMON_KEYS = {"kind", "seed", "soundfont", "normalize", "peak_dbfs"}


@config.job(reads={"dataset": ("render", "sample_rate")})
def render_dataset(*, manifest, settings, log: logging.Logger | None = None) -> dict:
    """Render one built-in demo dataset into the folder of ``manifest`` (the manifest.json to write) and return
    the manifest.

    ``settings["dataset"]`` holds the dataset's ``render`` section (see :mod:`deepfeat.data.render` and the
    schema) and its ``sample_rate`` (Hz). Files rendered by an earlier run (``audio/``, ``examples.json``,
    ``metadata.csv``, the manifest) are removed first. Every file is written atomically; the manifest is written
    last. Raises :class:`RenderError` for a bad config, a missing or unreadable SoundFont, or when nothing could
    be rendered.
    """
    log = log or logging.getLogger(__name__)
    manifest = Path(manifest)
    out_dir = manifest.parent
    cfg = check_render_config(settings["dataset"]["render"])
    sr = int(settings["dataset"]["sample_rate"])
    sf_path = resolve_soundfont(cfg["soundfont"])
    sf_bytes = sf_path.read_bytes()
    check_loadable(sf_bytes, sf_path)
    _clean(out_dir, manifest, log)
    t0 = time.perf_counter()
    log.info(f"render {cfg['kind']} into {out_dir} at {sr} Hz, seed {cfg['seed']}, SoundFont {sf_path}")
    render_kind = {"notes": render_notes, "scores": render_scores, "ensembles": render_ensembles}[cfg["kind"]]
    body = render_kind(out_dir, cfg, sr, sf_bytes, log)
    doc = {
        "format": MANIFEST_FORMAT,
        "kind": cfg["kind"],
        "layout": "nsynth" if cfg["kind"] == "notes" else "recordings",
        "sample_rate": sr,
        "render": cfg,
        "soundfont": {"path": str(sf_path), "sha256": hashlib.sha256(sf_bytes).hexdigest()},
        "versions": _versions(),
        **body,
    }
    write_json(doc, manifest)
    secs = time.perf_counter() - t0
    log.info(
        f"render {cfg['kind']}: {doc['n_files']} files, {doc['audio_seconds']:.0f} s of audio "
        f"in {secs:.1f} s ({doc['audio_seconds'] / 4.0 / max(secs, 1e-9):.1f} four-second clips/s)"
    )
    return doc


def check_render_config(render: dict) -> dict:
    """A ``render`` section checked for its kind and validated against the schema, returned with every default
    filled in (a new dict). Raises RenderError (or ConfigError for a schema violation) naming the key.

    Keys that the kind does not use are errors (so a typo or a key of another kind never passes silently).
    """
    if not isinstance(render, dict):
        raise RenderError(f"render: expected a mapping, got {type(render).__name__}")
    kind = render.get("kind")
    if kind not in _KIND_KEYS:
        raise RenderError(f"render.kind: expected one of {sorted(_KIND_KEYS)}, got {kind!r}")
    spec = _KIND_KEYS[kind]
    allowed = _COMMON_KEYS | spec["required"] | spec["optional"]
    extra = sorted(set(render) - allowed)
    if extra:
        raise RenderError(f"render: key(s) {extra} are not used by kind '{kind}' (allowed: {sorted(allowed)})")
    missing = sorted(spec["required"] - set(render))
    if missing:
        raise RenderError(f"render: kind '{kind}' needs the key(s) {missing}")
    cfg = config.settings(config.DATASET, {"render": render}, ["render"])["render"]
    if cfg["normalize"] == "instrument" and kind != "notes":
        raise RenderError(f"render.normalize: expected 'file' for kind '{kind}', got {cfg['normalize']!r}")
    if kind == "notes":
        for fam in cfg["families"]:
            n = len(FAMILY_PROGRAMS[fam])
            if cfg["programs_per_family"] > n:
                raise RenderError(
                    f"render.programs_per_family: {cfg['programs_per_family']} > the {n} GM programs "
                    f"of family '{fam}' {list(FAMILY_PROGRAMS[fam])}"
                )
    if kind == "scores" and cfg["ensembles"] != 1:
        raise RenderError(
            f"render.ensembles: kind 'scores' plays every work with one ensemble (1), "
            f"got {cfg['ensembles']!r}; use kind 'ensembles' for several"
        )
    if kind == "ensembles":
        if cfg["ensembles"] < 2:
            raise RenderError(f"render.ensembles: need >= 2 ensembles (two regions), got {cfg['ensembles']}")
        if not cfg["composer"]:
            raise RenderError(f"render.composer: expected a composer name, got {cfg['composer']!r}")
    return cfg


def _clean(out_dir: Path, manifest: Path, log) -> None:
    """Remove what an earlier render left in ``out_dir`` (only the files and folder this module writes)."""
    removed = []
    for p in (manifest, out_dir / "examples.json", out_dir / "metadata.csv"):
        if p.exists():
            p.unlink()
            removed.append(p.name)
    if (out_dir / "audio").is_dir():
        shutil.rmtree(out_dir / "audio")
        removed.append("audio/")
    if removed:
        log.info(f"removed the earlier render's {', '.join(removed)} from {out_dir}")


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("deepfeat", "tinysoundfont", "music21", "pretty_midi"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def read_manifest(out_dir: Path) -> dict:
    """The manifest of a rendered folder (raises FileNotFoundError / ValueError for a missing or foreign one)."""
    p = Path(out_dir) / MANIFEST
    m = json.loads(p.read_text())
    if m.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"{p}: not a deepfeat render manifest (format {m.get('format')!r})")
    return m
