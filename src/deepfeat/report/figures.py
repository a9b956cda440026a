"""Figures of one dataset, drawn from its tables folder (:func:`deepfeat.report.tables.build_tables`), mel.h5 and
handcrafted.h5.

Every figure is one PNG in the output folder (``{name}.png``, written atomically), drawn with seaborn on the
matplotlib Agg backend:

* ``sim_<comparison>_<task>_..._<measure>.png``: annotated heatmaps of the mean similarity over seeds for every
  similarity comparison present (deep vs hand-crafted, trained vs untrained, layer vs layer, seed vs seed,
  arch vs arch, channel vs channel) and every measure of the ``figure_measures`` setting
  (:mod:`deepfeat.report.heatmaps`).
* ``decoding_<train task>_to_<probe task>.png``: test accuracy (%) or RMSE by layer, trained vs untrained,
  error bars = sd over seeds (none for a single seed), with chance, the best hand-crafted feature and the
  network's own score as reference lines (:mod:`deepfeat.report.curves`).
* ``robustness_<probe task>.png``: probe task decoded from features of networks trained on each task.
* ``confusion_<...>.png``: row-normalised test confusion matrices (summed over seeds).
* ``pca_spectrograms.png``: the first two principal components of the flattened dB spectrograms
  (:mod:`deepfeat.report.spectrograms`).
* ``example_spectrogram.png``: one clip's spectrogram with a few of its hand-crafted features.
"""

from __future__ import annotations

import logging
from pathlib import Path

from deepfeat.config import job
from deepfeat.formats.cliptable import class_lists
from deepfeat.formats.mel import open_mel
from deepfeat.formats.tables import read_tables
from deepfeat.report.curves import decoding_figures, robustness_figures
from deepfeat.report.drawing import set_theme
from deepfeat.report.heatmaps import confusion_figures, similarity_figures
from deepfeat.report.spectrograms import example_figure, pca_figure


@job(
    reads={
        "report": (
            "top_features",
            "figure_measures",
            "dpi",
            "seed",
            "pca_max_clips",
            "example_clip",
            "example_features",
        )
    }
)
def make_figures(
    *, tables, mel, features, figures, settings, dataset: str, log: logging.Logger | None = None
) -> list[Path]:
    """Draw every figure of ``dataset`` into the folder ``figures`` (created); returns the PNG paths written.

    ``tables``: the dataset's tables folder; ``mel``: its mel.h5; ``features``: its handcrafted.h5, or None (the
    example figure then shows the spectrogram alone). ``settings["report"]``: top_features, figure_measures, dpi,
    seed (of the PCA subset), pca_max_clips, example_clip, example_features.
    """
    log = log or logging.getLogger(__name__)
    p = settings["report"]
    out_dir = Path(figures)
    out_dir.mkdir(parents=True, exist_ok=True)
    set_theme(p["dpi"])
    t = read_tables(tables)
    main_task = t["chance"].loc[t["chance"]["is_main"] == "True", "task"].iloc[0]
    with open_mel(mel) as f:
        classes = class_lists(f)
    written = []
    written += similarity_figures(t["similarity"], out_dir, p, log)
    written += decoding_figures(t, out_dir, p, log)
    written += robustness_figures(t, out_dir, p, log)
    written += confusion_figures(t, classes, main_task, out_dir, p, log)
    written += pca_figure(mel, out_dir, p, log)
    written += example_figure(mel, features, out_dir, p, log)
    log.info(f"{dataset}: {len(written)} figures in {out_dir}")
    return written


__all__ = ["make_figures"]
