"""Per-leaf helpers shared by the transforms (Polaris's ``Polaris.Shared``, Optax's ``optax.tree``).

A numeric fix lands here once, for the eager and the compiled paths alike.
"""

from __future__ import annotations

import contextlib
import contextvars

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


# -- whole-tensor reductions ---------------------------------------------------------------
# IREE 3.13 reduces a static tensor to a scalar with one workgroup per chunk; Vulkan devices that
# allow at most 65535 workgroups per dimension (Mesa's lavapipe; Mali and Adreno report the same)
# then silently reduce only the first 65535 elements (measured: sum of 2**18 ones gave 65535.0).
# A reduction over rows of at most 65535 (each row one workgroup, looping over its columns) is
# exact there and as fast on the CPU, so tensors above 65535 elements are reduced in two levels.
MAX_WORKGROUPS = 65535


def _splits(x) -> bool:
    """Whether a whole-tensor reduction of ``x`` runs in two levels: a static size above 65535
    (a small tensor, or a flat module's dynamic length, is reduced in one)."""
    n = x.size
    return isinstance(n, int) and n > MAX_WORKGROUPS


def _rows(x, fill):
    """``x`` as (rows <= 65535, cols) when its static size exceeds 65535, else ``None``.

    The split is a free reshape when the size has a divisor in range (tensor sizes almost always
    do); otherwise ``x`` is padded with ``fill`` (the reduction's identity).
    """
    if not _splits(x):
        return None
    n = x.size
    flat = jnp.reshape(x, (n,))
    lo = -(-n // MAX_WORKGROUPS)
    for cols in (*range(max(lo, 1024), min(n // 2, 1 << 16) + 1), *range(lo, min(1024, n // 2 + 1))):
        if n % cols == 0:
            return jnp.reshape(flat, (n // cols, cols))
    cols = max(lo, 1024)
    rows = -(-n // cols)
    return jnp.reshape(jnp.pad(flat, (0, rows * cols - n), constant_values=fill), (rows, cols))


def _two_level(reduce, fill, x):
    """``reduce`` over every element of ``x``: over rows, then over the row results, where
    :func:`_rows` splits ``x``; in one level otherwise."""
    r = _rows(x, fill)
    return reduce(x) if r is None else reduce(reduce(r, axis=1))


def full_sum(x):
    """``sum(x)`` over every element (two levels above 65535 elements; see above)."""
    return _two_level(jnp.sum, 0, x)


_DOT_REDUCTIONS = contextvars.ContextVar("polaris_dot_reductions", default=True)


DOT_CHUNK = 262144  # elements per dot product in sum_of_squares (its error stays ~1e-6 up to here)
DOT_CHUNKS_MAX = 64


def sum_of_squares(x):
    """``sum(x**2)`` over every element of ``x``, accumulated in float32.

    As dot products of the flattened ``x`` with itself, one per chunk of :data:`DOT_CHUNK`
    elements (at most :data:`DOT_CHUNKS_MAX` chunks), summed (the default); or as
    :func:`full_sum` of the squares inside ``dot_reductions(False)`` and for a dynamic length.

    On the CPU IREE 3.13 runs a dot 3-4x faster than its reduction (1M elements: 0.10 vs 0.40 ms;
    10M: 1.3 vs 4.0 ms, memory-bound; docs/performance.md, sixth pass). The price is accuracy:
    relative to float64 a dot is off by 1e-7 to 1e-6 up to 262144 elements and by up to 6e-6 at
    1M, where the split reduction is off by ~6e-8 and XLA's by ~2e-9; chunks keep it at the
    ~1e-6 level for any size. These sums only scale updates (trust ratios, clipping factors,
    RMS), so a step moves by that relative fraction of its update. The compiler keeps the
    reduction for GPU and Vulkan targets, where the dot is unmeasured and the reduction is
    split for Vulkan's workgroup limit (:func:`full_sum`).
    """
    x32 = jnp.asarray(x).astype(STATE_DTYPE)
    if not _DOT_REDUCTIONS.get() or not isinstance(x32.size, int):  # IREE 3.13 cannot legalize
        return full_sum(jnp.square(x32))  # a dot over a dynamic length (any-length flat modules)
    v = jnp.reshape(x32, (-1,))
    n = v.shape[0]
    chunk = max(DOT_CHUNK, -(-n // DOT_CHUNKS_MAX // 16) * 16)
    parts = [v[i : i + chunk] for i in range(0, n, chunk)] or [v]
    dots = [jnp.dot(c, c, precision=jax.lax.Precision.HIGHEST) for c in parts]
    return dots[0] if len(dots) == 1 else jnp.sum(jnp.stack(dots))


def mean_of_squares(x):
    """``mean(x**2)`` over every element of ``x`` (:func:`sum_of_squares` / size)."""
    return sum_of_squares(x) / jnp.size(x)  # (a symbolic size in any-length flat modules)


def full_all(x):
    """``all(x)`` over every element (two levels above 65535 elements)."""
    return _two_level(jnp.all, True, x)


def full_any(x):
    """``any(x)`` over every element (two levels above 65535 elements)."""
    return _two_level(jnp.any, False, x)


def update_moment(updates, moments, decay, order):
    """``(1 - decay) * g**order + decay * m`` per leaf, computed in the moment's dtype."""
    return jax.tree.map(
        lambda g, m: (1 - decay) * (g.astype(m.dtype) ** order) + decay * m, updates, moments
    )


_HOIST = contextvars.ContextVar("polaris_hoist_scalars", default=True)


@contextlib.contextmanager
def _setting(var: contextvars.ContextVar, value):
    token = var.set(value)
    try:
        yield
    finally:
        var.reset(token)


def scalar_hoisting(enabled: bool):
    """Within the block, :func:`hoisted` computes scalars in dispatches of their own (``True``,
    the default) or leaves them to fuse into the elementwise kernels that use them (``False``:
    fewer dispatches per step, each element recomputing the scalar; the compiler's
    ``CompileOptions(hoist_scalars=False)``). Values are the same either way."""
    return _setting(_HOIST, bool(enabled))


def dot_reductions(enabled: bool):
    """Within the block, :func:`sum_of_squares` is a dot product (``True``, the default) or a
    reduction of the squares (``False``; the compiler's choice for GPU and Vulkan targets)."""
    return _setting(_DOT_REDUCTIONS, bool(enabled))


def hoisted(x):
    """The scalar ``x``, computed once per call in a small dispatch of its own.

    An identity in value (a one-element sort). Without it IREE fuses a scalar's computation
    (say ``b**count``, an exp2 polynomial) into the elementwise kernel that uses it and
    recomputes it for every vector: the count is read from a buffer LLVM cannot prove unaliased
    with the outputs, so nothing is hoisted (1M-element Adam 2x slower on the CPU). A sort is
    never fused into elementwise kernels, and unlike ``jax.lax.optimization_barrier`` it stays
    on the device: IREE 3.13 makes the host wait for the device before and after a barrier
    (two more queue submissions and fence waits per call). See docs/performance.md.
    """
    x = jnp.asarray(x)
    if not _HOIST.get():
        return x
    return jax.lax.sort(x.reshape(1)).reshape(x.shape)


def select(pred, on_true, on_false):
    """``jnp.where(pred, on_true, on_false)`` for a scalar ``pred``, chosen per element.

    For a scalar predicate and array branches JAX emits a select on the scalar, which IREE 3.13
    turns into a host-side choice between two buffers: the predicate is read back from the device
    (one more queue submission and fence wait per call) and, for donated buffers, the choice can
    fail at run time. Broadcast to the branches' shape, the choice stays inside the kernel.
    """
    on_true, on_false = jnp.asarray(on_true), jnp.asarray(on_false)
    shape = jnp.broadcast_shapes(on_true.shape, on_false.shape)
    return jnp.where(jnp.broadcast_to(pred, shape), on_true, on_false)


def bias_correction(moments, decay, count):
    """``m / (1 - decay**count)`` per leaf; ``count`` is the (already incremented) step."""
    correction = 1 - decay ** count.astype(STATE_DTYPE)
    # The reciprocal is taken once, as a scalar outside the elementwise kernel (hoisted): a
    # multiply per element instead of a divide (XLA's algebraic simplifier makes the same rewrite
    # for jax.jit(optax)). Dividing costs a vdivps per vector, which made the CPU kernel
    # compute-bound in cache (docs/performance.md).
    inverse = hoisted(1 / correction)
    return jax.tree.map(lambda m: m * inverse.astype(m.dtype), moments)


def safe_increment(count):
    """``count + 1`` that saturates at int32's maximum instead of wrapping to negative."""
    max_value = jnp.iinfo(COUNT_DTYPE).max
    out = jnp.where(count < max_value, count + 1, max_value).astype(COUNT_DTYPE)
    increments = _INCREMENTS.get()
    if increments is not None:
        increments[id(out)] = (out, count)  # (the result kept alive, so that its id stays its own)
    return out


def split_increment(count):
    """:func:`safe_increment`'s value written with other operations (``min(count, max - 1) + 1``).

    A compiler stores a recognised counter's new value with this form while the kernels that use
    the new count compute theirs from the old one with :func:`safe_increment`: IREE keeps the two
    apart, so the elementwise kernel no longer waits for the dispatch that writes the count
    (``polaris_compiler``'s spare counts; docs/performance.md, seventeenth pass)."""
    return (jnp.minimum(count, jnp.iinfo(COUNT_DTYPE).max - 1) + 1).astype(COUNT_DTYPE)


_INCREMENTS: contextvars.ContextVar[dict | None] = contextvars.ContextVar("polaris_increments", default=None)


@contextlib.contextmanager
def recording_increments():
    """Within the block, :func:`safe_increment` records what it returns: the yielded
    :class:`Increments` says whether a traced value is ``safe_increment(x)`` of a given ``x``,
    which is how a compiler recognises a state leaf that is a step counter."""
    token = _INCREMENTS.set({})
    try:
        yield Increments(_INCREMENTS.get())
    finally:
        _INCREMENTS.reset(token)


class Increments:
    """The :func:`safe_increment` calls of one traced block (:func:`recording_increments`)."""

    def __init__(self, seen: dict):
        self._seen = seen

    def of(self, new, old) -> bool:
        """Whether ``new`` is the very value ``safe_increment(old)`` returned in the block."""
        entry = self._seen.get(id(new))
        return entry is not None and entry[0] is new and entry[1] is old


def cast_like(updates, like):
    """Casts each leaf of ``updates`` to the dtype of the matching leaf of ``like``."""
    return jax.tree.map(lambda u, x: u.astype(jnp.asarray(x).dtype), updates, like)


def scalar(value, dtype=STATE_DTYPE):
    """A hyperparameter as a 0-d array of ``dtype``."""
    return jnp.asarray(value, dtype)


def safe_norm(x, min_norm):
    """``max(||x||, min_norm)`` with a gradient that is finite at ``x = 0`` (Optax's ``safe_norm``;
    the transforms use :func:`per_tensor_of_sum_sq`, its value in one reduction)."""
    x = jnp.asarray(x)
    norm = jnp.sqrt(sum_of_squares(x))
    masked = jnp.where(norm <= min_norm, jnp.ones_like(x), x)
    masked_norm = jnp.sqrt(sum_of_squares(masked))
    return jnp.where(norm <= min_norm, jnp.asarray(min_norm, STATE_DTYPE), masked_norm)


def global_norm(tree):
    """``sqrt(sum over leaves of sum(x**2))``, accumulated in float32."""
    leaves = jax.tree.leaves(tree)
    total = jnp.zeros([], STATE_DTYPE)
    for x in leaves:
        total = total + sum_of_squares(x)
    return jnp.sqrt(total)


def count_f32(count):
    """An int32 step counter as a float32 scalar (for ``b ** t``)."""
    return jnp.asarray(count).astype(STATE_DTYPE)


# -- per-tensor reductions (flat modules: see polaris/_src/segments.py) -----------------------
# Outside a ``flat_segments`` context these reduce the whole leaf (one leaf = one tensor) and
# return a scalar; inside one they reduce each segment of the flat leaf and return the result
# broadcast to the leaf's shape, so callers can multiply element-wise either way.


def _segments():
    from polaris._src import segments

    return segments.current()


def per_tensor_sum_sq(x, what: str = "a per-tensor reduction"):
    """``sum(x**2)`` over ``x``'s tensor, in float32 (per segment inside ``flat_segments``)."""
    return per_tensor_of_sum_sq(lambda sq: sq, (x,), what)


def per_tensor_norm(x, what: str = "a per-tensor reduction"):
    """``||x||`` over ``x``'s tensor (per segment inside ``flat_segments``)."""
    return jnp.sqrt(per_tensor_sum_sq(x, what))


def per_tensor_rms(x, what: str = "a per-tensor reduction"):
    """``sqrt(mean(x**2))`` over ``x``'s tensor (per segment inside ``flat_segments``)."""
    x32 = jnp.asarray(x).astype(STATE_DTYPE)
    ctx = _segments()
    if ctx is None:
        return jnp.sqrt(mean_of_squares(x32))
    mean_sq = ctx.sums(jnp.square(x32), what) / jnp.maximum(ctx.counts(x32, what), 1.0)
    return ctx.broadcast(jnp.sqrt(mean_sq))


def _safe_sqrt(sq, floor):
    """``max(sqrt(sq), floor)`` as :func:`safe_norm` computes it (``floor`` where
    ``sqrt(sq) <= floor``), with a finite gradient where ``sq == 0``."""
    small = jnp.sqrt(sq) <= floor
    return jnp.where(small, jnp.asarray(floor, STATE_DTYPE), jnp.sqrt(jnp.where(small, 1.0, sq)))


def per_tensor_safe_norm(x, min_norm, what: str = "a per-tensor reduction"):
    """:func:`safe_norm` over ``x``'s tensor (per segment inside ``flat_segments``: one pass)."""
    # one reduction: the value of safe_norm, whose masked second pass only shapes a gradient
    return per_tensor_of_sum_sq(lambda sq: _safe_sqrt(sq, min_norm), (x,), what)


def per_tensor_of_sum_sq(f, xs, what: str = "a per-tensor reduction"):
    """``f(sum(xs[0]**2), sum(xs[1]**2), ...)`` per tensor, float32: a scalar per leaf, or inside
    ``flat_segments`` computed once per segment and broadcast back once (one gather for the
    result instead of one per reduction)."""
    ctx = _segments()
    if ctx is None:
        return f(*[sum_of_squares(x) for x in xs])
    sq = [jnp.square(jnp.asarray(x).astype(STATE_DTYPE)) for x in xs]
    return ctx.broadcast(f(*ctx.sums_of(sq, what)))


def per_tensor_safe_rms(x, min_rms, what: str = "a per-tensor reduction"):
    """``max(rms(x), min_rms)`` over ``x``'s tensor (per segment inside ``flat_segments``), in
    one reduction as :func:`per_tensor_safe_norm`."""
    ctx = _segments()
    x32 = jnp.asarray(x).astype(STATE_DTYPE)
    if ctx is None:
        return _safe_sqrt(mean_of_squares(x32), min_rms)
    mean_sq = ctx.sums(jnp.square(x32), what) / jnp.maximum(ctx.counts(x32, what), 1.0)
    return ctx.broadcast(_safe_sqrt(mean_sq, min_rms))


def per_row_mean(x):
    """For ``centralize`` inside ``flat_segments``: the mean of the row (of a rank >= 2 tensor)
    each element belongs to, broadcast to ``x``'s shape, 0.0 for elements outside rows
    (``row_ids == -1``). Returns ``None`` outside a context (reduce the leaf's own axes instead)."""
    ctx = _segments()
    if ctx is None:
        return None
    return ctx.row_mean(x, "centralize")
