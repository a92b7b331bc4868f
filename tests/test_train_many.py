"""Independent trainings in parallel processes: bit-identical to serial, input order, named failures, homology."""

from __future__ import annotations

import contextlib
import time

import numpy as np
import pandas as pd
import pytest
import torch
from pymatgen.core import Lattice, Structure

from xanes_utils.analysis.homology import homology_matrix
from xanes_utils.graphs import build_graph
from xanes_utils.model import ModelConfig
from xanes_utils.train import TrainConfig, TrainTask, default_jobs, predict_graphs, stack_targets, train, train_many

TINY = ModelConfig(conv_dims=(8, 8), heads=2, head_dim=4, mlp_dims=(8,))
OXIDES = [("Ni", 4.17), ("Co", 4.26), ("Fe", 4.33), ("Ni", 4.30), ("Co", 4.10), ("Fe", 4.20), ("Ni", 4.05),
          ("Co", 4.40), ("Fe", 4.45)]


def oxide_graphs():
    """Rock-salt oxides of three absorbers, with a learnable step as the target spectrum."""
    out = []
    for metal, a in OXIDES:
        structure = Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), [metal, "O"], [[0, 0, 0], [0.5] * 3])
        g = build_graph(structure, 0)
        x = np.linspace(0, 1, 111)
        g.y = torch.tensor(1 / (1 + np.exp(-(x - (a - 4.0)) * 20)), dtype=torch.float32).unsqueeze(0)
        out.append(g)
    return out


@contextlib.contextmanager
def one_thread():
    """Torch at one thread in this process (the CPU profiles' setting), as in the workers."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def train_task(task: TrainTask):
    """:func:`train` of one task, in this process."""
    return train(task.train_graphs, task.val_graphs, task.model_config, task.config, progress=False)


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for name in sa:
        assert torch.equal(sa[name], sb[name]), name


@pytest.fixture(scope="module")
def runs():
    """Three trainings (the first the longest, so it finishes last in parallel): serial and with 2 workers."""
    g = oxide_graphs()
    tasks = [TrainTask(f"task {i}", g[:6][i:], g[6:], TINY, TrainConfig(epochs=epochs, batch_size=2, lr=3e-3, seed=i))
             for i, epochs in enumerate((24, 4, 8))]
    with one_thread():
        one = train_many(tasks, jobs=1)
    return tasks, one, train_many(tasks, jobs=2)


def test_parallel_training_is_bit_identical_to_serial(runs):
    tasks, one, two = runs
    assert len(one) == len(two) == len(tasks)
    for (m1, h1), (m2, h2) in zip(one, two):
        assert_same_weights(m1, m2)
        assert not m2.training and next(m2.parameters()).device.type == "cpu"
        assert (h1.train_loss, h1.val_loss, h1.best_epoch, h1.val_by_element) == (
            h2.train_loss, h2.val_loss, h2.best_epoch, h2.val_by_element)
    first = one[0][0].state_dict()["out.weight"]
    assert not torch.equal(first, one[1][0].state_dict()["out.weight"])  # the tasks do differ


def test_results_come_in_input_order_and_match_train(runs):
    tasks, _, two = runs
    assert [len(h.val_loss) for _, h in two] == [24, 4, 8]
    with one_thread():
        model, history = train_task(tasks[2])
    assert_same_weights(model, two[2][0])
    assert history.val_loss == two[2][1].val_loss


@pytest.mark.filterwarnings("ignore:Using a target size")
@pytest.mark.parametrize("jobs", [1, 2])
def test_a_failed_training_is_named_and_stops_the_others(jobs):
    g = oxide_graphs()
    long = TrainTask("long", g[:6], g[6:], TINY, TrainConfig(epochs=5000, batch_size=2, seed=0))
    bad = TrainTask("bad", g[:6], g[6:], ModelConfig(conv_dims=(8,), heads=2, head_dim=4, mlp_dims=(8,), out_dim=50),
                    TrainConfig(epochs=2, batch_size=2))  # 50 outputs against 111-point targets
    tasks = [bad] if jobs == 1 else [long, bad]
    start = time.time()
    with pytest.raises(RuntimeError, match=rf"training 'bad' \({len(tasks)} of {len(tasks)}\) failed: RuntimeError"):
        train_many(tasks, jobs=jobs)
    assert time.time() - start < 60  # the long training (minutes) was stopped, not waited for


def test_jobs_are_checked_and_default_to_the_cores():
    assert default_jobs(1) == 1 and default_jobs(0) == 1 and 1 <= default_jobs(100) <= 100
    with pytest.raises(ValueError, match="jobs must be at least 1"):
        train_many([], jobs=0)
    assert train_many([]) == []


def test_homology_matrix_is_the_same_through_parallel_training():
    g = oxide_graphs()
    train_set, held_out = g[:6], g[6:]
    y_held, el_held = stack_targets(held_out), np.array([x.element for x in held_out])
    elements = ["Ni", "Co", "Fe"]

    def task(subset: list[str]) -> TrainTask:
        pick = [x for x in train_set if x.element in subset]
        return TrainTask("+".join(subset), pick, held_out, TINY, TrainConfig(epochs=4, batch_size=2, lr=3e-3))

    def evaluate_fn(model) -> dict[str, float]:
        err = np.abs(predict_graphs(model, held_out) - y_held).mean(axis=1)
        return {el: float(err[el_held == el].mean()) for el in elements}

    with one_thread():
        serial_h = homology_matrix(lambda subset: train_task(task(subset))[0], evaluate_fn, elements)
    calls = []

    def train_all(subsets: list[list[str]]) -> list:
        calls.append(subsets)
        return [model for model, _ in train_many([task(s) for s in subsets], jobs=2)]

    parallel_h = homology_matrix(train_all, evaluate_fn, elements, batch=True)
    assert calls == [[["Ni", "Co", "Fe"], ["Co", "Fe"], ["Ni", "Fe"], ["Ni", "Co"]]]
    pd.testing.assert_frame_equal(serial_h, parallel_h, check_exact=True)
    assert serial_h.attrs["errors"] == parallel_h.attrs["errors"] and np.isfinite(serial_h.at["Ni", "Co"])
    with pytest.raises(ValueError, match="gave 1 models for 4 training sets"):
        homology_matrix(lambda subsets: [None], evaluate_fn, elements, batch=True)
