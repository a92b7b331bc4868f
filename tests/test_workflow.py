"""Profiles and the result cache shared by the notebooks."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest

from xanes_utils import workflow
from xanes_utils.model import ModelConfig, XanesGAT
from xanes_utils.profiles import PROFILES, RESULTS_DIR, cache_dir, get_profile
from xanes_utils.train import DEFAULT_MODEL, History, load_checkpoint, save_checkpoint
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

    def fake_train_many(tasks, jobs=None, progress=False):
        trained.extend(t.model_config for t in tasks)
        return [(XanesGAT(t.model_config), History()) for t in tasks]

    path = tmp_path / "mixed.pt"
    monkeypatch.setattr(workflow, "model_path", lambda *args: path)
    monkeypatch.setattr(workflow, "train_many", fake_train_many)
    profile = get_profile("quick")
    save_checkpoint(path, XanesGAT(ModelConfig.cpu(readout="cell")), extra={"fingerprint": "data-1"})
    model, _ = train_or_load(Prep(), profile, None, "mixed")  # same data, other architecture: retrained
    assert trained == [ModelConfig.cpu()] and model.config == ModelConfig.cpu()
    train_or_load(Prep(), profile, None, "mixed")  # now cached
    assert len(trained) == 1
    Prep.fingerprint = "data-2"
    train_or_load(Prep(), profile, None, "mixed")  # other data: retrained
    assert len(trained) == 2


def test_train_or_load_many_trains_only_the_missing_models_at_once(tmp_path, monkeypatch):
    class Graph:
        def __init__(self, element):
            self.element = element

    class Prep:  # what train_or_load_many reads of a Prepared
        fingerprint = "data-1"

        @staticmethod
        def subset(name):
            return [Graph("Fe"), Graph("Ni"), Graph("Ni")] if name == "train" else [Graph("Ni")]

    calls = []

    def fake_train_many(tasks, jobs=None, progress=False):
        calls.append(([(t.name, len(t.train_graphs), len(t.val_graphs), t.config.epochs) for t in tasks], jobs))
        return [(XanesGAT(t.model_config), History(val_loss=[float(i)])) for i, t in enumerate(tasks)]

    monkeypatch.setattr(workflow, "model_path", lambda profile, data, name: tmp_path / f"{name}.pt")
    monkeypatch.setattr(workflow, "train_many", fake_train_many)
    profile = get_profile("quick")
    save_checkpoint(tmp_path / "single_Fe.pt", XanesGAT(ModelConfig.cpu()), history=History(val_loss=[9.0]),
                    extra={"fingerprint": "data-1"})
    wanted = {"single_Ni": ["Ni"], "single_Fe": ["Fe"], "mixed": None}
    assert not workflow.is_cached(Prep(), profile, None, "mixed")
    models = workflow.train_or_load_many(Prep(), profile, None, wanted, epochs={"single_Ni": 7}, jobs=3)
    assert list(models) == list(wanted) and models["single_Fe"][1].val_loss == [9.0]  # cached, not trained
    assert calls == [([("single_Ni", 2, 1, 7), ("mixed", 3, 1, profile.epochs)], 3)]  # epochs per name or profile's
    assert load_checkpoint(tmp_path / "single_Ni.pt")["extra"]["elements"] == ["Ni"]
    assert load_checkpoint(tmp_path / "single_Ni.pt")["train_config"]["epochs"] == 7
    assert load_checkpoint(tmp_path / "mixed.pt")["extra"]["n_train"] == 3
    assert workflow.is_cached(Prep(), profile, None, "mixed")
    again = workflow.train_or_load_many(Prep(), profile, None, wanted)
    assert calls[-1] == ([], None) and again["mixed"][1].val_loss == [1.0]
    Prep.fingerprint = "data-2"  # other data: nothing is cached
    assert not workflow.is_cached(Prep(), profile, None, "mixed")


def test_trainable_elements_need_train_validation_and_test_spectra():
    class Graph:
        def __init__(self, element):
            self.element = element

    graphs = [Graph(el) for el in ["Fe", "Fe", "Fe", "Fe", "Ni", "Ni", "Ni", "Cu", "Cu", "Cu", "Cu"]]
    prep = workflow.Prepared(records=[], graphs=graphs, train=[0, 1, 4, 7, 8], val=[2, 5, 9], test=[3, 6, 10])
    assert workflow.trainable_elements(prep) == ["Fe", "Cu"]  # Ni has one training spectrum
