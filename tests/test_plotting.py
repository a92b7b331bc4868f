"""Figure output: PNG and PDF written, and left untouched when a rerun renders the same figure."""

from __future__ import annotations

import io

import matplotlib.pyplot as plt
import numpy as np
from PIL import Image

from xanes_utils.plotting import save_figure


def figure(slope: float) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot([0, 1], [0, slope])
    ax.set_xlabel("E (eV)")
    return fig


def nudged(png: bytes, levels: int) -> bytes:
    """``png`` with one pixel's red channel moved by ``levels``."""
    image = np.asarray(Image.open(io.BytesIO(png)).convert("RGBA")).copy()
    image[5, 5, 0] = image[5, 5, 0] - levels if image[5, 5, 0] >= levels else image[5, 5, 0] + levels
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="PNG")
    return out.getvalue()


def test_unchanged_figures_are_not_rewritten_and_changed_ones_are(tmp_path):
    png, pdf = save_figure(figure(1.0), "99_test", tmp_path)
    assert png.read_bytes()[:4] == b"\x89PNG" and pdf.read_bytes()[:4] == b"%PDF"
    # one level in one pixel (another CPU's float rounding): the files on disk stay as they are
    png.write_bytes(nudged(png.read_bytes(), 1))
    kept, kept_pdf = png.read_bytes(), pdf.read_bytes()
    save_figure(figure(1.0), "99_test", tmp_path)
    assert png.read_bytes() == kept and pdf.read_bytes() == kept_pdf
    # a visible change (three levels, or other data) is written, PNG and PDF alike
    (fresh, _) = save_figure(figure(1.0), "99_test", tmp_path / "fresh")
    png.write_bytes(nudged(png.read_bytes(), 3))
    save_figure(figure(1.0), "99_test", tmp_path)
    assert png.read_bytes() == fresh.read_bytes()
    before = png.read_bytes(), pdf.read_bytes()
    save_figure(figure(2.0), "99_test", tmp_path)
    assert png.read_bytes() != before[0] and pdf.read_bytes() != before[1]
    # an unreadable PNG on disk, or a missing PDF, is replaced
    png.write_bytes(b"not a png")
    save_figure(figure(2.0), "99_test", tmp_path)
    assert png.read_bytes()[:4] == b"\x89PNG"
    pdf.unlink()
    save_figure(figure(2.0), "99_test", tmp_path)
    assert pdf.exists()
