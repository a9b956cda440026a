"""What every figure shares: matplotlib on the Agg backend (imported from here, so the backend is set before
pyplot loads), the seaborn theme, atomic PNG files, panel grids and readable tick labels."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import seaborn as sns  # noqa: E402

from deepfeat.formats.files import atomic_path  # noqa: E402


def set_theme(dpi: int) -> None:
    """The seaborn theme of every figure and the resolution of the PNG files."""
    sns.set_theme(style="whitegrid", context="notebook", font_scale=0.85)
    plt.rcParams.update({"figure.dpi": dpi, "savefig.dpi": dpi})


def save_figure(fig, out_dir: Path, name: str, dpi: int, log) -> Path:
    """Write ``{out_dir}/{name}.png`` atomically (white background, tight bounding box) and close the figure."""
    path = out_dir / f"{name}.png"
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight", facecolor="white")
    plt.close(fig)
    log.info(f"figure {path.name}")
    return path


def rotate_xticks(ax, labels) -> None:
    """Slant the x tick labels when they are long or many."""
    longest = max((len(str(label)) for label in labels), default=0)
    if longest > 4 or len(labels) > 12:
        ax.tick_params(axis="x", labelrotation=45 if longest <= 20 else 60)
        for t in ax.get_xticklabels():
            t.set_horizontalalignment("right")
            t.set_rotation_mode("anchor")


def panel_grid(n: int, cell_w: float, cell_h: float, extra_h: float = 0.0, sharey: bool = False):
    """(fig, the n panels in row order, ncols): at most 3 panels per row, each cell_w x cell_h inches (plus
    extra_h for the whole figure); the unused cells of the last row are hidden."""
    ncols = min(n, 3)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(cell_w * ncols, cell_h * nrows + extra_h),
        squeeze=False,
        sharey=sharey,
        layout="constrained",
    )
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    return fig, axes.ravel()[:n], ncols


__all__ = ["panel_grid", "plt", "rotate_xticks", "save_figure", "set_theme", "sns"]
