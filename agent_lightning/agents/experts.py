"""Experts that label states with actions: gymnasium's own heuristic, scripted controllers, or a user's function.

An expert is any `function(env, obs) -> action`. Name a built-in one (`heuristic`, `cartpole`, `acrobot`,
`mountaincar`) or your own as `module:function` (importable from the working directory or PYTHONPATH).
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from agent_lightning.errors import ConfigError

Expert = Callable[[Any, np.ndarray], int]


def lunar_lander_heuristic(env: Any, obs: np.ndarray) -> int:
    """Gymnasium's own LunarLander controller (`gymnasium.envs.box2d.lunar_lander.heuristic`, ~260 return)."""
    from gymnasium.envs.box2d.lunar_lander import heuristic

    return int(heuristic(env, obs))


def cartpole_balance(env: Any, obs: np.ndarray) -> int:
    """Push toward the side the pole falls to, steering the cart back to the centre: 500 on every seed.

    The cart terms keep it within 0.7 of the centre (2.4 ends the episode), so the controller still balances
    with 10% of its actions flipped: a margin that a cloned policy's occasional mistakes need. (Stronger cart
    terms switch the action nearly every step and are harder to clone; measured, this one clones to 500.)
    """
    x, x_dot, theta, theta_dot = (float(v) for v in obs[:4])
    return int(theta + 0.5 * theta_dot + 0.05 * x + 0.2 * x_dot > 0)


def acrobot_energy_pump(env: Any, obs: np.ndarray) -> int:
    """Pump energy into the swing: torque along the joints' motion (about -100 return on seeds 0..19)."""
    _, _, cos2, sin2, dtheta1, dtheta2 = (float(v) for v in obs[:6])
    # Torque in the direction the links swing adds energy each half-period; the angle term keeps link 2
    # from folding back on link 1, which would waste the swing.
    torque = dtheta1 + 2.0 * dtheta2 - 0.5 * math.atan2(sin2, cos2)
    return 2 if torque > 0 else 0


def mountaincar_momentum(env: Any, obs: np.ndarray) -> int:
    """Push in the direction of the car's velocity, building momentum to reach the flag (about -110 return)."""
    position, velocity = float(obs[0]), float(obs[1])
    if velocity == 0:  # at rest (the first step): push away from the nearer slope's foot
        return 2 if position < -0.5 else 0
    return 2 if velocity > 0 else 0


BUILTIN: dict[str, Expert] = {
    "heuristic": lunar_lander_heuristic,
    "cartpole": cartpole_balance,
    "acrobot": acrobot_energy_pump,
    "mountaincar": mountaincar_momentum,
}


# The environment each built-in expert reads the observations of (gymnasium id without its version).
SUITS: dict[str, tuple[str, str]] = {
    "heuristic": ("LunarLander", "lunarlander"),
    "cartpole": ("CartPole", "cartpole"),
    "acrobot": ("Acrobot", "acrobot"),
    "mountaincar": ("MountainCar", "mountaincar"),
}


def resolve_expert(name: str, env_id: str | None = None) -> Expert:
    """The expert called `name` (built-in or `module:function`); ConfigError listing the valid names.

    With `env_id`, a built-in expert made for another environment is refused (it would index another
    observation layout, or act on meaningless numbers).
    """
    if name in BUILTIN:
        if env_id is not None and env_id.partition("-v")[0] != SUITS[name][0]:
            own = [n for n, (family, _) in SUITS.items() if env_id.partition("-v")[0] == family]
            hint = f"use expert={own[0]} (its own) or module:function" if own else "give expert=module:function"
            raise ConfigError(f"expert={name} suits {SUITS[name][0]} (env={SUITS[name][1]}) only, not {env_id}: {hint}")
        return BUILTIN[name]
    valid = f"use one of {', '.join(sorted(BUILTIN))} or module:function"
    if ":" not in name:
        raise ConfigError(f"expert={name!r} is unknown: {valid}")
    module_name, _, attr = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(f"expert={name!r}: cannot import {module_name!r} ({err}); {valid}") from None
    function = getattr(module, attr, None)
    if not callable(function):
        raise ConfigError(f"expert={name!r}: {module_name} has no function {attr!r}; {valid}")
    return function
