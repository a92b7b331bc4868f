"""The training subsets of benchmarks/learning_curve.py: nested, seeded, inside the training split."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from learning_curve import subsets  # noqa: E402


def test_subsets_are_nested_seeded_and_inside_the_training_split() -> None:
    train = list(range(3, 103))
    ids = [f"r{i}" for i in range(110)]
    embedded = {"r5", "r7", "r105"}  # r105 is not in the training split
    parts = subsets(train, ids, embedded, [0.25, 0.5, 1.0], seed=1)
    assert parts["embedded"] == [5, 7]
    assert [len(parts[k]) for k in ("0.25", "0.5", "1")] == [25, 50, 100]
    assert set(parts["0.25"]) < set(parts["0.5"]) < set(parts["1"]) == set(train)
    assert parts == subsets(train, ids, embedded, [0.25, 0.5, 1.0], seed=1)
    assert subsets(train, ids, embedded, [0.25], seed=2)["0.25"] != parts["0.25"]
