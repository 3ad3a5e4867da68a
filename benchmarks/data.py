"""Training from a prepared (memory-mapped) dataset against the same rows held in memory, side by side.

Reference workload: 100,000 x 128 rows of the synthetic task, batch 512, MLP 128-256-256-10, Adam.
The in-memory side is `data=synthetic` (the rows generated into one tensor); the prepared side is
`data=dataset` on exactly those rows written by `prepare` (standardised inside the model, as by
default). Rounds alternate so drift affects both alike. Then, in a fresh process, one epoch of
training on a dataset of several GB reports the rank's peak resident memory against the data size.
Last line: `ratio=<prepared / in-memory samples/s>`.

    python benchmarks/data.py [--rounds 3] [--epochs 3] [--big-gb 2] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import logging
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from agent_lightning.config import compose_config
from agent_lightning.data import BlockBatchLoader, ClusterTask, PreparedDataset, SliceBatchLoader
from agent_lightning.prepare import prepare
from agent_lightning.train import train

ROWS, FEATURES, CLASSES, BATCH = 100_000, 128, 10, 512
QUIET = [
    "logger=none",
    "callbacks=none",
    "test=false",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "trainer.num_sanity_val_steps=0",
    "trainer.limit_val_batches=0",
    "seed=0",
]


def samples_per_second(overrides: list[str], epochs: int, out: Path) -> float:
    """Training samples/s of the run's last epoch (the first warms up)."""
    cfg = compose_config([*QUIET, f"trainer.max_epochs={epochs}", f"data.batch_size={BATCH}", *overrides], out)
    return float(train(cfg)["perf/samples_per_s"])


def loader_rates(features, labels, prepared: Path, rounds: int) -> dict[str, float]:
    """Batches only, no model: samples/s of one epoch of each loader (best of `rounds`)."""
    loaders = {
        "in-memory": SliceBatchLoader(features, labels, BATCH, shuffle=True, drop_last=True),
        "prepared": BlockBatchLoader(PreparedDataset(prepared).splits["train"], BATCH, seed=0),
    }
    best = dict.fromkeys(loaders, 0.0)
    for round_ in range(rounds):
        for name, loader in loaders.items():
            loader.sampler.set_epoch(round_)
            started, rows = time.perf_counter(), 0
            for x, _ in loader:
                rows += len(x)
            best[name] = max(best[name], rows / (time.perf_counter() - started))
    return best


def big_dataset(directory: Path, gigabytes: float) -> Path:
    """A prepared dataset of about `gigabytes` of features, prepared from a memory-mapped .npy input."""
    rows = int(gigabytes * 2**30 / (FEATURES * 4))
    source = directory / "big-x.npy"
    x = np.lib.format.open_memmap(source, mode="w+", dtype=np.float32, shape=(rows, FEATURES))
    y = np.empty(rows, dtype=np.int64)
    task = ClusterTask(num_features=FEATURES, num_classes=CLASSES, seed=1)
    step = 262_144
    for lo in range(0, rows, step):
        features, labels = task.samples(lo, min(rows, lo + step))
        x[lo : lo + len(labels)], y[lo : lo + len(labels)] = features.numpy(), labels.numpy()
    x.flush()
    del x
    np.save(directory / "big-y.npy", y)
    started = time.perf_counter()
    prepare(source, directory / "big", label=str(directory / "big-y.npy"), val_fraction=0.01, test_fraction=0)
    print(f"prepare (.npy input, {rows:,} rows x {FEATURES}): {rows / (time.perf_counter() - started):,.0f} rows/s")
    source.unlink()
    (directory / "big-y.npy").unlink()
    return directory / "big"


CHILD = """
import sys
from agent_lightning.config import compose_config
from agent_lightning.train import train

def status(key):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key))

base = status("VmRSS:")  # torch + Lightning imported, nothing read yet
metrics = train(compose_config(sys.argv[2:], sys.argv[1]))
print(f"BASE_KIB={base} PEAK_KIB={status('VmHWM:')} SAMPLES_PER_S={metrics['perf/samples_per_s']:.0f}")
"""


def main() -> None:
    """Run the comparison and print the table and the ratio."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--big-gb", type=float, default=2.0, help="size of the memory test's dataset (0: skip)")
    parser.add_argument("--workdir", default=None, help="where datasets are written (default: a temporary dir)")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="al-data-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        features, labels = ClusterTask(num_features=FEATURES, num_classes=CLASSES, seed=0).samples(0, ROWS)
        prepare((features.numpy(), labels.numpy()), work / "ref", val_fraction=0, test_fraction=0, progress_bar=False)
        for name, rate in loader_rates(features, labels, work / "ref", args.rounds).items():
            print(f"data path only (batches, no model), {name}: {rate:,.0f} samples/s")
        sides = {
            "in-memory": ["data=synthetic", f"data.train_size={ROWS}", "data.val_size=512", "data.test_size=512"],
            "prepared": ["data=dataset", f"data.path={work / 'ref'}"],
        }
        rates: dict[str, list[float]] = {name: [] for name in sides}
        for round_ in range(args.rounds):
            for name, overrides in sides.items():
                rates[name].append(samples_per_second(overrides, args.epochs, work / f"run-{name}-{round_}"))
        print(f"| data ({ROWS:,} x {FEATURES}, batch {BATCH}) | samples/s (median of {args.rounds}) | rounds |")
        print("| --- | --- | --- |")
        for name, values in rates.items():
            shown = ", ".join(f"{v:,.0f}" for v in values)
            print(f"| {name} | {statistics.median(values):,.0f} | {shown} |")
        if args.big_gb > 0:
            big = big_dataset(work, args.big_gb)
            size_mib = sum(f.stat().st_size for f in big.glob("*.npy")) / 2**20
            command = [sys.executable, "-c", CHILD, str(work / "run-big"), "data=dataset", f"data.path={big}",
                       "data.batch_size=8192", "trainer.max_epochs=1", *QUIET]  # fmt: skip
            result = subprocess.run(command, capture_output=True, text=True, check=True)
            line = next(row for row in result.stdout.splitlines() if row.startswith("BASE_KIB="))
            base, peak, speed = (float(part.split("=")[1]) for part in line.split())
            print(
                f"one epoch over {size_mib:,.0f} MiB of shards (batch 8192, {speed:,.0f} samples/s): peak RSS "
                f"{peak / 1024:,.0f} MiB, of which {(peak - base) / 1024:,.0f} MiB after torch and Lightning were "
                f"imported ({(peak - base) / 1024 / size_mib:.2f}x the data)"
            )
        ratio = statistics.median(rates["prepared"]) / statistics.median(rates["in-memory"])
        print(f"ratio={ratio:.3f}")
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
