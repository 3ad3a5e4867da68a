"""How fast a trained policy acts, per file format: one observation per call, and large batches.

A policy MLP (default 16-256-256-4, the demo set's) is written as a torch export, TorchScript and
ONNX; each is loaded with `Policy.load` on the device and timed, interleaved round by round so drift
affects all alike (median of the rounds). On CUDA the ONNX file needs onnxruntime-gpu (else skipped).

    python benchmarks/policy_act.py [--device cpu|cuda] [--batch 4096] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from agent_lightning import Policy
from agent_lightning.errors import ConfigError
from agent_lightning.export import write_model
from agent_lightning.model import AgentMLP


def _seconds_per_call(act, inputs) -> float:
    start = time.perf_counter()
    for obs in inputs:
        act(obs)  # returns numpy: the device has finished when it returns
    return (time.perf_counter() - start) / len(inputs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--obs-dim", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--actions", type=int, default=4)
    args = parser.parse_args()
    device = torch.device(args.device)
    config = {"input_dim": args.obs_dim, "hidden_dim": args.hidden, "num_layers": 2, "output_dim": args.actions}
    model = AgentMLP(**config).eval()
    model.normalizer.set_statistics(torch.full((args.obs_dim,), 100.0), torch.full((args.obs_dim,), 40.0))
    rng = np.random.default_rng(0)
    singles = rng.normal(100, 40, size=(256, args.obs_dim)).astype(np.float32)
    batch = rng.normal(100, 40, size=(args.batch, args.obs_dim)).astype(np.float32)
    policies = {}
    with tempfile.TemporaryDirectory() as tmp:
        for fmt, suffix in (("torch", ".pt"), ("torchscript", ".ts"), ("onnx", ".onnx")):
            path = Path(tmp) / f"agent{suffix}"
            write_model(model, config, path, fmt)
            try:
                policies[fmt] = Policy.load(path, device=device)
            except ConfigError as err:
                print(f"{fmt}: skipped ({err})")
    one: dict[str, list[float]] = {name: [] for name in policies}
    many: dict[str, list[float]] = {name: [] for name in policies}
    for policy in policies.values():  # warm-up: first calls allocate and compile
        for _ in range(20):
            policy.act(singles[0])
            policy.act(batch)
    for _ in range(args.rounds):
        for name, policy in policies.items():
            one[name].append(_seconds_per_call(policy.act, singles))
            many[name].append(_seconds_per_call(policy.act, [batch] * 10))
    print(f"device={device} ({torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'}), "
          f"MLP {args.obs_dim}-{args.hidden}-{args.hidden}-{args.actions}, batch {args.batch}, "
          f"median of {args.rounds} rounds, torch threads {torch.get_num_threads()}")  # fmt: skip
    for name in policies:
        latency = statistics.median(one[name]) * 1e6
        rate = args.batch / statistics.median(many[name])
        print(f"{name:12s} one observation: {latency:7.0f} us/act   batch of {args.batch}: {rate / 1e6:7.2f} M obs/s")


if __name__ == "__main__":
    main()
