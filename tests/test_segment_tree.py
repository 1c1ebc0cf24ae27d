"""Per-tensor sums of fixed-size flat modules without a scatter: the segment tree
(``flat_segments(..., reduction="tree")``, ``compile_optimizer(segment_reduction=...)``).

IREE 3.13 runs a scatter one element at a time (4-8 ns an element on a CPU, one GPU workgroup per
element); the tree sums each tensor's contiguous run from dense block sums and small gathers.
These tests pin its numbers to float64 sums, to the scatter and to the tree-layout module, and
check the rules around it (non-decreasing ids, static length, the manifest, the CLI).
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

import polaris_runtime as pr
from polaris._src.base import tree_leaves_with_names
from polaris._src.segments import TREE_BASE, _tree_sum, flat_segments
from polaris_compiler import CompileOptions, Layout, LayoutError, Target
from polaris_compiler.compile import TREE_MIN_ELEMENTS_PER_SEGMENT, choose_segment_reduction
from polaris_runtime import device as dev
from polaris_runtime.manifest import Manifest
from polaris_runtime.pack import pack

from _devices import lavapipe_or_skip
from test_flat_segments import CASES, MODEL_A, eager_tree_run, flat_state_vs_tree_state, load, random_tree

# -- the frontend: _tree_sum against float64 ---------------------------------------------------


def _runs(lengths):
    ends = np.cumsum(lengths).astype(np.int32)
    return (ends - np.asarray(lengths, np.int32)), ends


def _check_tree_sum(lengths, x):
    starts, ends = _runs(lengths)
    got = np.asarray(_tree_sum(jnp.asarray(x), starts, ends))
    want = np.array([x[s:e].astype(np.float64).sum() for s, e in zip(starts, ends, strict=True)])
    scale = np.sqrt((x.astype(np.float64) ** 2).sum()) + 1e-30
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * scale, err_msg=f"lengths {lengths}")


@pytest.mark.parametrize(
    "lengths",
    [
        [1],
        [TREE_BASE],
        [TREE_BASE + 1],
        [TREE_BASE - 1, 2, TREE_BASE**2],  # runs that start mid-block and span whole blocks
        [0, 5, 0, TREE_BASE**3 + 3, 0],  # empty tensors (absent ids) sum to 0
        [TREE_BASE**2] * 3,  # runs aligned to blocks of every level
        [7000, 3, 1, 65_000],  # four levels, a tiny run between two long ones
    ],
)
def test_tree_sum_equals_float64_sums(lengths):
    x = np.random.default_rng(sum(lengths)).standard_normal(sum(lengths)).astype(np.float32)
    _check_tree_sum(lengths, x)


@pytest.mark.slow  # a sweep (~12 s): test_tree_sum_equals_float64_sums covers the shapes that matter in every run
@settings(max_examples=10, deadline=None)  # each example compiles its own shapes: ~1 s
@given(st.lists(st.integers(0, 300), min_size=1, max_size=12).filter(lambda ls: sum(ls) > 0), st.integers(0, 2**31))
def test_tree_sum_property(lengths, seed):
    x = np.random.default_rng(seed).uniform(-2, 2, sum(lengths)).astype(np.float32)
    _check_tree_sum(lengths, x)


def test_tree_context_counts_and_sums_like_the_scatter_under_jit():
    rng = np.random.default_rng(3)
    ids = np.repeat(np.arange(6, dtype=np.int32), [3, 40, 1, 0, 300, 17])
    x = rng.standard_normal(ids.size).astype(np.float32)

    @jax.jit
    def both(v, i):
        out = []
        for reduction in ("scatter", "tree"):
            with flat_segments(i, 8, reduction=reduction) as ctx:
                out.append((ctx.sums(v), ctx.counts(v)))
        return out

    (s_sum, s_cnt), (t_sum, t_cnt) = both(x, ids)
    np.testing.assert_array_equal(np.asarray(t_cnt), np.bincount(ids, minlength=8))
    np.testing.assert_array_equal(np.asarray(t_cnt), np.asarray(s_cnt))
    np.testing.assert_allclose(np.asarray(t_sum), np.asarray(s_sum), rtol=1e-5, atol=1e-5)


def test_tree_needs_a_static_length_and_a_known_name():
    with pytest.raises(ValueError, match="reduction.*'scatter', 'tree'.*got 'dense'"):
        with flat_segments(np.zeros(4, np.int32), 2, reduction="dense"):
            pass
    n = jax.export.symbolic_shape("n")[0]

    def f(x, ids):
        with flat_segments(ids, 4, reduction="tree") as ctx:
            return ctx.sums(x)

    with pytest.raises(ValueError, match="static length.*--size N.*reduction='scatter'"):
        jax.eval_shape(f, jax.ShapeDtypeStruct((n,), jnp.float32), jax.ShapeDtypeStruct((n, 1), jnp.int32))


# -- the compiler's choice ---------------------------------------------------------------------


def test_choice_of_reduction():
    k = 64
    big, small = Layout.flat(size=TREE_MIN_ELEMENTS_PER_SEGMENT * k), Layout.flat(size=TREE_MIN_ELEMENTS_PER_SEGMENT * k - 1)
    cpu, cuda = CompileOptions(), CompileOptions(target=Target.CUDA)
    assert choose_segment_reduction("auto", Layout.flat(), k, cpu) == "scatter"  # any length
    assert choose_segment_reduction("auto", Layout.flat(), k, cuda) == "scatter"
    assert choose_segment_reduction("auto", big, k, cpu) == "tree"
    assert choose_segment_reduction("auto", small, k, cpu) == "scatter"
    assert choose_segment_reduction("auto", small, k, cuda) == "tree"  # never a GPU scatter
    assert choose_segment_reduction("auto", small, k, CompileOptions(extra_targets=(Target.VULKAN,))) == "tree"
    assert choose_segment_reduction("scatter", big, k, cuda) == "scatter"
    assert choose_segment_reduction("tree", small, k, cpu) == "tree"
    with pytest.raises(LayoutError, match="fixed-size flat layout.*--size N"):
        choose_segment_reduction("tree", Layout.flat(), k, cpu)
    with pytest.raises(LayoutError, match="'auto', 'scatter', 'tree', 'aligned'; got 'fast'"):
        choose_segment_reduction("fast", big, k, cpu)


# -- compiled modules ----------------------------------------------------------------------------


# a trust ratio and factored moments here; LARS and Fromage (norms like LAMB's) in the slow suite
@pytest.mark.parametrize("case", ["lamb", *(pytest.param(c, marks=pytest.mark.slow) for c in ("lars", "fromage")), "adafactor"])
def test_tree_module_matches_the_tree_layout_module(case):
    """The fixed-size flat module with the tree reduction steps like the module compiled for the
    model's own tree layout (20 steps, params and state)."""
    rng = np.random.default_rng(17)
    params = random_tree(rng, MODEL_A)
    flat, packing = pack(params)
    fixed = load(case, Layout.flat(size=packing.size), segment_reduction="tree", max_segments=8)
    assert fixed.manifest.segments["reduction"] == "tree"
    tree_opt = load(case, Layout.from_tree(params))
    seg = fixed.upload_segments(packing)
    fp, fs, tp, ts = flat, fixed.init(flat), params, tree_opt.init(params)
    for i in range(20):
        g = random_tree(rng, MODEL_A)
        fp, fs = fixed.step(fp, packing.pack(g), fs, segments=seg)
        tp, ts = tree_opt.step(tp, g, ts)
    got, want = packing.unpack(fp), tp.numpy()
    for (name, x), (_, y) in zip(tree_leaves_with_names(got), tree_leaves_with_names(want), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6, err_msg=f"{case}: {name}")
    for name, a, b in flat_state_vs_tree_state(fs, ts, packing):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=f"{case}: state {name}")


