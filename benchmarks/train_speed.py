"""Training and prediction speed of the reference and fast implementations at the paper's dimensions.

Graphs: the embedded FEFF records (``data/xanes_feff10_k.json.gz``) first, topped up to ``--n`` with
sites of the structures in ``data/plan.json.gz`` (targets zero: only speed is measured).
Training speed: forward + L1 loss + backward + AdamW step, batch 160, timed after one warm-up epoch.
Prediction speed: eval mode, no gradients, batch 512.

    python benchmarks/train_speed.py [--n 640] [--threads 2] [--epochs 1] [--readout local]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from pymatgen.core import Structure
from torch_geometric.data import Data
from torch_geometric.loader import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402

from xanes_utils.dataset import DATA_DIR, DEFAULT_DATASET, load_dataset  # noqa: E402
from xanes_utils.graphs import build_graph  # noqa: E402
from xanes_utils.io import read_json  # noqa: E402
from xanes_utils.model import IMPLEMENTATIONS, ModelConfig, XanesGAT  # noqa: E402

log = logging.getLogger("train_speed")


def load_graphs(n: int, seed: int = 0) -> list[Data]:
    """``n`` graphs: embedded records first, then random plan sites (y = zeros)."""
    graphs: list[Data] = []
    if DEFAULT_DATASET.exists():
        graphs = [build_graph(r.structure, r.site, r.mu) for r in load_dataset()[:n]]
        log.info("%d graphs from the embedded records", len(graphs))
    if len(graphs) < n:
        plan = read_json(DATA_DIR / "plan.json.gz")
        jobs = [plan["jobs"][i] for i in np.random.default_rng(seed).permutation(len(plan["jobs"]))]
        structures: dict[str, Structure] = {}
        for job in jobs:
            if len(graphs) >= n:
                break
            sid = job["structure_id"]
            if sid not in structures:
                structures[sid] = Structure.from_dict(plan["structures"][sid])
            try:
                graphs.append(build_graph(structures[sid], int(job["site"]), np.zeros(111)))
            except ValueError as exc:
                log.warning("skipped %s site %s: %s", sid, job["site"], exc)
        log.info("topped up to %d graphs from plan structures", len(graphs))
    return graphs


def train_speed(model: XanesGAT, graphs: list[Data], batch_size: int, epochs: int) -> float:
    """Training graphs per second over ``epochs`` timed epochs after one warm-up epoch."""
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-3)
    loader = DataLoader(graphs, batch_size=batch_size, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(0))
    model.train()
    seen, elapsed = 0, 0.0
    for epoch in range(epochs + 1):
        start = time.perf_counter()
        count = 0
        for batch in loader:
            optimiser.zero_grad(set_to_none=True)
            loss = torch.nn.functional.l1_loss(model(batch), batch.y)
            loss.backward()
            optimiser.step()
            count += batch.num_graphs
        if epoch > 0:  # epoch 0 is the warm-up
            seen, elapsed = seen + count, elapsed + time.perf_counter() - start
    return seen / elapsed


@torch.no_grad()
def predict_speed(model: XanesGAT, graphs: list[Data], batch_size: int = 512, repeats: int = 2) -> float:
    """Predicted spectra per second in eval mode (best of ``repeats`` passes after a warm-up)."""
    model.eval()
    batches = list(DataLoader(graphs, batch_size=batch_size))
    model(batches[0])
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for batch in batches:
            model(batch)
        best = min(best, time.perf_counter() - start)
    return len(graphs) / best


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=640, help="number of graphs (default 640)")
    parser.add_argument("--batch-size", type=int, default=160)
    parser.add_argument("--epochs", type=int, default=1, help="timed epochs after the warm-up")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--readout", choices=("local", "cell"), default="local")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    graphs = load_graphs(args.n)
    rows = {}
    for impl in IMPLEMENTATIONS[::-1]:  # reference first
        torch.manual_seed(0)
        model = XanesGAT(ModelConfig.paper(implementation=impl, readout=args.readout))
        rows[impl] = (train_speed(model, graphs, args.batch_size, args.epochs), predict_speed(model, graphs))
        log.info("%s: %.1f training graphs/s, %.1f predicted spectra/s", impl, *rows[impl])
    load = os.getloadavg()
    print(f"\nMachine: {describe()}; torch threads {args.threads}; load average {load[0]:.2f} "
          f"(1 min) before the table")
    print(f"Paper dims ({XanesGAT(ModelConfig.paper()).n_parameters:,} parameters), {len(graphs)} graphs, "
          f"batch {args.batch_size}, readout {args.readout}\n")
    print("| implementation | training graphs/s | prediction spectra/s |")
    print("|---|---:|---:|")
    for impl, (train, pred) in rows.items():
        print(f"| {impl} | {train:.1f} | {pred:.1f} |")
    ratio_train = rows["fast"][0] / rows["reference"][0]
    ratio_pred = rows["fast"][1] / rows["reference"][1]
    print(f"| fast / reference | {ratio_train:.1f}x | {ratio_pred:.1f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
