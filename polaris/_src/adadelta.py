"""``scale_by_adadelta``: AdaDelta's unit-corrected step."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from polaris._src import tree_utils as tu
from polaris._src.base import Transform, combinator, stateful


class ScaleByAdaDeltaState(NamedTuple):
    """State of :func:`scale_by_adadelta`: EMAs of squared gradients ``e_g`` and squared
    updates ``e_x`` (float32)."""

    e_g: object
    e_x: object


@combinator
def scale_by_adadelta(*, rho: float = 0.9, eps: float = 1.0e-6) -> Transform:
    """Scales updates by the ratio of the RMS of past updates to the RMS of gradients.

    .. math::
       E[g^2]_t = \\rho E[g^2]_{t-1} + (1-\\rho) g_t^2, \\quad
       u_t = \\frac{\\sqrt{E[x^2]_{t-1} + \\epsilon}}{\\sqrt{E[g^2]_t + \\epsilon}} g_t, \\quad
       E[x^2]_t = \\rho E[x^2]_{t-1} + (1-\\rho) u_t^2

    Args:
      rho: the EMA decay (0.9).
      eps: added inside both square roots (1e-6).

    References:
      Zeiler, "ADADELTA: An Adaptive Learning Rate Method", 2012.
      https://arxiv.org/abs/1212.5701
    """

    def init(params):
        return ScaleByAdaDeltaState(e_g=tu.zeros_like(params), e_x=tu.zeros_like(params))

    def apply(updates, state, params):
        del params
        e_g = tu.update_moment(updates, state.e_g, rho, 2)
        out = jax.tree.map(
            lambda g, eg, ex: jnp.sqrt(ex + eps) / jnp.sqrt(eg + eps) * g.astype(eg.dtype),
            updates,
            e_g,
            state.e_x,
        )
        e_x = tu.update_moment(out, state.e_x, rho, 2)
        return tu.cast_like(out, updates), ScaleByAdaDeltaState(e_g=e_g, e_x=e_x)

    return stateful(init, apply)