BIG = {"emb": (700, 13), "b": (3,), "head": (5000,), "scale": ()}  # 14104 elements, 4 levels


@pytest.fixture(scope="module")
def big_lamb():
    params = random_tree(np.random.default_rng(2), BIG)
    flat, packing = pack(params)
    return params, flat, packing, load("lamb", Layout.flat(size=packing.size), segment_reduction="tree", max_segments=16)


def _run_packed(opt, flat, packing, grads):
    """The params after one step per gradient tree, from ``flat``, with ``packing``'s segments."""
    seg, p = opt.upload_segments(packing), flat
    s = opt.init(p)
    for g in grads:
        p, s = opt.step(p, packing.pack(g), s, segments=seg)
    return p


def test_tree_module_over_many_blocks_matches_eager_jax_and_the_scatter(big_lamb):
    params, flat, packing, tree_mod = big_lamb
    scatter_mod = load("lamb", Layout.flat(size=packing.size), segment_reduction="scatter", max_segments=16)
    assert scatter_mod.manifest.segments["reduction"] == "scatter"
    rng = np.random.default_rng(4)
    grads = [random_tree(rng, BIG) for _ in range(5)]
    want, _ = eager_tree_run(CASES["lamb"](), params, grads)
    outs = [packing.unpack(_run_packed(opt, flat, packing, grads)) for opt in (tree_mod, scatter_mod)]
    for got in outs:
        for (name, x), (_, y) in zip(tree_leaves_with_names(got), tree_leaves_with_names(want), strict=True):
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6, err_msg=name)


