"""``scale_by_novograd``: layer-wise normalized momentum (NovoGrad)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from polaris._src import tree_utils as tu
from polaris._src.base import Transform, combinator, stateful


class ScaleByNovogradState(NamedTuple):
    """State of :func:`scale_by_novograd`: count (int32), ``mu`` (float32, mirroring params)
    and ``nu`` (one float32 scalar per leaf: the EMA of the leaf's squared norm)."""

    count: jax.Array
    mu: object
    nu: object


@combinator
def scale_by_novograd(
    *,
    b1: float = 0.9,
    b2: float = 0.25,
    eps: float = 1.0e-8,
    eps_root: float = 0.0,
    weight_decay: float = 0.0,
) -> Transform:
    """Scales updates by NovoGrad's per-layer second moment, with momentum and weight decay.

    .. math::
       v_t = \\beta_2 v_{t-1} + (1-\\beta_2)\\|g_t\\|^2 \\;(v_1 = \\|g_1\\|^2), \\quad
       m_t = \\beta_1 m_{t-1} + \\frac{g_t}{\\sqrt{v_t + \\epsilon_{root}} + \\epsilon} + \\lambda p
       \\;(m_0 = 0), \\quad u_t = m_t

    Args:
      b1: decay of the momentum (0.9).
      b2: decay of the per-layer second moment (0.25).
      eps: added outside the square root (1e-8).
      eps_root: added inside the square root (0.0).
      weight_decay: :math:`\\lambda` (0.0).

    References:
      Ginsburg et al., "Stochastic Gradient Methods with Layer-wise Adaptive Moments for
      Training of Deep Networks", 2019. https://arxiv.org/abs/1905.11286
    """

    def init(params):
        return ScaleByNovogradState(
            count=jnp.zeros([], tu.COUNT_DTYPE),
            mu=tu.zeros_like(params),
            nu=jax.tree.map(lambda p: jnp.zeros([], tu.STATE_DTYPE), params),
        )

    def apply(updates, state, params):
        if params is None:
            raise ValueError(
                "scale_by_novograd: `params` is required; call update(updates, state, params)"
            )
        count = tu.safe_increment(state.count)
        first = count == 1
        g32 = tu.cast_like(updates, state.mu)
        sq = jax.tree.map(tu.sum_of_squares, g32)
        nu = jax.tree.map(lambda s, v: tu.select(first, s, b2 * v + (1 - b2) * s), sq, state.nu)
        mu = jax.tree.map(
            lambda g, p, v, m: tu.select(first, 0.0, b1 * m)
            + g / (jnp.sqrt(v + eps_root) + eps)
            + weight_decay * p.astype(m.dtype),
            g32,
            params,
            nu,
            state.mu,
        )
        return tu.cast_like(mu, updates), ScaleByNovogradState(count=count, mu=mu, nu=nu)

    return stateful(init, apply)
