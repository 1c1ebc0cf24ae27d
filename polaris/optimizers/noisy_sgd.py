"""Noisy SGD."""

from polaris._src.base import Transform, chain
from polaris._src.registry import LearningRate, register
from polaris.updates import add_noise, scale_by_learning_rate


@register(example=dict(learning_rate=1e-2, eta=0.01))
def noisy_sgd(
    learning_rate: LearningRate = 1.0e-2,
    eta: float = 0.01,
    gamma: float = 0.55,
    seed: int = 0,
) -> Transform:
    """Noisy SGD: gradient descent on gradients plus annealed Gaussian noise.

    .. math::
       p_t = p_{t-1} - \\eta_{lr} \\left(g_t + \\sqrt{\\eta / t^{\\gamma}}\\; \\xi_t\\right),
       \\quad \\xi_t \\sim \\mathcal N(0, I)

    Composition: ``add_noise(seed, eta, gamma) |> scale_by_learning_rate`` (noise before the
    learning rate, as in the paper and Optax; Polaris 0.1.0 adds it after and scales it by the
    variance). ``eta`` defaults to 0.01, the value Polaris's code uses (its docs say 0.1) and
    Optax's default. ``seed`` is explicit (Polaris uses the wall clock).

    References:
      Neelakantan et al., "Adding Gradient Noise Improves Learning for Very Deep Networks",
      2015. https://arxiv.org/abs/1511.06807
    """
    return chain(
        add_noise(seed=seed, eta=eta, gamma=gamma),
        scale_by_learning_rate(learning_rate),
    )
