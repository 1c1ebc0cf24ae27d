"""Adafactor's pieces: ``scale_by_factored_rms`` and ``scale_by_param_block_rms``."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from polaris._src import tree_utils as tu
from polaris._src.base import Transform, combinator, stateful, stateless


class FactoredState(NamedTuple):
    """State of :func:`scale_by_factored_rms`: count (int32) and, per leaf, either the row and
    column statistics ``v_row``/``v_col`` (a factored leaf; ``v`` is a ``(1,)`` placeholder) or
    the full second moment ``v`` (``v_row``/``v_col`` are ``(1,)`` placeholders). float32."""

    count: jax.Array
    v_row: object
    v_col: object
    v: object


def _factored_dims(shape, factored, min_dim_size_to_factor):
    if not factored or len(shape) < 2:
        return None
    sorted_dims = np.argsort(shape)
    if shape[sorted_dims[-2]] < min_dim_size_to_factor:
        return None
    return int(sorted_dims[-2]), int(sorted_dims[-1])


@combinator
def scale_by_factored_rms(
    *,
    factored: bool = True,
    decay_rate: float = 0.8,
    decay_offset: int = 0,
    min_dim_size_to_factor: int = 128,
    eps: float = 1.0e-30,
) -> Transform:
    """Scales updates by a factored estimate of the gradients' RMS (Adafactor).

    For a leaf of rank >= 2 whose second-largest dimension is at least
    ``min_dim_size_to_factor``, only row and column means of :math:`g^2` are kept (over the two
    largest dimensions); other leaves keep the full second moment.

    .. math::
       \\hat\\beta_t = 1 - t^{-c}, \\quad R_t = \\hat\\beta_t R_{t-1} + (1-\\hat\\beta_t)\\,
       \\mathrm{mean}_{col}(g^2+\\epsilon), \\quad C_t = \\hat\\beta_t C_{t-1} + (1-\\hat\\beta_t)\\,
       \\mathrm{mean}_{row}(g^2+\\epsilon) \\\\
       u_t = g_t \\,/\\, \\sqrt{(R_t / \\mathrm{mean}(R_t)) \\otimes C_t}
       \\quad (\\text{unfactored: } v_t = \\hat\\beta_t v_{t-1} + (1-\\hat\\beta_t)(g^2+\\epsilon),
       \\; u_t = g_t/\\sqrt{v_t})

    Args:
      factored: factor the second moment of rank >= 2 leaves (True).
      decay_rate: the exponent :math:`c` of the decay schedule (0.8).
      decay_offset: subtracted from the step count before computing the decay (0).
      min_dim_size_to_factor: only factor leaves whose two largest dimensions are at least
        this large (128).
      eps: added to :math:`g^2` (1e-30).

    References:
      Shazeer & Stern, "Adafactor: Adaptive Learning Rates with Sublinear Memory Cost",
      ICML 2018. https://arxiv.org/abs/1804.04235
    """

    def init(params):
        def one(p):
            shape = jnp.shape(p)
            dims = _factored_dims(shape, factored, min_dim_size_to_factor)
            placeholder = jnp.zeros((1,), tu.STATE_DTYPE)
            if dims is not None:
                d1, d0 = dims
                row = tuple(s for i, s in enumerate(shape) if i != d0)
                col = tuple(s for i, s in enumerate(shape) if i != d1)
                return (
                    jnp.zeros(row, tu.STATE_DTYPE),
                    jnp.zeros(col, tu.STATE_DTYPE),
                    placeholder,
                )
            return placeholder, placeholder, jnp.zeros(shape, tu.STATE_DTYPE)

        treedef = jax.tree.structure(params)
        out = [one(p) for p in jax.tree.leaves(params)]
        return FactoredState(
            count=jnp.zeros([], tu.COUNT_DTYPE),
            v_row=jax.tree.unflatten(treedef, [o[0] for o in out]),
            v_col=jax.tree.unflatten(treedef, [o[1] for o in out]),
            v=jax.tree.unflatten(treedef, [o[2] for o in out]),
        )

    def apply(updates, state, params):
        del params
        t = tu.count_f32(state.count) - decay_offset + 1.0
        beta = 1.0 - t ** (-decay_rate)

        def one(g, v_row, v_col, v):
            g32 = g.astype(tu.STATE_DTYPE)
            dims = _factored_dims(jnp.shape(g), factored, min_dim_size_to_factor)
            g_sq = jnp.square(g32) + eps
            if dims is not None:
                d1, d0 = dims
                new_row = beta * v_row + (1.0 - beta) * jnp.mean(g_sq, axis=d0)
                new_col = beta * v_col + (1.0 - beta) * jnp.mean(g_sq, axis=d1)
                reduced_d1 = d1 - 1 if d1 > d0 else d1
                row_col_mean = jnp.mean(new_row, axis=reduced_d1, keepdims=True)
                row_factor = (new_row / row_col_mean) ** -0.5
                col_factor = new_col ** -0.5
                u = g32 * jnp.expand_dims(row_factor, d0) * jnp.expand_dims(col_factor, d1)
                return u.astype(g.dtype), new_row, new_col, v
            new_v = beta * v + (1.0 - beta) * g_sq
            return (g32 * new_v ** -0.5).astype(g.dtype), v_row, v_col, new_v

        treedef = jax.tree.structure(updates)
        out = [
            one(*xs)
            for xs in zip(
                jax.tree.leaves(updates),
                treedef.flatten_up_to(state.v_row),
                treedef.flatten_up_to(state.v_col),
                treedef.flatten_up_to(state.v),
                strict=True,
            )
        ]
        return jax.tree.unflatten(treedef, [o[0] for o in out]), FactoredState(
            count=tu.safe_increment(state.count),
            v_row=jax.tree.unflatten(treedef, [o[1] for o in out]),
            v_col=jax.tree.unflatten(treedef, [o[2] for o in out]),
            v=jax.tree.unflatten(treedef, [o[3] for o in out]),
        )

    return stateful(init, apply)


@combinator
def scale_by_param_block_rms(*, min_scale: float = 1.0e-3) -> Transform:
    """Scales each leaf's update by the RMS of its parameter (at least ``min_scale``).

    .. math:: u' = u \\cdot \\max(\\mathrm{rms}(p), s_{min})

    Args:
      min_scale: the smallest scale (1e-3).

    References:
      Shazeer & Stern, "Adafactor: Adaptive Learning Rates with Sublinear Memory Cost",
      ICML 2018. https://arxiv.org/abs/1804.04235
    """

    def apply(updates, params):
        if params is None:
            raise ValueError(
                "scale_by_param_block_rms: `params` is required; call update(updates, state, params)"
            )
        return jax.tree.map(
            lambda g, p: (g.astype(tu.STATE_DTYPE) * tu.per_tensor_safe_rms(p, min_scale, "scale_by_param_block_rms")).astype(g.dtype),
            updates,
            params,
        )

    return stateless(apply)
