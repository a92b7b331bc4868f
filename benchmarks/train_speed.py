"""Training and prediction speed of our model against the authors' whole-cell model, side by side.

Both at the paper's dimensions on the same records: the embedded FEFF records (``data/xanes_feff10_k.json.gz``)
first, topped up to ``--n`` with sites of ``data/plan.json.gz`` (targets zero: only speed is measured).

* ours: ``XanesGAT(ModelConfig.paper())`` (fast implementation) on star graphs pre-collated by
  :func:`xanes_utils.dense.collate_for`, batches from :class:`xanes_utils.dense.GraphLoader`, as ``train()`` runs it;
* theirs: :class:`whole_cell.WholeCellGAT` on whole-cell graphs through PyG's ``DataLoader``.

Training: one epoch of forward + L1 loss + backward + fused AdamW step, batch 160 (last partial batch dropped);
prediction: eval mode, no gradients, batch 512. Each repetition times both sides one after the other (the
order alternates), after one warm-up epoch each; we report the best and the median over repetitions, per
wall second and per CPU second of this process. FLOPs are torch.utils.flop_counter's count (matrix products)
over one epoch (ours on its plain operations, the same matrix products); GFLOP/s = FLOPs per graph x graphs
per CPU second (median).

With ``--compile`` a third row runs our model through ``torch.compile(dynamic=True)`` (its compilation
happens in the untimed warm-up; its FLOPs are ours).

With ``--ceiling`` it also bounds our training speed from below the step: the matrix products' self CPU time per
step (torch.profiler, one epoch) plus the step's fixed cost (the same batches through a model with every width 8:
Python, dispatch, gathers, optimiser calls), and the ratio to theirs that a step of only those two would reach.

    python benchmarks/train_speed.py [--n 640] [--data FILE] [--repeats 5] [--threads 1] [--profile] [--compile]
                                     [--ceiling]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Iterable
from unittest import mock

import numpy as np
import torch
from pymatgen.core import Structure
from torch_geometric.loader import DataLoader
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402
from whole_cell import WholeCellGAT, whole_cell_graph  # noqa: E402

from xanes_utils.dataset import DATA_DIR, DEFAULT_DATASET, load_dataset  # noqa: E402
from xanes_utils.dense import GraphLoader, collate_for  # noqa: E402
from xanes_utils.graphs import build_graph  # noqa: E402
from xanes_utils.io import read_json  # noqa: E402
from xanes_utils import model as model_module  # noqa: E402
from xanes_utils.model import ModelConfig, XanesGAT  # noqa: E402

log = logging.getLogger("train_speed")

SIDES = ("theirs", "ours", "ours, compiled")


def load_sites(n: int, seed: int = 0, data: str | None = None) -> list[tuple[Structure, int, np.ndarray]]:
    """``n`` (structure, site, target): the first records of ``data`` (a packed dataset; None: the embedded one),
    then random plan sites (target zeros)."""
    use = data is not None or DEFAULT_DATASET.exists()  # a --data file that is missing is an error, not plan sites
    sites = [(r.structure, r.site, r.mu) for r in load_dataset(data)[:n]] if use else []
    if len(sites) < n:
        plan = read_json(DATA_DIR / "plan.json.gz")
        for i in np.random.default_rng(seed).permutation(len(plan["jobs"]))[:n - len(sites)]:
            job = plan["jobs"][i]
            sites.append((Structure.from_dict(plan["structures"][job["structure_id"]]), int(job["site"]),
                          np.zeros(111)))
    return sites


class Side:
    """One model with its batches: a training epoch and a prediction pass as callables."""

    def __init__(self, model: torch.nn.Module, train_batches: Callable[[], Iterable], predict_batches: list) -> None:
        self.model, self.train_batches, self.predict_batches = model, train_batches, predict_batches
        self.optimiser = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-3, fused=True)

    def train_epoch(self) -> int:
        """One training epoch; returns the number of graphs."""
        self.model.train()
        seen = 0
        for batch in self.train_batches():
            self.optimiser.zero_grad(set_to_none=True)
            torch.nn.functional.l1_loss(self.model(batch), batch.y).backward()
            self.optimiser.step()
            seen += batch.num_graphs
        return seen

    @torch.no_grad()
    def predict(self) -> int:
        """One prediction pass; returns the number of graphs."""
        self.model.eval()
        return sum(self.model(batch).shape[0] for batch in self.predict_batches)


def build_sides(sites: list, batch_size: int, compiled: bool = False) -> dict[str, Side]:
    """Our model on dense star graphs and theirs on whole-cell graphs, same seed, same records; with
    ``compiled`` also ours through torch.compile."""
    config = ModelConfig.paper()
    star = collate_for(config, [build_graph(s, i, y, n_neighbours=config.neighbours) for s, i, y in sites])
    cell = [whole_cell_graph(s, i, y) for s, i, y in sites]
    torch.manual_seed(0)
    ours = XanesGAT(config)
    theirs = WholeCellGAT()
    if ours.n_parameters != theirs.n_parameters:
        raise RuntimeError(f"parameter counts differ: ours {ours.n_parameters:,}, theirs {theirs.n_parameters:,}")
    gen_ours, gen_theirs = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    sides = {
        "ours": Side(ours, lambda: GraphLoader(star, batch_size, shuffle=True, generator=gen_ours, drop_last=True),
                     list(GraphLoader(star, 512))),
        "theirs": Side(theirs, lambda: DataLoader(cell, batch_size=batch_size, shuffle=True, generator=gen_theirs,
                                                  drop_last=True), list(DataLoader(cell, batch_size=512))),
    }
    if compiled:
        torch.manual_seed(0)
        model = XanesGAT(config)
        gen = torch.Generator().manual_seed(0)
        sides["ours, compiled"] = Side(model, lambda: GraphLoader(star, batch_size, shuffle=True, generator=gen,
                                                                  drop_last=True), list(GraphLoader(star, 512)))
        sides["ours, compiled"].model = torch.compile(model, dynamic=True)
    return sides


def timed(fn: Callable[[], int]) -> tuple[float, float]:
    """(graphs per wall second, graphs per CPU second of this process) of one call of ``fn``."""
    wall, cpu = time.perf_counter(), time.process_time()
    graphs = fn()
    return graphs / (time.perf_counter() - wall), graphs / (time.process_time() - cpu)


def flops_per_graph(fn: Callable[[], int]) -> float:
    """Matrix-product FLOPs per graph of one call of ``fn``. Our model runs its plain operations here: the
    hand-written backward's sparse segment sums would count as dense [slots x graphs] products."""
    with FlopCounterMode(display=False) as counter, mock.patch.object(model_module, "_hand_written", lambda: False):
        graphs = fn()
    return counter.get_total_flops() / graphs


