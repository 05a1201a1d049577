"""The error every configuration check raises: its message names the file and the field."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration file or value is invalid; the message names the field."""
