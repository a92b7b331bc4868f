"""Training: AdamW + L1 loss, best-validation checkpoint, seeded splits and runs, mixed or single element.

Checkpoints are plain dicts of tensors and primitive types, so they load with
``torch.load(..., weights_only=True)`` (no code is unpickled).
"""

from __future__ import annotations

import dataclasses
import io
import logging
import multiprocessing
import os
import pickle
import platform
import random
import time
import zipfile
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch
from torch_geometric.data import Batch, Data

from xanes_utils.dataset import DATA_DIR
from xanes_utils.dense import DenseGraphs, GraphLoader, collate_for
from xanes_utils.elements import E_START, N_POINTS, STEP_EV
from xanes_utils.io import read_checksummed, write_checksummed
from xanes_utils.model import EVAL_CHUNK, ModelConfig, XanesGAT

if TYPE_CHECKING:
    from xanes_utils.ensemble import Ensemble

log = logging.getLogger(__name__)

DEFAULT_MODEL = DATA_DIR / "models" / "family_bucket.pt"
CHECKPOINT_FORMAT = "xanes-family-bucket-checkpoint/1"


@dataclass
class TrainConfig:
    """Optimisation settings (the paper's: AdamW lr 1e-4, weight decay 1e-3, batch 160, 800 epochs)."""

    epochs: int = 800
    batch_size: int = 160
    lr: float = 1e-4
    weight_decay: float = 1e-3
    seed: int = 0
    device: str = "auto"
    compile: bool = False  # training steps through torch.compile (falls back to eager, logged, if it fails)

    def resolved_device(self) -> torch.device:
        """``auto`` picks CUDA when present, else the CPU."""
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)


