"""The steps the notebooks share: load data, build graphs, split, train-or-load cached models.

Expensive results live in ``results/<profile>/`` (see :func:`xanes_utils.profiles.cache_dir`) and are
reused unless ``retrain`` is set, so plotting never depends on retraining.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np
from torch_geometric.data import Data

from xanes_utils.dataset import Record, load_dataset
from xanes_utils.elements import ELEMENTS
from xanes_utils.graphs import N_NEIGHBOURS
from xanes_utils.io import CorruptFileError, read_checksummed_json, write_checksummed_json
from xanes_utils.model import ModelConfig, XanesGAT
from xanes_utils.profiles import Profile, cache_dir
from xanes_utils.site_embeddings import SITE_EMBEDDING_DIM, attach_site_embeddings, cache_file_name
from xanes_utils.train import (
    DEFAULT_MODEL, History, TrainConfig, TrainTask, load_checkpoint, model_from_checkpoint, save_checkpoint,
    split_indices, train_many,
)

if TYPE_CHECKING:
    import pandas as pd

    from xanes_utils.ensemble import Ensemble

log = logging.getLogger(__name__)


def load_records(data: str | Path | None = None) -> list[Record]:
    """The embedded dataset (``None``) or a user's data in any format :mod:`xanes_utils.data` reads."""
    if data is None:
        return load_dataset()
    from xanes_utils.data import load_any

    return list(load_any(data))


@dataclass
class Prepared:
    """Records, their graphs and the (grouped-by-material) train/validation/test split."""

    records: list[Record]
    graphs: list[Data]
    train: list[int]
    val: list[int]
    test: list[int]

    @property
    def fingerprint(self) -> str:
        """Hash of the spectra ids and the split: cached results made from other data are stale."""
        digest = hashlib.sha256()
        for part in (self.train, self.val, self.test):
            digest.update(json.dumps([self.records[i].id for i in part]).encode())
        return digest.hexdigest()[:16]

    def subset(self, part: str) -> list[Data]:
        """Graphs of ``part`` ('train', 'val' or 'test')."""
        return [self.graphs[i] for i in getattr(self, part)]


def prepare(profile: Profile, data: str | Path | None = None, split_by: str = "material",
            n_neighbours: int = N_NEIGHBOURS, site_embedding: int = 0) -> Prepared:
    """Load records, build (cached) graphs with ``n_neighbours`` slots and split them (grouped by
    material, a relaxed structure with its unrelaxed parent, stratified by absorbing element, with the
    profile's seed); also sets torch's thread count for the profile. ``site_embedding`` (a width; 0:
    none) attaches the absorbers' CHGNet embeddings (cached; see :mod:`xanes_utils.site_embeddings`)."""
    import torch

    from xanes_utils.graphs import build_graphs

    if profile.threads:
        torch.set_num_threads(profile.threads)
    records = load_records(data)
    directory = cache_dir(profile.name, data)
    name = "graphs.pt" if n_neighbours == N_NEIGHBOURS else f"graphs-{n_neighbours}.pt"
    graphs = build_graphs(records, cache_path=directory / name, n_neighbours=n_neighbours)
    groups = [r.source.get("unrelaxed_id") or r.material_id or r.id for r in records]
    train_idx, val_idx, test_idx = split_indices(groups, seed=profile.seed, by=split_by,
                                                 strata=[r.element for r in records])
    prep = Prepared(records, graphs, train_idx.tolist(), val_idx.tolist(), test_idx.tolist())
    if site_embedding:
        with_site_embeddings(prep, profile, data, site_embedding)
    return prep


def with_site_embeddings(prep: Prepared, profile: Profile, data: str | Path | None,
                         width: int = SITE_EMBEDDING_DIM, progress: bool = True) -> None:
    """Attach the absorbers' CHGNet site embeddings of ``width`` to ``prep``'s graphs unless they have them
    (cached in the profile's results directory; a progress bar while they are computed unless not ``progress``)."""
    first = prep.graphs[0] if prep.graphs else None
    if first is not None and ("site_embedding" not in first or first.site_embedding.shape[1] != width):
        attach_site_embeddings(prep.graphs, prep.records, width=width, progress=progress,
                               cache_path=cache_dir(profile.name, data) / cache_file_name("site_embeddings", width))


def model_path(profile: Profile, data: str | Path | None, name: str) -> Path:
    """Checkpoint path; the mixed model of the default profile on the embedded data is the shipped model."""
    if name == "mixed" and profile.name == "default" and data is None:
        return DEFAULT_MODEL
    return cache_dir(profile.name, data) / "models" / f"{name}.pt"


