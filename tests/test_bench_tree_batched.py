"""bench/_tree_batched.py (a fifteenth-pass experiment, timed by bench/gpu_profile.py on a GPU):
its segment tree gives the float64 sums, as the product's does, and a module traced with it
steps like one traced without it."""

from __future__ import annotations

import pathlib
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from polaris._src import segments as S
from polaris._src.segments import TREE_BASE

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "bench"))

from _tree_batched import batched_tree, tree_sum  # noqa: E402


@pytest.mark.parametrize(
    "lengths",
    [
        [1],
        [TREE_BASE + 1],
        # the larger layouts trace a tree of their own each (~10 s apiece): `make bench` runs them
        pytest.param([TREE_BASE - 1, 2, TREE_BASE**2], marks=pytest.mark.slow),  # runs that start mid-block and span whole blocks
        pytest.param([0, 5, 0, TREE_BASE**3 + 3, 0], marks=pytest.mark.slow),  # empty tensors sum to 0
        pytest.param([7000, 3, 1, 65_000], marks=pytest.mark.slow),  # levels padded to whole blocks, a tiny run between two long ones
        pytest.param([4096] * 4, marks=pytest.mark.slow),  # a length that is a multiple of the base: slice gathers at level 0 too
    ],
)
def test_batched_tree_sum_equals_float64_sums_and_the_product_tree(lengths):
    x = np.random.default_rng(len(lengths)).standard_normal(sum(lengths)).astype(np.float32)
    ends = np.cumsum(lengths).astype(np.int32)
    starts = ends - np.asarray(lengths, np.int32)
    got = np.asarray(tree_sum(jnp.asarray(x), starts, ends))
    want = np.array([x[s:e].astype(np.float64).sum() for s, e in zip(starts, ends, strict=True)])
    scale = np.sqrt((x.astype(np.float64) ** 2).sum())
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * scale)
    product = np.asarray(S._tree_sum(jnp.asarray(x), starts, ends))
    np.testing.assert_allclose(got, product, rtol=0, atol=1e-6 * scale)


def test_batched_tree_swaps_the_tracing_function_and_restores_it():
    saved = S._tree_sum
    with batched_tree():
        assert S._tree_sum is tree_sum
    assert S._tree_sum is saved


@pytest.mark.slow  # two LAMB compiles and 20 steps (~20 s): an experiment's check, run by `make bench`
def test_a_module_traced_with_the_batched_tree_steps_like_the_product_module():
    """LAMB ``--size`` over BIG's 4 tensors (4 levels), 10 steps: the two modules' parameters
    agree to float32 rounding (the sums differ only in the order of their additions)."""
    from test_flat_segments import _compiled, load, random_tree
    from test_segment_tree import BIG

    from polaris_compiler import Layout
    from polaris_runtime.pack import pack

    rng = np.random.default_rng(5)
    params = random_tree(rng, BIG)
    flat, packing = pack(params)
    product = load("lamb", Layout.flat(size=packing.size), segment_reduction="tree", max_segments=16)
    with batched_tree():  # (another max_segments: its own entry in the session's compile cache)
        batched = load("lamb", Layout.flat(size=packing.size), segment_reduction="tree", max_segments=17)
    key = ("lamb", f"flat{packing.size}")  # test_flat_segments.load's cache keys, kw sorted
    modules = [_compiled[(*key, (("max_segments", m), ("segment_reduction", "tree")))].vmfb for m in (16, 17)]
    assert modules[0] != modules[1]  # two different modules
    grads = [packing.pack(random_tree(rng, BIG)) for _ in range(10)]
    out = []
    for opt in (product, batched):
        seg, p = opt.upload_segments(packing), flat
        s = opt.init(p)
        for g in grads:
            p, s = opt.step(p, g, s, segments=seg)
        out.append(np.asarray(p.numpy()))
    assert not np.array_equal(out[0], flat)  # the steps moved the parameters
    np.testing.assert_allclose(out[1], out[0], rtol=1e-5, atol=1e-6)
