"""``scale_by_belief``: AdaBelief (second moment of the prediction error)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from polaris._src import tree_utils as tu
from polaris._src.base import Transform, combinator, stateful


class ScaleByBeliefState(NamedTuple):
    """State of :func:`scale_by_belief`: count (int32), ``mu`` and ``nu`` (float32)."""

    count: jax.Array
    mu: object
    nu: object


@combinator
def scale_by_belief(
    *, b1: float = 0.9, b2: float = 0.999, eps: float = 0.0, eps_root: float = 1.0e-16
) -> Transform:
    """Scales updates by AdaBelief's "belief" in the gradient: the EMA of :math:`(g - m)^2`.

    .. math::
       m_t = \\beta_1 m_{t-1} + (1-\\beta_1) g_t \\\\
       s_t = \\beta_2 s_{t-1} + (1-\\beta_2)(g_t - m_t)^2 + \\epsilon_{root} \\\\
       u_t = \\frac{m_t/(1-\\beta_1^t)}{\\sqrt{s_t/(1-\\beta_2^t)} + \\epsilon}

    This is the published algorithm as Optax implements it (``g - m_t`` with the new mean,
    ``eps_root`` added into the stored ``s``). Polaris 0.1.0's ``scale_by_belief`` tracks
    :math:`g^2` instead, which makes it Adam (see ``docs/divergences.md``).

    Args:
      b1: decay of the first moment (0.9).
      b2: decay of the second central moment (0.999).
      eps: added outside the square root (Polaris default 0.0; Optax's is 1e-16).
      eps_root: added to the stored second moment each step (1e-16).

    References:
      Zhuang et al., "AdaBelief Optimizer: Adapting Stepsizes by the Belief in Observed
      Gradients", NeurIPS 2020. https://arxiv.org/abs/2010.07468
    """

    def init(params):
        return ScaleByBeliefState(
            count=jnp.zeros([], tu.COUNT_DTYPE), mu=tu.zeros_like(params), nu=tu.zeros_like(params)
        )

    def apply(updates, state, params):
        del params
        mu = tu.update_moment(updates, state.mu, b1, 1)
        nu = jax.tree.map(
            lambda g, m, v: (1 - b2) * jnp.square(g.astype(v.dtype) - m) + b2 * v + eps_root,
            updates,
            mu,
            state.nu,
        )
        count = tu.safe_increment(state.count)
        mu_hat = tu.bias_correction(mu, b1, count)
        nu_hat = tu.bias_correction(nu, b2, count)
        out = jax.tree.map(lambda m, v: m / (jnp.sqrt(v) + eps), mu_hat, nu_hat)
        return tu.cast_like(out, updates), ScaleByBeliefState(count=count, mu=mu, nu=nu)

    return stateful(init, apply)
