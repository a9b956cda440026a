"""Shared fixtures: small synthetic stage files built through the package's own writers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from deepfeat.formats.cliptable import write_clip_table
from deepfeat.formats.files import write_h5

TASKS = [
    {"name": "family", "type": "classification", "label": "family"},
    {"name": "pitch", "type": "regression", "label": "pitch"},
]


def make_meta(n: int, n_classes: int = 3, seed: int = 0, test_fraction: float = 0.3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    split = np.zeros(n, dtype=np.uint8)
    split[rng.permutation(n)[: int(round(test_fraction * n))]] = 1
    return pd.DataFrame(
        {
            "clip_id": [f"clip{i:05d}" for i in range(n)],
            "recording": [f"rec{i // 2:05d}" for i in range(n)],
            "offset": (np.arange(n) % 2) * 4.0,
            "split": split,
            "family": [f"class{c}" for c in np.arange(n) % n_classes],
            "pitch": rng.uniform(30, 90, n).round(),
        }
    )


def write_fake_mel(path, n: int = 60, n_mels: int = 128, n_frames: int = 128, n_classes: int = 3, seed: int = 0):
    """A mel.h5 whose spectrograms carry a class-dependent pattern (so probes/nets can learn something)."""
    rng = np.random.default_rng(seed)
    meta = make_meta(n, n_classes, seed)
    codes = np.arange(n) % n_classes
    mel = rng.normal(-40, 8, (n, n_mels, n_frames))
    for c in range(n_classes):
        mel[codes == c, 10 + 30 * c : 20 + 30 * c, :] += 25
    mel = np.clip(mel, -80, 0).astype(np.float32)
    train = meta["split"].to_numpy() == 0
    with write_h5(path, "mel") as f:
        f.create_dataset("mel", data=mel, chunks=(1, n_mels, n_frames))
        f.attrs["sample_rate"] = 16000 if n_frames == 128 else 22050
        f.attrs["train_mean"] = float(mel[train].mean(dtype=np.float64))
        f.attrs["train_std"] = float(mel[train].std(dtype=np.float64))
        write_clip_table(f, meta, TASKS, "family")
    return mel, meta


@pytest.fixture
def fake_mel(tmp_path):
    path = tmp_path / "mel.h5"
    mel, meta = write_fake_mel(path)
    return path, mel, meta
