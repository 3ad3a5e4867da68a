"""Per-rank training memory and throughput of each parallel strategy, side by side.

For the reference model and a large preset, runs ddp, fsdp, tensor parallel (tp=2) at 2 ranks,
and 2-D (dp=2 x tp=2, as 2 simulated nodes x 2 ranks on this host), each as a user would from the
command line. Reports each rank's measured training state (weights + gradients + optimizer state,
the largest rank: `mem/state_mib`) and samples/s, then fsdp's state as a fraction of ddp's.

    python benchmarks/memory.py [--models mlp mlp_large] [--accelerator cpu|gpu]
"""

from __future__ import annotations

import argparse
import csv
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

STRATEGIES = {
    "ddp": ["strategy=ddp", "devices=2"],
    "fsdp": ["strategy=fsdp", "devices=2"],
    "tp": ["strategy=model_parallel", "devices=2", "strategy.tensor_parallel=2"],
    "2-D": ["strategy=model_parallel", "devices=2", "num_nodes=2", "strategy.tensor_parallel=2"],
}
SIZES = {
    "mlp": ["data.train_size=50000", "trainer.max_epochs=2"],
    "mlp_large": ["data.train_size=8192", "trainer.max_epochs=1"],
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def measure(model: str, strategy: str, accelerator: str) -> dict[str, float]:
    """One run; its last logged memory and throughput figures."""
    with tempfile.TemporaryDirectory() as out:
        overrides = [
            f"model={model}",
            *SIZES[model],
            *STRATEGIES[strategy],
            f"trainer.accelerator={accelerator}",
            "trainer.enable_progress_bar=false",
            "trainer.limit_val_batches=0.1",
            "test=false",
            f"hydra.run.dir={out}",
        ]
        nodes = 2 if "num_nodes=2" in overrides else 1
        if nodes > 1:
            overrides += [f"rdzv_endpoint=127.0.0.1:{_free_port()}", "rdzv_id=memory-benchmark"]
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "agent_lightning.train", *overrides],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(nodes)
        ]
        errors = [p.communicate()[1] for p in procs]
        if any(p.returncode for p in procs):
            raise RuntimeError(f"{model} {strategy} failed:\n{errors[0][-2000:]}")
        rows = list(csv.DictReader((Path(out) / "csv" / "metrics.csv").read_text().splitlines()))
    last = {}
    for row in rows:
        last.update({k: float(v) for k, v in row.items() if v and (k.startswith("mem/") or k.startswith("perf/"))})
    return last


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["mlp", "mlp_large"])
    parser.add_argument("--accelerator", default="cpu", choices=["cpu", "gpu"])
    args = parser.parse_args()

    print("| model | strategy | ranks | state MiB/rank (params+grads+optim) | samples/s |")
    print("| --- | --- | --- | --- | --- |")
    ratios = []
    for model in args.models:
        results = {name: measure(model, name, args.accelerator) for name in STRATEGIES}
        for name, m in results.items():
            ranks = 4 if name == "2-D" else 2
            state = (
                f"{m['mem/state_mib']:.1f} ({m['mem/params_mib']:.1f}+{m['mem/grads_mib']:.1f}+"
                f"{m['mem/optimizer_mib']:.1f})"
            )
            print(f"| {model} | {name} | {ranks} | {state} | {m['perf/samples_per_s']:,.0f} |")
        ratios.append((model, results["fsdp"]["mem/state_mib"] / results["ddp"]["mem/state_mib"]))
    for model, ratio in ratios:
        print(f"{model}: fsdp state / ddp state = {ratio:.3f}")


if __name__ == "__main__":
    main()
