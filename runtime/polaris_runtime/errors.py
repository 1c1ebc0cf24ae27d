"""Errors raised by the runtime; each names the problem and what was expected."""


class PolarisRuntimeError(Exception):
    """Base class of every error this runtime raises on bad input."""


class ModuleError(PolarisRuntimeError):
    """The file is not a usable polaris-iree module (missing, corrupt, truncated, other schema)."""


class SchemaVersionError(ModuleError):
    """The module was written with a manifest schema this runtime does not know."""


class BindingError(PolarisRuntimeError, ValueError):
    """An argument does not match the module: wrong, missing or extra leaf, shape or dtype."""


class DeviceError(PolarisRuntimeError):
    """The device cannot run this module, or an array lives on another device."""


class ConsumedError(PolarisRuntimeError):
    """A device tree was donated to a previous call and its buffers now belong to the result."""


class CheckpointError(PolarisRuntimeError):
    """A checkpoint is unreadable or belongs to another module."""


IREE_ERRORS = (RuntimeError, ValueError, IndexError)  # what IREE's bindings map statuses to


def failed_inside_iree(fname: str, driver: str, e: BaseException) -> ModuleError:
    """The error for a call IREE refused or failed while running."""
    return ModuleError(f"{fname}() failed inside IREE on {driver}: {e}")
