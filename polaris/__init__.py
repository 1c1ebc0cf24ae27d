"""polaris: composable optimizers (a Python port of Elixir's Polaris), pure JAX.

``polaris.updates`` holds the transforms, ``polaris.optimizers`` the registered optimizers,
``polaris.schedules`` the learning-rate schedules. This package imports no IREE; compiling lives
in ``polaris_compiler`` and running compiled modules in ``polaris_runtime``.

Submodules and names load on first use (PEP 562), so ``import polaris`` (and the ``polaris``
command line, on a compile-cache hit or ``polaris inspect``) does not pay for importing JAX.
"""

from __future__ import annotations

import importlib

from polaris._src.errors import OptionError, PolarisError

__version__ = "0.1.0"

_SUBMODULES = ("optimizers", "schedules", "updates")
_NAMES = {
    "Transform": "polaris._src.base",
    "chain": "polaris._src.base",
    "compose": "polaris._src.base",
    "stateful": "polaris._src.base",
    "stateless": "polaris._src.base",
    "apply_updates": "polaris._src.apply",
}

__all__ = [
    "OptionError",
    "PolarisError",
    "Transform",
    "apply_updates",
    "chain",
    "compose",
    "optimizers",
    "schedules",
    "stateful",
    "stateless",
    "updates",
    "__version__",
]


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"polaris.{name}")
    if name in _NAMES:
        return getattr(importlib.import_module(_NAMES[name]), name)
    raise AttributeError(f"module 'polaris' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
