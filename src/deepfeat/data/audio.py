"""Reading audio files: mono float32 samples at a requested rate, with one clear error type for bad files.

Files are decoded with libsndfile (``soundfile``: WAV, FLAC, OGG/Vorbis, MP3, AIFF, ...). Multi-channel audio
is down-mixed by averaging the channels (as ``librosa.to_mono``); a rate change uses librosa's default
``soxr_hq`` resampler (as ``librosa.load``). Samples are in full-scale units ([-1, 1] for PCM files).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

RESAMPLE_TYPE = "soxr_hq"


class AudioError(RuntimeError):
    """A file is missing, unreadable, corrupt or empty. The message always names the file."""


@dataclass(frozen=True)
class AudioInfo:
    """What a file's header says: native ``sample_rate`` (Hz), ``channels``, ``frames`` (samples per channel)
    and libsndfile's ``subtype`` (e.g. ``PCM_16``, ``FLOAT``)."""

    sample_rate: int
    channels: int
    frames: int
    subtype: str

    def samples_at(self, sr: int) -> int:
        """Mono samples :func:`load_audio` returns at ``sr`` Hz: the frames, or ceil(frames x sr / native) after
        resampling (librosa.resample's output length)."""
        if int(sr) == self.sample_rate:
            return self.frames
        return int(math.ceil(self.frames * float(sr) / self.sample_rate))

    def exact_pcm16(self, sr: int) -> bool:
        """True when the samples read at ``sr`` are exactly 16-bit PCM values / 32768: a mono 16-bit PCM file at
        ``sr`` (no resampling, no channel mixing)."""
        return self.subtype == "PCM_16" and self.channels == 1 and self.sample_rate == int(sr)


def _check_path(path: Path) -> None:
    if not path.exists():
        raise AudioError(f"{path}: audio file not found")
    if not path.is_file():
        raise AudioError(f"{path}: not a regular file")


def probe_audio(path: str | os.PathLike) -> AudioInfo:
    """The header of an audio file, without decoding it (cheap: one header read).

    Raises :class:`AudioError` naming the file, with the messages of :func:`read_audio`, when the file is missing,
    its header is unreadable, a WAV is truncated (its header declares more data than the file holds) or it has
    no samples. Problems only decoding finds (corrupt data behind a valid header, NaN samples) are left to
    :func:`read_audio`.
    """
    import soundfile as sf

    path = Path(path)
    _check_path(path)
    try:
        info = sf.info(str(path))
    except Exception as e:  # LibsndfileError, RuntimeError, TypeError for garbage headers ...
        raise AudioError(f"{path}: unreadable or corrupt audio ({type(e).__name__}: {e})") from e
    truncated = _truncated_wav(info.extra_info)
    if truncated:
        raise AudioError(
            f"{path}: corrupt audio (truncated: the header declares {truncated[0]} data bytes, "
            f"the file holds {truncated[1]})"
        )
    if info.frames <= 0 or info.channels <= 0:
        raise AudioError(f"{path}: empty audio file (0 samples)")
    return AudioInfo(int(info.samplerate), int(info.channels), int(info.frames), str(info.subtype))


def read_audio(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """(float32 mono samples, native sample rate in Hz) of an audio file.

    Raises :class:`AudioError` naming the file when it is missing, not decodable, has no samples, or
    contains non-finite samples (possible in float WAV files).
    """
    import soundfile as sf

    path = Path(path)
    _check_path(path)
    try:
        with sf.SoundFile(str(path)) as f:
            truncated = _truncated_wav(f.extra_info)
            y = f.read(dtype="float32", always_2d=True)
            sr = f.samplerate
    except Exception as e:  # LibsndfileError, RuntimeError, TypeError for garbage headers ...
        raise AudioError(f"{path}: unreadable or corrupt audio ({type(e).__name__}: {e})") from e
    if truncated:
        raise AudioError(
            f"{path}: corrupt audio (truncated: the header declares {truncated[0]} data bytes, "
            f"the file holds {truncated[1]})"
        )
    if y.shape[0] == 0 or y.shape[1] == 0:
        raise AudioError(f"{path}: empty audio file (0 samples)")
    y = y[:, 0].copy() if y.shape[1] == 1 else y.mean(axis=1, dtype=np.float64).astype(np.float32)
    if not np.isfinite(y).all():
        raise AudioError(f"{path}: corrupt audio (contains NaN or infinite samples)")
    return y, int(sr)


_DATA_RE = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)


def _truncated_wav(info: str) -> tuple[int, int] | None:
    """(declared, present) data bytes when libsndfile's header log shows a WAV cut short, else None.

    libsndfile silently reads what is there; its log line ``data : 20000 (should be 2956)`` reveals the cut.
    Placeholder sizes of streamed WAVs (0, 0xFFFFFFFF, 0x7FFFFFFF...) are not treated as truncation.
    """
    m = _DATA_RE.search(info or "")
    if not m:
        return None
    declared, present = int(m.group(1)), int(m.group(2))
    if present < declared and declared not in (0, 0xFFFFFFFF, 0x7FFFFFFF, 0xFFFFFFFE) and declared < 0x7FFF0000:
        return declared, present
    return None


def resample(y: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Resample mono float32 audio with soxr (librosa.resample, res_type 'soxr_hq'); a no-op for equal rates."""
    if int(orig_sr) == int(target_sr):
        return y
    import librosa

    out = librosa.resample(y, orig_sr=int(orig_sr), target_sr=int(target_sr), res_type=RESAMPLE_TYPE)
    return np.ascontiguousarray(out, dtype=np.float32)


def load_audio(path: str | os.PathLike, sr: int | None) -> np.ndarray:
    """float32 mono samples of ``path`` at ``sr`` Hz (resampled with soxr_hq when the file's rate differs).

    ``sr=None`` keeps the native rate (use :func:`read_audio` to also get it). Raises :class:`AudioError`
    (message names the file) for missing, unreadable, corrupt or empty files.
    """
    y, native = read_audio(path)
    if sr is None:
        return y
    if int(sr) <= 0:
        raise ValueError(f"sample rate must be positive, got {sr}")
    try:
        y = resample(y, native, int(sr))
    except Exception as e:
        raise AudioError(f"{path}: resampling {native} Hz -> {sr} Hz failed ({e})") from e
    if y.size == 0:
        raise AudioError(f"{path}: empty audio after resampling {native} Hz -> {sr} Hz")
    return y
