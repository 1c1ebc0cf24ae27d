"""LAMB."""

from polaris._src.base import Transform, chain
from polaris._src.registry import LearningRate, register
from polaris.updates import (
    add_decayed_weights,
    scale_by_adam,
    scale_by_learning_rate,
    scale_by_trust_ratio,
)


@register(example=dict(learning_rate=1e-2, decay=1e-4))
def lamb(
    learning_rate: LearningRate = 1.0e-2,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1.0e-8,
    eps_root: float = 1.0e-15,
    decay: float = 0.0,
    min_norm: float = 0.0,
) -> Transform:
    """LAMB: Adam with weight decay, rescaled layer-wise by a trust ratio.

    .. math::
       r_t = \\frac{\\hat m_t}{\\sqrt{\\hat v_t + \\epsilon_{root}} + \\epsilon} + \\lambda p_{t-1},
       \\qquad p_t = p_{t-1} - \\eta \\frac{\\max(\\|p\\|, n_{min})}{\\max(\\|r_t\\|, n_{min})} r_t

    Composition: ``scale_by_adam |> add_decayed_weights(decay) |> scale_by_trust_ratio(min_norm)
    |> scale_by_learning_rate``. Defaults: Polaris's code (``eps_root=1e-15``, which its docs
    list as 0.0; ``eps=1e-8`` where Optax uses 1e-6).

    References:
      You et al., "Large Batch Optimization for Deep Learning: Training BERT in 76 minutes",
      ICLR 2020. https://arxiv.org/abs/1904.00962
    """
    return chain(
        scale_by_adam(b1=b1, b2=b2, eps=eps, eps_root=eps_root),
        add_decayed_weights(decay=decay),
        scale_by_trust_ratio(min_norm=min_norm),
        scale_by_learning_rate(learning_rate),
    )
