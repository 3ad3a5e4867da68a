"""Measure the agent targets: BC on LunarLander (3 training seeds), Acrobot and MountainCar, and DAgger.

    python benchmarks/agent_targets.py --out /tmp/targets --jobs 4

Collects the demonstrations (50k expert steps each, episode seeds from 1000), then runs every training as its
own `python -m agent_lightning.train` / `agent_lightning.dagger` process, `--jobs` at a time, and prints the
expert's and each policy's mean return on seeds 0..19 (greedy). Results also go to <out>/results.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from agent_lightning.agents.environments import make_env
from agent_lightning.agents.experts import resolve_expert
from agent_lightning.agents.rollout import evaluate_policy, summarize
from agent_lightning.collect import collect

ENVS = {"lunarlander": "heuristic", "acrobot": "acrobot", "mountaincar": "mountaincar"}


def expert_return(env: str) -> float:
    expert, made = resolve_expert(ENVS[env]), make_env(env)
    act = lambda obs: np.array([expert(made.unwrapped, o) for o in obs])  # noqa: E731
    return summarize(evaluate_policy(act, env, 20))["return_mean"]


def jobs_for(out: Path, seeds: list[int], variant: list[str], dagger: bool) -> dict[str, list[str]]:
    common = ["trainer.enable_progress_bar=false", "print_config=false", "trainer.threads=2"]
    jobs = {}
    for seed in seeds:
        jobs[f"bc_lunarlander_seed{seed}"] = ["agent_lightning.train", "experiment=bc_lunarlander", f"seed={seed}"]
        if variant:
            jobs[f"bc_lunarlander_variant_seed{seed}"] = [*jobs[f"bc_lunarlander_seed{seed}"], *variant]
    for env in ("acrobot", "mountaincar"):
        jobs[f"bc_{env}_seed1"] = ["agent_lightning.train", f"experiment=bc_{env}", "seed=1"]
    for name, argv in jobs.items():
        env = name.split("_")[1]
        argv += [f"data.path={out / (env + '_demos')}", f"hydra.run.dir={out / name}", *common]
    if dagger:
        jobs["dagger_lunarlander"] = [
            "agent_lightning.dagger", "env=lunarlander", "iterations=5", f"hydra.run.dir={out / 'dagger_lunarlander'}",
            'train=["trainer.enable_progress_bar=false","trainer.threads=2"]',
        ]  # fmt: skip
    return jobs


def run_all(jobs: dict[str, list[str]], out: Path, parallel: int) -> dict[str, float]:
    pending, running, seconds = list(jobs.items()), {}, {}
    while pending or running:
        while pending and len(running) < parallel:
            name, argv = pending.pop(0)
            log = open(out / f"{name}.log", "w")  # noqa: SIM115
            proc = subprocess.Popen([sys.executable, "-m", *argv], stdout=log, stderr=subprocess.STDOUT)
            running[name] = (proc, time.time(), log)
        for name, (proc, start, log) in list(running.items()):
            if proc.poll() is not None:
                log.close()
                seconds[name] = time.time() - start
                print(f"{name}: exit {proc.returncode} after {seconds[name]:.0f}s", flush=True)
                del running[name]
        time.sleep(1)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--jobs", type=int, default=max(1, (os.cpu_count() or 2) // 2))
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--variant", nargs="*", default=[], help="extra overrides for a second set of LL BC runs")
    parser.add_argument("--no-dagger", action="store_true")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, object] = {}
    for env in ENVS:
        manifest = collect(env, args.out / f"{env}_demos", steps=50_000, overwrite=True)
        results[f"expert_{env}_seeds0-19"] = expert_return(env)
        results[f"demos_{env}"] = manifest["provenance"]
    jobs = jobs_for(args.out, args.seeds, args.variant, not args.no_dagger)
    results["seconds"] = run_all(jobs, args.out, args.jobs)
    for name in jobs:
        summary = args.out / name / "summary.json"
        if summary.exists():
            metrics = json.loads(summary.read_text())["metrics"]
            results[name] = {k: v for k, v in metrics.items() if k.startswith("env/") or k == "val/acc_best"}
    dagger_csv = args.out / "dagger_lunarlander" / "dagger.csv"
    if dagger_csv.exists():
        results["dagger_lunarlander"] = list(csv.DictReader(dagger_csv.read_text().splitlines()))
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    for name, value in results.items():
        if isinstance(value, dict) and "env/return_mean" in value:
            print(f"{name:36s} return mean={value['env/return_mean']:8.2f} std={value['env/return_std']:7.2f}")
        elif name.startswith("expert_"):
            print(f"{name:36s} return mean={value:8.2f}")
    for row in results.get("dagger_lunarlander", []):
        print(f"dagger iter {row['iteration']}: rows {row['rows']} return mean={float(row['return_mean']):.2f}")


if __name__ == "__main__":
    main()
