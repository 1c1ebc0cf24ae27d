"""``add_noise``: annealed Gaussian gradient noise."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from polaris._src import tree_utils as tu
from polaris._src.base import Transform, combinator, stateful
from polaris._src.errors import OptionError


class AddNoiseState(NamedTuple):
    """State of :func:`add_noise`: count (int32) and the PRNG key as raw ``uint32`` key data
    (``jax.random.key_data``, shape ``(2,)`` for the default threefry implementation)."""

    count: jax.Array
    rng_key: jax.Array


@combinator
def add_noise(*, seed: int = 0, eta: float = 0.01, gamma: float = 0.55) -> Transform:
    """Adds Gaussian noise whose variance decays as :math:`\\eta / t^{\\gamma}`.

    .. math::
       \\sigma_t = \\sqrt{\\eta / t^{\\gamma}}, \\qquad u_t = g_t + \\sigma_t \\, \\xi_t,
       \\quad \\xi_t \\sim \\mathcal N(0, I)

    The noise is scaled by the standard deviation, as in the paper and Optax (Polaris 0.1.0
    scales by the variance). Each call splits the key once and draws one sub-key per leaf,
    exactly as Optax's ``add_noise`` does, so runs are reproducible from ``seed``.

    Args:
      seed: the integer seed of the PRNG key kept in the state (0; Polaris defaults to the
        wall-clock time, which is not reproducible).
      eta: the initial variance :math:`\\eta` (0.01).
      gamma: the decay exponent :math:`\\gamma` (0.55).

    References:
      Neelakantan et al., "Adding Gradient Noise Improves Learning for Very Deep Networks",
      2015. https://arxiv.org/abs/1511.06807
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise OptionError(
            f"add_noise: `seed` must be an integer, got {seed!r}; pass e.g. seed=0"
        )

    def init(params):
        del params
        return AddNoiseState(
            count=jnp.zeros([], tu.COUNT_DTYPE), rng_key=jax.random.key_data(jax.random.key(seed))
        )

    def apply(updates, state, params):
        del params
        count = tu.safe_increment(state.count)
        std = jnp.sqrt(eta / tu.count_f32(count) ** gamma)
        key, sample_key = jax.random.split(jax.random.wrap_key_data(state.rng_key))
        treedef = jax.tree.structure(updates)
        keys = jax.random.split(sample_key, treedef.num_leaves)
        leaves = jax.tree.leaves(updates)
        noisy = [
            (g.astype(tu.STATE_DTYPE) + std * jax.random.normal(k, jnp.shape(g), tu.STATE_DTYPE))
            .astype(g.dtype)
            for g, k in zip(leaves, keys, strict=True)
        ]
        return jax.tree.unflatten(treedef, noisy), AddNoiseState(
            count=count, rng_key=jax.random.key_data(key)
        )

    return stateful(init, apply)
