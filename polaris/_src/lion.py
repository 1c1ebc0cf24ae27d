"""``scale_by_lion``: the sign of an interpolated momentum (Lion)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from polaris._src import tree_utils as tu
from polaris._src.base import Transform, combinator, stateful


class ScaleByLionState(NamedTuple):
    """State of :func:`scale_by_lion`: count (int32) and the momentum ``mu`` (float32)."""

    count: jax.Array
    mu: object


@combinator
def scale_by_lion(*, b1: float = 0.9, b2: float = 0.99) -> Transform:
    """Scales updates to the sign of an interpolation between the momentum and the gradient.

    .. math::
       u_t = \\mathrm{sign}(\\beta_1 m_{t-1} + (1-\\beta_1) g_t), \\qquad
       m_t = \\beta_2 m_{t-1} + (1-\\beta_2) g_t

    Args:
      b1: interpolation for the update direction (0.9).
      b2: decay of the momentum (0.99).

    References:
      Chen et al., "Symbolic Discovery of Optimization Algorithms", 2023.
      https://arxiv.org/abs/2302.06675
    """

    def init(params):
        return ScaleByLionState(count=jnp.zeros([], tu.COUNT_DTYPE), mu=tu.zeros_like(params))

    def apply(updates, state, params):
        del params
        out = jax.tree.map(
            lambda g, m: jnp.sign((1 - b1) * g.astype(m.dtype) + b1 * m), updates, state.mu
        )
        mu = tu.update_moment(updates, state.mu, b2, 1)
        return tu.cast_like(out, updates), ScaleByLionState(
            count=tu.safe_increment(state.count), mu=mu
        )

    return stateful(init, apply)
