"""Tensor boundaries inside one flat parameter vector: per-tensor reductions on flat modules.

A flat module (``polaris compile adam`` with no layout) sees a model as one 1-D vector of any
length ``n``. Most transforms are element-wise and do not care; a few reduce *per tensor*
(``scale_by_trust_ratio`` for LAMB, LARS and Fromage; ``clip_by_block_rms`` and
``scale_by_param_block_rms`` for Adafactor; ``centralize`` per row). Inside
:func:`flat_segments` they learn where the tensors are::

    with flat_segments(segment_ids, num_segments=4096):
        updates, state = tx.update(grads, state, params)   # params, grads: one f32[n] vector

* ``segment_ids`` (int32, ``n`` or ``(n, 1)``): the index of the tensor every element belongs to,
  in ``[0, num_segments)``. Segments need not be contiguous or sorted (a packing makes them so).
* ``num_segments``: a static upper bound on the number of tensors (compiled into the module).
* ``row_ids`` (int32, ``n`` or ``(n, 1)``, optional): for ``centralize``, the global index of the
  row (slice along axis 0) of a tensor of rank >= 2 each element belongs to, in
  ``[0, num_rows)``; ``-1`` for elements of tensors of rank <= 1 (left unchanged).
* ``reduction``: how a per-tensor sum is computed.

  - ``"scatter"`` (default): one ``scatter_add`` over the vector. Any ids, any length (also a
    symbolic one), but IREE 3.13 runs it one element at a time: ~110 ns an element on a GPU,
    2-4 ns on a CPU, where the compiler has the sums of one transform share one scatter
    (:meth:`FlatSegments.sums_of`) and each segment accumulate in 4 lanes (``_scatter_sum``;
    docs/performance.md, twelfth pass).
  - ``"tree"``: ids must be **non-decreasing** (each tensor one contiguous run, in order: what
    a packing makes) and the length static. Each tensor's run ``[start, end)`` is read from
    ``segment_bounds`` where given (compiled modules: the runtime computes it at upload), else
    found by a binary search of the ids, and summed from a blocked pairwise tree (base 16) of
    the vector: dense reductions plus gathers of 2 x 16 elements per tensor and level. Work is ~n plus
    ``num_segments`` x 32 x log16(n) gathered elements, exact to pairwise summation.
  - ``"aligned"``: every tensor starts at a multiple of :data:`SEGMENT_ALIGN` (16) elements, the
    packing padding each one with zeros (``polaris_runtime.pack.pack(tree, align=16)``). The
    leaves are then ``(n / 16, 16)`` arrays (the compiler reshapes the module's flat vectors),
    ``segment_ids`` holds one non-decreasing id per block of 16 (``(n / 16, 1)``), a per-tensor
    sum is the tree over the dense block sums, and a per-tensor value goes back to the elements
    with one gather per block: no per-element gather and no materialised squares (GPT-2/4's
    flat LAMB step 33 -> 13 ms on a CPU, docs/performance.md). Sums only: padding would count
    in the element counts of a per-tensor mean (Adafactor's RMS), and ``centralize``'s rows need
    per-element ids, so both are refused.

The reducing transforms call the helpers of :mod:`polaris._src.tree_utils`
(``per_tensor_sum_sq``, ``per_tensor_norm``, ``per_tensor_safe_norm``, ``per_tensor_safe_rms``,
``per_tensor_rms``, ``per_row_mean``): outside a context they reduce each leaf (the tree
behaviour, unchanged); inside one they reduce each segment of the flat leaf and broadcast the
result back to the leaf's shape. The context records which helpers ran
(:attr:`FlatSegments.used`), which is how the compiler decides whether a flat module needs
segments at all.

Index vectors are used as ``(n, 1)`` columns: IREE 3.13 cannot reshape a tensor of dynamic
length (``stablehlo.dynamic_reshape``/``dynamic_broadcast_in_dim`` of ``?`` to ``?x1`` fail to
legalize), so compiled modules take them in that shape; a 1-D vector is accepted here and
reshaped (fine under ``jax.jit`` with static shapes). Gathers use ``offset_dims`` and a sum over
the unit axis instead of a collapsed dimension for the same reason.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from typing import Any

import jax.numpy as jnp
from jax import lax

DEFAULT_MAX_SEGMENTS = 4096
DEFAULT_MAX_ROWS = 1 << 20
SEGMENT_REDUCTIONS = ("scatter", "tree", "aligned")
SEGMENT_ALIGN = 16  # elements per block of the "aligned" reduction

_F32 = jnp.float32
_local = threading.local()


@dataclasses.dataclass
class FlatSegments:
    """An active segment context (see the module docstring)."""

    segment_ids: Any = None
    num_segments: int = DEFAULT_MAX_SEGMENTS
    row_ids: Any = None
    num_rows: int = DEFAULT_MAX_ROWS
    used: set = dataclasses.field(default_factory=set)  # {"segment_ids", "row_ids"}
    reduction: str = "scatter"  # or "tree", "aligned" (segment_ids only; the module docstring)
    block_sums: str = "tree"  # "aligned": how the block sums are summed per tensor (or "scatter")
    counted: bool = False  # a trace divided by element counts (per-tensor means): never "aligned"
    shared_scatter: bool = True  # sums_of: one scatter of several columns ("scatter" reduction)
    scatter_lanes: int = 1  # accumulators per segment of a scatter (_scatter_sum)
    # "tree": int32 (num_segments + 1,) (or (num_segments + 1, 1)), bounds[k] = the first index
    # whose id is >= k (searchsorted(ids, arange(num + 1), "left")); given, the runs are read
    # from it instead of searched for (a compiled module takes it from the runtime, which
    # computes it once when the ids are uploaded)
    segment_bounds: Any = None

    # -- the two primitives every helper is built from ---------------------------------------
    # Helpers reduce into segment space ((num,) vectors), compute there, and broadcast back once:
    # each scatter is a pass over the whole vector (serial on IREE's CPU backend).
    def sums(self, x, what: str = "a per-tensor reduction", kind: str = "segment_ids"):
        """``x`` (a flat leaf) summed per segment (``kind="row_ids"``: per row): float32
        ``(num_segments,)`` (``(num_rows,)``); ids out of range (``-1``) are dropped."""
        ids = self._ids(kind, x, what)
        if kind == "segment_ids" and self.reduction == "aligned":
            blocks = jnp.sum(jnp.asarray(x, _F32), axis=1)
            if self.block_sums == "scatter":  # n / 16 elements: cheap where there are few
                return _scatter_sum(blocks, ids, self.num_segments, self.scatter_lanes)
            return _tree_sum(blocks, *self._runs(ids, what))
        if kind == "segment_ids" and self.reduction == "tree":
            return _tree_sum(x, *self._runs(ids, what))
        return _scatter_sum(x, ids, self.num_segments if kind == "segment_ids" else self.num_rows, self.scatter_lanes)

    def sums_of(self, xs, what: str = "a per-tensor reduction") -> list:
        """:meth:`sums` of several flat leaves (per segment). With the ``"scatter"`` reduction the
        leaves go through one scatter of ``len(xs)`` columns instead of one scatter each: IREE
        runs a scatter one index at a time, so the indices cost, not the columns (LAMB's flat
        module of any length 9.0 -> 5.8 ms at 1M on the 2-core CPU, docs/performance.md twelfth
        pass). The block sums of ``"aligned"`` stay one scatter each (n / 16 indices: stacking
        them measured slower at 10k and the same at 1M), and so does every sum where
        ``shared_scatter`` is off (the compiler's choice for GPU and Vulkan targets, where the
        workgroup counts of the two-column passes are unmeasured: on lavapipe a first form of it,
        an interleaving pass over 2n elements, lost part of a 65535-element step)."""
        xs = list(xs)
        if len(xs) < 2 or self.reduction != "scatter" or not self.shared_scatter:
            return [self.sums(x, what) for x in xs]
        ids = self._ids("segment_ids", xs[0], what)
        for x in xs[1:]:  # every leaf checked against the ids
            self._ids("segment_ids", x, what)
        # the columns side by side as one element-wise (n, k) select, which IREE fuses with the
        # squares that feed it; jnp.stack or a concatenate of columns becomes a separate
        # interleaving pass, one branch per element (1.6 ms at 1M), and the column of unknown
        # length must be a reshape (export.legalize_dynamic_reshapes), not a broadcast
        col = lax.broadcasted_iota(jnp.int32, (1, len(xs)), 1)
        cols = jnp.zeros((), _F32)
        for k, x in enumerate(xs):
            cols = jnp.where(col == k, jnp.reshape(jnp.asarray(x, _F32), (-1, 1)), cols)
        out = _scatter_sum(cols, ids, self.num_segments, self.scatter_lanes)
        return [out[:, k] for k in range(len(xs))]

    def counts(self, x, what: str = "a per-tensor reduction", kind: str = "segment_ids"):
        """The number of elements in each segment (row), float32."""
        self.counted = True
        if self.reduction == "aligned":
            raise ValueError(
                f"{what} divides by each tensor's element count, which an aligned packing does not "
                f"carry (its zero padding would count); compile this optimizer's flat module with "
                f"segment_reduction 'tree' or 'scatter' (--segment-reduction), or for its tree layout"
            )
        if kind == "segment_ids" and self.reduction == "tree":
            starts, ends = self._runs(self._ids(kind, x, what), what)
            return (ends - starts).astype(_F32)
        return self.sums(jnp.ones(jnp.shape(x), _F32), what, kind)

    def _runs(self, ids_col, what: str):
        """``(starts, ends)``, int32 ``(num_segments,)``: segment k is ``[starts[k], ends[k])``
        (empty where k is absent), for non-decreasing ids of static length."""
        n = jnp.shape(ids_col)[0]
        if not isinstance(n, int):
            raise ValueError(
                f"{what} with flat_segments(..., reduction='tree') needs a vector of static length, "
                f"got length {n}; compile a fixed-size flat module (Layout.flat(size=N), "
                f"polaris compile ... --size N) or use reduction='scatter'"
            )
        if self.segment_bounds is not None and self.reduction == "tree":
            bounds = jnp.asarray(self.segment_bounds).reshape(-1).astype(jnp.int32)
            if bounds.shape[0] != self.num_segments + 1:
                raise ValueError(
                    f"{what}: segment_bounds has {bounds.shape[0]} entries; expected num_segments + 1 = "
                    f"{self.num_segments + 1} (searchsorted(segment_ids, arange(num_segments + 1)))"
                )
            return bounds[:-1], bounds[1:]
        # A binary search: log2(n) dependent gathers (21 barrier-separated stages of LAMB's CUDA
        # step at 1e6). IREE's CSE folds the searches of several reductions over the same ids into
        # one. Two compare-and-count passes over a sqrt(n) sample and a sqrt(n) window instead
        # took an H100's LAMB step 0.45 -> 0.41 ms at 1000064 but 0.78 -> 1.21 ms at 1e7
        # (docs/performance.md, fourteenth pass); compiled modules take the bounds instead.
        bounds = jnp.searchsorted(
            ids_col[:, 0], jnp.arange(self.num_segments + 1, dtype=jnp.int32), side="left", method="scan_unrolled"
        ).astype(jnp.int32)
        return bounds[:-1], bounds[1:]

    def broadcast(self, per_segment, kind: str = "segment_ids"):
        """``per_segment[ids]``: a segment-space vector back in the flat vector's shape; for
        ``row_ids``, 0.0 where the id is ``-1``."""
        ids = self._ids(kind, None, "broadcast")
        if kind == "segment_ids" and self.reduction == "aligned":  # one gather per block
            if isinstance(ids.shape[0], int):
                per_block = jnp.take(jnp.asarray(per_segment), ids[:, 0], mode="clip")
                return jnp.broadcast_to(per_block[:, None], (ids.shape[0], SEGMENT_ALIGN))
            return _per_block_values(per_segment, ids)
        weight = (ids >= 0).astype(_F32) if kind == "row_ids" else None
        return _broadcast(per_segment, ids, weight)

    # -- conveniences ---------------------------------------------------------------------
    def segment_sum(self, x, what: str = "a per-tensor reduction"):
        """``x`` summed per segment, broadcast back to ``x``'s shape, float32."""
        return self.broadcast(self.sums(x, what))

    def row_mean(self, x, what: str = "centralize"):
        """Each element's row mean (float32, ``x``'s shape); 0.0 for elements outside rows
        (``row_ids == -1``: tensors of rank <= 1)."""
        means = self.sums(x, what, "row_ids") / jnp.maximum(self.counts(x, what, "row_ids"), 1.0)
        return self.broadcast(means, "row_ids")

    def _ids(self, kind: str, x, what: str):
        ids = self.segment_ids if kind == "segment_ids" else self.row_ids
        if ids is None:
            raise ValueError(
                f"{what} on a flat vector needs {kind}, but the active flat_segments context "
                f"has none; pass flat_segments(..., {kind}=...)"
            )
        self.used.add(kind)
        if self.reduction == "aligned" and kind != "segment_ids":
            raise ValueError(
                f"{what} needs {kind} (one per element), which an aligned flat module does not take; "
                f"compile it with segment_reduction 'tree' or 'scatter' (--segment-reduction), or "
                f"for its tree layout"
            )
        ids = jnp.asarray(ids)
        if x is None:
            pass
        elif self.reduction == "aligned":  # one id per block of SEGMENT_ALIGN elements
            if tuple(jnp.shape(x)) != (jnp.shape(ids)[0], SEGMENT_ALIGN):
                raise ValueError(
                    f"{what} inside flat_segments(..., reduction='aligned'): the leaf has shape "
                    f"{jnp.shape(x)}, expected ({jnp.shape(ids)[0]}, {SEGMENT_ALIGN}) (the flat vector "
                    f"as blocks of {SEGMENT_ALIGN}, one segment id per block)"
                )
        elif jnp.ndim(x) != 1 or not _same_dim(jnp.shape(x)[0], jnp.shape(ids)[0]):
            raise ValueError(
                f"{what} inside flat_segments: the leaf has shape {jnp.shape(x)} but {kind} has "
                f"shape {jnp.shape(ids)}; inside the context every parameter leaf must be the "
                f"flat vector its ids describe"
            )
        if ids.ndim == 1:
            ids = ids[:, None]
        if not jnp.issubdtype(ids.dtype, jnp.integer):
            raise TypeError(f"{kind} must be an integer array, got {ids.dtype}")
        return ids.astype(jnp.int32)


