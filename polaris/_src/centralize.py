"""``centralize``: gradient centralization."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from polaris._src.base import Transform, combinator, stateless


@combinator
def centralize() -> Transform:
    """Subtracts from each leaf of rank > 1 its mean over every axis but the first.

    .. math:: u' = u - \\mathrm{mean}_{\\text{axes} \\ne 0}(u) \\quad (\\text{rank} > 1;
       \\text{ lower ranks pass unchanged})

    References:
      Yong et al., "Gradient Centralization: A New Optimization Technique for Deep Neural
      Networks", ECCV 2020. https://arxiv.org/abs/2004.01461
    """

    def one(g):
        if jnp.ndim(g) <= 1:
            return g
        axes = tuple(range(1, jnp.ndim(g)))
        return g - jnp.mean(g, axis=axes, keepdims=True).astype(g.dtype)

    def apply(updates, params):
        del params
        return jax.tree.map(one, updates)

    return stateless(apply)
