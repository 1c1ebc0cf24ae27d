"""Errors raised by the compiler."""

from polaris._src.errors import PolarisError


class LayoutError(PolarisError, ValueError):
    """A parameter layout that cannot be read or is malformed."""


class CompileError(PolarisError):
    """``iree-compile`` failed; carries the flags, IREE's diagnostics and how to keep temps."""

    def __init__(self, message: str, *, flags: list[str], diagnostics: str, temps: str | None):
        hint = (
            f"intermediate files kept in {temps}"
            if temps
            else "set POLARIS_SAVE_TEMPS=DIR (or --save-temps DIR) to keep the .mlir, flags and manifest"
        )
        super().__init__(
            f"{message}\nflags: {' '.join(flags)}\n--- IREE diagnostics ---\n"
            f"{diagnostics.strip()[-4000:]}\n--- {hint}"
        )
        self.flags = flags
        self.diagnostics = diagnostics
        self.temps = temps
