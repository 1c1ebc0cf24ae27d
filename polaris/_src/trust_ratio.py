"""``scale_by_trust_ratio``: LARS/LAMB layer-wise trust ratio."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from polaris._src import tree_utils as tu
from polaris._src.base import Transform, combinator, stateless


@combinator
def scale_by_trust_ratio(
    *, min_norm: float = 0.0, trust_coefficient: float = 1.0, eps: float = 0.0
) -> Transform:
    """Scales each leaf's update by the ratio of the parameter norm to the update norm.

    .. math::
       r = c \\cdot \\frac{\\max(\\|p\\|, n_{min})}{\\max(\\|u\\|, n_{min}) + \\epsilon}, \\qquad
       u' = \\begin{cases} u & \\|p\\| = 0 \\text{ or } \\|u\\| = 0 \\\\ r u & \\text{otherwise}\\end{cases}

    Norms are per tensor: per leaf, or per segment of a flat vector inside
    :func:`polaris._src.segments.flat_segments` (how flat modules serve any model).

    Args:
      min_norm: the smallest norm used for either norm (0.0).
      trust_coefficient: the coefficient :math:`c` (1.0).
      eps: added to the update norm (0.0).

    References:
      You et al., "Large Batch Optimization for Deep Learning: Training BERT in 76 minutes",
      ICLR 2020. https://arxiv.org/abs/1904.00962
    """

    def factor(p_sq, u_sq):  # per tensor, from the two sums of squares
        pn, un = tu._safe_sqrt(p_sq, min_norm), tu._safe_sqrt(u_sq, min_norm)
        ratio = trust_coefficient * pn / (un + eps)
        return jnp.where(jnp.logical_or(pn == 0.0, un == 0.0), 1.0, ratio)

    def one(g, p):
        safe = tu.per_tensor_of_sum_sq(factor, (p, g), "scale_by_trust_ratio")
        return (g.astype(tu.STATE_DTYPE) * safe).astype(g.dtype)

    def apply(updates, params):
        if params is None:
            raise ValueError(
                "scale_by_trust_ratio: `params` is required; call update(updates, state, params)"
            )
        return jax.tree.map(one, updates, params)

    return stateless(apply)