def _same_dim(a, b) -> bool:
    try:
        return bool(a == b)
    except Exception:  # symbolic dims that cannot be compared
        return False


# Below this many indices a scatter keeps one accumulator per segment: the lanes' fixed cost
# (zeroing and summing lanes x num_segments values, ~3 us for 4096 segments) outweighs what they
# save (~2 ns an index on the 2-core EPYC, docs/performance.md twelfth pass).
SCATTER_LANES_MIN_INDICES = 2048
# ... and above this many segments (row_ids' 2**20 rows) the lanes' segment space would cost more
# than the whole step.
SCATTER_LANES_MAX_SEGMENTS = 16384


def _scatter_sum(x, ids_col, num: int, lanes: int = 1):
    """``out[k] = sum(x[i] for ids[i] == k)``, float32; out-of-range ids (``-1``) are dropped.

    Dropped elements are summed into a spare slot past the end, which is cut off: the scatter
    itself only ever sees indices in range. XLA skips out-of-range scatter indices, IREE 3.13
    does not: an id of -1 wrote 4 bytes before the buffer (heap corruption, seen as a crash in
    ``free`` with flat ``centralize`` modules).

    ``lanes > 1``: index ``i`` adds into lane ``i % lanes`` of its segment's ``lanes``
    accumulators, which are summed at the end. IREE runs a scatter one index at a time, and the
    ids of a packed model repeat one segment for a whole tensor, so with one accumulator each
    update waits for the previous one's store (a read-add-write chain); lanes interleave
    independent chains (LAMB's flat step at 1M 6.3 -> 3.7 ms with 4 lanes on the 2-core EPYC).
    The lanes are lane-major, ``(lanes, num + 1)``, so their sum adds whole rows (10k 57 -> 52 us
    against segment-major lanes). Used where the number of indices is unknown or at least
    :data:`SCATTER_LANES_MIN_INDICES`, for at most :data:`SCATTER_LANES_MAX_SEGMENTS` segments.
    """
    x = jnp.asarray(x)
    window = tuple(range(1, x.ndim))  # columns of x (sums_of) ride along with each index
    dn = lax.ScatterDimensionNumbers(
        update_window_dims=window, inserted_window_dims=(0,), scatter_dims_to_operand_dims=(0,)
    )
    ids = jnp.where((ids_col >= 0) & (ids_col < num), ids_col, num)
    n = ids.shape[0]
    if lanes > 1 and num <= SCATTER_LANES_MAX_SEGMENTS and not (isinstance(n, int) and n < SCATTER_LANES_MIN_INDICES):
        # lane-major accumulators (lanes, num + 1): their sum is then a sum of whole rows
        ids = ids + (lax.broadcasted_iota(jnp.int32, ids.shape, 0) % lanes) * (num + 1)
    else:
        lanes = 1
    out = lax.scatter_add(
        jnp.zeros(((num + 1) * lanes, *x.shape[1:]), _F32),
        ids,
        x.astype(_F32),
        dn,
        mode=lax.GatherScatterMode.PROMISE_IN_BOUNDS,
    )
    if lanes > 1:
        out = jnp.sum(jnp.reshape(out, (lanes, num + 1, *x.shape[1:])), axis=0)
    return out[:num]


