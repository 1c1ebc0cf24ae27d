"""RMSProp."""

from polaris._src.base import Transform, chain
from polaris._src.errors import OptionError
from polaris._src.registry import LearningRate, register
from polaris.updates import scale_by_learning_rate, scale_by_rms, scale_by_stddev, trace


@register(example=dict(learning_rate=1e-2))
def rmsprop(
    learning_rate: LearningRate = 1.0e-2,
    centered: bool = False,
    momentum: float | None = None,
    nesterov: bool = False,
    initial_scale: float = 0.0,
    decay: float = 0.9,
    eps: float = 1.0e-8,
) -> Transform:
    """RMSProp: steps scaled by the inverse root of an EMA of squared gradients (optionally
    centered, optionally with momentum).

    .. math::
       \\nu_t = \\rho \\nu_{t-1} + (1-\\rho) g_t^2, \\quad
       u_t = \\frac{g_t}{\\sqrt{\\nu_t - [\\text{centered}]\\, \\mu_t^2 + \\epsilon}}, \\quad
       p_t = p_{t-1} + \\text{trace}_{\\text{momentum}}(-\\eta u_t)

    Composition: ``(centered ? scale_by_stddev : scale_by_rms) |> scale_by_learning_rate
    |> [trace(decay=momentum, nesterov)]`` (Polaris's and Optax's order: momentum runs on the
    already-scaled step).

    References:
      Tieleman & Hinton, "Lecture 6.5 - RMSProp", COURSERA 2012;
      Graves, "Generating Sequences With Recurrent Neural Networks", 2013.
      https://arxiv.org/abs/1308.0850
    """
    if nesterov and momentum is None:
        raise OptionError("rmsprop: `nesterov=True` needs `momentum` (e.g. momentum=0.9)")
    scaler = scale_by_stddev if centered else scale_by_rms
    parts = [
        scaler(initial_scale=initial_scale, decay=decay, eps=eps),
        scale_by_learning_rate(learning_rate),
    ]
    if momentum is not None:
        parts.append(trace(decay=momentum, nesterov=nesterov))
    return chain(*parts)
