"""polaris_compiler: jax.export + iree-compile for polaris optimizers.

Imports the frontend (``polaris``), jax and ``iree.compiler``; writes modules the runtime
(``polaris_runtime``) reads. Names load on first use (PEP 562): ``polaris_compiler.cache`` and
``polaris_compiler.options`` work without importing JAX, which keeps a compile-cache hit fast.
"""

from __future__ import annotations

import importlib

_NAMES = {
    "Artifact": "polaris_compiler.compile",
    "FunctionEntry": "polaris_compiler.compile",
    "compile_functions": "polaris_compiler.compile",
    "compile_optimizer": "polaris_compiler.compile",
    "options_digest": "polaris_compiler.compile",
    "CompileError": "polaris_compiler.errors",
    "LayoutError": "polaris_compiler.errors",
    "Layout": "polaris_compiler.layout",
    "CompileOptions": "polaris_compiler.options",
    "Target": "polaris_compiler.options",
    "build_flags": "polaris_compiler.options",
}

__all__ = sorted(_NAMES)


def __getattr__(name: str):
    if name in _NAMES:
        return getattr(importlib.import_module(_NAMES[name]), name)
    raise AttributeError(f"module 'polaris_compiler' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
