"""``zero_nans``: replace NaN updates by zeros."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from polaris._src import tree_utils as tu
from polaris._src.base import Transform, combinator, stateful


class ZeroNansState(NamedTuple):
    """State of :func:`zero_nans`: per leaf, whether the last update held a NaN (bool scalar)."""

    found_nan: object


@combinator
def zero_nans() -> Transform:
    """Replaces NaN entries of the updates by 0 and records, per leaf, whether any was found.

    .. math:: u' = \\begin{cases} 0 & u = \\mathrm{NaN} \\\\ u & \\text{otherwise} \\end{cases}

    References:
      Optax ``optax.zero_nans``. https://optax.readthedocs.io/en/latest/api/transformations.html
    """

    def init(params):
        return ZeroNansState(found_nan=jax.tree.map(lambda _: jnp.array(False), params))

    def apply(updates, state, params):
        del params
        found = jax.tree.map(lambda g: tu.full_any(jnp.isnan(g)), updates)
        out = jax.tree.map(lambda g: jnp.where(jnp.isnan(g), jnp.zeros_like(g), g), updates)
        return out, ZeroNansState(found_nan=found)

    return stateful(init, apply)
