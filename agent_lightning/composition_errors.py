"""Hydra's errors in composing a command's config, as one line naming the override and what would be valid.

Hydra prints these over several lines (with its search path and a hint about HYDRA_FULL_ERROR) and exits 1.
A typo in a key or an option is the most common mistake on a command line, so the line says what the
key's section holds, or which options the group has, and the nearest name when one is close.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence

from hydra.errors import CompactHydraException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

# A section with more keys than this is not listed in full: `--cfg job` prints it.
_MAX_LISTED_KEYS = 12


def describe(err: CompactHydraException, config_name: str | None, arguments: Sequence[str]) -> str:
    """One line for an error composing `config_name` (None: not known) with the command-line `arguments`."""
    if isinstance(err, OverrideParseException):
        return _unreadable(err)
    if isinstance(err, MissingConfigException) and err.options and err.missing_cfg_file:
        return _unknown_option(err.missing_cfg_file, list(err.options))
    full_key = getattr(err.__cause__, "full_key", None)
    if isinstance(err.__cause__, OmegaConfBaseException) and full_key and str(err).startswith("Could not override"):
        return _unknown_key(str(full_key), config_name, arguments)
    return _joined(str(err))


def _unreadable(err: OverrideParseException) -> str:
    lines = [line for line in str(err.message).splitlines() if line.strip()]
    grammar = next((line.split()[1] for line in lines if line.startswith("See http")), "")
    reason = "; ".join(line for line in lines if not line.startswith(("Error parsing override", "See http")))
    return f"cannot read the override '{err.override}': {reason} (write key=value; the grammar: {grammar})"


def _unknown_option(missing: str, options: list[str]) -> str:
    group, _, option = missing.rpartition("/")
    nearest = difflib.get_close_matches(option, options, n=1)
    hint = f" (did you mean {group}={nearest[0]}?)" if nearest else ""
    return f"{group}={option}: no such option{hint}; {group} takes {', '.join(options)}"


def _unknown_key(full_key: str, config_name: str | None, arguments: Sequence[str]) -> str:
    override = _override_of(full_key, arguments)
    key, _, value = override.partition("=")
    key = key.lstrip("+~")
    parent, _, name = full_key.rpartition(".")
    where = parent or "the config"
    names = _names_under(config_name, parent, [a for a in arguments if a != override]) if config_name else None
    if names is None:
        return f"{override}: {where} has no key {name}; add --cfg job to print the config's keys"
    listed = f"{where} has {', '.join(names)}" if len(names) <= _MAX_LISTED_KEYS else "--cfg job prints every key"
    nearest = difflib.get_close_matches(name, names, n=1)
    if nearest:  # the rest of the key after the unknown part stays as it was written
        suggestion = ".".join(filter(None, (parent, nearest[0]))) + key[len(full_key) :]
        suggestion += f"={value}" if value else ""
        return f"{override}: {where} has no key {name} (did you mean {suggestion}?); {listed}"
    return f"{override}: {where} has no key {name}; {listed}; +{key}={value} adds it as a new key"


def _override_of(full_key: str, arguments: Sequence[str]) -> str:
    """The command-line override that names `full_key` (or a key below it)."""
    for argument in arguments:
        key = argument.partition("=")[0].lstrip("+~")
        if key == full_key or key.startswith(full_key + "."):
            return argument
    return full_key


def _names_under(config_name: str, parent: str, arguments: Sequence[str]) -> list[str] | None:
    """The keys at `parent` as the other overrides compose the config (at the top: with the command's groups)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from agent_lightning.config import config_dir

    overrides = [a for a in arguments if "=" in a and not a.startswith(("-", "hydra.", "hydra/", "+hydra"))]
    for attempt in (overrides, [o for o in overrides if "." not in o.partition("=")[0]], []):
        GlobalHydra.instance().clear()
        try:
            with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
                cfg = compose(config_name, overrides=attempt, return_hydra_config=True)
        except Exception:  # another bad override among them: compose with fewer
            continue
        node = OmegaConf.select(cfg, parent, throw_on_missing=False) if parent else cfg
        if not isinstance(node, DictConfig):
            return None
        names = {str(k) for k in node if not str(k).startswith("_")}  # not Hydra's _target_, _partial_
        if not parent:  # a group chosen as null (`env: null`) is no key, yet `env=cartpole` is valid
            names = (names | {g for g in cfg.hydra.runtime.choices if "/" not in g}) - {"hydra"}
        return sorted(names)
    return None


def _joined(message: str) -> str:
    message = message.partition("Config search path:")[0]  # Hydra's own directories: not the user's mistake
    return " ".join(line.strip() for line in message.splitlines() if line.strip())
