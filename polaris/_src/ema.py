"""``ema``: an exponential moving average of the updates."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from polaris._src import tree_utils as tu
from polaris._src.base import Transform, combinator, stateful


class EmaState(NamedTuple):
    """State of :func:`ema`: count (int32) and the average ``ema`` (float32)."""

    count: jax.Array
    ema: object


@combinator
def ema(*, decay: float = 0.9, debias: bool = True) -> Transform:
    """Replaces the updates by an exponential moving average of them.

    .. math::
       e_t = \\beta e_{t-1} + (1-\\beta) g_t, \\qquad
       u_t = e_t / (1 - \\beta^t) \\text{ if debias else } e_t

    Args:
      decay: the decay :math:`\\beta` (0.9).
      debias: divide by :math:`1-\\beta^t` (True).

    References:
      Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015.
      https://arxiv.org/abs/1412.6980
    """

    def init(params):
        return EmaState(count=jnp.zeros([], tu.COUNT_DTYPE), ema=tu.zeros_like(params))

    def apply(updates, state, params):
        del params
        e = tu.update_moment(updates, state.ema, decay, 1)
        count = tu.safe_increment(state.count)
        out = tu.bias_correction(e, decay, count) if debias else e
        return tu.cast_like(out, updates), EmaState(count=count, ema=e)

    return stateful(init, apply)
