"""``scale_by_adam``: Adam's bias-corrected moment estimates."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from polaris._src import tree_utils as tu
from polaris._src.base import Transform, combinator, stateful


class ScaleByAdamState(NamedTuple):
    """State of :func:`scale_by_adam`: step count (int32), first and second moments (float32)."""

    count: jax.Array
    mu: object
    nu: object


def init_adam_state(params) -> ScaleByAdamState:
    """A zero step count and zero (float32) first and second moments mirroring ``params``."""
    return ScaleByAdamState(
        count=jnp.zeros([], tu.COUNT_DTYPE), mu=tu.zeros_like(params), nu=tu.zeros_like(params)
    )


def adam_moments(updates, state: ScaleByAdamState, b1: float, b2: float):
    """Adam's moment updates and incremented count: ``(mu, nu, count)``."""
    mu = tu.update_moment(updates, state.mu, b1, 1)
    nu = tu.update_moment(updates, state.nu, b2, 2)
    return mu, nu, tu.safe_increment(state.count)


@combinator
def scale_by_adam(
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1.0e-8,
    eps_root: float = 1.0e-15,
    nesterov: bool = False,
) -> Transform:
    """Scales updates by Adam's bias-corrected moments.

    .. math::
       m_t = \\beta_1 m_{t-1} + (1-\\beta_1) g_t, \\qquad
       v_t = \\beta_2 v_{t-1} + (1-\\beta_2) g_t^2 \\\\
       \\hat m_t = m_t / (1-\\beta_1^t), \\qquad \\hat v_t = v_t / (1-\\beta_2^t) \\\\
       u_t = \\hat m_t / (\\sqrt{\\hat v_t + \\epsilon_{root}} + \\epsilon)

    Args:
      b1: decay of the first moment (Polaris default 0.9).
      b2: decay of the second moment (0.999).
      eps: added outside the square root (1e-8).
      eps_root: added inside the square root (Polaris default 1e-15; Optax's is 0.0).
      nesterov: use Nadam's Nesterov momentum (False), as Optax's ``nesterov=True``:
        :math:`\\hat m_t = \\beta_1 m_t/(1-\\beta_1^{t+1}) + (1-\\beta_1) g_t/(1-\\beta_1^t)`.

    Compiled signature: state ``count`` (int32), ``mu/...``, ``nu/...`` (float32, mirroring params).

    References:
      Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015.
      https://arxiv.org/abs/1412.6980;
      Dozat, "Incorporating Nesterov Momentum into Adam", ICLR workshop 2016.
      https://openreview.net/pdf?id=OM0jvwB8jIp57ZJjtNEZ
    """

    def apply(updates, state, params):
        del params
        mu, nu, count = adam_moments(updates, state, b1, b2)
        if nesterov:
            mu_hat = jax.tree.map(
                lambda m, g: b1 * m + (1 - b1) * g,
                tu.bias_correction(mu, b1, tu.safe_increment(count)),
                tu.bias_correction(tu.cast_like(updates, mu), b1, count),
            )
        else:
            mu_hat = tu.bias_correction(mu, b1, count)
        nu_hat = tu.bias_correction(nu, b2, count)
        out = jax.tree.map(lambda m, v: m / (jnp.sqrt(v + eps_root) + eps), mu_hat, nu_hat)
        return tu.cast_like(out, updates), ScaleByAdamState(count=count, mu=mu, nu=nu)

    return stateful(init_adam_state, apply)
