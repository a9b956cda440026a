"""One reader and writer per stage file: every file the workflow writes is defined (layout, attributes, kinds)
in exactly one module of this package, and read or written only through it."""

from deepfeat.formats.cliptable import TEST, TRAIN, natural_key, read_clip_table, read_labels, seeded_subset
from deepfeat.formats.files import (
    CorruptOutputError,
    atomic_path,
    open_h5,
    remove_stale_temporaries,
    write_csv,
    write_h5,
    write_json,
    write_text,
)

__all__ = [
    "CorruptOutputError",
    "TEST",
    "TRAIN",
    "atomic_path",
    "natural_key",
    "open_h5",
    "read_clip_table",
    "read_labels",
    "remove_stale_temporaries",
    "seeded_subset",
    "write_csv",
    "write_h5",
    "write_json",
    "write_text",
]
