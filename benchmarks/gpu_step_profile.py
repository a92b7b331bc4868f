"""Where a GPU training step of the paper-dims model spends its time (run on a CUDA machine).

On the paper profile's training split (cached graphs in ``results/paper/``), with the fast model as
``train()`` runs it (pre-collated batches, ``.to(device)``, fused AdamW, ``loss.item()`` per step):

* training graphs/s at each ``--batch-sizes`` value, 10 epochs after one warm-up epoch;
* the batch loader and host-to-device copies alone, at batch 160;
* a torch.profiler table of two epochs at batch 160: self CPU time against self CUDA time shows whether
  the GPU or the Python/launch side limits a step.

    python benchmarks/gpu_step_profile.py [--batch-sizes 160 1280]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from xanes_utils.dense import GraphLoader, collate_for
from xanes_utils.model import ModelConfig, XanesGAT
from xanes_utils.profiles import get_profile
from xanes_utils.workflow import prepare


def main(argv: list[str] | None = None) -> int:
    """Time and profile; print the tables."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[160, 1280])
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.error("no CUDA device: this benchmark profiles GPU training")
    device = torch.device("cuda")
    prep = prepare(get_profile("paper"))
    config = ModelConfig.paper()
    model = XanesGAT(config).to(device)
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    data = collate_for(config, prep.subset("train"))

    def loader(batch_size: int) -> GraphLoader:
        return GraphLoader(data, batch_size, shuffle=True, generator=torch.Generator().manual_seed(0), drop_last=True)

    def epoch(batches: GraphLoader) -> int:
        """One training epoch as train() runs it; returns the number of steps."""
        steps = 0
        for batch in batches:
            batch = batch.to(device)
            optimiser.zero_grad(set_to_none=True)
            loss = torch.nn.functional.l1_loss(model(batch), batch.y)
            loss.backward()
            optimiser.step()
            loss.item()
            steps += 1
        return steps

    for batch_size in args.batch_sizes:
        batches = loader(batch_size)
        epoch(batches)
        torch.cuda.synchronize()
        start, graphs = time.perf_counter(), 0
        for _ in range(10):
            graphs += epoch(batches) * batch_size
        torch.cuda.synchronize()
        print(f"batch {batch_size}: {graphs / (time.perf_counter() - start):,.0f} training graphs/s")
    batches = loader(160)
    start, graphs = time.perf_counter(), 0
    for _ in range(10):
        for batch in batches:
            batch.to(device)
            graphs += 160
    torch.cuda.synchronize()
    print(f"loader + copies to the GPU alone, batch 160: {graphs / (time.perf_counter() - start):,.0f} graphs/s")
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(2):
            epoch(batches)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
    print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=12))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
