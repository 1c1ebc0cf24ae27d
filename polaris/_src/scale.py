"""Scaling transforms: ``scale``, ``scale_by_state``, ``scale_by_schedule``, ``scale_by_learning_rate``."""

from __future__ import annotations

from collections.abc import Callable
from numbers import Real
from typing import NamedTuple

import jax
import jax.numpy as jnp

from polaris._src import tree_utils as tu
from polaris._src.base import EmptyState, Transform, combinator, stateful, stateless

Schedule = Callable[[jax.Array], jax.Array]


@combinator
def scale(step_size) -> Transform:
    """Scales updates by a constant ``step_size`` (baked into a compiled module).

    .. math:: u' = s \\cdot u

    Args:
      step_size: a number or scalar array.
    """
    _check_number("scale", "step_size", step_size)

    def apply(updates, params):
        del params
        return jax.tree.map(lambda g: g * jnp.asarray(step_size, g.dtype), updates)

    return stateless(apply)


class ScaleByStateState(NamedTuple):
    """State of :func:`scale_by_state`: the scale, a float32 scalar a host may change."""

    scale: jax.Array
    hyperparameters = ("scale",)


@combinator
def scale_by_state(step_size) -> Transform:
    """Scales updates by a value kept in the state (Polaris's ``scale_by_state``).

    .. math:: u' = s \\cdot u, \\qquad s \\text{ read from the state}

    The scale is a state leaf, so a compiled module's host can change it between steps.

    Args:
      step_size: the initial scale, a number.
    """
    _check_number("scale_by_state", "step_size", step_size)

    def init(params):
        del params
        return ScaleByStateState(scale=tu.scalar(step_size))

    def apply(updates, state, params):
        del params
        return jax.tree.map(lambda g: g * state.scale.astype(g.dtype), updates), state

    return stateful(init, apply)


class ScaleByScheduleState(NamedTuple):
    """State of :func:`scale_by_schedule`: the number of calls so far (int32)."""

    count: jax.Array


@combinator
def scale_by_schedule(schedule_fn: Schedule) -> Transform:
    """Scales updates by ``schedule_fn(count)``; the first call sees ``count = 0``.

    .. math:: u' = \\eta(t) \\cdot u, \\qquad t = \\text{count (before increment)}

    Args:
      schedule_fn: a function of the int32 step count returning a scalar (see
        :mod:`polaris.schedules`).
    """
    if not callable(schedule_fn):
        raise TypeError(
            f"scale_by_schedule: `schedule_fn` must be a function of the step count, got "
            f"{type(schedule_fn).__name__}; use polaris.schedules.constant(v) for a constant"
        )

    def init(params):
        del params
        return ScaleByScheduleState(count=jnp.zeros([], tu.COUNT_DTYPE))

    def apply(updates, state, params):
        del params
        step = schedule_fn(state.count)
        updates = jax.tree.map(lambda g: g * jnp.asarray(step).astype(g.dtype), updates)
        return updates, ScaleByScheduleState(count=tu.safe_increment(state.count))

    return stateful(init, apply)


class ScaleByLearningRateState(NamedTuple):
    """State of :func:`scale_by_learning_rate` with a numeric rate: the rate (float32 scalar)."""

    learning_rate: jax.Array
    hyperparameters = ("learning_rate",)


@combinator
def scale_by_learning_rate(learning_rate: float | Schedule) -> Transform:
    """Scales updates by minus the learning rate (a descent step).

    .. math:: u' = -\\eta \\cdot u

    A number is kept in the state as ``learning_rate`` (a tunable hyperparameter of a compiled
    module: a host can change it between steps without recompiling, as Polaris's
    ``scale_by_state(-lr)`` allows); a schedule becomes ``scale_by_schedule(-schedule(count))``.

    Polaris stores ``-lr`` under the key ``scale``; this port stores ``+lr`` under
    ``learning_rate`` so the value a host reads and writes is the learning rate itself.

    Args:
      learning_rate: a positive number or a schedule (a function of the step count).
    """
    if callable(learning_rate):
        tx = scale_by_schedule(lambda count: -learning_rate(count))
        setattr(tx.init, _LR_ATTR, lambda state: learning_rate(state.count))
        return tx
    _check_number("scale_by_learning_rate", "learning_rate", learning_rate)

    def init(params):
        del params
        return ScaleByLearningRateState(learning_rate=tu.scalar(learning_rate))

    def apply(updates, state, params):
        del params
        lr = state.learning_rate
        return jax.tree.map(lambda g: g * (-lr).astype(g.dtype), updates), state

    setattr(init, _LR_ATTR, lambda state: state.learning_rate)
    return stateful(init, apply)


# The learning rate a transform's next update will use, as a function of its state. Set on the
# ``init`` of every transform built by scale_by_learning_rate (a fresh function per call).
_LR_ATTR = "__polaris_learning_rate__"


def learning_rate_fn(tx: Transform) -> Callable | None:
    """``state -> lr``: the learning rate ``tx``'s next update will use, computed from its state.

    Found when exactly one member of ``tx`` (a single transform or a top-level composition) was
    built by :func:`scale_by_learning_rate`; ``None`` otherwise (no such member, several, or one
    nested inside a combinator such as ``apply_if_finite``). For a schedule it evaluates the
    schedule at the member's step count (before the increment the next update makes).
    """
    from polaris._src.base import members

    ms = list(members(tx))
    found = [(i, getattr(m.init, _LR_ATTR)) for i, m in enumerate(ms) if hasattr(m.init, _LR_ATTR)]
    if len(found) != 1:
        return None
    i, fn = found[0]
    if len(ms) == 1:
        return lambda state: jnp.asarray(fn(state), jnp.float32)
    return lambda state: jnp.asarray(fn(state[i]), jnp.float32)


def _check_number(fn: str, arg: str, value) -> None:
    if isinstance(value, bool) or not (
        isinstance(value, Real) or (hasattr(value, "shape") and jnp.shape(value) == ())
    ):
        raise TypeError(
            f"{fn}: `{arg}` must be a number, got {value!r} ({type(value).__name__})"
        )


__all__ = [
    "EmptyState",
    "ScaleByLearningRateState",
    "ScaleByScheduleState",
    "ScaleByStateState",
    "scale",
    "scale_by_learning_rate",
    "scale_by_schedule",
    "scale_by_state",
]
