"""Profiles and the result cache shared by the notebooks."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest

from xanes_utils import workflow
from xanes_utils.model import ModelConfig, XanesGAT
from xanes_utils.profiles import PROFILES, RESULTS_DIR, cache_dir, get_profile
from xanes_utils.train import DEFAULT_MODEL, History, save_checkpoint
from xanes_utils.workflow import cached_json, model_path, to_jsonable, train_or_load


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


def test_ensemble_config_follows_the_profile():
    base = get_profile("default")
    assert base.ensemble_config() == ModelConfig.cpu(site_embedding=base.site_embedding, angular=base.angular)
    flipped = dataclasses.replace(base, angular=not base.angular, site_embedding=0)
    config = flipped.ensemble_config()
    assert config.angular is (not base.angular) and config.site_embedding == 0
    assert config.edge_dim != base.ensemble_config().edge_dim


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


def test_cached_model_is_reused_only_for_the_same_data_and_architecture(tmp_path, monkeypatch):
    class Prep:  # what train_or_load reads of a Prepared
        fingerprint = "data-1"

        @staticmethod
        def subset(name):
            return []

    trained = []

    def fake_train(train, val, model_config, config, progress=True):
        trained.append(model_config)
        return XanesGAT(model_config), History()

    path = tmp_path / "mixed.pt"
    monkeypatch.setattr(workflow, "model_path", lambda *args: path)
    monkeypatch.setattr(workflow, "train", fake_train)
    profile = get_profile("quick")
    save_checkpoint(path, XanesGAT(ModelConfig.cpu(readout="cell")), extra={"fingerprint": "data-1"})
    model, _ = train_or_load(Prep(), profile, None, "mixed")  # same data, other architecture: retrained
    assert trained == [ModelConfig.cpu()] and model.config == ModelConfig.cpu()
    train_or_load(Prep(), profile, None, "mixed")  # now cached
    assert len(trained) == 1
    Prep.fingerprint = "data-2"
    train_or_load(Prep(), profile, None, "mixed")  # other data: retrained
    assert len(trained) == 2
