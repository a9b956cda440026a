"""Spectrogram figures: the PCA of the spectrograms and one example clip with some of its hand-crafted features.

* ``pca_spectrograms.png``: the first two principal components of the flattened, centred dB spectrograms of a
  seeded subset of at most ``pca_max_clips`` clips (:func:`deepfeat.formats.cliptable.seeded_subset` with the
  ``seed`` setting; randomized SVD seeded alike), one panel per task, coloured by its label; axes give the share
  of the subset's total variance of each component.
* ``example_spectrogram.png``: the spectrogram of clip ``example_clip`` (default: the first test clip) with the
  ``example_features`` beside it: per-band features on the right (sharing the mel axis), per-frame features
  below (sharing the time axis); ``Time to ...`` features are shown in seconds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from deepfeat.formats.cliptable import TEST, read_clip_table, seeded_subset
from deepfeat.formats.files import open_h5
from deepfeat.formats.handcrafted import KIND as HANDCRAFTED
from deepfeat.formats.handcrafted import feature_index
from deepfeat.formats.mel import open_mel
from deepfeat.report.drawing import panel_grid, plt, save_figure, sns


def pca_figure(mel_h5, out_dir: Path, p: dict, log) -> list[Path]:
    """First two principal components of the flattened dB spectrograms (seeded subset), coloured by label."""
    from sklearn.utils.extmath import randomized_svd

    with open_mel(mel_h5) as f:
        meta, tasks, main = read_clip_table(f)
        n = f["mel"].shape[0]
        idx = seeded_subset(n, int(p["pca_max_clips"]), int(p["seed"]))
        x = f["mel"][idx].reshape(len(idx), -1).astype(np.float64)
    if len(idx) < 3:
        log.info(f"{mel_h5}: {len(idx)} clips, too few for a PCA")
        return []
    log.info(f"PCA of {len(idx)} of {n} spectrograms ({x.shape[1]} values each)")
    x -= x.mean(axis=0)
    u, s, _ = randomized_svd(x, n_components=2, n_iter=7, random_state=int(p["seed"]))
    z = u * s
    pct = 100.0 * s**2 / float(np.einsum("ij,ij->", x, x))
    tasks = sorted(tasks, key=lambda t: t["name"] != main)
    fig, axes, _ = panel_grid(len(tasks), 5.6, 4.6)
    sub = meta.iloc[idx]
    for tk, ax in zip(tasks, axes):
        if tk["type"] == "classification":
            hue = sub[tk["name"]].astype(str).to_numpy()
            order = [c for c in tk["classes"] if c in set(hue)]
            sns.scatterplot(
                x=z[:, 0],
                y=z[:, 1],
                hue=hue,
                hue_order=order,
                s=12,
                alpha=0.75,
                linewidth=0,
                ax=ax,
                palette="tab10" if len(order) <= 10 else "husl",
            )
            ax.legend(
                title=tk["name"],
                fontsize=7,
                title_fontsize=8,
                markerscale=1.5,
                loc="center left",
                bbox_to_anchor=(1.0, 0.5),
                frameon=False,
            )
        else:
            sc = ax.scatter(
                z[:, 0], z[:, 1], c=sub[tk["name"]].to_numpy(np.float64), s=12, alpha=0.75, cmap="viridis", linewidths=0
            )
            fig.colorbar(sc, ax=ax, label=tk["name"])
        ax.set_title(f"coloured by {tk['name']}" + (" (main task)" if tk["name"] == main else ""), fontsize=10)
        ax.set_xlabel(f"PC 1 ({pct[0]:.1f}% of variance, dB)")
        ax.set_ylabel(f"PC 2 ({pct[1]:.1f}% of variance, dB)")
    fig.suptitle(f"PCA of {len(idx)} mel spectrograms (dB, centred)", fontsize=11)
    return [save_figure(fig, out_dir, "pca_spectrograms", p["dpi"], log)]


_UNITS = [
    ("Spectral Flatness", "ratio"),
    ("Spectral", "Hz"),
    ("RMS", "linear amplitude"),
    ("Power", "dB"),
    ("Time to", "s"),
    ("Random", "a.u."),
]


def _unit(name: str) -> str:
    return next((u for k, u in _UNITS if name.startswith(k) or k in name), "a.u.")


def feature_axis(name: str, dim: int, n_mels: int, n_frames: int) -> str | None:
    """'frame' (one value per frame), 'band' (one per mel band) or None, from the display name and size.

    Summaries over frequency (spectral features, RMS, '... (frequency)', '... over frequency', '... across bins')
    give one value per frame; summaries over time ('... (time)', 'Time to ...', wavelet statistics) one per band.
    The name decides when n_mels == n_frames (128 x 128 spectrograms)."""
    per_frame = (
        name == "RMS" or name.startswith("Spectral ") or name.endswith(("(frequency)", "over frequency", "across bins"))
    )
    per_band = (
        name.endswith("(time)")
        or name.startswith("Time to")
        or ("Wavelet (" in name and not name.endswith(("over frequency", "across bins")))
    )
    if per_frame and dim == n_frames:
        return "frame"
    if per_band and dim == n_mels:
        return "band"
    if not (per_frame or per_band) and n_mels != n_frames:
        return "band" if dim == n_mels else "frame" if dim == n_frames else None
    return None


def _example_clip(mel_h5, clip) -> tuple[int, np.ndarray, dict, dict]:
    """(clip index, its dB spectrogram (float64), spectrogram attributes, clip-table facts) of the example clip:
    ``clip``, or the first test clip when None."""
    with open_mel(mel_h5) as f:
        meta, _, main = read_clip_table(f)
        ds = f["mel"]
        attrs = {k: (v.item() if hasattr(v, "item") else v) for k, v in ds.attrs.items()}
        attrs.setdefault("sr", f.attrs.get("sample_rate", 22050))
        n = ds.shape[0]
        i = clip
        if i is None:
            test = np.flatnonzero(meta["split"].to_numpy() == TEST)
            i = int(test[0]) if len(test) else 0
        if not 0 <= int(i) < n:
            raise ValueError(f"report.example_clip: {i} is not a clip index of {mel_h5} (0..{n - 1})")
        i = int(i)
        mel = ds[i].astype(np.float64)
    label = meta[main].iloc[i] if main in meta else ""
    return i, mel, attrs, {"clip_id": meta["clip_id"].iloc[i], "main": main, "label": label}


def _example_features(
    features_h5, i: int, names: list[str], sec: float, n_mels: int, n_frames: int, log
) -> tuple[list, list]:
    """([(name, values)] of the per-band features, [...] of the per-frame ones) of clip ``i``; other features
    and those missing from the file are skipped (with a log line)."""
    per_band, per_frame = [], []
    if features_h5 is None:
        return per_band, per_frame
    with open_h5(features_h5, HANDCRAFTED) as f:
        index = feature_index(f, features_h5)
        for want in names:
            if want not in index:
                log.info(f"example figure: feature '{want}' not in {features_h5}; skipped")
                continue
            v = f["features"][index[want]["key"]][i].astype(np.float64)
            if want.startswith("Time to"):
                v = v * sec
            axis = feature_axis(want, v.size, n_mels, n_frames)
            if axis == "band":
                per_band.append((want, v))
            elif axis == "frame":
                per_frame.append((want, v))
            else:
                log.info(
                    f"example figure: '{want}' ({v.size} values) is neither one value per mel band "
                    f"({n_mels}) nor per frame ({n_frames}); skipped"
                )
    return per_band, per_frame


def _draw_example(mel: np.ndarray, attrs: dict, clip: dict, per_band: list, per_frame: list, sec: float):
    """The example figure: spectrogram (time in s, mel band centres in Hz), features beside and below it."""
    import librosa

    n_mels, n_frames = mel.shape
    sr = float(attrs.get("sr", 22050))
    fmax = float(attrs.get("fmax", sr / 2))
    nb, nf = len(per_band), len(per_frame)
    fig = plt.figure(figsize=(7.5 + 2.3 * nb, 4.4 + 1.7 * nf), layout="constrained")
    gs = fig.add_gridspec(1 + nf, 2 + nb, width_ratios=[6, 0.25] + [2] * nb, height_ratios=[4] + [1.4] * nf)
    ax = fig.add_subplot(gs[0, 0])
    t_edges = np.arange(n_frames + 1) * sec
    im = ax.pcolormesh(t_edges, np.arange(n_mels + 1), mel, cmap="magma", shading="flat", rasterized=True)
    fig.colorbar(im, cax=fig.add_subplot(gs[0, 1]), label="power (dB re clip max)")
    centres = librosa.mel_frequencies(n_mels=n_mels + 2, fmin=0.0, fmax=fmax, htk=bool(attrs.get("htk", False)))[1:-1]
    ticks = np.linspace(0, n_mels - 1, 6).round().astype(int)
    ax.set_yticks(ticks + 0.5, [f"{centres[b]:.0f}" for b in ticks])
    ax.set_ylabel("mel band centre (Hz)")
    ax.set_xlabel("time (s)")
    ax.set_title(f"clip {clip['clip_id']} ({clip['main']}: {clip['label']})", fontsize=10)
    for k, (name, v) in enumerate(per_band):
        b = fig.add_subplot(gs[0, 2 + k], sharey=ax)
        b.plot(v, np.arange(n_mels) + 0.5, color="tab:blue", linewidth=1.2)
        b.set_xlabel(f"{name}\n({_unit(name)})", fontsize=8)
        b.tick_params(axis="y", labelleft=False)
        b.tick_params(axis="x", labelsize=7)
        b.set_ylim(0, n_mels)
    for k, (name, v) in enumerate(per_frame):
        b = fig.add_subplot(gs[1 + k, 0], sharex=ax)
        b.plot((np.arange(n_frames) + 0.5) * sec, v, color="tab:orange", linewidth=1.2)
        b.set_ylabel(f"{name}\n({_unit(name)})", fontsize=8)
        b.set_xlabel("time (s)")
        b.tick_params(axis="y", labelsize=7)
    ax.set_xlim(0, n_frames * sec)
    fig.suptitle("Example spectrogram and some of its hand-crafted features", fontsize=11)
    return fig


def example_figure(mel_h5, features_h5, out_dir: Path, p: dict, log) -> list[Path]:
    """One clip's spectrogram with some of its hand-crafted features: per-band features on the right (sharing
    the mel axis), per-frame features below (sharing the time axis)."""
    i, mel, attrs, clip = _example_clip(mel_h5, p["example_clip"])
    sr = float(attrs.get("sr", 22050))
    hop = float(attrs.get("hop_length", 512))
    sec = hop / sr
    per_band, per_frame = _example_features(features_h5, i, p["example_features"], sec, *mel.shape, log)
    fig = _draw_example(mel, attrs, clip, per_band, per_frame, sec)
    return [save_figure(fig, out_dir, "example_spectrogram", p["dpi"], log)]


__all__ = ["example_figure", "feature_axis", "pca_figure"]
