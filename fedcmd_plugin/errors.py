"""Errors a user can act on: the CLI prints them as one line instead of a stack trace."""


class PluginError(Exception):
    """Base of every error caused by the user's input (config, files, names)."""


class ConfigError(PluginError):
    """A config key is unknown, has the wrong type or an invalid value."""


class DataError(PluginError):
    """A data set file or folder is missing, unreadable or malformed."""
