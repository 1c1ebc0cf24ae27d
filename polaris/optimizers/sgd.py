"""Stochastic gradient descent, with optional (Nesterov) momentum."""

from polaris._src.base import Transform, chain
from polaris._src.registry import LearningRate, register
from polaris.updates import scale_by_learning_rate, trace


@register(example=dict(learning_rate=1e-2, momentum=0.9))
def sgd(
    learning_rate: LearningRate = 1.0e-2,
    momentum: float | None = None,
    nesterov: bool = False,
) -> Transform:
    """SGD: gradient descent with optional heavy-ball or Nesterov momentum.

    .. math::
       \\tau_t = \\mu \\tau_{t-1} + g_t, \\qquad
       p_t = p_{t-1} - \\eta \\cdot (\\text{nesterov} ? \\; \\mu\\tau_t + g_t : \\tau_t)

    Without momentum: :math:`p_t = p_{t-1} - \\eta g_t`.
    Composition: ``[trace(decay=momentum, nesterov)] |> scale_by_learning_rate``.

    References:
      Robbins & Monro, "A Stochastic Approximation Method", 1951;
      Sutskever et al., "On the importance of initialization and momentum in deep learning", ICML 2013.
    """
    if nesterov and momentum is None:
        from polaris._src.errors import OptionError

        raise OptionError("sgd: `nesterov=True` needs `momentum` (e.g. momentum=0.9)")
    parts = [] if momentum is None else [trace(decay=momentum, nesterov=nesterov)]
    return chain(*parts, scale_by_learning_rate(learning_rate))
