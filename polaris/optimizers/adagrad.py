"""AdaGrad."""

from polaris._src.base import Transform, chain
from polaris._src.registry import LearningRate, register
from polaris.updates import scale_by_learning_rate, scale_by_rss


@register(example=dict(learning_rate=1e-2))
def adagrad(
    learning_rate: LearningRate = 1.0e-3,
    initial_accumulator_value: float = 0.1,
    eps: float = 1.0e-7,
) -> Transform:
    """AdaGrad: per-coordinate steps scaled by the root of the sum of squared gradients.

    .. math:: s_t = s_{t-1} + g_t^2, \\qquad p_t = p_{t-1} - \\eta\\, g_t / \\sqrt{s_t + \\epsilon}

    Composition: ``scale_by_rss |> scale_by_learning_rate``.

    References:
      Duchi et al., "Adaptive Subgradient Methods for Online Learning and Stochastic
      Optimization", JMLR 2011. https://jmlr.org/papers/v12/duchi11a.html
    """
    return chain(
        scale_by_rss(initial_accumulator_value=initial_accumulator_value, eps=eps),
        scale_by_learning_rate(learning_rate),
    )
