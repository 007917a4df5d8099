"""Public entry point for the recurrent variants: `build`, `registry`, `names`."""

from suite.core.cells import build, check_options, get, make_options, option_fields, register, registry


def names() -> list[str]:
    """Sorted names of all registered variants."""
    return sorted(registry())


__all__ = ["build", "check_options", "get", "make_options", "names", "option_fields", "register", "registry"]