TREE_BASE = 16


def _tree_sum(x, starts, ends, base: int = TREE_BASE):
    """``out[k] = sum(x[starts[k]:ends[k]])``, float32, for a 1-D ``x`` of static length.

    A segment tree with ``base`` children per node, queried bottom-up for every segment at once:
    at each level a run ``[l, r)`` (in that level's units) takes the masked partial block at its
    left end (if it starts mid-block) and at its right end, and the whole blocks in between move
    up a level as ``[ceil(l / base), floor(r / base))``. Levels are dense block sums (IREE tiles
    them); partial blocks are gathers of ``base`` elements. Never a scatter.
    """
    x = jnp.asarray(x, _F32)
    l, r = jnp.asarray(starts, jnp.int32), jnp.asarray(ends, jnp.int32)
    acc = jnp.zeros(l.shape, _F32)
    t = jnp.arange(base, dtype=jnp.int32)[None, :]
    a = x
    while True:
        lo, ro, lb, rb = l % base, r % base, l // base, r // base
        same, live = lb == rb, l < r
        take_l, take_r = _partial_block_masks(lo, ro, same, live, t)
        acc = acc + _masked_block_sum(a, lb, take_l, t, base) + _masked_block_sum(a, rb, take_r, t, base)
        if a.shape[0] == 1:
            return acc
        nl = lb + (lo > 0).astype(jnp.int32)
        go = live & ~same & (nl < rb)
        l, r = jnp.where(go, nl, 0), jnp.where(go, rb, 0)
        a = _block_sums(a, base)


