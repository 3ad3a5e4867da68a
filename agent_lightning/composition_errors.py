"""Errors in composing a command's config, as one line naming the override and what would work instead.

Hydra prints these over several lines (with its search path and a hint about HYDRA_FULL_ERROR) and exits 1.
A typo in a key or an option is the most common mistake on a command line, so the line gives the nearest
names, the key where it lives elsewhere in the config (`lr` is `optimizer.lr`), the group option that has
it (`strategy=model_parallel` for `strategy.tensor_parallel`), or what the section holds; only where a new
key reaches a constructor (a section with `_target_`) does it offer `+key=value`.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from typing import Any

from hydra.errors import MissingConfigException, OverrideParseException
from omegaconf import DictConfig, ListConfig, OmegaConf

# A section with more keys than this is not listed in full: `--cfg job` prints it.
_MAX_LISTED_KEYS = 12


def describe(err: BaseException, config_name: str | None, arguments: Sequence[str]) -> str:
    """One line for an error composing `config_name` (None: not known) with the command-line `arguments`."""
    # Hydra 1.3 says what went wrong only in its messages' text: a text not matched here (another Hydra
    # version) still gives one line, Hydra's own words, at the end.
    message = str(err)
    if isinstance(err, OverrideParseException):
        return _unreadable(err)
    if isinstance(err, MissingConfigException) and err.options and err.missing_cfg_file:
        return _unknown_option(err.missing_cfg_file, list(err.options))
    context = _Context(config_name, arguments)
    full_key = getattr(err.__cause__, "full_key", None)
    overridden = re.match(r"Could not override '([^']+)'\.", message)
    if overridden and full_key:
        return context.unknown_key(str(full_key), overridden.group(1))
    deleted = re.match(r"Could not delete from config\. '([^']+)' does not exist", message)
    if deleted:
        return context.unknown_key(deleted.group(1), deleted.group(1))
    not_composed = re.match(r"Could not override '([^']+)'\. No match in the defaults list", message)
    if not_composed:
        return context.group_not_composed(not_composed.group(1))
    chosen = re.search(r"Multiple values for (\S+)\. To override a value use 'override \S+ (\S+)'", message)
    if chosen:  # `+optimizer=sgd` where the config already chooses an optimizer
        group, option = chosen.group(1), chosen.group(2).strip("'")
        return f"+{group}={option}: {group} is chosen already; choose another option without the +: {group}={option}"
    if "Config group override must be a string" in message:
        return context.group_not_named()
    if isinstance(err, ValueError) and "invalid literal for int()" in message:  # OmegaConf: a key inside a list
        return context.key_in_a_list() or _joined(message)
    key = getattr(err, "full_key", None)
    reason = _joined(message)
    if err.__cause__ is not None and str(err.__cause__).strip():  # e.g. the type a merged value had to have
        reason += f" ({_joined(str(err.__cause__))})"
    return f"{key}: {reason}" if key else reason


def describe_safely(err: BaseException, config_name: str | None, arguments: Sequence[str]) -> str:
    """`describe`, or Hydra's own words joined into one line if working out a better one fails."""
    try:
        line = describe(err, config_name, arguments)
    except Exception:  # the error is the user's either way: never a traceback for it
        line = _joined(str(err)) or type(err).__name__
    return " ".join(line.split())  # one line, whatever an override held


def _unreadable(err: OverrideParseException) -> str:
    # Without the lexer's echo of the override and its caret line: the override is named once, below.
    lines = [line for line in str(err.message).splitlines() if line.strip() and line.strip() != "^"]
    lines = [line.split(": ", 1)[0] if line.startswith("LexerNoViableAltException") else line for line in lines]
    grammar = next((line.split()[1] for line in lines if line.startswith("See http")), "")
    reason = "; ".join(line for line in lines if not line.startswith(("Error parsing override", "See http")))
    return f"cannot read the override '{err.override}': {reason} (write key=value; the grammar: {grammar})"


def _unknown_option(missing: str, options: list[str]) -> str:
    group, _, option = missing.rpartition("/")
    nearest = difflib.get_close_matches(option, options, n=1)
    hint = f" (did you mean {group}={nearest[0]}?)" if nearest else ""
    return f"{group}={option}: no such option{hint}; {group} takes {', '.join(options)}"


