"""AdaMax."""

from polaris._src.base import Transform, chain
from polaris._src.registry import LearningRate, register
from polaris.updates import scale_by_adamax, scale_by_learning_rate


@register(example=dict(learning_rate=2e-3))
def adamax(
    learning_rate: LearningRate = 2.0e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1.0e-8,
) -> Transform:
    """AdaMax: Adam with the infinity norm in place of the second moment.

    .. math::
       v_t = \\max(|g_t| + \\epsilon, \\beta_2 v_{t-1}), \\qquad
       p_t = p_{t-1} - \\eta \\frac{m_t/(1-\\beta_1^t)}{v_t}

    Composition: ``scale_by_adamax |> scale_by_learning_rate`` (Optax's; default learning rate
    2e-3 from the paper).

    References:
      Kingma & Ba, "Adam: A Method for Stochastic Optimization" (section 7.1), ICLR 2015.
      https://arxiv.org/abs/1412.6980
    """
    return chain(scale_by_adamax(b1=b1, b2=b2, eps=eps), scale_by_learning_rate(learning_rate))