def _partial_block_masks(lo, ro, same, live, t):
    """The elements ``t`` a run takes from its left and its right partial block: the left one
    holds ``[lo, ro)`` when the run lies in one block, else ``[lo, base)`` if the run starts
    mid-block; the right one ``[0, ro)``. ``lo``, ``ro``, ``same`` and ``live`` are per run (any
    leading shape), ``t`` the offsets in a block, broadcast against a trailing axis."""
    take_l = (live & (same | (lo > 0)))[..., None] & (t >= lo[..., None]) & (~same[..., None] | (t < ro[..., None]))
    take_r = (live & ~same)[..., None] & (t < ro[..., None])
    return take_l, take_r


def _masked_block_sum(a, block, mask, t, base: int):
    """Per row k: the sum of ``a[block[k] * base + t]`` over the ``t`` where ``mask[k, t]``
    (a masked-out index is clipped into range and contributes 0)."""
    idx = jnp.clip(block[:, None] * base + t, 0, a.shape[0] - 1)
    return jnp.sum(jnp.where(mask, a[idx], 0.0), axis=1)


def _block_sums(a, base: int):
    """Sums of consecutive blocks of ``base`` elements (the last one may be shorter)."""
    n = a.shape[0]
    full = n - n % base
    out = jnp.sum(a[:full].reshape(-1, base), axis=1)
    if full < n:
        out = jnp.concatenate([out, jnp.sum(a[full:])[None]])
    return out


