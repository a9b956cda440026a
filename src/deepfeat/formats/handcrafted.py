"""``handcrafted.h5`` (kind ``handcrafted``): the hand-crafted feature store, one float32 (N x d) dataset per
feature, every clip, in chunks of ~1 MB of whole rows compressed losslessly
(:data:`deepfeat.formats.files.LOSSLESS`: 59 % of the float32 size on 2,000 NSynth-like notes, whose quiet frames
and frame-quantised times repeat bytes).

Layout: ``features/<key>`` (in the order the features were computed; ``features`` attribute ``names``, a JSON
list of display names in that order), each with attributes ``name`` (display name, e.g. ``Mean Wavelet (25)``),
``definition``, ``params`` (JSON), ``dim`` and ``shape`` (JSON per-clip shape before flattening). ``key`` is
:func:`feature_key` of the display name. Root attributes ``n_clips``, ``sample_rate``, ``params`` (JSON of the
settings); plus the clip table of mel.h5.
"""

from __future__ import annotations

import json
import re

import h5py
import numpy as np

from deepfeat.formats.cliptable import copy_clip_table
from deepfeat.formats.files import LOSSLESS, decode, open_h5

KIND = "handcrafted"


def feature_key(name: str) -> str:
    """HDF5 key of a display name: lower case, runs of non-alphanumerics -> '_' ('Mean Wavelet (25)' ->
    'mean_wavelet_25', 'DWT bior1.3 (vertical)' -> 'dwt_bior1_3_vertical')."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def create_store(f: h5py.File, src: h5py.File, n_clips: int, sample_rate: int, params: dict) -> h5py.Group:
    """The root attributes of a new handcrafted.h5, the clip table of ``src`` (the open mel.h5; copied when it has
    one) and the empty ``features`` group (in creation order) that :func:`create_features` fills."""
    f.attrs["n_clips"] = n_clips
    f.attrs["sample_rate"] = sample_rate
    f.attrs["params"] = json.dumps(params)
    if "meta" in src:
        copy_clip_table(src, f)
    return f.create_group("features", track_order=True)


def create_features(g: h5py.Group, feats, n_clips: int, n_chunk: int, where) -> list[tuple[str, str, tuple]]:
    """Pre-sized float32 (N x d) datasets in the group ``features`` for the features of a first chunk of
    ``n_chunk`` clips (objects with ``name``, ``values`` (n_chunk, *shape), ``definition``, ``params``).
    Returns the layout [(display name, key, per-clip shape)] that :func:`write_chunk` checks later chunks against."""
    layout, seen = [], {}
    for ft in feats:
        key = feature_key(ft.name)
        if key in seen:
            raise ValueError(f"{where}: features '{ft.name}' and '{seen[key]}' map to the same key '{key}'")
        seen[key] = ft.name
        v = np.asarray(ft.values)
        if v.ndim < 2 or v.shape[0] != n_chunk:
            raise ValueError(f"feature '{ft.name}': expected values of shape (clips={n_chunk}, ...), got {v.shape}")
        shape = tuple(int(s) for s in v.shape[1:])
        d = int(np.prod(shape))
        rows = int(min(n_clips, max(1, (1 << 20) // (4 * d))))
        ds = g.create_dataset(key, shape=(n_clips, d), dtype=np.float32, chunks=(rows, d), **LOSSLESS)
        ds.attrs["name"] = ft.name
        ds.attrs["definition"] = ft.definition
        ds.attrs["params"] = json.dumps(ft.params, sort_keys=True)
        ds.attrs["dim"] = d
        ds.attrs["shape"] = json.dumps(list(shape))
        layout.append((ft.name, key, shape))
    return layout


def write_chunk(g: h5py.Group, feats, layout, a: int, b: int, where) -> None:
    """Write the features of clips [a, b) (float64 values, stored float32), checked against the layout."""
    names = [ft.name for ft in feats]
    if names != [n for n, _, _ in layout]:
        raise RuntimeError(
            f"{where}: clips {a}-{b - 1} produced features {names}, the first chunk {[n for n, _, _ in layout]}"
        )
    for ft, (name, key, shape) in zip(feats, layout):
        v = np.asarray(ft.values, dtype=np.float64)
        if v.shape != (b - a, *shape):
            raise RuntimeError(f"feature '{name}': clips {a}-{b - 1} have shape {v.shape[1:]}, first chunk {shape}")
        bad = ~np.isfinite(v)
        if bad.any():
            rows = np.unique(np.nonzero(bad.reshape(b - a, -1))[0] + a)[:5]
            raise FloatingPointError(
                f"feature '{name}': non-finite values for clips {rows.tolist()} "
                "(this is a bug: every feature is defined to be finite)"
            )
        g[key][a:b] = v.reshape(b - a, -1).astype(np.float32)


def finish_store(g: h5py.Group, layout) -> None:
    """The ``names`` attribute of the ``features`` group: the display names of ``layout``, in file order."""
    g.attrs["names"] = json.dumps([n for n, _, _ in layout])


def feature_index(f: h5py.File, path, n_clips: int | None = None) -> dict[str, dict]:
    """{display name: {"key", "d"}} of every feature of an open handcrafted.h5, in file order; each dataset must
    be 2-D with ``n_clips`` rows (when given) and display names must be unique."""
    if "features" not in f or not len(f["features"]):
        raise ValueError(f"{path}: no datasets under 'features/'")
    out = {}
    for key, ds in f["features"].items():
        if ds.ndim != 2 or (n_clips is not None and ds.shape[0] != n_clips):
            want = f"({n_clips} clips x d)" if n_clips is not None else "(clips x d)"
            raise ValueError(f"{path}: features/{key} has shape {ds.shape}; expected {want} rows aligned with mel.h5")
        name = decode(ds.attrs.get("name", key))
        if name in out:
            raise ValueError(f"{path}: display name {name!r} used by features/{out[name]['key']} and features/{key}")
        out[name] = {"key": key, "d": int(ds.shape[1])}
    return out


def list_features(path) -> list[str]:
    """Display names of the features in a handcrafted.h5, in file order."""
    with open_h5(path, KIND) as f:
        g = f["features"]
        if "names" in g.attrs:
            return json.loads(g.attrs["names"])
        return [decode(g[k].attrs["name"]) for k in g]


def read_feature(path, name: str) -> np.ndarray:
    """One feature (N x d float32) of a handcrafted.h5 by display name (or its key, e.g. 'mean_wavelet_25')."""
    with open_h5(path, KIND) as f:
        g = f["features"]
        key = feature_key(name)
        if key not in g:
            names = [decode(g[k].attrs["name"]) for k in g]
            raise KeyError(f"{path}: no feature '{name}'; available: {names}")
        return g[key][:]