def train_or_load(prep: Prepared, profile: Profile, data: str | Path | None, name: str,
                  elements: Sequence[str] | None = None, epochs: int | None = None, retrain: bool = False,
                  progress: bool = True) -> tuple[XanesGAT, History]:
    """Train on the training split restricted to ``elements`` (all: mixed), or load the cached checkpoint."""
    return train_or_load_many(prep, profile, data, {name: elements}, epochs, retrain, 1, progress)[name]


def _cached_checkpoint(prep: Prepared, profile: Profile, data: str | Path | None, name: str) -> dict | None:
    """The checkpoint payload of model ``name`` if it exists and was trained on ``prep``'s data and split
    with the profile's architecture, else None."""
    path = model_path(profile, data, name)
    if not path.exists():
        return None
    payload = load_checkpoint(path)
    if (payload["extra"].get("fingerprint") == prep.fingerprint
            and ModelConfig.from_dict(payload["model_config"]) == getattr(ModelConfig, profile.model)()):
        return payload
    log.info("%s was trained on other data, another split or another architecture: retraining", path)
    return None


def is_cached(prep: Prepared, profile: Profile, data: str | Path | None, name: str) -> bool:
    """Whether :func:`train_or_load` would load model ``name`` rather than train it (without ``retrain``)."""
    return _cached_checkpoint(prep, profile, data, name) is not None


def trainable_elements(prep: Prepared) -> list[str]:
    """Elements with a single-element model to train: at least 2 training, 1 validation and 1 test
    spectrum (the others are logged as skipped)."""
    out = []
    for el in ELEMENTS:
        n = [sum(prep.graphs[i].element == el for i in part) for part in (prep.train, prep.val, prep.test)]
        if n[0] < 2 or n[1] < 1 or n[2] < 1:
            log.info("%s: no single-element model (%d train, %d validation, %d test spectra)", el, *n)
        else:
            out.append(el)
    return out


def train_or_load_many(prep: Prepared, profile: Profile, data: str | Path | None,
                       models: Mapping[str, Sequence[str] | None], epochs: int | Mapping[str, int] | None = None,
                       retrain: bool = False, jobs: int | None = None, progress: bool = True
                       ) -> dict[str, tuple[XanesGAT, History]]:
    """:func:`train_or_load` for several models ``{name: elements}``: load the cached ones, train the
    others in ``jobs`` parallel processes (:func:`xanes_utils.train.train_many`, in the order given: put
    the longest first; ``None``: one per core) and cache them. ``epochs``: one number for all, or one per
    name (the profile's ``epochs`` where missing). Returns ``{name: (model, history)}`` in the order of
    ``models``."""
    model_config = getattr(ModelConfig, profile.model)()
    out: dict[str, tuple[XanesGAT, History]] = {}
    tasks: list[TrainTask] = []
    for name, elements in models.items():
        payload = None if retrain else _cached_checkpoint(prep, profile, data, name)
        if payload is not None:
            out[name] = (model_from_checkpoint(payload, name=str(model_path(profile, data, name))),
                         History(**payload["history"]))
            continue
        n_epochs = epochs.get(name) if isinstance(epochs, Mapping) else epochs
        config = TrainConfig(epochs=n_epochs or profile.epochs, batch_size=profile.batch_size, lr=profile.lr,
                             seed=profile.seed)
        keep = set(elements) if elements is not None else None
        pick = [g for g in prep.subset("train") if keep is None or g.element in keep]
        val = [g for g in prep.subset("val") if keep is None or g.element in keep]
        tasks.append(TrainTask(name, pick, val, model_config, config))
    for task, (model, history) in zip(tasks, train_many(tasks, jobs, progress)):
        elements = models[task.name]
        save_checkpoint(model_path(profile, data, task.name), model, task.config, history=history,
                        extra={"elements": list(elements) if elements else "all", "profile": profile.name,
                               "n_train": len(task.train_graphs), "n_val": len(task.val_graphs),
                               "fingerprint": prep.fingerprint})
        out[task.name] = model, history
    return {name: out[name] for name in models}


def ensemble_path(profile: Profile, data: str | Path | None) -> Path:
    """Ensemble checkpoint path; the default profile's on the embedded data is the one ``predict`` uses."""
    from xanes_utils.ensemble import DEFAULT_ENSEMBLE

    if profile.name == "default" and data is None:
        return DEFAULT_ENSEMBLE
    return cache_dir(profile.name, data) / "models" / "ensemble.pt"