def _broadcast(per_segment, ids_col, weight=None):
    """``per_segment[ids]`` as a 1-D vector (ids clipped into range; ``weight`` (n, 1) multiplies)."""
    dn = lax.GatherDimensionNumbers(offset_dims=(1,), collapsed_slice_dims=(), start_index_map=(0,))
    col = lax.gather(per_segment, ids_col, dn, slice_sizes=(1,), mode=lax.GatherScatterMode.CLIP)
    if weight is not None:
        col = col * weight
    return jnp.sum(col, axis=1)


def _per_block_values(per_segment, ids_col):
    """``per_segment[ids]`` as ``(b, 16)`` for an unknown number of blocks ``b`` (the aligned
    reduction of a flat module of any length).

    One gather per block (a unit axis, no collapsed dimension: IREE 3.13 cannot reshape its result
    otherwise), written out by a scatter to the blocks' own positions, then broadcast over each
    block's 16 elements (``compile`` marks that broadcast's expanding dimension for IREE). The
    scatter is there for speed: IREE fuses a gather into the element-wise pass that consumes it,
    and for an unknown length it then collapses that pass to 1-D, with a division by 16 and two
    gathers for every element (LAMB at 1M: 1.13 ms against 0.11 ms for a known length); a scatter
    is never fused into its consumer, so the pass reads one value per block as an operand.
    """
    dn = lax.GatherDimensionNumbers(offset_dims=(1,), collapsed_slice_dims=(), start_index_map=(0,))
    col = lax.gather(jnp.asarray(per_segment, _F32), ids_col, dn, slice_sizes=(1,), mode=lax.GatherScatterMode.CLIP)
    b = ids_col.shape[0]
    sdn = lax.ScatterDimensionNumbers(update_window_dims=(1,), inserted_window_dims=(0,), scatter_dims_to_operand_dims=(0,))
    at = lax.broadcasted_iota(jnp.int32, (b, 1), 0)
    out = lax.scatter(jnp.zeros((b, 1), _F32), at, col, sdn, mode=lax.GatherScatterMode.PROMISE_IN_BOUNDS)
    return jnp.broadcast_to(out, (b, SEGMENT_ALIGN))


