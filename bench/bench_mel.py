"""Benchmark: librosa per clip (the reference) vs deepfeat.data.mel.melspectrogram_db batched, on the same clips.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_mel.py --clips 256 --sr 16000 [--pad-mode reflect] [--storage]

Prints both times, clips/s, the speed-up (librosa time / ours) and the largest |difference| in dB. Both paths
run with the same thread count (``--threads``, default 1, set before numpy/torch are imported). ``--storage``
adds the clips.h5 storage comparison on the same clips quantised to 16-bit PCM: file size and the time to read
every clip and compute its spectrogram from an int16 and from a float32 clips.h5 (ratio int16 / float32), and
whether the spectrograms are bitwise identical.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clips", type=int, default=256, help="number of 4 s clips")
    ap.add_argument("--sr", type=int, default=16000, help="sample rate in Hz (16000 -> 128 frames, 22050 -> 176)")
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--batch", type=int, default=256, help="clips per call of melspectrogram_db")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=2, help="best of this many timings for each path")
    ap.add_argument("--pad-mode", default="constant", choices=["constant", "reflect"], help="mel.pad_mode")
    ap.add_argument("--storage", action="store_true", help="also compare int16 and float32 clips.h5 storage")
    args = ap.parse_args(argv)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(args.threads)

    import librosa
    import numpy as np
    import torch

    from deepfeat.data.mel import melspectrogram_db

    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    L = int(args.seconds * args.sr)
    t = np.arange(L) / args.sr
    # notes with random pitch and decay plus a little noise; a few quiet and silent clips
    f0 = rng.uniform(60, 2000, (args.clips, 1))
    decay = rng.uniform(0.2, 3, (args.clips, 1))
    audio = 0.5 * np.sin(2 * np.pi * f0 * t) * np.exp(-decay * t) + 0.01 * rng.normal(size=(args.clips, L))
    audio[::17] *= 1e-5
    audio[::29] = 0
    audio = audio.astype(np.float32)

    def ref():
        return np.stack(
            [
                librosa.power_to_db(
                    librosa.feature.melspectrogram(
                        y=c, sr=args.sr, n_fft=2048, hop_length=502, n_mels=128, fmax=8000, pad_mode=args.pad_mode
                    ),
                    ref=np.max,
                )
                for c in audio
            ]
        )

    def ours():
        return np.concatenate(
            [
                melspectrogram_db(audio[s : s + args.batch], args.sr, device=args.device, pad_mode=args.pad_mode)
                for s in range(0, args.clips, args.batch)
            ]
        )

    ref(), ours()  # warm up (filterbank cache, FFT plans, allocator)
    t_ref, t_ours = [], []
    for _ in range(args.repeats):  # interleaved so that load from other processes hits both alike
        t0 = time.perf_counter()
        a = ref()
        t_ref.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        b = ours()
        t_ours.append(time.perf_counter() - t0)
    tr, to = min(t_ref), min(t_ours)
    err = float(np.abs(a - b).max())
    print(
        f"clips {args.clips} x {L} samples at {args.sr} Hz -> {b.shape[1]} x {b.shape[2]}, "
        f"threads {args.threads}, device {args.device}, batch {args.batch}, pad_mode {args.pad_mode}"
    )
    print(f"librosa per clip : {tr:8.3f} s  {args.clips / tr:8.1f} clips/s")
    print(f"deepfeat batched : {to:8.3f} s  {args.clips / to:8.1f} clips/s")
    print(f"ratio (librosa / deepfeat) = {tr / to:.2f}x   max |diff| = {err:.2e} dB")
    if err > 1e-3:
        sys.exit(f"exactness bar failed: max |diff| {err:.2e} dB > 1e-3 dB")
    if args.storage:
        storage(audio, args)


def storage(audio, args) -> None:
    """int16 vs float32 clips.h5 of the same 16-bit PCM clips: size, read + spectrogram time, bitwise equality."""
    import tempfile
    from pathlib import Path

    import numpy as np

    from deepfeat.data.mel import melspectrogram_db
    from deepfeat.formats.clips import AudioWriter, clip_audio, open_clips
    from deepfeat.formats.files import write_h5

    pcm = np.clip(np.rint(audio * 32768), -32768, 32767).astype(np.float32) / np.float32(32768)
    with tempfile.TemporaryDirectory() as d:
        paths = {k: Path(d) / f"{k}.h5" for k in ("int16", "float32")}
        for kind, path in paths.items():
            with write_h5(path, "clips") as f:
                AudioWriter(f, pcm.shape[1], kind).append(pcm)
                f.attrs["sample_rate"] = args.sr

        def run(path):
            with open_clips(path) as f:
                a = clip_audio(f)
                return np.concatenate(
                    [
                        melspectrogram_db(a[s : s + args.batch], args.sr, device=args.device, pad_mode=args.pad_mode)
                        for s in range(0, len(a), args.batch)
                    ]
                )

        times, mels = {k: [] for k in paths}, {}
        for _ in range(args.repeats):
            for kind, path in paths.items():
                t0 = time.perf_counter()
                mels[kind] = run(path)
                times[kind].append(time.perf_counter() - t0)
        size = {k: p.stat().st_size for k, p in paths.items()}
    t16, t32 = min(times["int16"]), min(times["float32"])
    same = np.array_equal(mels["int16"], mels["float32"])
    print(f"clips.h5 int16  : {size['int16'] / 2**20:8.1f} MiB, read + mel {t16:.3f} s")
    print(f"clips.h5 float32: {size['float32'] / 2**20:8.1f} MiB, read + mel {t32:.3f} s")
    print(
        f"ratio int16 / float32: size {size['int16'] / size['float32']:.3f}, time {t16 / t32:.2f}; "
        f"spectrograms bitwise identical: {same}"
    )
    if not same:
        sys.exit("storage bar failed: int16 storage changed a spectrogram")


if __name__ == "__main__":
    main()
