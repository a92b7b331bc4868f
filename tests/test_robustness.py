"""Property-based robustness of graph building and prediction: clear errors, never a crash."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from pymatgen.core import Lattice, Structure

from xanes_utils.elements import UnsupportedElementError
from xanes_utils.graphs import build_graph
from xanes_utils.model import ModelConfig, XanesGAT
from xanes_utils.prediction import predict
from xanes_utils.structures import StructureError

SPECIES = ["Fe", "Ni", "Cu", "Mo", "Ag", "O", "S", "Cl", "Na", "Hf", "Au"]
MODEL = XanesGAT(ModelConfig(conv_dims=(8, 8, 8), heads=3, head_dim=4, mlp_dims=(8, 8))).eval()
CLEAR_ERRORS = (StructureError, UnsupportedElementError, ValueError, IndexError)

def _structure(a, species, coords):
    return Structure(Lattice.cubic(a), species, coords[: len(species)])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(a=st.floats(1.5, 25.0), species=st.lists(st.sampled_from(SPECIES), min_size=1, max_size=6),
       coords=st.lists(st.lists(st.floats(0, 1), min_size=3, max_size=3), min_size=6, max_size=6))
def test_graph_building_and_prediction_never_crash(a, species, coords):
    s = _structure(a, species, coords)
    try:
        g = build_graph(s, 0)
    except CLEAR_ERRORS as exc:
        assert str(exc)
    else:
        assert g.edge_attr.shape == (20, 65) and bool(np.isfinite(g.edge_attr.numpy()).all())
    try:
        preds = predict(s, model=MODEL)
    except CLEAR_ERRORS as exc:
        assert str(exc)
    else:
        assert preds and all(p.mu.shape == (111,) and np.isfinite(p.mu).all() for p in preds)


@settings(max_examples=25, deadline=None)
@given(text=st.text(max_size=300))
def test_garbage_structure_files_name_the_file(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("cif") / "garbage.cif"
    path.write_text(text)
    with pytest.raises(StructureError, match="garbage.cif"):
        predict(path, model=MODEL)


def test_huge_structure_is_handled():
    big = Structure(Lattice.cubic(4.17), ["Ni", "O"], [[0, 0, 0], [0.5] * 2 + [0.5]])
    big.make_supercell([8, 8, 8])  # 1,024 atoms
    preds = predict(big, model=MODEL)
    assert len(preds) == 1 and preds[0].mu.shape == (111,)
