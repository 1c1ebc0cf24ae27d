"""Fromage."""

from polaris._src.base import Transform, chain
from polaris._src.errors import OptionError
from polaris._src.registry import LearningRate, register
from polaris.updates import add_decayed_weights, scale_by_learning_rate, scale_by_trust_ratio


@register(example=dict(learning_rate=1e-2))
def fromage(learning_rate: LearningRate = 1.0e-2, min_norm: float = 1.0e-6) -> Transform:
    """Fromage: a trust-ratio step followed by a shrink that keeps weight norms bounded.

    .. math::
       m = 1/\\sqrt{1 + \\eta^2}, \\qquad
       p_t = p_{t-1} - \\eta m \\frac{\\max(\\|p\\|, n_{min})}{\\max(\\|g\\|, n_{min})} g_t + (m - 1) p_{t-1}

    Composition: ``scale_by_trust_ratio(min_norm) |> scale_by_learning_rate(learning_rate * m)
    |> add_decayed_weights(m - 1)`` (Optax's). The learning-rate leaf in the state holds
    ``learning_rate * m``; ``m`` is fixed when the optimizer is built, so ``learning_rate`` must
    be a number. Polaris's README lists Fromage but Polaris 0.1.0 has none.

    References:
      Bernstein et al., "On the distance between two neural networks and the stability of
      learning", NeurIPS 2020. https://arxiv.org/abs/2002.03432
    """
    if callable(learning_rate):
        raise OptionError(
            "fromage: `learning_rate` must be a number (its shrink factor 1/sqrt(1+lr^2) is "
            "fixed when the optimizer is built); pass e.g. learning_rate=1e-2"
        )
    mult = 1.0 / (1.0 + learning_rate**2) ** 0.5
    return chain(
        scale_by_trust_ratio(min_norm=min_norm),
        scale_by_learning_rate(learning_rate * mult),
        add_decayed_weights(decay=mult - 1.0),
    )
