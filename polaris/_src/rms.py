"""``scale_by_rms``: RMSProp's running mean of squared gradients."""

from __future__ import annotations

from typing import NamedTuple

import jax

from polaris._src import tree_utils as tu
from polaris._src.base import Transform, combinator, stateful


class ScaleByRmsState(NamedTuple):
    """State of :func:`scale_by_rms`: the EMA of squared gradients (float32)."""

    nu: object


@combinator
def scale_by_rms(
    *, initial_scale: float = 0.0, decay: float = 0.9, eps: float = 1.0e-8
) -> Transform:
    """Scales updates by the inverse root of an EMA of squared gradients (RMSProp).

    .. math::
       \\nu_t = \\rho \\nu_{t-1} + (1-\\rho) g_t^2, \\qquad u_t = g_t / \\sqrt{\\nu_t + \\epsilon}

    No bias correction (as in Polaris and Optax's default).

    Args:
      initial_scale: the starting value of :math:`\\nu` (0.0).
      decay: the EMA decay :math:`\\rho` (0.9).
      eps: added inside the square root (1e-8).

    References:
      Tieleman & Hinton, "Lecture 6.5 - RMSProp", COURSERA: Neural Networks for Machine
      Learning, 2012. https://www.cs.toronto.edu/~tijmen/csc321/slides/lecture_slides_lec6.pdf
    """

    def init(params):
        return ScaleByRmsState(nu=tu.fulls_like(params, initial_scale))

    def apply(updates, state, params):
        del params
        nu = tu.update_moment(updates, state.nu, decay, 2)
        out = jax.tree.map(lambda g, n: g.astype(n.dtype) * jax.lax.rsqrt(n + eps), updates, nu)
        return tu.cast_like(out, updates), ScaleByRmsState(nu=nu)

    return stateful(init, apply)
