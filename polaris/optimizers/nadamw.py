"""NAdamW."""

from polaris._src.base import Transform, chain
from polaris._src.registry import LearningRate, register
from polaris.updates import add_decayed_weights, scale_by_adam, scale_by_learning_rate


@register(example=dict(learning_rate=1e-3, weight_decay=1e-4))
def nadamw(
    learning_rate: LearningRate = 1.0e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1.0e-8,
    eps_root: float = 0.0,
    weight_decay: float = 1.0e-4,
) -> Transform:
    """NAdamW: NAdam with decoupled weight decay.

    .. math::
       p_t = p_{t-1} - \\eta \\left(\\frac{\\hat m^{nesterov}_t}{\\sqrt{\\hat v_t + \\epsilon_{root}} + \\epsilon}
       + \\lambda p_{t-1}\\right)

    Composition: ``scale_by_adam(nesterov=True) |> add_decayed_weights(weight_decay)
    |> scale_by_learning_rate`` (Optax's ``nadamw``).

    References:
      Dozat, "Incorporating Nesterov Momentum into Adam", 2016;
      Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019.
      https://arxiv.org/abs/1711.05101
    """
    return chain(
        scale_by_adam(b1=b1, b2=b2, eps=eps, eps_root=eps_root, nesterov=True),
        add_decayed_weights(decay=weight_decay),
        scale_by_learning_rate(learning_rate),
    )
