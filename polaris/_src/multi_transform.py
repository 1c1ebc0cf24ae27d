"""``multi_transform``: a different transform for each labelled group of leaves."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from typing import Any, NamedTuple

import jax

from polaris._src.base import Transform, _as_transform, stateful
from polaris._src.errors import OptionError
from polaris._src.masked import masked


class MultiTransformState(NamedTuple):
    """State of :func:`multi_transform`: a dict ``label -> masked state`` (sorted by label)."""

    inner_states: dict


def multi_transform(
    transforms: Mapping[Hashable, Transform], param_labels: Any | Callable[[Any], Any]
) -> Transform:
    """Applies ``transforms[label]`` to the leaves labelled ``label`` (Optax's
    ``multi_transform`` / ``partition``).

    .. math:: u'_i = T_{\\ell(i)}(u)_i

    Args:
      transforms: a dict from label to transform.
      param_labels: a tree of labels with the structure of the params, or a function
        ``params -> such a tree``.

    References:
      Optax ``optax.multi_transform``. https://optax.readthedocs.io/en/latest/api/combining_optimizers.html
    """
    txs = {k: _as_transform(v, f"multi_transform: transforms[{k!r}]") for k, v in transforms.items()}

    def labels_of(tree):
        labels = param_labels(tree) if callable(param_labels) else param_labels
        missing = set(jax.tree.leaves(labels)) - set(txs)
        if missing:
            raise OptionError(
                f"multi_transform: labels {sorted(map(str, missing))} have no transform; "
                f"`transforms` has {sorted(map(str, txs))}: add a transform for each label"
            )
        return labels

    def masked_for(labels, group):
        return masked(txs[group], jax.tree.map(lambda lab: lab == group, labels))

    def init(params):
        labels = labels_of(params)
        return MultiTransformState({g: masked_for(labels, g).init(params) for g in txs})

    def apply(updates, state, params):
        labels = labels_of(updates)
        new = {}
        for g in txs:
            updates, new[g] = masked_for(labels, g).update(updates, state.inner_states[g], params)
        return updates, MultiTransformState(new)

    return stateful(init, apply)
