"""NovoGrad."""

from polaris._src.base import Transform, chain
from polaris._src.registry import LearningRate, register
from polaris.updates import scale_by_learning_rate, scale_by_novograd


@register(example=dict(learning_rate=1e-3))
def novograd(
    learning_rate: LearningRate = 1.0e-3,
    b1: float = 0.9,
    b2: float = 0.25,
    eps: float = 1.0e-6,
    eps_root: float = 0.0,
    weight_decay: float = 0.0,
) -> Transform:
    """NovoGrad: momentum on gradients normalized by a per-layer second moment.

    .. math::
       v_t = \\beta_2 v_{t-1} + (1-\\beta_2)\\|g_t\\|^2, \\quad
       m_t = \\beta_1 m_{t-1} + \\frac{g_t}{\\sqrt{v_t + \\epsilon_{root}} + \\epsilon} + \\lambda p_{t-1},
       \\quad p_t = p_{t-1} - \\eta m_t

    Composition: ``scale_by_novograd |> scale_by_learning_rate`` (Optax's, ``eps=1e-6``).

    References:
      Ginsburg et al., "Stochastic Gradient Methods with Layer-wise Adaptive Moments for
      Training of Deep Networks", 2019. https://arxiv.org/abs/1905.11286
    """
    return chain(
        scale_by_novograd(b1=b1, b2=b2, eps=eps, eps_root=eps_root, weight_decay=weight_decay),
        scale_by_learning_rate(learning_rate),
    )
