"""Errors a user can fix: reported as one line, without a traceback."""


class ConfigError(ValueError):
    """A config value, path or combination that cannot work; the message names the key."""
