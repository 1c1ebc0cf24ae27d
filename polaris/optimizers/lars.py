"""LARS."""

from polaris._src.base import Transform, chain
from polaris._src.registry import LearningRate, register
from polaris.updates import (
    add_decayed_weights,
    scale_by_learning_rate,
    scale_by_trust_ratio,
    trace,
)


@register(example=dict(learning_rate=1e-1))
def lars(
    learning_rate: LearningRate = 1.0e-1,
    weight_decay: float = 0.0,
    trust_coefficient: float = 0.001,
    eps: float = 0.0,
    momentum: float = 0.9,
    nesterov: bool = False,
) -> Transform:
    """LARS: SGD with momentum on layer-wise trust-ratio-scaled, weight-decayed gradients.

    .. math::
       r_t = g_t + \\lambda p, \\quad
       u_t = -\\eta \\frac{c \\|p\\|}{\\|r_t\\| + \\epsilon} r_t, \\quad
       p_t = p_{t-1} + \\text{trace}_{\\text{momentum}}(u_t)

    Composition: ``add_decayed_weights(weight_decay) |> scale_by_trust_ratio(trust_coefficient,
    eps) |> scale_by_learning_rate |> trace(momentum, nesterov)`` (Optax's order; every leaf is
    decayed and trust-scaled, i.e. Optax's default masks of True).

    References:
      You et al., "Large Batch Training of Convolutional Networks", 2017.
      https://arxiv.org/abs/1708.03888
    """
    return chain(
        add_decayed_weights(decay=weight_decay),
        scale_by_trust_ratio(trust_coefficient=trust_coefficient, eps=eps),
        scale_by_learning_rate(learning_rate),
        trace(decay=momentum, nesterov=nesterov),
    )
