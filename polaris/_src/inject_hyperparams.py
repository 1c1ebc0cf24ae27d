"""``inject_hyperparams``: move numeric hyperparameters into the state."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from polaris._src import tree_utils as tu
from polaris._src.base import Transform, _as_transform, hyperparameter_leaves, stateful


class InjectHyperparamsState(NamedTuple):
    """State of :func:`inject_hyperparams`: the injected hyperparameters (a NamedTuple of
    float32 scalars whose fields are all marked as ``hyperparameters``) and the inner state."""

    hyperparams: Any
    inner_state: Any


@functools.lru_cache(maxsize=None)
def _hyperparams_type(fields: tuple[str, ...]):
    cls = NamedTuple("InjectedHyperparams", [(f, jax.Array) for f in fields])
    cls.hyperparameters = fields
    return cls


def _is_numeric(v) -> bool:
    if isinstance(v, bool):
        return False
    if isinstance(v, float):
        return True
    return hasattr(v, "shape") and jnp.shape(v) == () and jnp.issubdtype(
        jnp.asarray(v).dtype, jnp.floating
    )


def inject_hyperparams(
    builder: Callable[..., Transform], static_args: Iterable[str] = ()
) -> Callable[..., Transform]:
    """Wraps ``builder`` so its float hyperparameters live in the state, where a host (or a
    compiled module's caller) can change them between steps without rebuilding.

    ``inject_hyperparams(polaris.optimizers.adamw)(learning_rate=1e-3, b1=0.9, decay=1e-4)``
    returns a transform whose state is ``InjectHyperparamsState(hyperparams=(b1, decay),
    inner_state)``; each ``update`` rebuilds the inner transform from the stored values.

    .. math:: (u', s') = \\text{builder}(h)(u, s), \\qquad h \\text{ read from the state}

    Which arguments are injected: float values (Python floats or 0-d float arrays), except
    those named in ``static_args``. Integers, bools, ``None`` and schedules stay static. A
    hyperparameter the inner transform already keeps in its own state as a marked
    hyperparameter (``learning_rate`` of every registered optimizer) is not duplicated: it
    stays in the inner state, which is where a host changes it.

    Args:
      builder: a function of keyword arguments returning a :class:`Transform` (an optimizer or
        an update builder).
      static_args: names of float arguments to keep as compile-time constants.

    References:
      Optax ``optax.inject_hyperparams``.
      https://optax.readthedocs.io/en/latest/api/optimizer_wrappers.html
    """
    static_names = frozenset(static_args)

    @functools.wraps(builder)
    def wrapped(**kwargs) -> Transform:
        numeric = {
            k: v for k, v in kwargs.items() if k not in static_names and _is_numeric(v)
        }
        static = {k: v for k, v in kwargs.items() if k not in numeric}
        probe = _as_transform(builder(**kwargs), f"inject_hyperparams({builder.__name__})")
        # Names the inner state already exposes as tunable hyperparameters stay there.
        owned: set[str] = set()

        def init(params):
            inner_state = probe.init(params)
            owned.update(f for f, _ in hyperparameter_leaves(inner_state))
            fields = tuple(sorted(k for k in numeric if k not in owned))
            hp = _hyperparams_type(fields)(*(tu.scalar(numeric[f]) for f in fields))
            return InjectHyperparamsState(hyperparams=hp, inner_state=inner_state)

        def apply(updates, state, params):
            hp = state.hyperparams
            values = dict(numeric)
            values.update({f: getattr(hp, f) for f in hp._fields})
            inner = _as_transform(builder(**static, **values), builder.__name__)
            updates, inner_state = inner.update(updates, state.inner_state, params)
            return updates, InjectHyperparamsState(hyperparams=hp, inner_state=inner_state)

        return stateful(init, apply)

    return wrapped


__all__ = ["InjectHyperparamsState", "inject_hyperparams"]
