"""Errors every part of mar raises, importable without torch (the CLI answers ``--help``
and argument errors before it loads anything heavy)."""


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the file and the key."""
