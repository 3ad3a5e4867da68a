"""Demonstrations as a prepared dataset: rolled-out states and labelled actions, split by episode."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from agent_lightning.agents.rollout import Rollout
from agent_lightning.data.manifest import read_manifest, write_manifest
from agent_lightning.errors import ConfigError

log = logging.getLogger("agent_lightning.collect")


def write_demonstrations(
    data: Rollout,
    output: str | Path,
    n_actions: int,
    provenance: Mapping[str, Any],
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write `data` through `prepare` (split=group on the episode column) and record `provenance` in the manifest.

    The class count is the environment's action count, so an action the labeller never took still has its logit.
    """
    from agent_lightning.prepare import EmptyTrainSplitError, prepare

    arrays = {"observations": data.observations, "actions": data.actions, "episode": data.episodes}
    try:
        prepare(
            input=arrays,
            output=output,
            group="episode",
            split="group",
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            num_classes=n_actions,
            seed=seed,
            overwrite=overwrite,
            progress_bar=False,
        )
    except EmptyTrainSplitError:
        episodes = len(np.unique(data.episodes))
        raise ConfigError(
            f"none of the {episodes} episode(s) collected went to the train split (an episode goes to one split "
            "whole): collect more steps"
        ) from None
    # The fingerprint covers the shards only, so adding provenance leaves the dataset's identity unchanged.
    manifest = read_manifest(output)
    manifest["provenance"] = dict(provenance)
    write_manifest(Path(output), manifest)
    return manifest


def mean_or_nan(values: list[float]) -> float:
    """The mean of `values`, or NaN for none (a rollout too short to finish an episode)."""
    return float(np.mean(values)) if values else float("nan")