def profile_table(side: Side, rows: int = 15) -> str:
    """Markdown table of the ops that take our training epoch's CPU time (torch.profiler, self time)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        side.train_epoch()
    events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in events)
    lines = ["| op | share of self CPU time | calls per epoch |", "|---|---:|---:|"]
    lines += [f"| {e.key} | {100 * e.self_cpu_time_total / total:.1f} % | {e.count} |" for e in events[:rows]]
    return "\n".join(lines)


MATRIX_PRODUCTS = ("aten::mm", "aten::addmm", "aten::addmm_", "aten::bmm", "aten::addmv", "aten::addmv_", "aten::addr")


def ceiling(side: Side, repeats: int = 3) -> tuple[float, float, float]:
    """(ms per training step of ``side``'s matrix products, ms per step at widths 8, ms per step as run): one
    profiled epoch for the products, the medians of ``repeats`` epochs for the rest, all in CPU time."""
    from torch.profiler import ProfilerActivity, profile

    steps = sum(1 for _ in side.train_batches())
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        side.train_epoch()
    products = sum(e.self_cpu_time_total for e in prof.key_averages() if e.key in MATRIX_PRODUCTS) / 1e3 / steps
    torch.manual_seed(0)
    tiny = Side(XanesGAT(ModelConfig.paper(conv_dims=(8, 8, 8), head_dim=8, mlp_dims=(8, 8))), side.train_batches, [])
    tiny.train_epoch()  # warm-up
    per_step = {}
    for name, s in (("tiny", tiny), ("ours", side)):
        times = []
        for _ in range(repeats):
            cpu = time.process_time()
            s.train_epoch()
            times.append((time.process_time() - cpu) * 1e3 / steps)
        per_step[name] = statistics.median(times)
    return products, per_step["tiny"], per_step["ours"]


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print markdown tables."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=640, help="number of records (default 640)")
    parser.add_argument("--data", help="packed dataset whose first --n records are timed (default: the embedded "
                        "one; the numbers before 2026-11-29 used the 1,620-record file of commit 92cacf9)")
    parser.add_argument("--batch-size", type=int, default=160)
    parser.add_argument("--repeats", type=int, default=5, help="interleaved timed repetitions (default 5)")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    parser.add_argument("--profile", action="store_true", help="also print where our training time goes")
    parser.add_argument("--compile", action="store_true", help="also time our model through torch.compile")
    parser.add_argument("--ceiling", action="store_true", help="also bound our training speed by its matrix "
                        "products and fixed per-step cost")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    sites = load_sites(args.n, data=args.data)
    sides = build_sides(sites, args.batch_size, args.compile)
    flops = {name: (flops_per_graph(side.train_epoch), flops_per_graph(side.predict))
             for name, side in sides.items() if name != "ours, compiled"}
    flops["ours, compiled"] = flops["ours"]
    load_before = os.getloadavg()
    speeds: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for repeat in range(-1, args.repeats):  # -1: warm-up
        for name in [name for name in (SIDES if repeat % 2 else SIDES[::-1]) if name in sides]:
            side = sides[name]
            for task, fn in (("training", side.train_epoch), ("prediction", side.predict)):
                result = timed(fn)
                if repeat >= 0:
                    speeds.setdefault((name, task), []).append(result)
        log.info("repetition %d of %d done (load %.2f)", repeat + 1, args.repeats, os.getloadavg()[0])
    load_after = os.getloadavg()
    print(f"\nMachine: {describe()}; torch threads {args.threads}; load average (1, 5, 15 min) "
          f"{', '.join(f'{x:.2f}' for x in load_before)} before the timed runs, "
          f"{', '.join(f'{x:.2f}' for x in load_after)} after")
    print(f"Paper dims ({sides['ours'].model.n_parameters:,} parameters each), {len(sites)} records of "
          f"{args.data or DEFAULT_DATASET.name} ({np.mean([len(s[0]) for s in sites]):.1f} atoms per cell), "
          f"training batch {args.batch_size}, prediction batch 512, {args.repeats} interleaved repetitions\n")
    print("| model | task | graphs/s best | graphs/s median | graphs per CPU-s best | graphs per CPU-s median | "
          "MFLOP per graph | GFLOP/s (CPU, median) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    medians = {}
    for task_index, task in enumerate(("training", "prediction")):
        for name in [name for name in SIDES if name in sides]:
            wall, cpu = zip(*speeds[(name, task)])
            medians[(name, task)] = statistics.median(cpu)
            mflop = flops[name][task_index] / 1e6
            print(f"| {name} | {task} | {max(wall):,.0f} | {statistics.median(wall):,.0f} | {max(cpu):,.0f} | "
                  f"{statistics.median(cpu):,.0f} | {mflop:,.1f} | {mflop * statistics.median(cpu) / 1e3:.1f} |")
    for task in ("training", "prediction"):
        for name in [name for name in SIDES[1:] if name in sides]:
            print(f"\n{name} / theirs, {task}, per CPU second (median): "
                  f"{medians[(name, task)] / medians[('theirs', task)]:.1f}x")
    if args.profile:
        print("\nWhere our training time goes (one epoch, torch.profiler):\n")
        print(profile_table(sides["ours"]))
    if args.ceiling:
        products, fixed, step = ceiling(sides["ours"])
        bound = args.batch_size / (products + fixed) * 1e3
        print(f"\nCeiling (CPU ms per training step of {args.batch_size} graphs): as run {step:.1f}; matrix products "
              f"{products:.1f} ({flops['ours'][0] * args.batch_size / products / 1e6:.0f} GFLOP/s); fixed cost at "
              f"widths 8 {fixed:.1f}; everything else {step - products - fixed:.1f}. Products plus fixed cost alone: "
              f"{bound:,.0f} graphs per CPU-s, {bound / medians[('theirs', 'training')]:.1f}x theirs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
