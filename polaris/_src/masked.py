"""``masked``: apply a transform to a subset of the leaves."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax

from polaris._src.base import Transform, _as_transform, stateful


class MaskedNode(NamedTuple):
    """Stands in for a masked-out leaf inside the wrapped transform's trees (no leaves)."""


class MaskedState(NamedTuple):
    """State of :func:`masked`: the wrapped transform's state, over the masked-in leaves only."""

    inner_state: Any


def _mask_tree(tree, mask_tree):
    return jax.tree.map(lambda m, x: x if m else MaskedNode(), mask_tree, tree)


def masked(inner: Transform, mask: Any | Callable[[Any], Any]) -> Transform:
    """Applies ``inner`` only to the leaves where ``mask`` is True; the other updates pass
    through unchanged (Optax's ``masked``).

    .. math:: u'_i = \\begin{cases} \\text{inner}(u)_i & \\text{mask}_i \\\\ u_i & \\text{otherwise}\\end{cases}

    ``inner`` sees (and keeps state for) the masked-in leaves only; masked-out positions hold
    :class:`MaskedNode`, which has no leaves, so they cost nothing in a compiled signature.

    Args:
      inner: the transform to apply.
      mask: a tree of bools with the structure of the params (or a prefix of it), or a
        function ``params -> such a tree`` (called with the updates in ``update``).

    References:
      Optax ``optax.masked``. https://optax.readthedocs.io/en/latest/api/optimizer_wrappers.html
    """
    inner = _as_transform(inner, "masked: `inner`")

    def resolve(tree):
        return mask(tree) if callable(mask) else mask

    def init(params):
        return MaskedState(inner_state=inner.init(_mask_tree(params, resolve(params))))

    def apply(updates, state, params):
        mask_tree = resolve(updates)
        masked_params = None if params is None else _mask_tree(params, mask_tree)
        new_masked, inner_state = inner.update(
            _mask_tree(updates, mask_tree), state.inner_state, masked_params
        )
        out = jax.tree.map(
            lambda m, new, old: new if m else old, mask_tree, new_masked, updates
        )
        return out, MaskedState(inner_state=inner_state)

    return stateful(init, apply)
