"""``trace``: momentum (heavy-ball or Nesterov)."""

from __future__ import annotations

from typing import NamedTuple

import jax

from polaris._src import tree_utils as tu
from polaris._src.base import Transform, combinator, stateful


class TraceState(NamedTuple):
    """State of :func:`trace`: the momentum buffer (float32, mirroring params)."""

    trace: object


@combinator
def trace(*, decay: float = 0.9, nesterov: bool = False) -> Transform:
    """Accumulates a trace of past updates (momentum).

    .. math::
       \\tau_t = \\mu \\tau_{t-1} + g_t, \\qquad
       u_t = \\begin{cases} \\mu \\tau_t + g_t & \\text{nesterov} \\\\ \\tau_t & \\text{otherwise} \\end{cases}

    Args:
      decay: the momentum coefficient :math:`\\mu` (0.9).
      nesterov: use Nesterov's look-ahead (False).

    References:
      Polyak, "Some methods of speeding up the convergence of iteration methods", 1964;
      Sutskever et al., "On the importance of initialization and momentum in deep learning", ICML 2013.
    """

    def init(params):
        return TraceState(trace=tu.zeros_like(params))

    def apply(updates, state, params):
        del params
        new_trace = jax.tree.map(lambda g, t: g.astype(t.dtype) + decay * t, updates, state.trace)
        if nesterov:
            out = jax.tree.map(lambda g, t: g.astype(t.dtype) + decay * t, updates, new_trace)
        else:
            out = new_trace
        return tu.cast_like(out, updates), TraceState(trace=new_trace)

    return stateful(init, apply)
