"""agent_lightning: train AI-agent policy networks with PyTorch Lightning and Hydra."""

from __future__ import annotations

import signal
import sys
from types import FrameType
from typing import Any

__all__ = ["AgentMLP", "AgentModule", "Policy"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # Imported on first use, so tools that need no Lightning (e.g. `agent_lightning.prepare`) start fast.
    if name == "AgentMLP":
        from agent_lightning.model import AgentMLP

        return AgentMLP
    if name == "AgentModule":
        from agent_lightning.module import AgentModule

        return AgentModule
    if name == "Policy":
        from agent_lightning.agents.policy import Policy

        return Policy
    raise AttributeError(f"module 'agent_lightning' has no attribute {name!r}")


def _interrupted(signum: int, frame: FrameType | None) -> None:
    print(f"interrupted ({signal.Signals(signum).name}): stopped without saving", file=sys.stderr)
    raise SystemExit(128 + signum)


# `python -m agent_lightning.<command>` (argv[0] is "-m" while the package loads): a Ctrl+C before the command
# takes over (its libraries take seconds to load) exits as interrupted, not with a traceback of the import machinery.
# Training installs its own handlers, which stop at a step and save; an ignored SIGINT (nohup, `&`) stays ignored.
if sys.argv[:1] == ["-m"] and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
    signal.signal(signal.SIGINT, _interrupted)
