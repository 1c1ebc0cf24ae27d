"""``apply_updates``: adds updates to parameters."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def apply_updates(params, updates, state=None):
    """Returns ``params + updates`` per leaf, each update cast to its parameter's dtype first.

    .. math:: p' = p + \\mathrm{cast}_{dtype(p)}(u)

    With ``state`` (a tree of model state not trained by gradients, e.g. batch-norm statistics),
    the result is deep-merged with it and the state's leaves win, as in Polaris.
    """
    new = jax.tree.map(lambda p, u: p + jnp.asarray(u).astype(jnp.asarray(p).dtype), params, updates)
    if state is None:
        return new
    return _deep_merge(new, state)


def _deep_merge(left, right):
    if isinstance(left, dict) and isinstance(right, dict):
        out = dict(left)
        for k, v in right.items():
            out[k] = _deep_merge(left[k], v) if k in left else v
        return out
    return right
