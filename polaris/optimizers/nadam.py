"""NAdam."""

from polaris._src.base import Transform, chain
from polaris._src.registry import LearningRate, register
from polaris.updates import scale_by_adam, scale_by_learning_rate


@register(example=dict(learning_rate=1e-3))
def nadam(
    learning_rate: LearningRate = 1.0e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1.0e-8,
    eps_root: float = 0.0,
) -> Transform:
    """NAdam: Adam with Nesterov momentum.

    .. math::
       \\hat m_t = \\frac{\\beta_1 m_t}{1-\\beta_1^{t+1}} + \\frac{(1-\\beta_1) g_t}{1-\\beta_1^t},
       \\qquad p_t = p_{t-1} - \\eta \\frac{\\hat m_t}{\\sqrt{\\hat v_t + \\epsilon_{root}} + \\epsilon}

    Composition: ``scale_by_adam(nesterov=True) |> scale_by_learning_rate`` (Optax's ``nadam``;
    Optax's ``eps_root=0.0`` default).

    References:
      Dozat, "Incorporating Nesterov Momentum into Adam", ICLR workshop 2016.
      https://openreview.net/pdf?id=OM0jvwB8jIp57ZJjtNEZ
    """
    return chain(
        scale_by_adam(b1=b1, b2=b2, eps=eps, eps_root=eps_root, nesterov=True),
        scale_by_learning_rate(learning_rate),
    )
