"""Figure helpers: colour-blind-safe palette, PNG + PDF output, the 20-element 'periodic table' panel."""

from __future__ import annotations

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


def save_figure(fig: plt.Figure, name: str, directory: str | Path = FIGURES_DIR) -> list[Path]:
    """Save ``fig`` as ``<name>.png`` and ``<name>.pdf`` (name starts with the notebook number) in
    ``directory``: the notebooks pass :func:`xanes_utils.profiles.figures_dir` of their run."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / f"{name}.png", directory / f"{name}.pdf"]
    for path in paths:
        fig.savefig(path, bbox_inches="tight", metadata={"CreationDate": None} if path.suffix == ".pdf" else None)
    return paths


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
