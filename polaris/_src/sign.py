"""``scale_by_sign``: the sign of the updates."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from polaris._src.base import Transform, combinator, stateless


@combinator
def scale_by_sign() -> Transform:
    """Replaces each update by its sign.

    .. math:: u' = \\mathrm{sign}(u)

    References:
      Bernstein et al., "signSGD: Compressed Optimisation for Non-Convex Problems", ICML 2018.
      https://arxiv.org/abs/1802.04434
    """

    def apply(updates, params):
        del params
        return jax.tree.map(jnp.sign, updates)

    return stateless(apply)
