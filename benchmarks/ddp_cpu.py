"""Where a CPU data-parallel step's time goes: the reference step in one process against two gloo ranks.

One process with all the host's threads runs the reference step (MLP 128-256-256-10, fused Adam,
batch 512). Then two ranks (half the threads and half the batch each) run it three ways: as a DDP
step, as the same step without the gradient all-reduce (`no_sync`), and the all-reduce alone on a
buffer as large as the gradients (0.4 MB). Prints milliseconds per step of each, and, last,
`ratio=<one process / DDP>` in samples/s (above 1: one process is faster).

    python benchmarks/ddp_cpu.py [--steps 300] [--ranks 2]
"""

from __future__ import annotations

import argparse
import os
import socket
import time
from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn import functional as F

from agent_lightning.model import AgentMLP

BATCH, FEATURES, CLASSES = 512, 128, 10


def _ms_per_call(call: Callable[[], None], steps: int, barrier: bool) -> float:
    for _ in range(20):
        call()
    if barrier:
        dist.barrier()
    start = time.perf_counter()
    for _ in range(steps):
        call()
    if barrier:
        dist.barrier()
    return (time.perf_counter() - start) / steps * 1e3


def _step(model: torch.nn.Module, batch: int) -> Callable[[], None]:
    x, y = torch.randn(batch, FEATURES), torch.randint(0, CLASSES, (batch,))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)

    def step() -> None:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def _rank(rank: int, world: int, port: int, steps: int, threads: int, results: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = torch.nn.parallel.DistributedDataParallel(AgentMLP(FEATURES, 256, 2, CLASSES), gradient_as_bucket_view=True)
    step = _step(model, BATCH // world)

    def unsynced() -> None:
        with model.no_sync():
            step()

    gradients = torch.zeros(sum(p.numel() for p in model.parameters()))
    timings = {
        "ddp": _ms_per_call(step, steps, barrier=True),
        "no_sync": _ms_per_call(unsynced, steps, barrier=True),
        "all_reduce": _ms_per_call(lambda: dist.all_reduce(gradients), steps, barrier=True),
    }
    if rank == 0:
        results.update(timings)
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--ranks", type=int, default=2)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    threads = max(1, cores // args.ranks)
    torch.set_num_threads(cores)
    torch.manual_seed(0)
    single = _ms_per_call(_step(AgentMLP(FEATURES, 256, 2, CLASSES), BATCH), args.steps, barrier=False)
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_rank, args=(args.ranks, _free_port(), args.steps, threads, results), nprocs=args.ranks)
        ranks = dict(results)
    print(f"torch={torch.__version__} cores={cores} batch={BATCH} (global) steps={args.steps}")
    print(f"one process, {cores} threads:             {single:.2f} ms/step")
    print(f"{args.ranks} ranks x {threads} threads, DDP step:      {ranks['ddp']:.2f} ms/step")
    print(f"{args.ranks} ranks, same step without all-reduce: {ranks['no_sync']:.2f} ms/step")
    print(f"{args.ranks} ranks, all-reduce of the gradients:  {ranks['all_reduce']:.2f} ms")
    print(f"ratio={ranks['ddp'] / single:.3f}")


if __name__ == "__main__":
    main()
