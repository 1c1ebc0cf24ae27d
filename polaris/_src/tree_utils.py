"""Per-leaf helpers shared by the transforms (Polaris's ``Polaris.Shared``, Optax's ``optax.tree``).

A numeric fix lands here once, for the eager and the compiled paths alike.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

STATE_DTYPE = jnp.float32
COUNT_DTYPE = jnp.int32


def zeros_like(tree, dtype=STATE_DTYPE):
    """Zeros shaped like every leaf of ``tree`` (float32 by default, as Polaris's state)."""
    return jax.tree.map(lambda x: jnp.zeros(jnp.shape(x), dtype), tree)


def fulls_like(tree, value, dtype=STATE_DTYPE):
    """``value`` broadcast to the shape of every leaf of ``tree``."""
    return jax.tree.map(lambda x: jnp.full(jnp.shape(x), value, dtype), tree)


def update_moment(updates, moments, decay, order):
    """``(1 - decay) * g**order + decay * m`` per leaf, computed in the moment's dtype."""
    return jax.tree.map(
        lambda g, m: (1 - decay) * (g.astype(m.dtype) ** order) + decay * m, updates, moments
    )


def bias_correction(moments, decay, count):
    """``m / (1 - decay**count)`` per leaf; ``count`` is the (already incremented) step."""
    correction = 1 - decay ** count.astype(STATE_DTYPE)
    return jax.tree.map(lambda m: m / correction.astype(m.dtype), moments)


def safe_increment(count):
    """``count + 1`` that saturates at int32's maximum instead of wrapping to negative."""
    max_value = jnp.iinfo(COUNT_DTYPE).max
    return jnp.where(count < max_value, count + 1, max_value).astype(COUNT_DTYPE)


def cast_like(updates, like):
    """Casts each leaf of ``updates`` to the dtype of the matching leaf of ``like``."""
    return jax.tree.map(lambda u, x: u.astype(jnp.asarray(x).dtype), updates, like)


def scalar(value, dtype=STATE_DTYPE):
    """A hyperparameter as a 0-d array of ``dtype``."""
    return jnp.asarray(value, dtype)