def _joined(message: str) -> str:
    message = message.partition("Config search path:")[0]  # Hydra's own directories: not the user's mistake
    message = message.partition("full_key:")[0]  # OmegaConf's trailer: the line names the key itself
    return " ".join(line.strip() for line in message.splitlines() if line.strip())


def _nearest(name: str, names: Sequence[str]) -> list[str]:
    """The name closest to `name`, or two where two are as close (`epochs`: max_epochs or min_epochs)."""
    close = difflib.get_close_matches(name, names, n=2)
    ratios = [difflib.SequenceMatcher(None, name, n).ratio() for n in close]
    return sorted(close) if len(close) == 2 and ratios[0] == ratios[1] else close[:1]


class _Context:
    """The config as the command line composes it without the override that failed (composed on demand)."""

    def __init__(self, config_name: str | None, arguments: Sequence[str]) -> None:
        # Another config or config directory than the command's own: suggestions from its own would mislead.
        chosen_elsewhere = any(a.split("=")[0] in _CONFIG_FLAGS for a in arguments)
        self.config_name = None if chosen_elsewhere else config_name
        self.arguments = [a for a in arguments if ("=" in a or a.startswith("~")) and not a.startswith("-")]
        self.multirun = any(a in ("-m", "--multirun") for a in arguments)
        self._composed: dict[tuple[str, ...], DictConfig | None] = {}

    def override_of(self, key: str) -> str:
        """The command-line override of `key` (or, failing that, of a key below it)."""
        keys = [(a, a.partition("=")[0].lstrip("+~")) for a in self.arguments]
        exact = [a for a, k in keys if k == key]
        return (exact or [a for a, k in keys if k.startswith(key + ".")] or [key])[0]

    def compose(self, without: str, extra: Sequence[str] = ()) -> DictConfig | None:
        """The config (with Hydra's node) from the other overrides, fewer of them if another fails too.

        A swept value (`a=1,2`) counts as its first value; `extra` overrides replace the others' of the same key.
        """
        if self.config_name is None:  # inside a running Hydra (a job, a sweeper): composing here would reset it
            return None
        replaced = {e.partition("=")[0] for e in extra}
        others = [_first_of_sweep(a) for a in self.arguments if a != without]
        others = [a for a in others if a.partition("=")[0].lstrip("+") not in replaced]
        fallbacks = (others, [o for o in others if "." not in o.partition("=")[0]], [])
        for attempt in fallbacks:
            key = (*attempt, *extra)
            if key not in self._composed:
                self._composed[key] = _compose(self.config_name, [*attempt, *extra])
            if self._composed[key] is not None:
                return self._composed[key]
        return None

    def unknown_key(self, full_key: str, overridden: str) -> str:
        """An override of `overridden`, whose part `full_key` the config does not have."""
        override = self.override_of(overridden)
        deleting = override.startswith("~")
        key, _, value = override.partition("=")
        key = key.lstrip("+~")
        parent, _, name = full_key.rpartition(".")
        where = parent or "the config"
        said = f"{override}: {where} has no key {name}"
        cfg = self.compose(override)
        if cfg is None:
            return said
        choices = dict(cfg.hydra.runtime.choices)
        group = full_key.replace(".", "/")
        if key != full_key and group in choices:
            if _is_global(group):  # debug, experiment: their options set keys at the top of the config
                return f"{override}: {group} options set keys at the top of the config, not under {group}: set the key"
            if choices[group] is None:  # `env.max_steps=3` with no env chosen
                return f"{override}: no {group} is chosen: choose one first ({group}=<option>; {self._options(group)})"
        if parent == "trainer" and not deleting:
            from agent_lightning.step import SET_BY_THE_RUN  # torch: on this error's path only

            if name in SET_BY_THE_RUN:  # `trainer.logger=false`: not the logger group's option `false`
                return f"{override}: the run sets trainer.{name} itself: {SET_BY_THE_RUN[name]}"
        section = OmegaConf.select(cfg, parent, throw_on_missing=False) if parent else cfg
        if section is None and parent and not deleting:  # null as a whole, e.g. env_eval
            return (
                f"{said}: {parent} is null; where it takes a section, give it whole, e.g. "
                f"{parent}='{{{name}: {value or '...'}}}'"
            )
        if not isinstance(section, DictConfig):
            return f"{said}: {parent} is not a section"
        names = sorted({str(k) for k in section if not str(k).startswith("_")})  # not Hydra's _target_, _partial_
        if not parent:  # a group left null (`env: null`) is no key, yet `env=cartpole` is valid
            names = sorted((set(names) | {g for g in choices if "/" not in g}) - {"hydra"})
        rest = key[len(full_key) :] + (f"={value}" if value else "")
        nearest = _nearest(name, names)
        listed = [n for n in nearest if _holds_overrides(section.get(n)) and rest.startswith(".")]
        if listed and not deleting:  # dagger's `train`: a list of the training runs' overrides, not a section
            return f"{said} (did you mean {_wrapped(listed[0], override.lstrip('+'))}?)"
        if nearest:
            meant = " or ".join(".".join(filter(None, (parent, n))) + rest for n in nearest)
            return f"{said} (did you mean {'~' if deleting else ''}{meant}?); {self._listing(where, names)}"
        elsewhere = [  # `lr=1e-3`: the key lives in a section (and the whole key the suggestion names exists)
            path + key[len(full_key) :]
            for path in _paths(cfg)
            if path.rpartition(".")[2] == name and path != full_key and _has(cfg, path + key[len(full_key) :])
        ]
        if elsewhere:
            meant = " or ".join(p + (f"={value}" if value else "") for p in elsewhere[:2])
            return f"{said} (did you mean {'~' if deleting else ''}{meant}?)"
        section_group = parent.replace(".", "/")
        if section_group in choices and not deleting:  # `strategy.tensor_parallel=2` under strategy=single
            having = self._options_having(section_group, key)
            if having:
                options = " and ".join(f"{section_group}={o}" for o in having)
                return f"{said}; {options} has it ({section_group}={choices[section_group]} now)"
        if "_target_" in section and not deleting:  # a new key reaches the constructor as a keyword argument
            return f"{said}; {self._listing(where, names)}; +{key}={value} passes it to {section._target_}"
        return f"{said}; {self._listing(where, names)}"

    def group_not_composed(self, group: str) -> str:
        """`env=cartpole` to a command whose config does not compose the env group."""
        override = self.override_of(group)
        cfg = self.compose(override)
        if cfg is None:
            return f"{override}: this command does not use the {group} group"
        named = [str(k) for k in cfg if group in str(k) and str(k) != "hydra"]  # dagger's train_experiment
        if named:
            value = override.partition("=")[2]
            return f"{override}: this command does not use the {group} group (did you mean {named[0]}={value}?)"
        groups = sorted(g for g in cfg.hydra.runtime.choices if "/" not in g and g != "hydra")
        its = f": its groups are {', '.join(groups)}" if groups else ": it has no config groups"
        return f"{override}: this command does not use the {group} group{its}"

    def key_in_a_list(self) -> str | None:
        """`train.lr=1`, where `train` is a list: its items are numbered, it has no keys; None if no override is."""
        for override in self.arguments:
            key = override.partition("=")[0].lstrip("+~")
            cfg = self.compose(override)
            parts = key.split(".")
            for end in range(1, len(parts)):
                prefix = ".".join(parts[:end])
                node = None if cfg is None else OmegaConf.select(cfg, prefix, throw_on_missing=False)
                if isinstance(node, ListConfig):
                    inner = f"{'.'.join(parts[end:])}={override.partition('=')[2]}"
                    if _holds_overrides(node):
                        return f"{override}: {prefix} is a list of overrides, not a section: {_wrapped(prefix, inner)}"
                    return f"{override}: {prefix} is a list, not a section: give it whole, {prefix}=[...]"
        return None

    def group_not_named(self) -> str:
        """`debug=null`, `logger=false`: a group's option is a name."""
        groups = {a: a.partition("=")[0].lstrip("+") for a in self.arguments if not a.startswith("~")}
        override = next((a for a, g in groups.items() if _is_group(g) and not _is_name(a.partition("=")[2])), None)
        if override is None:
            return "a config group was given a value that is not an option's name"
        group, value = groups[override], override.partition("=")[2]
        from agent_lightning.config import REQUIRED_GROUPS  # composition_errors is imported by config

        if value == "null" and group in REQUIRED_GROUPS:
            return f"{override}: {group} is required; leave it out for its default, or choose another of its options"
        if value == "null":
            return (
                f"{override}: a group is not set to null here; leave it out for its default, or remove it with ~{group}"
            )
        return f"{override}: {group} takes an option's name; {self._options(group)}"

    def _listing(self, where: str, names: Sequence[str]) -> str:
        if not names:
            return f"{where} has no keys"
        if len(names) <= _MAX_LISTED_KEYS:
            return f"{where} has {', '.join(names)}"
        if where.startswith("hydra"):
            return "--cfg hydra prints every key"
        return f"{'a single run with ' if self.multirun else ''}--cfg job prints every key"

    def _options(self, group: str) -> str:
        options = _group_options(group)
        return f"{group} takes {', '.join(options)}" if options else f"{group} has no options"

    def _options_having(self, group: str, key: str) -> list[str]:
        """The options of `group` under which the config has `key`."""
        having = []
        for option in _group_options(group):
            cfg = self.compose(self.override_of(key), [f"{group}={option}"])
            if cfg is not None and _has(cfg, key):
                having.append(option)
        return having


