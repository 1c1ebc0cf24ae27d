"""``apply_if_finite``: skip steps whose updates are not finite."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from polaris._src import tree_utils as tu
from polaris._src.base import Transform, _as_transform, stateful
from polaris._src.errors import OptionError


class ApplyIfFiniteState(NamedTuple):
    """State of :func:`apply_if_finite`: consecutive non-finite steps (int32), whether the last
    step was finite (bool), total non-finite steps (int32), and the wrapped state."""

    notfinite_count: jax.Array
    last_finite: jax.Array
    total_notfinite: jax.Array
    inner_state: Any


def apply_if_finite(inner: Transform, max_consecutive_errors: int) -> Transform:
    """Applies ``inner`` only when every incoming update is finite; otherwise returns zeros and
    keeps ``inner``'s state, unless more than ``max_consecutive_errors`` non-finite steps came
    in a row (then the step is applied anyway, as in Optax).

    .. math:: u' = \\begin{cases} \\text{inner}(u) & u \\text{ finite or } n > N \\\\ 0 & \\text{otherwise}\\end{cases}

    Args:
      inner: the transform to protect.
      max_consecutive_errors: :math:`N`, the number of consecutive non-finite steps skipped
        before the update goes through.

    References:
      Optax ``optax.apply_if_finite``. https://optax.readthedocs.io/en/latest/api/transformations.html
    """
    inner = _as_transform(inner, "apply_if_finite: `inner`")
    if isinstance(max_consecutive_errors, bool) or not isinstance(max_consecutive_errors, int):
        raise OptionError(
            "apply_if_finite: `max_consecutive_errors` must be an integer, got "
            f"{max_consecutive_errors!r}; pass e.g. max_consecutive_errors=5"
        )

    def init(params):
        return ApplyIfFiniteState(
            notfinite_count=jnp.zeros([], tu.COUNT_DTYPE),
            last_finite=jnp.array(True),
            total_notfinite=jnp.zeros([], tu.COUNT_DTYPE),
            inner_state=inner.init(params),
        )

    def apply(updates, state, params):
        isfinite = jnp.array(True)
        for g in jax.tree.leaves(updates):
            isfinite = jnp.logical_and(isfinite, tu.full_all(jnp.isfinite(g)))
        notfinite_count = jnp.where(
            isfinite, jnp.zeros([], tu.COUNT_DTYPE), tu.safe_increment(state.notfinite_count)
        )

        # Both branches are computed and the result selected (no lax.cond): a compiled module
        # stays one straight-line dispatch sequence, and IREE 3.13 fails at run time on donated
        # buffers that flow through a conditional region.
        take = jnp.logical_or(isfinite, notfinite_count > max_consecutive_errors)
        new_updates, new_inner = inner.update(updates, state.inner_state, params)
        out = jax.tree.map(lambda u: tu.select(take, u, jnp.zeros_like(u)), new_updates)
        inner_state = jax.tree.map(
            lambda new, old: tu.select(take, new, old), new_inner, state.inner_state
        )
        return out, ApplyIfFiniteState(
            notfinite_count=notfinite_count,
            last_finite=isfinite,
            total_notfinite=jnp.where(
                isfinite, state.total_notfinite, tu.safe_increment(state.total_notfinite)
            ),
            inner_state=inner_state,
        )

    return stateful(init, apply)
