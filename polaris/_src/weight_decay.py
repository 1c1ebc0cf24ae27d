"""``add_decayed_weights``: decoupled weight decay."""

from __future__ import annotations

import jax

from polaris._src.base import Transform, combinator, stateless


@combinator
def add_decayed_weights(*, decay: float = 0.0) -> Transform:
    """Adds ``decay * params`` to the updates (decoupled weight decay, as in AdamW).

    .. math:: u' = u + \\lambda p

    Args:
      decay: the weight-decay rate :math:`\\lambda` (0.0).

    References:
      Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019.
      https://arxiv.org/abs/1711.05101
    """

    def apply(updates, params):
        if params is None:
            raise ValueError(
                "add_decayed_weights: `params` is required to decay weights; call "
                "update(updates, state, params)"
            )
        return jax.tree.map(lambda g, p: g + (decay * p).astype(g.dtype), updates, params)

    return stateless(apply)