def test_tree_module_refuses_ids_out_of_order_and_takes_sorted_ones(big_lamb):
    _params, flat, packing, opt = big_lamb
    ids = packing.segment_ids.copy()
    opt.upload_segments({"segment_ids": ids})  # sorted, as pack makes them: fine
    ids[[0, -1]] = ids[[-1, 0]]
    with pytest.raises(pr.BindingError, match=r"must be non-decreasing.*id 0 at element 1 follows 3.*--segment-reduction scatter"):
        opt.upload_segments({"segment_ids": ids})
    with pytest.raises(pr.BindingError, match="non-decreasing"):
        opt.step(flat, flat, opt.init(flat), segments={"segment_ids": ids})


def test_manifest_names_the_reduction_and_unknown_ones_are_refused(big_lamb):
    raw = json.loads(big_lamb[3].manifest.to_json())
    (note,) = raw["segments"].pop("notes")  # LAMB only sums: the aligned form would serve it faster
    assert "--segment-reduction aligned" in note and "faster than this tree module" in note
    assert raw["segments"] == {"leaves": ["segment_ids", "segment_bounds"], "derived": ["segment_bounds"], "max": 16, "reduction": "tree"}
    assert raw["schema_version"] == 3  # a runtime that does not compute segment_bounds refuses it
    raw["segments"]["reduction"] = "prefix-sum"
    with pytest.raises(pr.ModuleError, match="segments.reduction 'prefix-sum'.*'scatter', 'tree'.*upgrade"):
        Manifest.from_dict(raw)
    del raw["segments"]["reduction"]  # modules from before the field: scatter
    assert Manifest.from_dict(raw).segments.get("reduction") is None


@pytest.mark.vulkan
def test_lavapipe_runs_the_tree_past_65535_workgroups():
    """The scatter is refused on llvmpipe past 65535 elements (one workgroup each); the tree
    module has no such limit and gives the CPU's numbers at 70000."""
    from polaris_compiler import compile_optimizer

    lavapipe_or_skip("the workgroup limit is llvmpipe's")
    rng = np.random.default_rng(0)
    params = {"a": rng.standard_normal(69_990).astype(np.float32), "b": rng.standard_normal(10).astype(np.float32)}
    flat, packing = pack(params)
    opts = CompileOptions(target=Target.VULKAN, vulkan_target="llvmpipe", extra_targets=(Target.LLVM_CPU,))
    art = compile_optimizer(CASES["lamb"](), Layout.flat(size=packing.size), opts, name="lamb", max_segments=4)
    assert art.manifest["segments"]["reduction"] == "tree"
    out = []
    for device in ("vulkan", "local-sync"):
        opt = pr.load(art.vmfb, device=device)
        p, _ = opt.step(flat, packing.pack(params), opt.init(flat), segments=packing)
        out.append(p.numpy())
    np.testing.assert_allclose(out[0], out[1], rtol=1e-6, atol=1e-7)


