"""Log-power mel-spectrograms, batched in torch float64 and exact to librosa per clip.

Definition (the reference is librosa 0.11 applied to one clip at a time)::

    S      = |STFT(y)|^2            periodic Hann window of n_fft samples, hop hop_length, center=True: the
                                    clip padded by n_fft//2 on both sides with ``pad_mode`` ("constant":
                                    zeros; "reflect": mirrored samples, librosa 0.8's default) -> T = 1 + L // hop
    M      = W @ S                  W = librosa.filters.mel(sr, n_fft, n_mels, fmin=0, fmax, htk=False,
                                    norm="slaney"): slaney mel scale, area-normalised triangles
    D      = 10 log10(max(amin, M)) - 10 log10(max(amin, max(M)))        ref = max *of this clip*
    mel_db = max(D, max(D) - top_db)                                     floor top_db below this clip's peak

so every clip lies in [-top_db, 0] dB, and a silent clip is 0 dB everywhere (finite). This equals
``librosa.power_to_db(librosa.feature.melspectrogram(y=clip, sr=sr, n_fft=n_fft, hop_length=hop,
n_mels=n_mels, fmax=fmax, pad_mode=pad_mode), ref=np.max, top_db=top_db)`` to ~1e-5 dB; the dB step is done
per clip by hand because librosa 0.11's ``power_to_db`` on a 3-D batch takes the *global* max as reference.

16 kHz x 4 s gives 128 x 128 frames, 22,050 Hz x 4 s gives 128 x 176.
"""

from __future__ import annotations

import logging
import time
from functools import lru_cache

import numpy as np

from deepfeat import config
from deepfeat.formats.clips import clip_audio, open_clips
from deepfeat.formats.cliptable import TRAIN
from deepfeat.formats.files import write_h5
from deepfeat.formats.mel import KIND, create_mel, finish_mel
from deepfeat.runtime import pick_device

AMIN = 1e-10
PAD_MODES = ("constant", "reflect")  # the enum of mel.pad_mode: both mean the same in torch.stft and librosa
WINDOW = "hann"
# bytes of float64/complex128 working memory per STFT bin and frame inside melspectrogram_db (complex STFT 16,
# power 8, framed signal and FFT scratch); used to cut a large batch into sub-batches of bounded size. On CPU
# small sub-batches that stay in cache are fastest (measured: 32 MB ~2x faster than 256 MB); a GPU wants big ones.
_BYTES_PER_BIN = 48
_WORK_BYTES = {"cpu": 32 * 2**20, "cuda": 1024 * 2**20}
_DB_PER_LN = 10.0 / np.log(10.0)


def n_frames(n_samples: int, hop_length: int) -> int:
    """Frames of a centred STFT of ``n_samples`` samples: 1 + n_samples // hop_length."""
    return 1 + int(n_samples) // int(hop_length)


@lru_cache(maxsize=16)
def mel_basis(sr: int, n_fft: int, n_mels: int, fmax: float) -> np.ndarray:
    """librosa's slaney mel filterbank, float64 copy of its float32 matrix (n_mels x (1 + n_fft//2))."""
    import librosa

    w = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=0.0, fmax=fmax, htk=False, norm="slaney")
    w = w.astype(np.float64)
    w.setflags(write=False)
    return w


def mel_params(
    sr: int, n_fft: int, hop_length: int, n_mels: int, fmax: float, top_db: float, pad_mode: str | None = None
) -> dict:
    """Every parameter that defines the spectrogram, as stored in the attrs of ``mel.h5``'s ``mel`` dataset
    (``pad_mode`` None: the schema's default)."""
    return {
        "sr": int(sr),
        "n_fft": int(n_fft),
        "win_length": int(n_fft),
        "hop_length": int(hop_length),
        "n_mels": int(n_mels),
        "fmin": 0.0,
        "fmax": float(fmax),
        "window": WINDOW,
        "center": True,
        "pad_mode": str(config.default("mel", "pad_mode") if pad_mode is None else pad_mode),
        "htk": False,
        "norm": "slaney",
        "power": 2.0,
        "ref": "max",
        "amin": AMIN,
        "top_db": float(top_db),
        "units": "dB",
        "compute_dtype": "float64",
    }


