"""Optimizers (Polaris.Optimizers): each module here registers one optimizer.

Every module in this package is imported on first use of the registry, so adding an optimizer is
one new file whose builder carries ``@register``; ``polaris list``, ``polaris compile NAME``, the
compiler and the parametrized tests all read the registry.
"""

import importlib
import pkgutil

from polaris._src.registry import get, names, register, specs

for _m in pkgutil.iter_modules(__path__):
    if not _m.name.startswith("_"):
        _mod = importlib.import_module(f"{__name__}.{_m.name}")
        globals().update(
            {
                k: v
                for k, v in vars(_mod).items()
                if getattr(v, "__polaris_registered__", None) is not None
            }
        )

__all__ = ["get", "names", "register", "specs", *sorted(names())]
