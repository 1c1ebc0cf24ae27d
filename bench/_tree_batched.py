"""Experiment (fifteenth pass): LAMB's segment tree with every level's query computed at once.

``polaris._src.segments._tree_sum`` walks the tree level by level: each level's run indices come
from the level below, so a CUDA step at 1000064 records 80 dispatches, 36 barriers and 8 copies
(14 dispatches a level; the whole-vector LAMB step: 10), and takes 0.413 ms on an H200 against
0.111 ms (docs/performance.md). But a run ``[s, e)`` has ``[ceil(s / base**j), floor(e / base**j))``
as its whole units at level ``j``: every level's query follows from the bounds alone. This form
computes them for all levels at once, gathers each partial block as one slice of ``base``, and
pads each level above the first to whole blocks (no short last block: no tail sum and no
concatenation): 37 dispatches, 23 barriers, 4 copies and 7 fills at 1000064 (1e7: 94 -> 42
dispatches). On the 2-core EPYC (local-sync, 50 tensors) it is no faster (1000064: 4.83-5.20
against 4.57-4.65 ms; 1e7 within noise), results within 1e-7; it waits for a GPU session
(``bench/gpu_profile.py``'s ``lamb-tree-batched-*`` cases) before it replaces the product's.

    with batched_tree():   # compile_optimizer(...) inside traces the tree with this form
        ...
"""

from __future__ import annotations

import contextlib

import jax.numpy as jnp
from jax import lax

from polaris._src import segments as S


@contextlib.contextmanager
def batched_tree():
    """``segments._tree_sum`` replaced by :func:`tree_sum` while the block runs (tracing only)."""
    saved = S._tree_sum
    S._tree_sum = tree_sum
    try:
        yield
    finally:
        S._tree_sum = saved


def tree_sum(x, starts, ends, base: int = S.TREE_BASE):
    """``out[k] = sum(x[starts[k]:ends[k]])``, float32, for a 1-D ``x`` of static length.

    A segment tree with ``base`` children per node: level 0 is ``x``, level ``j + 1`` the sums of
    level ``j``'s blocks of ``base`` (dense block sums, which IREE tiles). At level ``j`` the
    whole units of a run ``[s, e)`` are ``[ceil(s / base**j), floor(e / base**j))``, so every
    level's query follows from ``starts`` and ``ends`` alone. A run takes, at each level, the
    masked partial block at its left end (if it starts mid-block) and at its right end, and leaves
    the whole blocks in between to the level above. The queries of all levels are computed at
    once, as ``(levels, 2, segments)`` arrays, and each level is one gather-and-sum of its two
    blocks: no level waits for another's index arithmetic (on CUDA each dispatch of a step costs
    microseconds). Never a scatter. Same sums as ``segments._tree_sum`` up to the order of the
    additions.
    """
    x = jnp.asarray(x, jnp.float32)
    levels = [x]
    while levels[-1].shape[0] > 1:
        up = S._block_sums(levels[-1], base)
        if up.shape[0] > 1 and up.shape[0] % base:  # zeros up to whole blocks: no short last block
            up = jnp.pad(up, (0, base - up.shape[0] % base))
        levels.append(up)
    s, e = jnp.asarray(starts, jnp.int32), jnp.asarray(ends, jnp.int32)
    # the elements of x in one unit of each level, (levels, 1, 1); clipped to int32: a unit that
    # large is longer than any run, so no run has a whole one
    unit = jnp.asarray([min(base**j, 2**31 - 1) for j in range(len(levels))], jnp.int32)[:, None, None]
    left = jnp.arange(2, dtype=jnp.int32)[None, :, None] == 0  # (1, 2, 1): the left block, the right block
    l, r = -(-s // unit), e // unit  # each level's whole units (ceil, floor), (levels, 1, k)
    lo, ro, lb, rb = l % base, r % base, l // base, r // base
    same, live = lb == rb, l < r
    block = jnp.where(left, lb, rb)  # (levels, 2, k)
    t = jnp.arange(base, dtype=jnp.int32)
    take_l, take_r = S._partial_block_masks(lo, ro, same, live, t)  # (levels, 1, k, base) each
    take = jnp.where(left[..., None], take_l, take_r)  # (levels, 2, k, base)
    acc = jnp.zeros(s.shape, jnp.float32)
    for j, a in enumerate(levels):
        acc = acc + _masked_slices_sum(a, block[j], take[j], t, base)
    return acc


def _masked_slices_sum(a, block, mask, t, base: int):
    """Per column k: the sum of ``a[block[i, k] * base + t]`` over the ``i`` and ``t`` where
    ``mask[i, k, t]``. Where ``a``'s length is a multiple of ``base`` every block is gathered as
    one slice of ``base`` elements (a block past the end is clamped into range: it is masked
    out); otherwise element by element, each index clipped into range."""
    if a.shape[0] % base == 0:
        dn = lax.GatherDimensionNumbers(offset_dims=(2,), collapsed_slice_dims=(), start_index_map=(0,))
        rows = lax.gather(a, (block * base)[..., None], dn, slice_sizes=(base,), mode=lax.GatherScatterMode.CLIP)
    else:
        rows = a[jnp.clip(block[..., None] * base + t, 0, a.shape[0] - 1)]
    return jnp.sum(jnp.where(mask, rows, 0.0), axis=(0, 2))
