"""``centralize``: gradient centralization."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from polaris._src import tree_utils as tu
from polaris._src.base import Transform, combinator, stateless


@combinator
def centralize() -> Transform:
    """Subtracts from each leaf of rank > 1 its mean over every axis but the first.

    .. math:: u' = u - \\mathrm{mean}_{\\text{axes} \\ne 0}(u) \\quad (\\text{rank} > 1;
       \\text{ lower ranks pass unchanged})

    On a flat vector inside :func:`polaris._src.segments.flat_segments` the rows are given by
    ``row_ids`` (elements with ``-1`` pass unchanged).

    References:
      Yong et al., "Gradient Centralization: A New Optimization Technique for Deep Neural
      Networks", ECCV 2020. https://arxiv.org/abs/2004.01461
    """

    def one(g):
        mean = tu.per_row_mean(g)
        if mean is not None:  # a flat vector inside flat_segments: rows come from row_ids
            return (g.astype(tu.STATE_DTYPE) - mean).astype(g.dtype)
        if jnp.ndim(g) <= 1:
            return g
        axes = tuple(range(1, jnp.ndim(g)))
        return g - jnp.mean(g, axis=axes, keepdims=True).astype(g.dtype)

    def apply(updates, params):
        del params
        return jax.tree.map(one, updates)

    return stateless(apply)
