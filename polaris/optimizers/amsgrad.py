"""AMSGrad."""

from polaris._src.base import Transform, chain
from polaris._src.registry import LearningRate, register
from polaris.updates import scale_by_amsgrad, scale_by_learning_rate


@register(example=dict(learning_rate=1e-3))
def amsgrad(
    learning_rate: LearningRate = 1.0e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1.0e-8,
    eps_root: float = 0.0,
) -> Transform:
    """AMSGrad: Adam with the running maximum of the (bias-corrected) second moment.

    .. math::
       \\hat v^{max}_t = \\max(\\hat v^{max}_{t-1}, \\hat v_t), \\qquad
       p_t = p_{t-1} - \\eta \\frac{\\hat m_t}{\\sqrt{\\hat v^{max}_t + \\epsilon_{root}} + \\epsilon}

    Composition: ``scale_by_amsgrad |> scale_by_learning_rate`` (Optax's).

    References:
      Reddi et al., "On the Convergence of Adam and Beyond", ICLR 2018.
      https://arxiv.org/abs/1904.09237
    """
    return chain(
        scale_by_amsgrad(b1=b1, b2=b2, eps=eps, eps_root=eps_root),
        scale_by_learning_rate(learning_rate),
    )
