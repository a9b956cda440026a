"""``models/{task}/{arch}/seed{seed}.pt`` (the model file) and ``seed{seed}.ckpt`` (the resumable training
checkpoint): torch dictionaries written atomically and read back with ``weights_only=True``.

Model file: ``{"format": "deepfeat-model-1", "meta", "init_state", "final_state"}``. ``meta`` holds at least
``arch``, ``input_shape`` ([1, n_mels, T]) and ``n_outputs`` (what rebuilding the network needs), plus the
training description (seed, task, task_type, classes, target_mean/target_std, train_mean/train_std, epochs, lr,
momentum, batch_size, n_params, n_train, n_test, device, seconds, mel_h5) and ``deformable`` (the semantics of
the Deformable network's conv3: ``torchvision`` or ``reference``; a file without it means ``torchvision``);
``init_state`` and ``final_state`` are
CPU state dicts of the initial (untrained) and the final (trained) weights.

Checkpoint: ``{"format": "deepfeat-checkpoint-1", "fingerprint", "epoch", "model", "optimizer", "generator",
"init_state", "history", "seconds"}``: the state after ``epoch`` epochs and the configuration it belongs to
(``fingerprint``); it exists only while its model is being trained.
"""

from __future__ import annotations

import os

import torch

from deepfeat.formats.files import CorruptOutputError, atomic_path

MODEL_FORMAT = "deepfeat-model-1"
CHECKPOINT_FORMAT = "deepfeat-checkpoint-1"
WEIGHTS = ("trained", "untrained")
REQUIRED_META = ("arch", "input_shape", "n_outputs")


def save_model(path: str | os.PathLike, meta: dict, init_state: dict, final_state: dict) -> None:
    """Write the model file atomically: {"format", "meta", "init_state", "final_state"}."""
    for key in REQUIRED_META:
        if key not in meta:
            raise ValueError(f"save_model: meta lacks '{key}' (needed to rebuild the model)")
    obj = {"format": MODEL_FORMAT, "meta": dict(meta), "init_state": init_state, "final_state": final_state}
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save(obj, tmp)


def read_model(path: str | os.PathLike, which: str = "trained") -> tuple[dict, dict]:
    """(state dict of the ``which`` = trained|untrained weights, meta) of a model file, checked."""
    if which not in WEIGHTS:
        raise ValueError(f"load_model: which must be 'trained' or 'untrained', got '{which}'")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # truncated / not a torch file
        raise CorruptOutputError(f"{path}: not a readable model file ({e}); delete it and rerun") from e
    if not isinstance(obj, dict) or obj.get("format") != MODEL_FORMAT:
        got = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
        raise ValueError(f"{path}: not a deepfeat model file (format '{got}', expected '{MODEL_FORMAT}')")
    return obj["final_state" if which == "trained" else "init_state"], obj["meta"]


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """Write a training checkpoint atomically (``state`` without ``format``: it is added here)."""
    with atomic_path(path, suffix=".ckpt") as tmp:
        torch.save({"format": CHECKPOINT_FORMAT, **state}, tmp)


def read_checkpoint(path: str | os.PathLike) -> dict:
    """The checkpoint dictionary of ``path``; :class:`CorruptOutputError` when it is unreadable or not a deepfeat
    checkpoint (its message says which)."""
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # written atomically, so this means a foreign or damaged file
        raise CorruptOutputError(f"checkpoint {path} unreadable ({e})") from e
    if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
        raise CorruptOutputError(f"checkpoint {path} is not a deepfeat checkpoint")
    return ck


__all__ = ["CHECKPOINT_FORMAT", "MODEL_FORMAT", "read_checkpoint", "read_model", "save_checkpoint", "save_model"]
