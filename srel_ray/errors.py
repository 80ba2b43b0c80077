"""The project's exceptions: user mistakes are ``ValueError`` subclasses that name what is wrong."""


class SrelError(ValueError):
    """A user mistake: bad input, config or output folder. The message says what would be valid."""


class ConfigError(SrelError):
    """A configuration value or key is invalid."""


class DataError(SrelError):
    """A dataset, teacher checkpoint or condensed set is missing, unreadable or inconsistent."""
