"""``scale_by_yogi``: Yogi's additive second-moment update."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from polaris._src import tree_utils as tu
from polaris._src.adam import ScaleByAdamState
from polaris._src.base import Transform, combinator, stateful


@combinator
def scale_by_yogi(
    *,
    initial_accumulator_value: float = 1.0e-6,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1.0e-3,
    eps_root: float = 0.0,
) -> Transform:
    """Scales updates by Yogi's moments: the second moment moves additively towards :math:`g^2`.

    .. math::
       m_t = \\beta_1 m_{t-1} + (1-\\beta_1) g_t, \\quad
       v_t = v_{t-1} - (1-\\beta_2)\\,\\mathrm{sign}(v_{t-1} - g_t^2)\\, g_t^2 \\\\
       u_t = \\frac{m_t/(1-\\beta_1^t)}{\\sqrt{v_t/(1-\\beta_2^t) + \\epsilon_{root}} + \\epsilon}

    Args:
      initial_accumulator_value: the starting value of both moments (1e-6).
      b1: decay of the first moment (0.9).
      b2: rate of the second moment (0.999).
      eps: added outside the square root (1e-3).
      eps_root: added inside the square root (0.0).

    References:
      Zaheer et al., "Adaptive Methods for Nonconvex Optimization", NeurIPS 2018.
      https://papers.nips.cc/paper/8186-adaptive-methods-for-nonconvex-optimization
    """

    def init(params):
        return ScaleByAdamState(
            count=jnp.zeros([], tu.COUNT_DTYPE),
            mu=tu.fulls_like(params, initial_accumulator_value),
            nu=tu.fulls_like(params, initial_accumulator_value),
        )

    def apply(updates, state, params):
        del params
        mu = tu.update_moment(updates, state.mu, b1, 1)
        nu = jax.tree.map(
            lambda g, v: v - (1 - b2) * jnp.sign(v - jnp.square(g.astype(v.dtype)))
            * jnp.square(g.astype(v.dtype)),
            updates,
            state.nu,
        )
        count = tu.safe_increment(state.count)
        mu_hat = tu.bias_correction(mu, b1, count)
        nu_hat = tu.bias_correction(nu, b2, count)
        out = jax.tree.map(lambda m, v: m / (jnp.sqrt(v + eps_root) + eps), mu_hat, nu_hat)
        return tu.cast_like(out, updates), ScaleByAdamState(count=count, mu=mu, nu=nu)

    return stateful(init, apply)
