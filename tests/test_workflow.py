"""Profiles and the result cache shared by the notebooks."""

from __future__ import annotations

import pandas as pd
import pytest

from xanes_utils.profiles import PROFILES, RESULTS_DIR, cache_dir, get_profile
from xanes_utils.workflow import cached_json, model_path, to_jsonable
from xanes_utils.train import DEFAULT_MODEL


def test_profiles_and_cache_dirs(tmp_path):
    assert set(PROFILES) == {"quick", "default", "paper"}
    assert get_profile("paper").model == "paper" and get_profile("paper").lr == 1e-4
    with pytest.raises(ValueError, match="unknown profile 'fast'"):
        get_profile("fast")
    assert cache_dir("default") == RESULTS_DIR / "default"
    own = cache_dir("default", tmp_path / "mine.json")
    assert own.parent == RESULTS_DIR and own != cache_dir("default") and own.name.startswith("default-mine-")
    assert model_path(get_profile("default"), None, "mixed") == DEFAULT_MODEL
    assert model_path(get_profile("quick"), None, "mixed") == RESULTS_DIR / "quick" / "models" / "mixed.pt"


def test_cached_json_computes_once_unless_retrain(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"value": len(calls)}

    path = tmp_path / "r.json"
    assert cached_json(path, compute, key="a") == {"value": 1}
    assert cached_json(path, compute, key="a") == {"value": 1} and len(calls) == 1
    assert cached_json(path, compute, key="a", retrain=True) == {"value": 2}
    assert cached_json(path, compute, key="b") == {"value": 3}  # other data: stale, recomputed


def test_to_jsonable_turns_nan_into_none():
    table = pd.DataFrame({"a": [1.0, float("nan")]}, index=["Fe", "Ni"])
    assert to_jsonable(table) == {"a": {"Fe": 1.0, "Ni": None}}
