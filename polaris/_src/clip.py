"""Clipping: ``clip`` (element-wise), ``clip_by_global_norm``, ``clip_by_block_rms``."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from polaris._src import tree_utils as tu
from polaris._src.base import Transform, combinator, stateless
from polaris._src.errors import OptionError


@combinator
def clip(*, delta: float = 2.0) -> Transform:
    """Clips every element of the updates to ``[-delta, delta]``.

    .. math:: u' = \\min(\\max(u, -\\delta), \\delta)

    Args:
      delta: the bound (2.0).

    References:
      Pascanu et al., "On the difficulty of training Recurrent Neural Networks", ICML 2013.
      https://arxiv.org/abs/1211.5063
    """

    def apply(updates, params):
        del params
        return jax.tree.map(
            lambda g: jnp.clip(g, jnp.asarray(-delta, g.dtype), jnp.asarray(delta, g.dtype)),
            updates,
        )

    return stateless(apply)


@combinator
def clip_by_global_norm(*, max_norm: float = 1.0) -> Transform:
    """Rescales the updates so their global norm (over all leaves) is at most ``max_norm``.

    .. math::
       n = \\sqrt{\\textstyle\\sum_{\\text{leaves}} \\sum u^2}, \\qquad
       u' = \\begin{cases} u & n < c \\\\ u \\cdot c / n & \\text{otherwise} \\end{cases}

    Args:
      max_norm: the bound :math:`c` on the global norm (1.0).

    References:
      Pascanu et al., "On the difficulty of training Recurrent Neural Networks", ICML 2013.
      https://arxiv.org/abs/1211.5063
    """

    def apply(updates, params):
        del params
        norm = tu.global_norm(updates)
        scale = jnp.where(norm < max_norm, 1.0, max_norm / norm)
        return jax.tree.map(lambda g: (g.astype(tu.STATE_DTYPE) * scale).astype(g.dtype), updates)

    return stateless(apply)


@combinator
def clip_by_block_rms(*, threshold: float = 1.0) -> Transform:
    """Rescales each leaf so its root-mean-square is at most ``threshold`` (Adafactor's clipping).

    .. math:: u' = u / \\max(1, \\mathrm{rms}(u) / d)

    Args:
      threshold: the bound :math:`d` on each leaf's RMS (1.0).

    References:
      Shazeer & Stern, "Adafactor: Adaptive Learning Rates with Sublinear Memory Cost",
      ICML 2018. https://arxiv.org/abs/1804.04235
    """
    if isinstance(threshold, (int, float)) and threshold <= 0:
        raise OptionError(
            f"clip_by_block_rms: `threshold` must be > 0, got {threshold}; pass e.g. threshold=1.0"
        )

    def apply(updates, params):
        del params

        def one(g):
            x = g.astype(tu.STATE_DTYPE)
            denom = jnp.maximum(1.0, tu.per_tensor_rms(x, "clip_by_block_rms") / threshold)
            return (x / denom).astype(g.dtype)

        return jax.tree.map(one, updates)

    return stateless(apply)