@dataclass
class History:
    """Per-epoch losses (mean L1 over graphs) and cumulative wall time in seconds."""

    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    val_by_element: dict[str, list[float]] = field(default_factory=dict)
    best_epoch: int = -1

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def steps_per_epoch(n_graphs: int, batch_size: int) -> int:
    """Optimiser steps in one epoch of :func:`train` (the last partial batch is dropped when there is
    more than one batch)."""
    return max(1, n_graphs // batch_size)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def split_indices(groups: Sequence[str], fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
                  seed: int = 0, by: str = "material", strata: Sequence[str] | None = None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train/validation/test indices.

    ``by="material"`` (default) keeps every site of one material (``groups[i]``) in one split, so no
    structure straddles train and test; ``by="spectrum"`` is the paper's random split of spectra.
    With ``strata`` (e.g. the absorbing element of each spectrum) the units are split per stratum (a
    material counts in the stratum of its first spectrum), and every stratum with at least three units
    gets at least one validation and one test unit, so small elements are evaluated too.
    """
    if by not in ("material", "spectrum"):
        raise ValueError(f"split by must be 'material' or 'spectrum', not {by!r}")
    rng = np.random.default_rng(seed)
    keys = np.asarray(groups) if by == "material" else np.arange(len(groups)).astype(str)
    unit_stratum: dict[str, str] = {}
    for k, s in zip(keys.tolist(), strata if strata is not None else [""] * len(keys)):
        unit_stratum.setdefault(k, s)
    where: dict[str, int] = {}
    for stratum in sorted(set(unit_stratum.values())):
        units = np.array(sorted(k for k, s in unit_stratum.items() if s == stratum))
        order = units[rng.permutation(len(units))]
        n_val = int(round(fractions[1] * len(order)))
        n_test = int(round(fractions[2] * len(order)))
        if strata is not None and len(order) >= 3:
            n_val, n_test = max(n_val, 1), max(n_test, 1)
        where |= {k: 1 for k in order[:n_val]} | {k: 2 for k in order[n_val:n_val + n_test]}
        where |= {k: 0 for k in order[n_val + n_test:]}
    part = np.array([where[k] for k in keys])
    return tuple(np.flatnonzero(part == i) for i in range(3))  # type: ignore[return-value]


def stack_targets(graphs: Sequence[Data]) -> np.ndarray:
    """Targets of ``graphs`` as an array [n, 111]."""
    return torch.cat([g.y for g in graphs]).numpy()


@torch.no_grad()
def predict_graphs(model: XanesGAT | Ensemble, graphs: Sequence[Data] | DenseGraphs, batch_size: int = 512,
                   compile: bool = False) -> np.ndarray:
    """Model spectra [n, 111] for ``graphs`` (or graphs pre-collated by :func:`collate_for`) in eval mode
    (an ensemble's member mean). ``compile``: through :func:`torch.compile` (see :func:`predictor`)."""
    model.eval()
    device = next(model.parameters()).device
    forward, batch_size = predictor(model, batch_size, compile)
    outs = [forward(b.to(device)).cpu() for b in GraphLoader(collate_for(model.config, graphs), batch_size)]
    outs = [o.mean(0) if o.dim() == 3 else o for o in outs]
    return torch.cat(outs).numpy() if outs else np.zeros((0, model.config.out_dim), np.float32)


def _l1_by_element(model: XanesGAT, graphs: Sequence[Data], batch_size: int,
                   inputs: Sequence[Data] | DenseGraphs | None = None) -> tuple[float, dict[str, float]]:
    """Mean L1 over ``graphs`` and per absorbing element (``inputs``: ``graphs`` pre-collated)."""
    err = np.abs(predict_graphs(model, graphs if inputs is None else inputs, batch_size)
                 - stack_targets(graphs)).mean(axis=1)
    elements = np.array([g.element for g in graphs])
    return float(err.mean()), {el: float(err[elements == el].mean()) for el in dict.fromkeys(elements.tolist())}


class CompiledOrEager:
    """Forward passes of ``model`` (a network or an ensemble) through ``torch.compile(model, dynamic=True)``;
    if compiling or running the compiled model fails, the failure is logged and ``model`` runs in eager mode
    from then on. The first call compiles (tens of seconds; instances of the same architecture share the
    compiled code): for prediction it pays off only on very many graphs (BENCHMARKS.md, "Model speed")."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.compiled: torch.nn.Module | None = torch.compile(model, dynamic=True)

    def __call__(self, batch: DenseGraphs | Data, **kwargs: Any) -> Any:
        if self.compiled is not None:
            try:
                return self.compiled(batch, **kwargs)
            except Exception as exc:  # any compiler or backend error: go on in eager mode
                log.warning("torch.compile failed (%s: %s); running in eager mode", type(exc).__name__, exc)
                self.compiled = None
        return self.model(batch, **kwargs)


def predictor(model: torch.nn.Module, batch_size: int, compile: bool) -> tuple[Callable[..., Any], int]:
    """The forward pass to predict with and its batch size: ``model`` as it is, or through
    :class:`CompiledOrEager` in batches of at most :data:`~xanes_utils.model.EVAL_CHUNK` graphs, which the model
    computes in one piece (no chunking, hence no graph breaks, inside the compiled graph)."""
    if not compile:
        return model, batch_size
    return CompiledOrEager(model), min(batch_size, EVAL_CHUNK)


def train(train_graphs: Sequence[Data], val_graphs: Sequence[Data], model_config: ModelConfig,
          config: TrainConfig | None = None, progress: bool = True) -> tuple[XanesGAT, History]:
    """Train a fresh model; return it with the best-validation weights loaded, and its history
    (per-element validation curves included, from which time to a given error is read)."""
    from tqdm import tqdm

    config = config or TrainConfig()
    if not train_graphs or not val_graphs:
        raise ValueError("training needs at least one training and one validation graph")
    seed_everything(config.seed)
    device = config.resolved_device()
    model = XanesGAT(model_config).to(device)
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=True)
    forward = CompiledOrEager(model) if config.compile else model
    generator = torch.Generator().manual_seed(config.seed)
    loader = GraphLoader(collate_for(model_config, train_graphs), config.batch_size, shuffle=True,
                         generator=generator, drop_last=len(train_graphs) > config.batch_size)
    val_inputs = collate_for(model_config, val_graphs)
    history, best, start = History(), None, time.perf_counter()
    bar = tqdm(range(config.epochs), desc="training", unit="epoch", disable=not progress)
    for epoch in bar:
        model.train()
        total, count = torch.zeros((), dtype=torch.float64, device=device), 0  # on the device: no sync per step
        for batch in loader:
            batch = batch.to(device)
            optimiser.zero_grad(set_to_none=True)
            loss = torch.nn.functional.l1_loss(forward(batch), batch.y)
            loss.backward()
            optimiser.step()
            total, count = total + loss.detach().double() * batch.num_graphs, count + batch.num_graphs
        val, per_element = _l1_by_element(model, val_graphs, 4 * config.batch_size, val_inputs)
        history.train_loss.append(total.item() / count)
        history.val_loss.append(val)
        for el, v in per_element.items():
            history.val_by_element.setdefault(el, []).append(v)
        history.seconds.append(time.perf_counter() - start)
        if best is None or val < history.val_loss[history.best_epoch]:
            history.best_epoch = epoch
            best = {k: v.detach().clone() for k, v in model.state_dict().items()}
        bar.set_postfix(train=f"{history.train_loss[-1]:.4f}", val=f"{val:.4f}")
    model.load_state_dict(best)
    model.eval()
    log.info("trained %d epochs in %.1f s; best validation L1 %.4f at epoch %d", len(history.val_loss),
             history.seconds[-1], history.val_loss[history.best_epoch], history.best_epoch)
    return model, history


@dataclass
class TrainTask:
    """One training of :func:`train_many`: the arguments of :func:`train` and a ``name`` that errors quote."""

    name: str
    train_graphs: Sequence[Data]
    val_graphs: Sequence[Data]
    model_config: ModelConfig
    config: TrainConfig = field(default_factory=TrainConfig)

    def pack(self) -> bytes:
        """The arguments as plain pickled bytes, the graphs collated: a cached graph is a view whose pickle
        would hold the whole cache, and bytes keep torch from sharing each tensor through a file descriptor."""
        collate = Batch.from_data_list
        return pickle.dumps((collate(list(self.train_graphs)), collate(list(self.val_graphs)), self.model_config,
                             self.config))


def _train_packed(task: bytes) -> bytes:
    """Train a :meth:`TrainTask.pack`-ed task (in a worker); its best state dict (CPU) and history as pickled
    bytes."""
    train_batch, val_batch, model_config, config = pickle.loads(task)
    model, history = train(train_batch.to_data_list(), val_batch.to_data_list(), model_config, config, progress=False)
    return pickle.dumps(({k: v.detach().cpu() for k, v in model.state_dict().items()}, history.as_dict()))


def _one_thread() -> None:
    """Initialiser of :func:`train_many`'s worker processes."""
    torch.set_num_threads(1)


def default_jobs(n_tasks: int) -> int:
    """Worker processes for ``n_tasks`` independent trainings: one per CPU core this process may use, at
    most one per task, at least one."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(cores, n_tasks))


def _failure(tasks: Sequence[TrainTask], i: int, exc: BaseException) -> RuntimeError:
    """The error that names the failed training ``tasks[i]``."""
    return RuntimeError(f"training {tasks[i].name!r} ({i + 1} of {len(tasks)}) failed: {type(exc).__name__}: {exc}")


def _train_in_pool(tasks: Sequence[TrainTask], jobs: int, progress: bool) -> list[bytes]:
    """:func:`_train_packed` results of ``tasks`` in input order, from ``jobs`` spawned (CUDA-safe) worker
    processes of one torch thread each, packing a task only when a worker is free. The first failure (or
    an interrupt) terminates the workers and raises, naming the failed task."""
    from tqdm import tqdm

    results = [b""] * len(tasks)
    todo = iter(range(len(tasks)))
    pool = ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_one_thread)
    running: dict[Future, int] = {}

    def submit() -> None:
        i = next(todo, None)
        if i is not None:
            try:
                task = tasks[i].pack()
            except Exception as exc:
                raise _failure(tasks, i, exc) from exc
            running[pool.submit(_train_packed, task)] = i

    try:
        with tqdm(total=len(tasks), desc="training", unit="model", disable=not progress) as bar:
            for _ in range(jobs):
                submit()
            while running:
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    i = running.pop(future)
                    try:
                        results[i] = future.result()
                    except Exception as exc:  # the worker's error, or a broken pool (a worker killed)
                        raise _failure(tasks, i, exc) from exc
                    bar.update()
                    submit()
    except BaseException:
        workers = list((pool._processes or {}).values())  # no public accessor before Python 3.14
        pool.shutdown(wait=False, cancel_futures=True)
        for worker in workers:
            worker.terminate()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return results


def train_many(tasks: Sequence[TrainTask], jobs: int | None = None, progress: bool = False
               ) -> list[tuple[XanesGAT, History]]:
    """Train independent ``tasks`` with :func:`train`; return their models (CPU, eval mode) and histories
    in input order.

    ``jobs`` worker processes (``None``: :func:`default_jobs`) train them in parallel, one torch thread
    each, which gives bit-identical weights to a serial run at one thread (the CPU profiles' setting);
    with ``jobs=1`` (or one task) they train one after the other in this process, at its thread count.
    A failed training raises ``RuntimeError`` naming it (its cause: the original error) and stops the
    others. ``progress``: a bar of finished trainings (serial: of each training's epochs).
    """
    if jobs is not None and jobs < 1:
        raise ValueError(f"jobs must be at least 1, not {jobs}")
    workers = min(default_jobs(len(tasks)) if jobs is None else jobs, len(tasks))
    out = []
    if workers > 1:
        for task, result in zip(tasks, _train_in_pool(tasks, workers, progress)):
            state, history = pickle.loads(result)
            model = XanesGAT(task.model_config)
            model.load_state_dict(state)
            out.append((model.eval(), History(**history)))
    else:  # in this process: no packing, the graphs go to train() as they are
        for i, task in enumerate(tasks):
            try:
                model, history = train(task.train_graphs, task.val_graphs, task.model_config, task.config, progress)
            except Exception as exc:
                raise _failure(tasks, i, exc) from exc
            out.append((model.cpu().eval(), history))
    if tasks:
        log.info("trained %d models, %d at a time", len(tasks), workers)
    return out


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "torch": str(torch.__version__)}
    for pkg in ("torch-geometric", "pymatgen", "feff10-rs", "xanes-family-bucket"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def save_checkpoint(path: str | Path, model: XanesGAT, train_config: TrainConfig | None = None,
                    metrics: dict | None = None, history: History | None = None, extra: dict | None = None
                    ) -> None:
    """Save weights with model/training config, energy grid definition, versions and metrics."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "model_config": model.config.to_dict(),
        "train_config": dataclasses.asdict(train_config) if train_config else {},
        "grid": {"e_start": dict(E_START), "step_ev": STEP_EV, "n_points": N_POINTS},
        "versions": _versions(),
        "metrics": metrics or {},
        "history": history.as_dict() if history else {},
        "extra": extra or {},
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    write_checksummed(path, buffer.getvalue())


def read_payload(path: str | Path, formats: str | tuple[str, ...]) -> dict:
    """The dict saved at ``path`` by :func:`save_checkpoint` (or an ensemble's), read safely
    (``weights_only=True``: no code is unpickled) after checking its SHA-256 sidecar (a file without one
    loads with a warning); raises ``ValueError`` naming the file unless its format is one of ``formats``."""
    path = Path(path)
    formats = (formats,) if isinstance(formats, str) else formats
    if not path.exists():
        raise FileNotFoundError(f"{path}: model checkpoint not found (train one with notebooks/02_training)")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path}: not a model checkpoint (not a file written by torch.save; expected a .pt "
                         f"file saved by xanes_utils.train.save_checkpoint)")
    data = read_checksummed(path)
    try:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad file
        raise ValueError(f"{path}: not a loadable weights-only checkpoint ({exc})") from exc
    if not isinstance(payload, dict) or payload.get("format") not in formats:
        raise ValueError(f"{path}: not a {' or '.join(formats)} checkpoint")
    return payload


def _check_single(payload: dict, path: Path) -> dict:
    """``payload`` after checking that its ``model_config`` and weights are present, valid and finite."""
    for key in ("model_config", "state_dict"):
        if not isinstance(payload.get(key), dict):
            raise ValueError(f"{path}: the checkpoint has no {key!r} dict")
    try:
        ModelConfig.from_dict(payload["model_config"])
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: invalid model_config ({exc})") from exc
    for name, tensor in payload["state_dict"].items():
        if not isinstance(tensor, torch.Tensor) or not torch.isfinite(tensor).all():
            raise ValueError(f"{path}: weight {name!r} is not a finite tensor (NaN, infinite or not a tensor)")
    return payload


def load_checkpoint(path: str | Path | None = None) -> dict:
    """Load and check a single-model checkpoint dict (see :func:`read_payload`); any problem raises a
    ``ValueError`` naming the file. ``None``: the committed single model of notebook 02."""
    path = Path(path) if path is not None else DEFAULT_MODEL
    return _check_single(read_payload(path, CHECKPOINT_FORMAT), path)


def model_from_checkpoint(payload: dict, device: str = "cpu", name: str = "checkpoint") -> XanesGAT:
    """The model (eval mode) of a checkpoint dict read by :func:`load_checkpoint`; errors name ``name``."""
    model = XanesGAT(ModelConfig.from_dict(payload["model_config"]))
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise ValueError(f"{name}: the weights do not match the checkpoint's model_config ({exc})") from exc
    return model.to(device).eval()


def load_model(path: str | Path | None = None, device: str = "cpu", member: int | None = None
               ) -> XanesGAT | Ensemble:
    """The model of a checkpoint: a single model, or an ensemble (``member``: one of its members).

    ``None`` loads the committed ensemble trained on the embedded data (notebook 03), which gives every
    prediction an uncertainty; ``member=0`` one of its members; :data:`DEFAULT_MODEL` the single model of
    notebook 02, which the interpretability notebooks analyse.
    """
    from xanes_utils.ensemble import DEFAULT_ENSEMBLE, ENSEMBLE_FORMAT, ensemble_from_payload

    path = Path(path) if path is not None else DEFAULT_ENSEMBLE
    payload = read_payload(path, (CHECKPOINT_FORMAT, ENSEMBLE_FORMAT))
    if payload["format"] == CHECKPOINT_FORMAT:
        if member not in (None, 0):
            raise ValueError(f"{path}: holds a single model, not an ensemble: there is no member {member}")
        return model_from_checkpoint(_check_single(payload, path), device, name=str(path))
    ensemble = ensemble_from_payload(payload, str(path))
    if member is None:
        return ensemble.to(device)
    if not 0 <= member < len(ensemble.members):
        raise IndexError(f"{path}: member {member} out of range: the ensemble has {len(ensemble.members)} "
                         f"members, numbered from 0")
    return ensemble.members[member].to(device)
