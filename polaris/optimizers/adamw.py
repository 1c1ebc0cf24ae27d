"""AdamW."""

from polaris._src.base import Transform, chain
from polaris._src.registry import LearningRate, register
from polaris.updates import add_decayed_weights, scale_by_adam, scale_by_learning_rate


@register(example=dict(learning_rate=1e-3, decay=1e-4))
def adamw(
    learning_rate: LearningRate = 1.0e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1.0e-8,
    eps_root: float = 1.0e-15,
    decay: float = 0.0,
) -> Transform:
    """AdamW: Adam with decoupled weight decay.

    .. math::
       u_t = \\frac{\\hat m_t}{\\sqrt{\\hat v_t + \\epsilon_{root}} + \\epsilon} + \\lambda p_{t-1}, \\qquad
       p_t = p_{t-1} - \\eta u_t

    Composition: ``scale_by_adam |> add_decayed_weights(decay) |> scale_by_learning_rate``.

    Defaults: Polaris's code (``eps_root=1e-15``, which its docs list as 0.0; ``decay=0.0``,
    where Optax's ``weight_decay`` defaults to 1e-4).

    References:
      Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019.
      https://arxiv.org/abs/1711.05101
    """
    return chain(
        scale_by_adam(b1=b1, b2=b2, eps=eps, eps_root=eps_root),
        add_decayed_weights(decay=decay),
        scale_by_learning_rate(learning_rate),
    )
