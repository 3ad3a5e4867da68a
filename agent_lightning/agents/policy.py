"""A trained agent that acts: observations in (numpy, torch or lists), greedy actions out.

    policy = Policy.load("outputs/<run>/checkpoints/last.ckpt")   # or an export: .pt, .safetensors, .onnx, .ts
    action = policy.act(obs)            # one observation [obs_dim] -> int
    actions = policy.act(batch)         # [n, obs_dim] -> np.ndarray[int64]
    actions = policy.act(frame)         # a pandas DataFrame: its feature columns by name, in any order

The model's own normaliser (the training data's mean/std, saved with the weights) is applied inside
the model. Nothing here imports Lightning or Hydra: a deployed agent needs torch (and onnxruntime for
an `.onnx` file) only.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from agent_lightning.errors import ConfigError
from agent_lightning.model import AgentMLP

LogitsFn = Callable[[Tensor], Tensor]


class Policy:
    """Greedy actions (argmax of the logits) and action probabilities of a trained policy network."""

    def __init__(
        self,
        model: nn.Module | LogitsFn,
        device: str | torch.device | None = None,
        *,
        obs_dim: int | None = None,
        n_actions: int | None = None,
        source: str | None = None,
        class_names: list[str] | None = None,
        feature_names: list[str] | None = None,
        env: dict[str, Any] | None = None,
    ) -> None:
        if isinstance(model, nn.Module):
            current = next(iter(model.parameters()), torch.empty(0)).device
            self.device = _checked_device(device) if device is not None else current
            if self.device != current:
                model = model.to(self.device)
        else:  # a runtime outside torch (onnxruntime): it takes and returns CPU tensors
            self.device = torch.device(device or "cpu")
        base = getattr(model, "_orig_mod", model)  # the AgentMLP inside a torch.compile wrapper
        if isinstance(base, AgentMLP):
            obs_dim = base.normalizer.mean.numel() if obs_dim is None else obs_dim
            n_actions = base.head.out_features if n_actions is None else n_actions
        if obs_dim is None or n_actions is None:
            raise ValueError("Policy needs obs_dim and n_actions for a model that is not an AgentMLP")
        self.model = model
        self.obs_dim, self.n_actions = int(obs_dim), int(n_actions)
        self.source = source
        # What action i and feature j mean, where the training data named them (checkpoints and exports keep them).
        self.class_names, self.feature_names = class_names, feature_names
        self.env = env  # the env settings its demonstrations were collected in (None: not collected, or unknown)

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> Policy:
        """From a Lightning checkpoint (file or sharded directory) or an export (.pt, .safetensors, .onnx, .ts)."""
        from agent_lightning.formats.loading import load_policy_model
        from agent_lightning.runs.data_schema import saved_schema

        model, dims = load_policy_model(Path(path), _checked_device(device))
        names = {} if "class_names" in dims else saved_schema(path).as_names()  # ONNX, TorchScript: read with the model
        return cls(model, device, source=str(path), **dims, **names)

    def _batch(self, obs: Any) -> tuple[Tensor, bool]:
        """Observations as a float32 [n, obs_dim] tensor on the policy's device, and whether one was given."""
        if _is_labelled(obs):  # pandas: a DataFrame's columns, or one row's (a Series') index, by name
            obs = self._named_values(obs)
        if not isinstance(obs, Tensor):
            array = np.asarray(obs)
            if array.dtype.kind in "USV":  # text or raw bytes: torch would name its dtypes instead
                raise ValueError(f"observations of dtype {array.dtype} are not numbers: give a float or int array")
            if array.dtype == object:  # mixed or nullable columns: numbers, or one line saying they are not
                try:
                    array = array.astype(np.float64)
                except (TypeError, ValueError):
                    raise ValueError("observations hold values that are not numbers (text, or an empty cell)") from None
            # torch takes no negative strides (a reversed view) and warns of read-only memory: those are copied.
            copy = any(step < 0 for step in array.strides) or not array.flags.writeable
            obs = torch.as_tensor(array.copy() if copy else array)
        x = obs
        single = x.dim() == 1
        if single:
            x = x.unsqueeze(0)
        if x.dim() != 2 or x.shape[-1] != self.obs_dim:
            shape = list(x.shape[1:] if single else x.shape)
            raise ValueError(
                f"observation of shape {shape} does not fit this policy: expected {self.obs_dim} features, "
                f"[{self.obs_dim}] for one observation or [n, {self.obs_dim}] for a batch"
            )
        if x.is_complex():  # casting to float32 would silently drop the imaginary part
            raise ValueError(f"observation of dtype {x.dtype} is complex: give real numbers (any float or int dtype)")
        x = x.to(self.device, torch.float32)
        # NaN or inf logits still have an argmax (action 0): refuse the observation rather than act on it.
        if not bool(torch.isfinite(x).all()):
            raise ValueError(
                "observation holds NaN or inf values (an empty cell, or a number beyond float32's +-3.4e38): every "
                "feature must be a finite number"
            )
        return x, single

    def _named_values(self, obs: Any) -> np.ndarray:
        """A DataFrame's or Series' values in the order of `feature_names` (by position where the policy has none)."""
        names = self.feature_names
        labels = obs.columns if hasattr(obs, "columns") else obs.index
        if not names:
            return obs.to_numpy()
        missing = [name for name in names if name not in labels]
        if missing:
            raise ValueError(f"observations lack the feature column {missing[0]!r} this policy was trained on")
        chosen = obs[names]
        try:
            return chosen.to_numpy(dtype=np.float32)
        except (TypeError, ValueError):
            columns = chosen if hasattr(chosen, "columns") else chosen.to_frame().T
            bad = next(n for n in names if not _numeric(columns[n]))
            raise ValueError(f"observations' feature {bad!r} holds values that are not numbers") from None

    def logits(self, obs: Any) -> Tensor:
        """Action logits as a float32 tensor, [n_actions] for one observation or [n, n_actions] for a batch."""
        x, single = self._batch(obs)
        # Always the inference behaviour (dropout off, batch norm's running statistics), without changing
        # the mode of a model that is being trained elsewhere.
        was_training = isinstance(self.model, nn.Module) and self.model.training
        try:
            if was_training:
                self.model.eval()
            with torch.inference_mode():
                out = self.model(x).float()
        finally:
            if was_training:
                self.model.train()
        return out[0] if single else out

    def action_probs(self, obs: Any) -> np.ndarray:
        """Softmax of the logits: float32 [n_actions] for one observation, [n, n_actions] for a batch."""
        return torch.softmax(self.logits(obs), dim=-1).cpu().numpy().astype(np.float32, copy=False)

    def act(self, obs: Any) -> int | np.ndarray:
        """The greedy action: an int for one observation, an int64 array for a batch."""
        actions = self.logits(obs).argmax(dim=-1).cpu()
        return int(actions) if actions.dim() == 0 else actions.numpy().astype(np.int64, copy=False)

    def __call__(self, obs: Any) -> int | np.ndarray:
        """Same as `act`: a policy can be passed where a function obs -> action is expected."""
        return self.act(obs)

    def __repr__(self) -> str:
        where = f", from {self.source}" if self.source else ""
        return f"Policy(obs_dim={self.obs_dim}, n_actions={self.n_actions}, device={self.device}{where})"


def _is_labelled(obs: Any) -> bool:
    """A pandas DataFrame or Series (told without importing pandas): values with names."""
    return hasattr(obs, "to_numpy") and (hasattr(obs, "columns") or (hasattr(obs, "index") and hasattr(obs, "name")))


def _numeric(values: Any) -> bool:
    try:
        values.to_numpy(dtype=np.float32)
    except (TypeError, ValueError):
        return False
    return True


def _checked_device(device: str | torch.device) -> torch.device:
    """`device` as a torch.device; a one-line error when it names an accelerator this machine lacks."""
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"device={str(device)!r}: no CUDA device is available here (torch.cuda.is_available() is False)"
        )
    return device