def cli_refuses_then_inspects(tmp_path, refused: list, message: str, compile_args: list) -> str:
    """``polaris compile lamb *refused`` must fail naming ``message``; ``polaris compile lamb
    *compile_args`` must succeed; returns ``polaris inspect``'s output for that module."""
    from polaris.cli.__main__ import cli

    runner = CliRunner()
    r = runner.invoke(cli, ["compile", "lamb", *refused, "--no-cache", "-o", str(tmp_path / "a.vmfb")])
    assert r.exit_code != 0 and message in r.output
    out = tmp_path / "t.vmfb"
    r = runner.invoke(cli, ["compile", "lamb", *compile_args, "-o", str(out)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return runner.invoke(cli, ["inspect", str(out)], catch_exceptions=False).output


def test_cli_segment_reduction(tmp_path):
    output = cli_refuses_then_inspects(
        tmp_path, ["--segment-reduction", "tree"], "--size N", ["--size", "3000", "--max-segments", "8", "--segment-reduction", "tree"]
    )
    assert "per-tensor sums: tree (segment_ids must be non-decreasing" in output


# -- the runtime's allocator -----------------------------------------------------------------------


def test_cpu_devices_get_the_caching_allocator(monkeypatch):
    monkeypatch.delenv("POLARIS_DEVICE_ALLOCATOR", raising=False)
    assert dev.device_allocators("local-sync") == ["caching"]
    assert dev.device_allocators("local-task") == ["caching"]
    assert dev.device_allocators("cuda") is None and dev.device_allocators("vulkan") is None
    monkeypatch.setenv("POLARIS_DEVICE_ALLOCATOR", "default")
    assert dev.device_allocators("local-sync") is None
    monkeypatch.setenv("POLARIS_DEVICE_ALLOCATOR", "caching")
    assert dev.device_allocators("vulkan") == ["caching"]
    monkeypatch.setenv("POLARIS_DEVICE_ALLOCATOR", "arena")
    with pytest.raises(pr.DeviceError, match="'arena'.*caching, default"):
        dev.device_allocators("local-sync")


# -- segment_bounds: where each run starts, computed once by the runtime (fourteenth pass) ------
def test_given_bounds_replace_the_search_and_give_the_same_sums():
    """``flat_segments(..., segment_bounds=...)``: the runs are read, not searched for (fewer
    operations traced), and every sum and count is the same; bounds of the wrong length are refused."""
    rng = np.random.default_rng(5)
    ids = np.repeat(np.arange(6, dtype=np.int32), [3, 40, 1, 0, 300, 17])
    x = rng.standard_normal(ids.size).astype(np.float32)
    bounds = np.searchsorted(ids, np.arange(9), side="left").astype(np.int32)

    def given(v, i, b):
        with flat_segments(i, 8, reduction="tree", segment_bounds=b) as ctx:
            return ctx.sums(v), ctx.counts(v)

    def searched(v, i):
        with flat_segments(i, 8, reduction="tree") as ctx:
            return ctx.sums(v), ctx.counts(v)

    for a, b in zip(jax.jit(given)(x, ids, bounds), jax.jit(searched)(x, ids), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert len(jax.make_jaxpr(given)(x, ids, bounds).eqns) < len(jax.make_jaxpr(searched)(x, ids).eqns)
    with pytest.raises(ValueError, match="segment_bounds has 8 entries; expected num_segments \\+ 1 = 9"):
        given(x, ids, bounds[:-1])


def test_an_older_runtime_refuses_a_module_with_derived_segments(monkeypatch, big_lamb):
    from polaris_runtime import manifest

    raw = json.loads(big_lamb[3].manifest.to_json())
    monkeypatch.setattr(manifest, "SUPPORTED_SCHEMA_VERSIONS", (1, 2))
    with pytest.raises(pr.SchemaVersionError, match="schema version 3"):
        Manifest.from_dict(raw)


def test_the_runtime_computes_the_bounds_of_a_tree_module(big_lamb):
    """A tree module takes ``segment_bounds`` beside ``segment_ids``; the runtime computes it
    from the ids (a Packing, a dict, upload_segments) and the C header says how."""
    from polaris_runtime.cheader import c_header

    _params, flat, packing, opt = big_lamb
    spec = opt.manifest.group("segments")[1]
    assert (spec.name, spec.shape, spec.dtype) == ("segment_bounds", (17, 1), "int32")
    want = np.searchsorted(packing.segment_ids, np.arange(17), side="left").reshape(-1, 1)
    for given in (packing, {"segment_ids": packing.segment_ids}):
        seg = opt.upload_segments(given)
        np.testing.assert_array_equal(seg["segment_bounds"], want)
    p1, _ = opt.step(flat, flat * 0.01, opt.init(flat), segments={"segment_ids": packing.segment_ids})
    p2, _ = opt.step(flat, flat * 0.01, opt.init(flat), segments=packing)
    np.testing.assert_array_equal(p1.numpy(), p2.numpy())
    header = c_header(opt.manifest, prefix="lamb")
    assert "segments/segment_bounds is not given by the model but computed from segments/segment_ids" in header
    with pytest.raises(pr.BindingError, match=r"needs segments=, the tensor boundaries of the packed model \(segment_ids, int32"):
        opt.step(flat, flat, opt.init(flat))
