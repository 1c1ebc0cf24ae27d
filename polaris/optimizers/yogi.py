"""Yogi."""

from polaris._src.base import Transform, chain
from polaris._src.registry import LearningRate, register
from polaris.updates import scale_by_learning_rate, scale_by_yogi


@register(example=dict(learning_rate=1e-2))
def yogi(
    learning_rate: LearningRate = 1.0e-2,
    initial_accumulator_value: float = 1.0e-6,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1.0e-3,
    eps_root: float = 0.0,
) -> Transform:
    """Yogi: Adam whose second moment moves additively, so it cannot blow up the step.

    .. math::
       v_t = v_{t-1} - (1-\\beta_2)\\,\\mathrm{sign}(v_{t-1} - g_t^2)\\, g_t^2, \\quad
       p_t = p_{t-1} - \\eta \\frac{\\hat m_t}{\\sqrt{\\hat v_t + \\epsilon_{root}} + \\epsilon}

    Composition: ``scale_by_yogi |> scale_by_learning_rate``. Defaults are the values Polaris's
    code uses (``initial_accumulator_value=1e-6``, ``eps=1e-3``; its docs say 0.0 and 1e-8),
    which are also Optax's.

    References:
      Zaheer et al., "Adaptive Methods for Nonconvex Optimization", NeurIPS 2018.
      https://papers.nips.cc/paper/8186-adaptive-methods-for-nonconvex-optimization
    """
    return chain(
        scale_by_yogi(
            initial_accumulator_value=initial_accumulator_value,
            b1=b1,
            b2=b2,
            eps=eps,
            eps_root=eps_root,
        ),
        scale_by_learning_rate(learning_rate),
    )
