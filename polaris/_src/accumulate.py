"""``accumulate_gradients``: apply the mean of every ``steps`` gradients (Optax's ``MultiSteps``)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from polaris._src import tree_utils as tu
from polaris._src.base import Transform, _as_transform, identity, is_transform, stateful
from polaris._src.errors import OptionError


class AccumulateGradientsState(NamedTuple):
    """State of :func:`accumulate_gradients`: calls since the last emitted step (int32), the
    running mean of those gradients (float32, mirroring params) and the wrapped transform's
    state (untouched on accumulate-only calls)."""

    mini_step: jax.Array
    acc_grads: object
    inner_state: object


def accumulate_gradients(parent=None, steps=None) -> Transform:
    """Accumulates ``steps`` gradients and applies ``parent`` to their mean once every
    ``steps`` calls; the other calls return zeros and leave ``parent``'s state untouched.

    .. math::
       \\bar g_k = \\bar g_{k-1} + (g_k - \\bar g_{k-1}) / k \\;(k = 1..N), \\qquad
       u = \\begin{cases} \\text{parent}(\\bar g_N) & k = N \\text{ (then } k \\leftarrow 0) \\\\
       0 & \\text{otherwise} \\end{cases}

    This is the one transform that *wraps* its preceding combinator instead of composing after
    it (as in Polaris): ``accumulate_gradients(trace(), steps=2)`` runs ``trace`` on the mean of
    every two gradients. It is built from :func:`stateful` but its state nests the parent's.

    Fixes two Polaris 0.1.0 bugs: Polaris applies the *current* gradient divided by ``steps``
    (discarding the accumulated ones) and emits only every ``steps + 1`` calls. This follows
    Optax's ``MultiSteps(opt, every_k_schedule=steps)`` (a Welford running mean).

    Args:
      parent: the transform applied to the mean gradient (``identity()``). Polaris's
        ``accumulate_gradients(steps)`` form (an integer first argument) is accepted.
      steps: the number of gradients averaged per applied update (an integer >= 1).

    References:
      Ott et al., "Scaling Neural Machine Translation" (gradient accumulation), WMT 2018.
      https://arxiv.org/abs/1806.00187
    """
    if steps is None and not is_transform(parent):
        parent, steps = None, parent
    inner = identity() if parent is None else _as_transform(parent, "accumulate_gradients")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise OptionError(
            f"accumulate_gradients: `steps` must be an integer >= 1, got {steps!r}; pass e.g. "
            "accumulate_gradients(polaris.optimizers.adam(), steps=4)"
        )

    def init(params):
        return AccumulateGradientsState(
            mini_step=jnp.zeros([], tu.COUNT_DTYPE),
            acc_grads=tu.zeros_like(params),
            inner_state=inner.init(params),
        )

    def apply(updates, state, params):
        n = tu.count_f32(state.mini_step)
        acc = jax.tree.map(
            lambda g, a: a + (g.astype(a.dtype) - a) / (n + 1), updates, state.acc_grads
        )
        emit = state.mini_step == steps - 1
        out, new_inner = inner.update(tu.cast_like(acc, updates), state.inner_state, params)
        out = jax.tree.map(lambda u: tu.select(emit, u, jnp.zeros_like(u)), out)
        new_inner = jax.tree.map(
            lambda new, old: tu.select(emit, new, old).astype(old.dtype),
            new_inner,
            state.inner_state,
        )
        acc = jax.tree.map(lambda a: tu.select(emit, jnp.zeros_like(a), a), acc)
        mini = jnp.where(emit, 0, tu.safe_increment(state.mini_step)).astype(tu.COUNT_DTYPE)
        return out, AccumulateGradientsState(mini_step=mini, acc_grads=acc, inner_state=new_inner)

    return stateful(init, apply)
