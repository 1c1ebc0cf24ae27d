"""``scale_by_radam``: Rectified Adam."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from polaris._src import tree_utils as tu
from polaris._src.adam import ScaleByAdamState, adam_moments, init_adam_state
from polaris._src.base import Transform, combinator, stateful


@combinator
def scale_by_radam(
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1.0e-8,
    eps_root: float = 0.0,
    threshold: float = 5.0,
) -> Transform:
    """Scales updates by RAdam's rectified Adam step (bias-corrected momentum while the
    variance estimate is unreliable).

    .. math::
       \\rho_\\infty = \\frac{2}{1-\\beta_2} - 1, \\quad
       \\rho_t = \\rho_\\infty - \\frac{2 t \\beta_2^t}{1-\\beta_2^t} \\\\
       r_t = \\sqrt{\\frac{(\\rho_t-4)(\\rho_t-2)\\rho_\\infty}{(\\rho_\\infty-4)(\\rho_\\infty-2)\\rho_t}}, \\quad
       u_t = \\begin{cases} r_t \\hat m_t / (\\sqrt{\\hat v_t + \\epsilon_{root}} + \\epsilon) & \\rho_t \\ge \\text{threshold} \\\\
       \\hat m_t & \\text{otherwise} \\end{cases}

    :math:`\\rho_\\infty` uses ``b2`` as in the paper and Optax (Polaris 0.1.0 uses ``b1``, which
    delays rectification from step 6 to step 6890 with the defaults).

    Args:
      b1: decay of the first moment (0.9).
      b2: decay of the second moment (0.999).
      eps: added outside the square root (1e-8).
      eps_root: added inside the square root (0.0).
      threshold: the :math:`\\rho_t` above which the rectified step is used (5.0).

    References:
      Liu et al., "On the Variance of the Adaptive Learning Rate and Beyond", ICLR 2020.
      https://arxiv.org/abs/1908.03265
    """
    ro_inf = 2.0 / (1.0 - b2) - 1.0

    def apply(updates, state, params):
        del params
        mu, nu, count = adam_moments(updates, state, b1, b2)
        t = tu.count_f32(count)
        b2t = b2**t
        ro = ro_inf - 2 * t * b2t / (1 - b2t)
        r = jnp.sqrt(
            jnp.maximum((ro - 4.0) * (ro - 2.0) * ro_inf / ((ro_inf - 4.0) * (ro_inf - 2.0) * ro), 0.0)
        )
        rectify, r = tu.hoisted(ro) >= threshold, tu.hoisted(r)  # scalars, computed once
        mu_hat = tu.bias_correction(mu, b1, count)
        nu_hat = tu.bias_correction(nu, b2, count)
        out = jax.tree.map(
            lambda m, v: tu.select(rectify, r * m / (jnp.sqrt(v + eps_root) + eps), m),
            mu_hat,
            nu_hat,
        )
        return tu.cast_like(out, updates), ScaleByAdamState(count=count, mu=mu, nu=nu)

    return stateful(init_adam_state, apply)
