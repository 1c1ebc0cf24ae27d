"""``scale_by_amsgrad``: Adam with a non-decreasing second moment."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from polaris._src import tree_utils as tu
from polaris._src.base import Transform, combinator, stateful


class ScaleByAmsgradState(NamedTuple):
    """State of :func:`scale_by_amsgrad`: count (int32), ``mu``, ``nu``, ``nu_max`` (float32)."""

    count: jax.Array
    mu: object
    nu: object
    nu_max: object


@combinator
def scale_by_amsgrad(
    *, b1: float = 0.9, b2: float = 0.999, eps: float = 1.0e-8, eps_root: float = 0.0
) -> Transform:
    """Scales updates by Adam's momentum over the running maximum of the bias-corrected
    second moment (AMSGrad, as in Optax).

    .. math::
       \\hat v^{max}_t = \\max(\\hat v^{max}_{t-1}, v_t/(1-\\beta_2^t)), \\qquad
       u_t = \\frac{m_t/(1-\\beta_1^t)}{\\sqrt{\\hat v^{max}_t + \\epsilon_{root}} + \\epsilon}

    Args:
      b1: decay of the first moment (0.9).
      b2: decay of the second moment (0.999).
      eps: added outside the square root (1e-8).
      eps_root: added inside the square root (0.0).

    References:
      Reddi et al., "On the Convergence of Adam and Beyond", ICLR 2018.
      https://arxiv.org/abs/1904.09237
    """

    def init(params):
        return ScaleByAmsgradState(
            count=jnp.zeros([], tu.COUNT_DTYPE),
            mu=tu.zeros_like(params),
            nu=tu.zeros_like(params),
            nu_max=tu.zeros_like(params),
        )

    def apply(updates, state, params):
        del params
        mu = tu.update_moment(updates, state.mu, b1, 1)
        nu = tu.update_moment(updates, state.nu, b2, 2)
        count = tu.safe_increment(state.count)
        mu_hat = tu.bias_correction(mu, b1, count)
        nu_hat = tu.bias_correction(nu, b2, count)
        nu_max = jax.tree.map(jnp.maximum, state.nu_max, nu_hat)
        out = jax.tree.map(lambda m, v: m / (jnp.sqrt(v + eps_root) + eps), mu_hat, nu_max)
        return tu.cast_like(out, updates), ScaleByAmsgradState(
            count=count, mu=mu, nu=nu, nu_max=nu_max
        )

    return stateful(init, apply)
