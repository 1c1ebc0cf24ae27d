"""polaris: composable optimizers (a Python port of Elixir's Polaris), pure JAX.

``polaris.updates`` holds the transforms, ``polaris.optimizers`` the registered optimizers,
``polaris.schedules`` the learning-rate schedules. This package imports no IREE; compiling lives
in ``polaris_compiler`` and running compiled modules in ``polaris_runtime``.
"""

from polaris import optimizers, schedules, updates
from polaris._src.apply import apply_updates
from polaris._src.base import Transform, chain, compose, stateful, stateless
from polaris._src.errors import OptionError, PolarisError

__version__ = "0.1.0"

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
