"""polaris_runtime: run polaris-iree optimizer modules with IREE's runtime and NumPy only.

No JAX, no compiler, no frontend: a deploy host installs ``polaris-iree-runtime`` alone.
"""

from polaris_runtime import checkpoint
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
from polaris_runtime import pack
from polaris_runtime.pack import Packing

__version__ = "0.1.0"

__all__ = [
    "SCHEMA_VERSION",
    "BindingError",
    "CheckpointError",
    "ConsumedError",
    "DeviceError",
    "LeafSpec",
    "Manifest",
    "Module",
    "ModuleError",
    "Optimizer",
    "Packing",
    "PolarisRuntimeError",
    "SchemaVersionError",
    "Tree",
    "checkpoint",
    "flatten_names",
    "inspect_module",
    "load",
    "pack",
    "unflatten_names",
]
