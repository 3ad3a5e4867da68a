"""Errors a user can fix, and the exit code each kind of failure ends the process with.

Exit codes: 0 finished; 2 a config value, file or combination that cannot work (also a diverged run,
fixed by the config); 3 a rank crashed on an unexpected error; 128 + N stopped by signal N (130 SIGINT,
138 SIGUSR1, 143 SIGTERM) after saving a current last.ckpt, as a shell reports a signalled command.
"""

from __future__ import annotations

import contextlib
import logging
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

EXIT_CONFIG = 2
EXIT_CRASHED = 3


class ConfigError(ValueError):
    """A config value, path or combination that cannot work; the message names the key."""

    exit_code = EXIT_CONFIG


class RankCrashError(RuntimeError):
    """A rank failed on an error that is not the user's config (its first line and place are in the message)."""

    exit_code = EXIT_CRASHED


def signal_exit_code(signum: int) -> int:
    """The exit code of a run stopped by signal `signum`: 128 + its number, as shells report it."""
    return 128 + int(signum)


# What stops a run cleanly (SIGUSR1: what schedulers send before pre-empting a job).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


class StoppedBySignalError(Exception):
    """A signal asked the command to stop; the message says what was kept (a run: its last.ckpt) and how to go on."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = int(signum)

    @property
    def exit_code(self) -> int:
        """128 + the signal's number."""
        return signal_exit_code(self.signum)

    @property
    def signal_name(self) -> str:
        """SIGTERM, SIGINT, ..."""
        return signal.Signals(self.signum).name


@contextlib.contextmanager
def signals_stop(message: Callable[[str], str]) -> Iterator[None]:
    """Within the block, SIGTERM, SIGINT and SIGHUP raise StoppedBySignalError(`message(signal name)`).

    So `finally` blocks clean up and the command ends with one line and 128 + the signal's number,
    where the default action would end it silently (SIGTERM) or with a traceback (Ctrl+C).
    """
    if threading.current_thread() is not threading.main_thread():  # handlers can only be set there
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        raise StoppedBySignalError(signum, message(signal.Signals(signum).name))

    previous = {signum: signal.signal(signum, stop) for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0].strip() if text else type(err).__name__


def user_facing(err: BaseException) -> tuple[int, str] | None:
    """(exit code, one-line message) for an error the user can act on; None for a bug (keep its traceback).

    Errors that carry an `exit_code` (ConfigError, a diverged run, a crashed rank, a requested stop)
    are reported as themselves. A ValueError or TypeError raised inside a constructor while Hydra
    builds an object from the config is a bad config value too: reported as one line naming the key.
    So are an interpolation that cannot be resolved, a mandatory value left unset, and overrides a job
    composes itself that Hydra cannot compose.
    """
    code = getattr(err, "exit_code", None)
    if isinstance(code, int):
        return code, _first_line(err)
    from hydra.errors import InstantiationException

    lightnings = _lightning_misconfiguration()
    if isinstance(err, InstantiationException):
        cause = err.__cause__
        while isinstance(cause, InstantiationException) and cause.__cause__ is not None:
            cause = cause.__cause__
        if isinstance(cause, ConfigError):
            return EXIT_CONFIG, _first_line(cause)
        if isinstance(cause, (ValueError, TypeError, *lightnings)):
            match = re.search(r"full_key: (\S+)", str(err))
            target = re.search(r"target '([^']+)'", str(err))
            where = match.group(1) if match else (target.group(1) if target else "config")
            return EXIT_CONFIG, f"{where}: {_first_line(cause)}"
    if isinstance(err, lightnings):
        return EXIT_CONFIG, _first_line(err)
    return _config_text_error(err)


def _config_text_error(err: BaseException) -> tuple[int, str] | None:
    """A value the config cannot give (`${nope}`, a `???` left unset) or overrides Hydra cannot compose."""
    from hydra.errors import ConfigCompositionException, OverrideParseException
    from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue

    if isinstance(err, (InterpolationResolutionError, MissingMandatoryValue)):
        key = getattr(err, "full_key", None)
        return EXIT_CONFIG, f"{key}: {_first_line(err)}" if key else _first_line(err)
    if isinstance(err, (OverrideParseException, ConfigCompositionException)):  # overrides a job composes itself
        from agent_lightning.composition_errors import describe_safely

        return EXIT_CONFIG, describe_safely(err, None, ())
    return None


def exit_if_reported(err: BaseException) -> None:
    """Log an error the user can act on as one line and exit with its code; return for a bug."""
    reported = user_facing(err)
    if reported is not None:
        logging.getLogger("agent_lightning").error("%s", reported[1])
        sys.exit(reported[0])


def _lightning_misconfiguration() -> tuple[type[BaseException], ...]:
    # Lightning's error for a bad setting; none before Lightning is loaded (no check before that can raise it),
    # and importing it only to tell would take the seconds the early checks save.
    module = sys.modules.get("lightning.fabric.utilities.exceptions")
    return (module.MisconfigurationException,) if module is not None else ()