def ensemble_or_load(prep: Prepared, profile: Profile, data: str | Path | None, n_members: int = 5,
                     retrain: bool = False, jobs: int | None = None, progress: bool = True
                     ) -> tuple[Ensemble, dict]:
    """Train (members on bootstrap resamples of the training split, calibrated on the validation split)
    or load the cached ensemble of the profile's model (reading the profile's site embeddings, which are
    attached to ``prep``'s graphs); returns it and its file's ``extra`` dict (member histories' best epochs
    and wall times, the split fingerprint)."""
    from xanes_utils.ensemble import load_ensemble, save_ensemble, train_ensemble

    path = ensemble_path(profile, data)
    model_config = profile.ensemble_config()
    if model_config.site_embedding:
        with_site_embeddings(prep, profile, data, model_config.site_embedding, progress)
    if path.exists() and not retrain:
        try:
            model, extra = load_ensemble(path)
        except (ValueError, CorruptFileError) as exc:
            log.warning("%s; retraining the ensemble", exc)
        else:
            if (extra.get("fingerprint") == prep.fingerprint and model.config == model_config
                    and len(model.members) == n_members):
                return model, extra
            log.info("%s was trained on other data, another split or another architecture: retraining", path)
    config = TrainConfig(epochs=profile.epochs, batch_size=profile.batch_size, lr=profile.lr, seed=profile.seed)
    model, histories = train_ensemble(prep.subset("train"), prep.subset("val"), model_config, config,
                                      n_members=n_members, jobs=jobs, progress=progress)
    extra = {"profile": profile.name, "fingerprint": prep.fingerprint, "n_train": len(prep.train),
             "best_epochs": [h["best_epoch"] for h in histories],
             "seconds": [h["seconds"][-1] for h in histories]}
    save_ensemble(path, model, extra)
    return model, extra


def train_for_prediction(data: str | Path, out: str | Path, profile: Profile, n_members: int = 5,
                         jobs: int | None = None, progress: bool = True) -> pd.DataFrame:
    """Train the shipped model's recipe (the profile's ensemble, :func:`ensemble_or_load`) on the records of
    ``data`` (any format :func:`load_records` reads), score it on their held-out test split and write it to
    ``out``, a checkpoint that ``predict --model`` and :func:`xanes_utils.train.load_model` read.

    Returns the test table of :func:`xanes_utils.evaluate.evaluation_table` (η against each element's mean
    training spectrum) with the share of test points inside the calibrated ±2σ band (``coverage_2sigma``);
    the checkpoint's ``extra`` holds it as ``"test"``. Raises a ValueError naming ``data`` when its records
    are too few for a training, validation and test split."""
    from xanes_utils.calibration import coverage
    from xanes_utils.ensemble import predict_ensemble, save_ensemble
    from xanes_utils.evaluate import evaluation_table, mean_spectra
    from xanes_utils.train import stack_targets

    prep = prepare(profile, data)
    if len(prep.train) < 2 or not prep.val or not prep.test:
        raise ValueError(f"{data}: {len(prep.records)} usable records give {len(prep.train)} training, {len(prep.val)} "
                         f"validation and {len(prep.test)} test spectra (split by material): need at least 2, 1 and 1")
    model, extra = ensemble_or_load(prep, profile, data, n_members, retrain=True, jobs=jobs, progress=progress)
    train = prep.subset("train")
    baseline = mean_spectra(stack_targets(train), [g.element for g in train])
    test = [g for g in prep.subset("test") if g.element in baseline]
    if len(test) < len(prep.test):  # a material's sites follow its first site's element in the split
        log.warning("%d test spectra of elements without training spectra are not scored", len(prep.test) - len(test))
    y_true, elements = stack_targets(test), np.array([g.element for g in test])
    pred = predict_ensemble(model, test)
    table = evaluation_table(y_true, pred.mu, elements, baseline)
    table["coverage_2sigma"] = [coverage(y_true[mask], pred.mu[mask], pred.mu_std[mask], ks=(2.0,))[2.0]
                                for mask in (elements == el if el != "all" else slice(None) for el in table.index)]
    save_ensemble(out, model, extra | {"data": str(data), "test": to_jsonable(table)})
    log.info("wrote %s (%d members; test eta %.2f on %d spectra)", out, n_members, table.loc["all", "eta"], len(test))
    return table


def cached_json(path: Path, compute, key: str, retrain: bool = False):
    """``compute()`` once and keep its JSON-serialisable result at ``path`` with ``key`` (and a checksum
    sidecar); reuse it while the key matches (e.g. :attr:`Prepared.fingerprint`), recompute when it does
    not, when the file is corrupt or with ``retrain``."""
    if path.exists() and not retrain:
        try:
            stored = read_checksummed_json(path)
        except CorruptFileError as exc:
            log.warning("%s; recomputing it", exc)
        else:
            if isinstance(stored, dict) and stored.get("key") == key and "result" in stored:
                return stored["result"]
            log.info("%s was computed from other data: recomputing", path)
    result = compute()
    write_checksummed_json(path, {"key": key, "result": result})
    return result


def to_jsonable(table) -> dict:
    """A pandas DataFrame as {column: {index: value}} with plain floats (for :func:`cached_json`)."""
    return {c: {str(k): (None if v is None or (isinstance(v, float) and np.isnan(v)) else float(v))
                for k, v in table[c].items()} for c in table.columns}
