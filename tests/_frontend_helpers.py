"""Shared helpers for the frontend tests (not a test module, not a conftest)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

SHAPES = {"w": (3, 4), "b": (4,), "sub": {"k": (2, 3, 2)}}


def random_tree(seed: int, shapes=SHAPES, dtype=jnp.float32, scale: float = 1.0):
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda s: jnp.asarray(rng.normal(size=s) * scale, dtype),
        shapes,
        is_leaf=lambda x: isinstance(x, tuple),
    )


def run_steps(tx_init, tx_update, params, steps: int, noise_seed: int = 7, noise: float = 0.1):
    """Runs ``steps`` jitted steps of ``params -= update`` on the loss 0.5*||p - target||^2 with
    additive gradient noise; returns (final params, final state, all updates stacked)."""
    target = jax.tree.map(lambda p: jnp.ones_like(p) * 0.5, params)
    leaves, treedef = jax.tree.flatten(params)
    rng = np.random.default_rng(noise_seed)
    noises = jax.tree.unflatten(
        treedef,
        [jnp.asarray(rng.normal(size=(steps,) + p.shape) * noise, p.dtype) for p in leaves],
    )

    def step(carry, n):
        p, s = carry
        g = jax.tree.map(lambda x, t, e: (x - t) + e, p, target, n)
        u, s = tx_update(g, s, p)
        p = jax.tree.map(lambda x, d: x + d.astype(x.dtype), p, u)
        return (p, s), u

    @jax.jit
    def run(p):
        (p, s), us = jax.lax.scan(step, (p, tx_init(p)), noises)
        return p, s, us

    return run(params)
