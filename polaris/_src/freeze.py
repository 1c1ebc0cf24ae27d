"""``set_to_zero`` and ``freeze``: stop some parameters from moving."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from polaris._src.base import Transform, combinator, stateless
from polaris._src.masked import masked


@combinator
def set_to_zero() -> Transform:
    """Replaces every update by zeros.

    .. math:: u' = 0

    References:
      Optax ``optax.set_to_zero``. https://optax.readthedocs.io/en/latest/api/transformations.html
    """

    def apply(updates, params):
        del params
        return jax.tree.map(jnp.zeros_like, updates)

    return stateless(apply)


def freeze(mask) -> Transform:
    """Zeroes the updates of the leaves where ``mask`` is True (``masked(set_to_zero(), mask)``).

    .. math:: u'_i = 0 \\text{ if mask}_i \\text{ else } u_i

    Args:
      mask: a tree of bools (or a single bool), or a function ``params -> tree of bools``.

    References:
      Optax ``optax.transforms.freeze``. https://optax.readthedocs.io/en/latest/api/transformations.html
    """
    return masked(set_to_zero(), mask)