_ABSENT = object()
# Command-line flags that choose another config or config directory than the command's own.
_CONFIG_FLAGS = ("--config-name", "-cn", "--config-path", "-cp", "--config-dir", "-cd")


def _first_of_sweep(override: str) -> str:
    """`a=1,2` as `a=1`: one job's config (lists, dicts, quoted and function values left as they are)."""
    key, _, value = override.partition("=")
    if "," not in value or value[:1] in "[{'\"" or "(" in value:
        return override
    return f"{key}={value.split(',')[0]}"


def _has(cfg: DictConfig, key: str) -> bool:
    return OmegaConf.select(cfg, key, throw_on_missing=False, default=_ABSENT) is not _ABSENT


def _is_group(group: str) -> bool:
    from agent_lightning.config import config_dir

    return (config_dir() / group).is_dir()


def _is_global(group: str) -> bool:
    """Whether the group's options place their keys at the top of the config (`# @package _global_`)."""
    from agent_lightning.config import config_dir

    return any("@package _global_" in p.read_text() for p in (config_dir() / group).glob("*.yaml"))


# Hydra reads these words, in any case, as null, a bool or a float: never an option's name.
_HYDRA_WORDS = ("null", "true", "false", "nan", "inf")


def _holds_overrides(node: Any) -> bool:
    """Whether a config node is a list of overrides (empty, or `key=value` strings): dagger's `train`."""
    return isinstance(node, ListConfig) and all(isinstance(item, str) and "=" in item for item in node)


def _wrapped(key: str, override: str) -> str:
    """`'train=["trainer.x=1"]'`: an override passed inside a list of overrides, quoted for the shell."""
    return f"'{key}=[\"{override}\"]'"


def _is_name(value: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z_][\w-]*", value)) and value.lower() not in _HYDRA_WORDS


def _paths(cfg: DictConfig) -> list[str]:
    """Every key of the config (sections and values), dotted; Hydra's own node left out."""
    found: list[str] = []

    def visit(node: Any, prefix: str) -> None:
        for key in node:
            path = f"{prefix}{key}"
            if path == "hydra" or str(key).startswith("_"):
                continue
            found.append(path)
            child = node._get_node(key)
            if isinstance(child, DictConfig) and not child._is_none():
                visit(child, path + ".")

    visit(cfg, "")
    return found


def _compose(config_name: str, overrides: Sequence[str]) -> DictConfig | None:
    from agent_lightning.config import compose_raw

    try:
        return compose_raw(config_name, overrides, with_hydra=True)
    except Exception:  # another bad override among them: the caller tries with fewer
        return None


def _group_options(group: str) -> list[str]:
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from agent_lightning.config import config_dir

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return sorted(GlobalHydra.instance().config_loader().get_group_options(group))
