"""Where the config tree lives, and composing it from Python as the command line does."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict


def config_dir() -> Path:
    """The config tree: inside the installed package, or `conf/` beside it in a source checkout."""
    package = Path(__file__).resolve().parent
    for candidate in (package / "conf", package.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"no conf/config.yaml next to {package}")


def compose_config(overrides: Sequence[str] = (), output_dir: str | Path | None = None) -> DictConfig:
    """The run config for `overrides` (as on the command line), writing under `output_dir`.

    Outside a Hydra run there is no run directory to interpolate, so `output_dir` names it
    (default: `runs/<experiment or 'default'>` under the current directory).
    """
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("config", overrides=list(overrides))
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir or Path("runs") / "default")
    from agent_lightning.data.fitting import resolve_data_dims  # lazy: composing stays light

    resolve_data_dims(cfg, required=False)
    return cfg
