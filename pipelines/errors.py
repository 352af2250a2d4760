"""Errors a user can act on.

Anything raised as a `PipelineError` is shown as one line naming what is wrong and where, never as a
traceback. Everything else is a bug and keeps its traceback.
"""


class PipelineError(Exception):
    """A problem with the input, the configuration or the environment, explained in one line."""


class ConfigError(PipelineError):
    """The configuration is invalid (unknown key, wrong type, bad value)."""


class SourceError(PipelineError):
    """A source cannot be read at all (missing path, unreadable database)."""
