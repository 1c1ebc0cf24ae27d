"""AdaBelief."""

from polaris._src.base import Transform, chain
from polaris._src.registry import LearningRate, register
from polaris.updates import scale_by_belief, scale_by_learning_rate


@register(example=dict(learning_rate=1e-3))
def adabelief(
    learning_rate: LearningRate = 1.0e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 0.0,
    eps_root: float = 1.0e-16,
) -> Transform:
    """AdaBelief: Adam with the EMA of :math:`(g - m)^2` as second moment.

    .. math::
       m_t = \\beta_1 m_{t-1} + (1-\\beta_1) g_t, \\quad
       s_t = \\beta_2 s_{t-1} + (1-\\beta_2)(g_t - m_t)^2 + \\epsilon_{root} \\\\
       p_t = p_{t-1} - \\eta \\frac{m_t/(1-\\beta_1^t)}{\\sqrt{s_t/(1-\\beta_2^t)} + \\epsilon}

    Composition: ``scale_by_belief |> scale_by_learning_rate``. Defaults are Polaris's
    (``eps=0.0``; Optax's is 1e-16). The algorithm is the published one (Polaris 0.1.0 runs Adam).

    References:
      Zhuang et al., "AdaBelief Optimizer: Adapting Stepsizes by the Belief in Observed
      Gradients", NeurIPS 2020. https://arxiv.org/abs/2010.07468
    """
    return chain(
        scale_by_belief(b1=b1, b2=b2, eps=eps, eps_root=eps_root),
        scale_by_learning_rate(learning_rate),
    )
