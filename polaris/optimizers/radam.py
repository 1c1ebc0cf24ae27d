"""RAdam."""

from polaris._src.base import Transform, chain
from polaris._src.registry import LearningRate, register
from polaris.updates import scale_by_learning_rate, scale_by_radam


@register(example=dict(learning_rate=1e-3))
def radam(
    learning_rate: LearningRate = 1.0e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1.0e-8,
    eps_root: float = 0.0,
    threshold: float = 5.0,
) -> Transform:
    """RAdam: Adam whose adaptive step is rectified, and skipped while its variance is large.

    .. math::
       \\rho_\\infty = \\tfrac{2}{1-\\beta_2} - 1, \\;
       \\rho_t = \\rho_\\infty - \\tfrac{2 t \\beta_2^t}{1-\\beta_2^t}, \\;
       p_t = p_{t-1} - \\eta \\begin{cases} r_t \\hat m_t / (\\sqrt{\\hat v_t + \\epsilon_{root}} + \\epsilon)
       & \\rho_t \\ge \\text{threshold} \\\\ \\hat m_t & \\text{otherwise} \\end{cases}

    Composition: ``scale_by_radam |> scale_by_learning_rate``. :math:`\\rho_\\infty` uses ``b2``
    (Polaris 0.1.0 uses ``b1``).

    References:
      Liu et al., "On the Variance of the Adaptive Learning Rate and Beyond", ICLR 2020.
      https://arxiv.org/abs/1908.03265
    """
    return chain(
        scale_by_radam(b1=b1, b2=b2, eps=eps, eps_root=eps_root, threshold=threshold),
        scale_by_learning_rate(learning_rate),
    )
