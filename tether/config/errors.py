"""The one error a config raises: which file, which setting, what to fix."""

from __future__ import annotations


class ConfigError(ValueError):
    """A config file that cannot be used; the message says which file and what to fix."""

