"""Adam."""

from polaris._src.base import Transform, chain
from polaris._src.registry import LearningRate, register
from polaris.updates import scale_by_adam, scale_by_learning_rate


@register(example=dict(learning_rate=1e-3))
def adam(
    learning_rate: LearningRate = 1.0e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1.0e-8,
    eps_root: float = 1.0e-15,
) -> Transform:
    """Adam: adaptive moment estimation.

    .. math::
       m_t = \\beta_1 m_{t-1} + (1-\\beta_1) g_t, \\quad v_t = \\beta_2 v_{t-1} + (1-\\beta_2) g_t^2 \\\\
       p_t = p_{t-1} - \\eta \\, \\frac{m_t/(1-\\beta_1^t)}{\\sqrt{v_t/(1-\\beta_2^t) + \\epsilon_{root}} + \\epsilon}

    Composition: ``scale_by_adam(b1, b2, eps, eps_root) |> scale_by_learning_rate(learning_rate)``.

    Compiled signature: state ``0/count`` (int32), ``0/mu/...``, ``0/nu/...`` (float32) and
    ``1/learning_rate`` (float32, tunable) or ``1/count`` with a schedule. Defaults are
    Polaris's (``eps_root=1e-15``; Optax's is 0.0).

    References:
      Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015.
      https://arxiv.org/abs/1412.6980
    """
    return chain(
        scale_by_adam(b1=b1, b2=b2, eps=eps, eps_root=eps_root),
        scale_by_learning_rate(learning_rate),
    )
