"""signSGD."""

from polaris._src.base import Transform, chain
from polaris._src.registry import LearningRate, register
from polaris.updates import scale_by_learning_rate, scale_by_sign


@register(example=dict(learning_rate=1e-2))
def sign_sgd(learning_rate: LearningRate = 1.0e-2) -> Transform:
    """signSGD: gradient descent on the sign of the gradient.

    .. math:: p_t = p_{t-1} - \\eta\\, \\mathrm{sign}(g_t)

    Composition: ``scale_by_sign |> scale_by_learning_rate`` (Optax's ``sign_sgd``).

    References:
      Bernstein et al., "signSGD: Compressed Optimisation for Non-Convex Problems", ICML 2018.
      https://arxiv.org/abs/1802.04434
    """
    return chain(scale_by_sign(), scale_by_learning_rate(learning_rate))
