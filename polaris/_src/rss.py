"""``scale_by_rss``: AdaGrad's root of the sum of squared gradients."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from polaris._src import tree_utils as tu
from polaris._src.base import Transform, combinator, stateful


class ScaleByRssState(NamedTuple):
    """State of :func:`scale_by_rss`: the running sum of squared gradients (float32)."""

    sum_of_squares: object


@combinator
def scale_by_rss(*, initial_accumulator_value: float = 0.1, eps: float = 1.0e-7) -> Transform:
    """Scales updates by the inverse root of the sum of all squared gradients so far (AdaGrad).

    .. math::
       s_t = s_{t-1} + g_t^2, \\qquad
       u_t = \\begin{cases} g_t / \\sqrt{s_t + \\epsilon} & s_t > 0 \\\\ 0 & \\text{otherwise}\\end{cases}

    Args:
      initial_accumulator_value: the starting value of :math:`s` (0.1).
      eps: added inside the square root (1e-7).

    References:
      Duchi et al., "Adaptive Subgradient Methods for Online Learning and Stochastic
      Optimization", JMLR 2011. https://jmlr.org/papers/v12/duchi11a.html
    """

    def init(params):
        return ScaleByRssState(sum_of_squares=tu.fulls_like(params, initial_accumulator_value))

    def apply(updates, state, params):
        del params
        s = jax.tree.map(
            lambda g, s: s + jnp.square(g.astype(s.dtype)), updates, state.sum_of_squares
        )
        out = jax.tree.map(
            lambda g, s: g.astype(s.dtype) * jnp.where(s > 0, jax.lax.rsqrt(s + eps), 0.0),
            updates,
            s,
        )
        return tu.cast_like(out, updates), ScaleByRssState(sum_of_squares=s)

    return stateful(init, apply)
