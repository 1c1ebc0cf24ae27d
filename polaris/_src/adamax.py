"""``scale_by_adamax``: Adam with the infinity norm."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from polaris._src import tree_utils as tu
from polaris._src.adam import ScaleByAdamState, init_adam_state
from polaris._src.base import Transform, combinator, stateful


@combinator
def scale_by_adamax(*, b1: float = 0.9, b2: float = 0.999, eps: float = 1.0e-8) -> Transform:
    """Scales updates by AdaMax's bias-corrected momentum over an EMA of the infinity norm.

    .. math::
       m_t = \\beta_1 m_{t-1} + (1-\\beta_1) g_t, \\quad
       v_t = \\max(|g_t| + \\epsilon, \\beta_2 v_{t-1}), \\quad
       u_t = \\frac{m_t / (1-\\beta_1^t)}{v_t}

    Args:
      b1: decay of the first moment (0.9).
      b2: decay of the infinity norm (0.999).
      eps: added to :math:`|g|` (1e-8).

    References:
      Kingma & Ba, "Adam: A Method for Stochastic Optimization" (section 7.1), ICLR 2015.
      https://arxiv.org/abs/1412.6980
    """

    def apply(updates, state, params):
        del params
        count = tu.safe_increment(state.count)
        mu = tu.update_moment(updates, state.mu, b1, 1)
        nu = jax.tree.map(
            lambda g, v: jnp.maximum(jnp.abs(g.astype(v.dtype)) + eps, b2 * v), updates, state.nu
        )
        mu_hat = tu.bias_correction(mu, b1, count)
        out = jax.tree.map(lambda m, v: m / v, mu_hat, nu)
        return tu.cast_like(out, updates), ScaleByAdamState(count=count, mu=mu, nu=nu)

    return stateful(init_adam_state, apply)
