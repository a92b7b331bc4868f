"""Reader of OmniXAS-style JSON lines and the global energy shift."""

from __future__ import annotations

import gzip
import json
import logging

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from xanes_utils.elements import energy_grid
from xanes_utils.omnixas import fit_shift, read_jsonl, to_records


def line(site: int = 0, element: str = "Cu", shift: float = 0.0, **change) -> str:
    s = Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.2), ["Cu", "O"], [[0, 0, 0], [0.5] * 3])
    energy = np.linspace(8980, 9050, 200) + shift
    mu = 1 / (1 + np.exp(-(energy - 8995 - shift)))  # an edge step at 8995 eV (+ shift)
    entry = {"id": f"x-{site}", "material": "x", "element": element, "site": site, "structure": s.as_dict(),
             "energy": energy.tolist(), "mu": mu.tolist()} | change
    return json.dumps(entry)


def test_read_skips_bad_lines_naming_them(tmp_path, caplog):
    path = tmp_path / "set.jsonl.gz"
    bad_mu = line(mu=[float("nan")] * 200)
    with gzip.open(path, "wt") as fh:
        fh.write("\n".join([line(), line(site=4), bad_mu, line(element="Xx"), "{not json"]) + "\n")
    with caplog.at_level(logging.WARNING):
        spectra = read_jsonl(path)
    assert len(spectra) == 1  # site 4 is O, NaN mu, unsupported element, malformed JSON
    assert "line 2" in caplog.text and "not Cu" in caplog.text and "line 5" in caplog.text
    with pytest.raises(ValueError, match="line 2"):
        read_jsonl(path, strict=True)


def test_fit_shift_recovers_a_known_offset(tmp_path):
    path = tmp_path / "set.jsonl"
    path.write_text(line(shift=-1.5) + "\n")
    spectra = read_jsonl(path)
    reference = {"Cu": to_records(read_jsonl_text(tmp_path, line()), 0.0)[0].mu}
    assert fit_shift(spectra, reference) == pytest.approx(1.5, abs=0.051)
    (record,) = to_records(spectra, 1.5)
    assert np.array_equal(record.energy, energy_grid("Cu")) and np.allclose(record.mu, reference["Cu"], atol=0.01)


def read_jsonl_text(tmp_path, text: str):
    path = tmp_path / "ref.jsonl"
    path.write_text(text + "\n")
    return read_jsonl(path)
