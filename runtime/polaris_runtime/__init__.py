"""polaris_runtime: run polaris-iree optimizer modules with IREE's runtime and NumPy only.

No JAX, no compiler, no frontend: a deploy host installs ``polaris-iree-runtime`` alone.

Names load on first use (PEP 562), as in ``polaris_compiler``: the compiler's cache imports
``polaris_runtime.fileio`` for its atomic writes, and a compile-cache hit must not pay for
importing IREE's runtime and NumPy (0.15 s of a 0.3 s budget).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_NAMES = {
    "BindingError": "polaris_runtime.errors",
    "CheckpointError": "polaris_runtime.errors",
    "ConsumedError": "polaris_runtime.errors",
    "DeviceError": "polaris_runtime.errors",
    "ModuleError": "polaris_runtime.errors",
    "PolarisRuntimeError": "polaris_runtime.errors",
    "SchemaVersionError": "polaris_runtime.errors",
    "SCHEMA_VERSION": "polaris_runtime.manifest",
    "LeafSpec": "polaris_runtime.manifest",
    "Manifest": "polaris_runtime.manifest",
    "Module": "polaris_runtime.module",
    "Optimizer": "polaris_runtime.module",
    "Tree": "polaris_runtime.module",
    "flatten_names": "polaris_runtime.module",
    "inspect_module": "polaris_runtime.module",
    "load": "polaris_runtime.module",
    "unflatten_names": "polaris_runtime.module",
    "Packing": "polaris_runtime.pack",
}
_SUBMODULES = ("checkpoint", "cheader", "device", "errors", "fileio", "manifest", "module", "pack")

__all__ = sorted([*_NAMES, "checkpoint", "pack"])


def __getattr__(name: str):
    if name in _NAMES:
        value = getattr(importlib.import_module(_NAMES[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"polaris_runtime.{name}")
    else:
        raise AttributeError(f"module 'polaris_runtime' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*__all__, *_SUBMODULES, "__version__"})


if TYPE_CHECKING:  # what the names are, for type checkers and editors
    from polaris_runtime import checkpoint, pack
    from polaris_runtime.errors import (
        BindingError,
        CheckpointError,
        ConsumedError,
        DeviceError,
        ModuleError,
        PolarisRuntimeError,
        SchemaVersionError,
    )
    from polaris_runtime.manifest import SCHEMA_VERSION, LeafSpec, Manifest
    from polaris_runtime.module import (
        Module,
        Optimizer,
        Tree,
        flatten_names,
        inspect_module,
        load,
        unflatten_names,
    )
    from polaris_runtime.pack import Packing
