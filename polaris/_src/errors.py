"""Errors raised by the frontend."""


class PolarisError(Exception):
    """Base class of the errors this package raises on bad input."""


class OptionError(PolarisError, ValueError):
    """An unknown optimizer, option or schedule, or a value of the wrong kind."""