def current() -> FlatSegments | None:
    """The innermost active :func:`flat_segments` context of this thread, or ``None``."""
    stack = getattr(_local, "stack", None)
    return stack[-1] if stack else None


@contextlib.contextmanager
def flat_segments(
    segment_ids=None,
    num_segments: int = DEFAULT_MAX_SEGMENTS,
    *,
    row_ids=None,
    num_rows: int = DEFAULT_MAX_ROWS,
    reduction: str = "scatter",
    block_sums: str = "tree",
    shared_scatter: bool = True,
    scatter_lanes: int = 1,
    segment_bounds=None,
):
    """Makes per-tensor transforms reduce per segment of a flat parameter vector.

    Args:
      segment_ids: int32 ``[n]`` (or ``[n, 1]``): the tensor index of every element.
      num_segments: static upper bound on the number of tensors (ids must be below it).
      row_ids: int32 ``[n]`` (or ``[n, 1]``), optional: the global row index of every element
        of a rank >= 2 tensor, ``-1`` elsewhere (used by ``centralize``).
      num_rows: static upper bound on the number of rows.
      reduction: ``"scatter"`` (any ids), ``"tree"`` (non-decreasing ids, static length;
        no scatter) or ``"aligned"`` (leaves of shape ``(n / 16, 16)``, one non-decreasing id per
        block): how per-tensor sums over ``segment_ids`` are computed (module docstring).
      block_sums: ``"aligned"`` only: the block sums are summed per tensor by the ``"tree"``
        (default) or a ``"scatter"`` over the blocks (16x fewer elements than a per-element
        scatter: the cheaper one while blocks are few per possible segment; never on GPUs).
      shared_scatter: ``"scatter"`` only: several sums of one transform share one scatter
        (:meth:`FlatSegments.sums_of`; ``True``, the default) or take one each.
      scatter_lanes: accumulators per segment of every scatter (1, the default: one); the
        compiler takes 4 for CPU targets (``_scatter_sum``).
      segment_bounds: ``"tree"`` only, optional: int32 ``[num_segments + 1]``, where each
        tensor's run starts (``searchsorted(segment_ids, arange(num_segments + 1), "left")``).
        Given, the runs are read from it instead of searched for in every step.

    Yields the :class:`FlatSegments` context; its ``used`` set names the ids a trace needed.
    """
    for name, v in (("num_segments", num_segments), ("num_rows", num_rows)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"flat_segments: `{name}` must be a positive int, got {v!r}")
    if reduction not in SEGMENT_REDUCTIONS:
        raise ValueError(
            f"flat_segments: `reduction` must be one of {', '.join(map(repr, SEGMENT_REDUCTIONS))}, got {reduction!r}"
        )
    if not isinstance(scatter_lanes, int) or isinstance(scatter_lanes, bool) or scatter_lanes < 1:
        raise ValueError(f"flat_segments: `scatter_lanes` must be a positive int, got {scatter_lanes!r}")
    if block_sums not in ("tree", "scatter"):
        raise ValueError(f"flat_segments: `block_sums` must be 'tree' or 'scatter', got {block_sums!r}")
    ctx = FlatSegments(
        segment_ids, num_segments, row_ids, num_rows, reduction=reduction, block_sums=block_sums,
        shared_scatter=bool(shared_scatter), scatter_lanes=scatter_lanes, segment_bounds=segment_bounds,
    )
    stack = getattr(_local, "stack", None)
    if stack is None:
        stack = _local.stack = []
    stack.append(ctx)
    try:
        yield ctx
    finally:
        stack.pop()
