"""The W&B run that a run directory streamed to, so that a run resumed in place continues it.

W&B continues a run given its id (Lightning's `WandbLogger` asks with `resume="allow"`). Offline runs
cannot be continued: W&B ignores `resume` offline (wandb/wandb#2423), so a resumed offline run is a new
offline run in the same group (`name`).
"""

from __future__ import annotations

from pathlib import Path


def previous_online_run_id(run_dir: str | Path) -> str | None:
    """The id of the newest online W&B run under `<run_dir>/wandb/` (W&B names it `run-<time>-<id>`)."""
    runs = sorted(p.name for p in (Path(run_dir) / "wandb").glob("run-*-*") if p.is_dir())
    return runs[-1].rsplit("-", 1)[1] if runs else None
