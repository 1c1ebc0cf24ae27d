"""``scale_by_stddev``: centered RMSProp (running variance of the gradients)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from polaris._src import tree_utils as tu
from polaris._src.base import Transform, combinator, stateful


class ScaleByStddevState(NamedTuple):
    """State of :func:`scale_by_stddev`: EMAs of the gradients and their squares (float32)."""

    mu: object
    nu: object


@combinator
def scale_by_stddev(
    *, initial_scale: float = 0.0, decay: float = 0.9, eps: float = 1.0e-8
) -> Transform:
    """Scales updates by the inverse of a running estimate of the gradients' standard deviation.

    .. math::
       \\mu_t = \\rho \\mu_{t-1} + (1-\\rho) g_t, \\quad
       \\nu_t = \\rho \\nu_{t-1} + (1-\\rho) g_t^2, \\quad
       u_t = g_t / \\sqrt{\\nu_t - \\mu_t^2 + \\epsilon}

    Args:
      initial_scale: the starting value of :math:`\\nu` (0.0).
      decay: the EMA decay :math:`\\rho` (0.9).
      eps: added inside the square root (1e-8).

    References:
      Graves, "Generating Sequences With Recurrent Neural Networks", 2013.
      https://arxiv.org/abs/1308.0850
    """

    def init(params):
        return ScaleByStddevState(
            mu=tu.zeros_like(params), nu=tu.fulls_like(params, initial_scale)
        )

    def apply(updates, state, params):
        del params
        mu = tu.update_moment(updates, state.mu, decay, 1)
        nu = tu.update_moment(updates, state.nu, decay, 2)
        out = jax.tree.map(
            lambda g, m, n: g.astype(n.dtype) * jax.lax.rsqrt(n - jnp.square(m) + eps),
            updates,
            mu,
            nu,
        )
        return tu.cast_like(out, updates), ScaleByStddevState(mu=mu, nu=nu)

    return stateful(init, apply)
