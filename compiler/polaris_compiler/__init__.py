"""polaris_compiler: jax.export + iree-compile for polaris optimizers.

Imports the frontend (``polaris``), jax and ``iree.compiler``; writes modules the runtime
(``polaris_runtime``) reads.
"""

from polaris_compiler.compile import (
    Artifact,
    FunctionEntry,
    compile_functions,
    compile_optimizer,
    options_digest,
)
from polaris_compiler.errors import CompileError, LayoutError
from polaris_compiler.layout import Layout
from polaris_compiler.options import CompileOptions, Target, build_flags

__all__ = [
    "Artifact",
    "CompileError",
    "CompileOptions",
    "FunctionEntry",
    "Layout",
    "LayoutError",
    "Target",
    "build_flags",
    "compile_functions",
    "compile_optimizer",
    "options_digest",
]
