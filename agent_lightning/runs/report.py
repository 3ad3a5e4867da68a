"""What a run says about itself: its composed config as a compact tree, and where its files went.

No Lightning here: the config is printed before the training libraries load.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

_HIDDEN = ("_target_", "_partial_", "_convert_", "_recursive_")


def _leaves(node: Any, prefix: str = "") -> list[str]:
    if isinstance(node, Mapping):
        items: list[str] = []
        for key, value in node.items():
            if key not in _HIDDEN:
                items += _leaves(value, f"{prefix}{key}.")
        return items
    value = "null" if node is None else node
    return [f"{prefix[:-1]}={value}"]


def config_tree(cfg: DictConfig, choices: Mapping[str, Any] | None = None, width: int = 120) -> str:
    """The composed config: its top-level keys, then one branch per group (`group (choice): key=value ...`)."""
    container = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(container, dict)
    scalars = {k: v for k, v in container.items() if not isinstance(v, Mapping)}
    groups = {k: v for k, v in container.items() if isinstance(v, Mapping) and v}
    branches = []
    for key, value in groups.items():
        choice = (choices or {}).get(key)
        label = f"{key} ({choice})" if isinstance(choice, str) else key
        branches.append((label, _leaves(value)))
    # The top-level keys (seed, name, ckpt_path, ...) on the root line: they are keys of the config itself.
    lines = textwrap.wrap("config: " + " ".join(_leaves(scalars)), width=width, subsequent_indent="│      ")
    for index, (label, leaves) in enumerate(branches):
        last = index == len(branches) - 1
        head, indent = ("└─ " if last else "├─ "), ("   " if last else "│  ")
        text = f"{label}: " + " ".join(leaves) if leaves else label
        wrapped = textwrap.wrap(text, width=width - len(head), subsequent_indent="    ", break_on_hyphens=False)
        lines.append(head + wrapped[0])
        lines += [indent + line for line in wrapped[1:]]
    return "\n".join(lines)


def hydra_choices() -> dict[str, Any]:
    """The option chosen in each config group (`model: mlp`, ...) inside a Hydra run; empty outside one."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return {}
    return dict(HydraConfig.get().runtime.choices)


def saved_config_dir() -> str:
    """Where Hydra saved this job's composed config: `.hydra`, or `.hydra/resume-<n>` for a resume in place."""
    from hydra.core.hydra_config import HydraConfig

    subdir = HydraConfig.get().output_subdir if HydraConfig.initialized() else None
    return str(subdir or ".hydra")


def run_contents(run_dir: Path) -> str:
    """What a finished run left in its directory, for the last line of its log."""
    places = {".hydra": "config in .hydra/", "csv": "metrics in csv/", "checkpoints": "checkpoints in checkpoints/"}
    found = [what for name, what in places.items() if (run_dir / name).is_dir()]
    return ", ".join([*found, *(["summary.json"] if (run_dir / "summary.json").is_file() else [])])