def melspectrogram_db(
    audio,
    sr: int,
    n_fft: int | None = None,
    hop_length: int | None = None,
    n_mels: int | None = None,
    fmax: float | None = None,
    top_db: float | None = None,
    device="cpu",
    pad_mode: str | None = None,
) -> np.ndarray:
    """dB mel-spectrograms of a batch of equal-length clips (see the module docstring for the definition).

    ``audio``: (B, L) numpy array or torch tensor of samples (any float dtype; computed in float64); a 1-D
    (L,) array is one clip and gives a 2-D result. ``sr`` in Hz, ``fmax`` in Hz, ``top_db`` in dB; a parameter
    left ``None`` takes the ``mel`` section's schema default. ``device``: a torch device or its name ("cpu",
    "cuda", "auto"). ``pad_mode``: "constant" or "reflect" (see the module docstring). Returns float32
    (B, n_mels, T) dB, T = 1 + L // hop_length, each clip in [-top_db, 0].
    Large batches are processed in sub-batches so that working memory stays bounded (~32 MB on CPU, ~1 GB on
    CUDA).
    """
    import torch

    n_fft, hop_length, n_mels, fmax, top_db, pad_mode = (
        config.default("mel", k) if v is None else v
        for k, v in (
            ("n_fft", n_fft),
            ("hop_length", hop_length),
            ("n_mels", n_mels),
            ("fmax", fmax),
            ("top_db", top_db),
            ("pad_mode", pad_mode),
        )
    )
    if pad_mode not in PAD_MODES:
        raise ValueError(f"mel.pad_mode: {pad_mode!r} is not one of {list(PAD_MODES)}")
    if top_db < 0:
        raise ValueError(f"top_db must be a non-negative number of dB, got {top_db}")
    if fmax > sr / 2 + 1e-9:
        raise ValueError(f"fmax={fmax} Hz is above the Nyquist frequency {sr / 2} Hz of sr={sr}")
    dev = pick_device(device) if isinstance(device, str) else torch.device(device)
    x = audio if isinstance(audio, torch.Tensor) else torch.from_numpy(np.asarray(audio))
    squeeze = x.ndim == 1
    if squeeze:
        x = x[None]
    if x.ndim != 2:
        raise ValueError(f"audio must be (batch, samples) or (samples,), got shape {tuple(x.shape)}")
    if x.dtype.is_complex or x.dtype == torch.bool:
        raise ValueError(f"audio must hold real samples, got dtype {x.dtype}")
    B, L = x.shape
    if L < 1:
        raise ValueError("audio clips are empty (0 samples)")
    if n_fft < 2 or hop_length < 1 or n_mels < 1:
        raise ValueError(f"need n_fft >= 2, hop_length >= 1, n_mels >= 1; got {n_fft}, {hop_length}, {n_mels}")
    if pad_mode == "reflect" and L <= n_fft // 2:
        raise ValueError(f"mel.pad_mode 'reflect' needs clips longer than n_fft/2 = {n_fft // 2} samples, got {L}")
    T = n_frames(L, hop_length)
    out = np.empty((B, n_mels, T), dtype=np.float32)
    if B == 0:
        return out[0] if squeeze else out
    n_bins = 1 + n_fft // 2
    basis = mel_basis(int(sr), int(n_fft), int(n_mels), float(fmax))
    used = np.flatnonzero(basis.any(axis=0))
    n_used = int(used[-1]) + 1 if used.size else 1  # STFT bins above fmax have zero weight everywhere: skip them
    Wt = torch.from_numpy(np.ascontiguousarray(basis[:, :n_used].T)).to(dev)  # (F_used, n_mels)
    window = torch.hann_window(n_fft, periodic=True, dtype=torch.float64, device=dev)
    sub = max(1, _WORK_BYTES.get(dev.type, _WORK_BYTES["cpu"]) // (_BYTES_PER_BIN * n_bins * T))
    for s in range(0, B, sub):
        xb = x[s : s + sub].to(device=dev, dtype=torch.float64)
        db = _db_batch(xb, window, Wt, n_fft, hop_length, n_used, top_db, pad_mode)
        if not torch.isfinite(db).all():  # NaN/inf samples propagate to the spectrogram (finite input never does)
            bad = s + int(torch.nonzero(~torch.isfinite(db).flatten(1).all(dim=1))[0, 0])
            raise ValueError(f"audio clip {bad} contains NaN or inf samples")
        out[s : s + sub] = db.transpose(1, 2).to("cpu", torch.float32).numpy()
    return out[0] if squeeze else out


def _db_batch(xb, window, Wt, n_fft: int, hop_length: int, n_used: int, top_db: float, pad_mode: str):
    """(b, T, n_mels) float64 dB of one sub-batch ``xb`` (b, L) float64 (the module docstring's definition)."""
    import torch

    spec = torch.stft(
        xb,
        n_fft,
        hop_length=hop_length,
        win_length=n_fft,
        window=window,
        center=True,
        pad_mode=pad_mode,
        normalized=False,
        onesided=True,
        return_complex=True,
    )  # (b, n_bins, T) complex128, a transposed view of a contiguous (b, T, n_bins) array
    ri = torch.view_as_real(spec.transpose(1, 2))[:, :, :n_used]  # (b, T, F_used, 2), contiguous rows
    power = ri[..., 0].square() + ri[..., 1].square()  # |X|^2
    del spec, ri
    mel = torch.matmul(power, Wt)  # (b, T, n_mels) = one GEMM over all frames of the sub-batch
    del power
    log = torch.log(torch.clamp(mel, min=AMIN)).mul_(_DB_PER_LN)  # 10 log10(max(amin, M))
    ref = log.amax(dim=(1, 2), keepdim=True)  # = 10 log10(max(amin, max M)): log is monotone
    db = log.sub_(ref)
    return torch.maximum(db, db.amax(dim=(1, 2), keepdim=True) - top_db)


class _RunningMoments:
    """Exact streaming mean / population variance (Chan et al. pairwise merge) in float64."""

    def __init__(self) -> None:
        self.n = 0
        self.mean = 0.0
        self.m2 = 0.0

    def add(self, x: np.ndarray) -> None:
        x = np.asarray(x, dtype=np.float64).ravel()
        if x.size == 0:
            return
        nb = x.size
        mb = float(x.mean())
        m2b = float(np.square(x - mb).sum())
        n = self.n + nb
        delta = mb - self.mean
        self.mean += delta * nb / n
        self.m2 += m2b + delta * delta * self.n * nb / n
        self.n = n

    @property
    def std(self) -> float:
        return float(np.sqrt(self.m2 / self.n)) if self.n else float("nan")


@config.job(
    reads={"mel": ("n_mels", "n_fft", "hop_length", "fmax", "top_db", "pad_mode")},
    tunes={"mel": ("batch_size", "device")},
)
def build_mel_store(*, clips, mel, settings, log: logging.Logger | None = None) -> dict:
    """Stream ``clips`` (a clips.h5) into ``mel`` (the mel.h5 to write), ``mel.batch_size`` clips at a time.

    Writes ``mel`` float32 (N x n_mels x T) dB chunked one clip per chunk, with every spectrogram parameter as
    attrs; root attrs ``sample_rate``, ``train_mean``/``train_std`` (scalar mean and population std of all dB
    values of the training split, float64 accumulation), ``n_train``; and the clip table copied unchanged
    (:mod:`deepfeat.formats.mel`). Returns a summary dict (n_clips, shape, train_mean, train_std, seconds,
    clips_per_s).
    """
    log = log or logging.getLogger(__name__)
    p = settings["mel"]
    bs = int(p["batch_size"])
    device = pick_device(p["device"])
    with open_clips(clips) as src:
        audio = clip_audio(src)  # float32 samples, whatever the storage
        sr = int(src.attrs["sample_rate"])
        N, L = audio.shape
        if N == 0:
            raise ValueError(f"{clips}: 'audio' holds no clips")
        split = src["meta/split"][:]
        if split.shape != (N,):
            raise ValueError(f"{clips}: meta/split has {split.shape[0]} rows but audio has {N} clips")
        if not (split == TRAIN).any():
            raise ValueError(f"{clips}: no training clips (meta/split is never 0): cannot standardise")
        T = n_frames(L, p["hop_length"])
        attrs = mel_params(sr, p["n_fft"], p["hop_length"], p["n_mels"], p["fmax"], p["top_db"], p["pad_mode"])
        log.info(
            f"mel: {N} clips of {L} samples at {sr} Hz ({audio.storage}) -> {p['n_mels']} x {T} dB, pad_mode "
            f"{p['pad_mode']}, batch {bs}, device {device}"
        )
        mel_basis(sr, int(p["n_fft"]), int(p["n_mels"]), float(p["fmax"]))  # imports librosa: keep out of the rate
        moments = _RunningMoments()
        t0 = last = time.perf_counter()
        with write_h5(mel, KIND) as f:
            d = create_mel(f, N, p["n_mels"], T, attrs)
            for s in range(0, N, bs):
                e = min(N, s + bs)
                block = audio[s:e]
                db = melspectrogram_db(
                    block, sr, p["n_fft"], p["hop_length"], p["n_mels"], p["fmax"], p["top_db"], device, p["pad_mode"]
                )
                d[s:e] = db
                moments.add(db[split[s:e] == TRAIN])
                now = time.perf_counter()
                if now - last >= 10 or e == N:
                    last = now
                    log.info(f"mel: {e}/{N} clips ({100 * e / N:.1f}%), {e / (now - t0):.1f} clips/s")
            finish_mel(f, src, sr, moments.mean, moments.std, int((split == TRAIN).sum()))
    secs = time.perf_counter() - t0
    log.info(
        f"mel: wrote {mel} ({N} x {p['n_mels']} x {T}); train mean {moments.mean:.4f} dB, "
        f"std {moments.std:.4f} dB; {secs:.1f} s"
    )
    return {
        "n_clips": N,
        "shape": [N, p["n_mels"], T],
        "train_mean": moments.mean,
        "train_std": moments.std,
        "seconds": secs,
        "clips_per_s": N / secs if secs > 0 else float("inf"),
    }
