"""Committed notebooks: outputs and metadata free of machine paths, outputs free of environment warnings."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
#: An absolute POSIX path under a usual top-level folder, a home folder (~/), or a Windows drive.
ABSOLUTE_PATH = re.compile(r"(?<![\w.~])/(?:home|root|work|tmp|usr|opt|var|mnt|srv|Users|private|data|scratch)/"
                           r"|~/|\b[A-Za-z]:\\\\")


def output_texts(notebook: Path) -> list[tuple[int, str, str]]:
    """(cell number, output kind, text) of every text output of a notebook."""
    cells = json.loads(notebook.read_text())["cells"]
    out = []
    for n, cell in enumerate(cells):
        for o in cell.get("outputs", []):
            if o["output_type"] == "stream":
                out.append((n, o["name"], "".join(o["text"])))
            elif o["output_type"] == "error":
                out.append((n, "error", "\n".join(o["traceback"])))
            else:
                for mime, value in o.get("data", {}).items():
                    if mime.startswith("text/"):
                        out.append((n, mime, "".join(value)))
    return out


def test_pattern_finds_machine_paths():
    assert ABSOLUTE_PATH.search("/work/main/.venv/lib/python3.11/site-packages/tqdm/auto.py:21: TqdmWarning")
    assert ABSOLUTE_PATH.search("see /home/ana/data.json") and ABSOLUTE_PATH.search(r"C:\\Users\\x")
    assert not ABSOLUTE_PATH.search("results/default/03_evaluation_table.csv, energy 1/2 and km/s")


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_outputs_hold_no_absolute_path_or_warning(notebook):
    texts = output_texts(notebook)
    assert texts, f"{notebook.name} has no outputs: run python run_all.py --update-notebooks"
    for cell, kind, text in texts:
        assert not ABSOLUTE_PATH.search(text), f"{notebook.name} cell {cell} ({kind}): {text[:300]}"
        assert not (kind == "stderr" and "Warning" in text), f"{notebook.name} cell {cell}: {text[:300]}"
    nb = json.loads(notebook.read_text())
    metadata = json.dumps([nb["metadata"]] + [c.get("metadata", {}) for c in nb["cells"]])
    assert not ABSOLUTE_PATH.search(metadata), f"{notebook.name} metadata: {ABSOLUTE_PATH.search(metadata)}"
