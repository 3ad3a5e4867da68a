"""Watch a policy act: greedy episodes rendered frame by frame into animated GIFs (`evaluate ... record=N`).

The env is made with `render_mode="rgb_array"`; Pillow (installed with matplotlib) writes the GIF, so
recording needs no video codec. Episodes are played on the evaluation's own seeds, so a recorded episode is
the one counted in episodes.csv for that seed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from agent_lightning.agents.environments import env_config, make_env
from agent_lightning.agents.rollout import BatchActor, guarded_env_call
from agent_lightning.errors import ConfigError

GIF_WIDTH = 320  # pixels: a 600x400 CartPole frame is quantised 4x faster at this size, and stays legible


def record_episodes(act: BatchActor, env: str | Mapping[str, Any], seeds: list[int], out_dir: Path) -> list[Path]:
    """One `episode_<seed>.gif` per seed in `out_dir`: the env's frames as `act`'s greedy actions play it."""
    from PIL import Image

    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")  # frames are drawn off screen: no display to look for
    cfg = env_config(env)
    settings = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(settings, dict)
    settings["kwargs"] = {**(settings.get("kwargs") or {}), "render_mode": "rgb_array"}
    made = make_env(settings)
    fps = float(made.metadata.get("render_fps") or 30)
    start = int(made.action_space.start)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    try:
        for seed in seeds:
            obs, _ = guarded_env_call(cfg.id, f"in reset (episode seed {seed})", lambda s=seed: made.reset(seed=s))
            frames, done, step = [_frame(made, cfg.id)], False, 0
            while not done:
                action = int(np.asarray(act(np.asarray(obs, dtype=np.float32)[None]))[0]) + start
                where = f"in step (episode seed {seed}, step {step})"
                obs, _, terminated, truncated, _ = guarded_env_call(cfg.id, where, lambda a=action: made.step(a))
                frames.append(_frame(made, cfg.id))
                done, step = terminated or truncated, step + 1
            path = out_dir / f"episode_{seed}.gif"
            images = [_scaled(Image.fromarray(frame)) for frame in frames]
            images[0].save(path, save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)
            written.append(path)
    finally:
        made.close()
    return written


def _frame(env: Any, env_id: str) -> np.ndarray:
    frame = env.render()
    if not isinstance(frame, np.ndarray) or frame.ndim != 3:
        raise ConfigError(
            f"env.id={env_id} renders no rgb_array frames (render_mode='rgb_array'): it cannot be recorded"
        )
    return frame


def _scaled(image: Any) -> Any:
    from PIL import Image

    if image.width <= GIF_WIDTH:
        return image
    return image.resize((GIF_WIDTH, max(1, round(image.height * GIF_WIDTH / image.width))), Image.BILINEAR)
