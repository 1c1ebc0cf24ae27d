"""Adafactor."""

from polaris._src.base import Transform, chain
from polaris._src.registry import LearningRate, register
from polaris.updates import (
    add_decayed_weights,
    clip_by_block_rms,
    ema,
    scale_by_factored_rms,
    scale_by_learning_rate,
    scale_by_param_block_rms,
)


@register(example=dict(learning_rate=1e-2))
def adafactor(
    learning_rate: LearningRate = 1.0e-2,
    min_dim_size_to_factor: int = 128,
    decay_rate: float = 0.8,
    decay_offset: int = 0,
    multiply_by_parameter_scale: bool = True,
    clipping_threshold: float | None = 1.0,
    momentum: float | None = None,
    weight_decay_rate: float | None = None,
    eps: float = 1.0e-30,
    factored: bool = True,
) -> Transform:
    """Adafactor: RMS scaling with a factored (row x column) second moment for matrices.

    .. math::
       u_t = \\mathrm{clip}_{rms \\le d}\\!\\left(g_t / \\sqrt{\\hat V_t}\\right), \\quad
       p_t = p_{t-1} - \\eta \\max(\\mathrm{rms}(p), 10^{-3})\\, \\mathrm{ema}_{momentum}(u_t)
       - \\lambda p_{t-1}

    where :math:`\\hat V_t` is the factored second moment of :func:`scale_by_factored_rms`
    (leaves of rank >= 2 whose two largest dimensions are >= ``min_dim_size_to_factor``).

    Composition (Optax's order): ``scale_by_factored_rms |> [clip_by_block_rms(clipping_threshold)]
    |> scale_by_learning_rate |> [scale_by_param_block_rms] |> [ema(momentum, debias=False)]
    |> [add_decayed_weights(-weight_decay_rate)]``. Optax scales by ``+lr`` and negates at the
    end; scaling by ``-lr`` and decaying by ``-weight_decay_rate`` is the same update. Optax's
    ``learning_rate=None`` (no scaling) is ``learning_rate=1.0`` here; the default is 1e-2.

    References:
      Shazeer & Stern, "Adafactor: Adaptive Learning Rates with Sublinear Memory Cost",
      ICML 2018. https://arxiv.org/abs/1804.04235
    """
    parts = [
        scale_by_factored_rms(
            factored=factored,
            decay_rate=decay_rate,
            decay_offset=decay_offset,
            min_dim_size_to_factor=min_dim_size_to_factor,
            eps=eps,
        )
    ]
    if clipping_threshold is not None:
        parts.append(clip_by_block_rms(threshold=clipping_threshold))
    parts.append(scale_by_learning_rate(learning_rate))
    if multiply_by_parameter_scale:
        parts.append(scale_by_param_block_rms())
    if momentum is not None:
        parts.append(ema(decay=momentum, debias=False))
    if weight_decay_rate is not None:
        parts.append(add_decayed_weights(decay=-weight_decay_rate))
    return chain(*parts)
