"""User-facing errors: the CLI prints these as one line, without a traceback."""


class SuiteError(Exception):
    """A problem the user can fix (bad config, missing data, bad arguments)."""


class ConfigError(SuiteError, ValueError):
    """An invalid configuration key, value or file."""


class DataError(SuiteError):
    """Missing, corrupt or malformed data files."""
