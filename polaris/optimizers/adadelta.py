"""AdaDelta."""

from polaris._src.base import Transform, chain
from polaris._src.registry import LearningRate, register
from polaris.updates import add_decayed_weights, scale_by_adadelta, scale_by_learning_rate


@register(example=dict(learning_rate=1.0))
def adadelta(
    learning_rate: LearningRate = 1.0,
    rho: float = 0.9,
    eps: float = 1.0e-6,
    weight_decay: float = 0.0,
) -> Transform:
    """AdaDelta: steps whose units match the parameters' (RMS of past steps over RMS of
    gradients).

    .. math::
       r_t = g_t + \\lambda p_{t-1}, \\quad
       u_t = \\frac{\\sqrt{E[x^2]_{t-1} + \\epsilon}}{\\sqrt{E[r^2]_t + \\epsilon}} r_t, \\quad
       p_t = p_{t-1} - \\eta u_t

    Composition: ``add_decayed_weights(weight_decay) |> scale_by_adadelta |> scale_by_learning_rate``
    (Optax's; the paper has no learning rate, i.e. 1.0, the default here).

    References:
      Zeiler, "ADADELTA: An Adaptive Learning Rate Method", 2012.
      https://arxiv.org/abs/1212.5701
    """
    return chain(
        add_decayed_weights(decay=weight_decay),
        scale_by_adadelta(rho=rho, eps=eps),
        scale_by_learning_rate(learning_rate),
    )
