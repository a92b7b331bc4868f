"""Figure helpers: colour-blind-safe palette, PNG + PDF output, the 20-element 'periodic table' panel."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Callable, Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from xanes_utils.elements import ELEMENTS  # noqa: E402
from xanes_utils.profiles import FIGURES_DIR, figures_dir  # noqa: E402, F401 - figures_dir: for notebooks

#: Okabe-Ito colours (colour-blind safe), used for categorical series.
OKABE_ITO = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]


def style() -> None:
    """Readable defaults for every notebook figure."""
    plt.rcParams.update({"figure.dpi": 110, "savefig.dpi": 150, "font.size": 10, "axes.titlesize": 11,
                         "axes.labelsize": 10, "legend.fontsize": 8, "axes.prop_cycle":
                         matplotlib.cycler(color=OKABE_ITO)})


#: Largest per-channel difference (of 255) between a new PNG rendering and the file on disk that counts as
#: the same figure: float rounding on another CPU (e.g. CHGNet features computed with other SIMD kernels)
#: moves a few anti-aliased pixels by one level.
SAME_FIGURE_LEVELS = 1


def _same_rendering(png: bytes, path: Path) -> bool:
    """Whether the PNG ``png`` equals the image at ``path`` to :data:`SAME_FIGURE_LEVELS` in every pixel."""
    from PIL import Image

    if not path.exists():
        return False
    try:
        new = np.asarray(Image.open(io.BytesIO(png)).convert("RGBA"), dtype=np.int16)
        old = np.asarray(Image.open(path).convert("RGBA"), dtype=np.int16)
    except OSError:  # an unreadable file on disk is replaced
        return False
    return new.shape == old.shape and int(np.abs(new - old).max()) <= SAME_FIGURE_LEVELS


def save_figure(fig: plt.Figure, name: str, directory: str | Path = FIGURES_DIR) -> list[Path]:
    """Save ``fig`` as ``<name>.png`` and ``<name>.pdf`` (name starts with the notebook number) in
    ``directory``: the notebooks pass :func:`xanes_utils.profiles.figures_dir` of their run. When both files
    exist and the new PNG rendering differs from the one on disk by at most :data:`SAME_FIGURE_LEVELS` in
    every pixel, their contents are left as they are (only their times are updated), so rerunning the
    notebooks on another machine leaves unchanged figures unchanged."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    png, pdf = directory / f"{name}.png", directory / f"{name}.pdf"
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    if pdf.exists() and _same_rendering(buffer.getvalue(), png):
        for path in (png, pdf):
            path.touch()  # produced by this run all the same (run_all.py lists figures by time)
    else:
        png.write_bytes(buffer.getvalue())
        fig.savefig(pdf, bbox_inches="tight", metadata={"CreationDate": None})
    return [png, pdf]


def element_grid(values: Mapping[str, float], ax: plt.Axes, cmap: str = "cividis", fmt: str = "{:.0f}",
                 label: str = "", vmin: float | None = None, vmax: float | None = None) -> None:
    """Heatmap of one value per absorber laid out as the periodic table's 3d (top) and 4d (bottom) rows."""
    grid = np.full((2, 10), np.nan)
    for i, el in enumerate(ELEMENTS):
        if el in values and values[el] is not None and np.isfinite(values[el]):
            grid[i // 10, i % 10] = values[el]
    image = ax.imshow(grid, cmap=cmap, vmin=vmin, vmax=vmax, aspect="equal")
    norm: Callable[[float], float] = image.norm
    for i, el in enumerate(ELEMENTS):
        r, c = divmod(i, 10)
        v = grid[r, c]
        dark = np.isfinite(v) and norm(v) < 0.5
        ax.text(c, r - 0.18, el, ha="center", va="center", fontsize=11, fontweight="bold",
                color="white" if dark else "black")
        ax.text(c, r + 0.22, fmt.format(v) if np.isfinite(v) else "–", ha="center", va="center", fontsize=8,
                color="white" if dark else "black")
    ax.set_xticks([])
    ax.set_yticks([0, 1], ["3d (period 4)", "4d (period 5)"])
    plt.colorbar(image, ax=ax, fraction=0.025, pad=0.02, label=label)
