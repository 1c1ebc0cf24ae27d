"""Lion."""

from polaris._src.base import Transform, chain
from polaris._src.registry import LearningRate, register
from polaris.updates import add_decayed_weights, scale_by_learning_rate, scale_by_lion


@register(example=dict(learning_rate=1e-4, weight_decay=1e-3))
def lion(
    learning_rate: LearningRate = 1.0e-4,
    b1: float = 0.9,
    b2: float = 0.99,
    weight_decay: float = 1.0e-3,
) -> Transform:
    """Lion: the sign of an interpolated momentum, plus decoupled weight decay.

    .. math::
       p_t = p_{t-1} - \\eta\\left(\\mathrm{sign}(\\beta_1 m_{t-1} + (1-\\beta_1) g_t) + \\lambda p_{t-1}\\right),
       \\quad m_t = \\beta_2 m_{t-1} + (1-\\beta_2) g_t

    Composition: ``scale_by_lion |> add_decayed_weights(weight_decay) |> scale_by_learning_rate``
    (Optax's; Optax has no default learning rate, 1e-4 here).

    References:
      Chen et al., "Symbolic Discovery of Optimization Algorithms", 2023.
      https://arxiv.org/abs/2302.06675
    """
    return chain(
        scale_by_lion(b1=b1, b2=b2),
        add_decayed_weights(decay=weight_decay),
        scale_by_learning_rate(learning_rate),
    )
