"""The run-time conventions every job shares: its logger, its device and how it fails.

Logging. Every job entry point takes ``log: logging.Logger | None = None`` and uses ``log or
logging.getLogger(__name__)``; helpers receive the logger from their caller. Rule scripts create the one
logger of a job with :func:`rule_log` (the rule's log file and stderr, one timestamped line per event).

Failures. An *expected* error, one caused by the user's data or configuration and fully explained by its
message, is a :class:`UserError` (``IngestError``, ``RenderError``, ...: each subclasses it). :func:`rule_log`
logs only its message and ends the script with exit status 1 (``SystemExit``), so neither Python nor Snakemake
prints a traceback. Any other exception is a bug or an environment problem: it is logged with its traceback and
re-raised.

Devices. :func:`pick_device` turns a config value (``auto``, ``cpu``, ``cuda``) into a ``torch.device``:
``auto`` takes CUDA when torch sees one, else the CPU; ``cuda`` without a GPU is an error, never a silent
fallback.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path


class UserError(Exception):
    """An expected error: bad input data or configuration, explained by the message (which names the key, the
    file or the row at fault). Rule scripts report it without a traceback (:func:`rule_log`)."""


def pick_device(name: str = "auto"):
    """'auto' -> CUDA when available, else CPU. 'cuda' without a GPU is an error, not a silent fallback."""
    import torch

    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(name).startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but torch sees no CUDA device")
    return torch.device(name)


def get_logger(log_path: str | os.PathLike | None = None, name: str = "deepfeat") -> logging.Logger:
    """The logger ``name`` writing to ``log_path`` (and stderr), one line per event with a timestamp.

    Its handlers are replaced, so call it once per job (:func:`rule_log` does)."""
    logger = logging.getLogger(name)
    logger.setLevel(logging.INFO)
    logger.handlers.clear()
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_path, mode="w"))
    for h in handlers:
        h.setFormatter(fmt)
        logger.addHandler(h)
    logger.propagate = False
    return logger


@contextlib.contextmanager
def rule_log(smk) -> Iterator[logging.Logger]:
    """The logger of a Snakemake script (``smk`` = its ``snakemake`` object): the rule's log file and stderr.

    A :class:`UserError` raised inside the block is logged as its message alone (no traceback) and ends the
    script with ``SystemExit(1)``; any other exception is logged with its traceback, then re-raised. Either way
    the failed job's log says why (Snakemake shows the log path)."""
    log = get_logger(smk.log[0] if len(smk.log) else None)
    rule = getattr(smk, "rule", "?")
    try:
        yield log
    except UserError as e:
        log.error(f"rule {rule} failed: {e}")
        raise SystemExit(1) from None
    except Exception:
        log.exception(f"rule {rule} failed")
        raise
