"""Which in-place outputs are safe: a write-after-read check on the traced program.

An in-place output (``tf.aliasing_output``) tells IREE to write result *o* into argument *i*'s
buffer. IREE 3.13 does not always order a dispatch that still reads the old value of argument *i*
before the dispatch that writes result *o* into it. Seen twice: Lion (the new ``mu`` was written
before the parameter update read the old ``mu``: ~0.4% of elements took the wrong sign per step)
and adafactor on flat modules (the step counter). Such programs read the old value on a path that
does not lead to the new one.

So each requested alias is kept only when every equation that reads argument *i* is an ancestor
of result *o* in the jaxpr: then any dispatch reading the old value must finish before the one
producing the new value can run. The others get a fresh output buffer (correct, one allocation
more per call).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax


def _is_var(x) -> bool:
    return not hasattr(x, "val")  # jax Literals carry .val; Vars do not


def safe_aliases(fn: Callable, args: Sequence, aliases: dict[int, int]) -> dict[int, int]:
    """The subset of ``aliases`` (argument -> result) with no write-after-read hazard."""
    jaxpr = jax.make_jaxpr(fn)(*args).jaxpr
    producer: dict = {}
    for k, eqn in enumerate(jaxpr.eqns):
        for v in eqn.outvars:
            producer[v] = k

    def ancestors(var) -> set[int]:
        seen: set[int] = set()
        stack = [var]
        while stack:
            v = stack.pop()
            k = producer.get(v) if _is_var(v) else None
            if k is None or k in seen:
                continue
            seen.add(k)
            stack.extend(x for x in jaxpr.eqns[k].invars if _is_var(x))
        return seen

    readers_of: dict[int, set[int]] = {}
    for k, eqn in enumerate(jaxpr.eqns):
        for x in eqn.invars:
            if _is_var(x):
                readers_of.setdefault(id(x), set()).add(k)
    safe = {}
    for i, o in aliases.items():
        vin, vout = jaxpr.invars[i], jaxpr.outvars[o]
        if vout is vin or readers_of.get(id(vin), set()) <= ancestors(vout):
            safe[i] = o
    return safe
