"""Aligned flat modules (``--segment-reduction aligned``): every tensor starts a block of 16.

``pack(params, align=16)`` pads each tensor with zeros to a multiple of 16 elements; the module
then sees its flat vectors as ``(n / 16, 16)`` blocks, takes one segment id per block, sums per
tensor from dense block sums and broadcasts per-tensor values with one gather per block (no
per-element gather, no materialised squares). These tests pin its numbers to float64 sums and to
eager JAX on the model's own tree, keep the padding at zero, and check every rule around it
(the packing's alignment, ids constant per block and non-decreasing, the size, the transforms it
refuses, the manifest, the CLI).
"""

from __future__ import annotations

import json
import pathlib

import jax
import numpy as np
import pytest

import polaris_runtime as pr
from polaris._src import tree_utils as tu
from polaris._src.base import tree_leaves_with_names
from polaris._src.segments import SEGMENT_ALIGN, flat_segments
from polaris_compiler import CompileOptions, Layout, LayoutError, Target, compile_optimizer
from polaris_compiler.compile import TREE_MIN_ELEMENTS_PER_SEGMENT, _aligned_block_sums, choose_segment_reduction
from polaris_runtime.manifest import Manifest
from polaris_runtime.device import upload
from polaris_runtime.pack import Packing, pack

from test_flat_segments import CASES, MODEL_A, eager_tree_run, random_tree
from test_segment_tree import cli_refuses_then_inspects

A = SEGMENT_ALIGN


# -- packing -----------------------------------------------------------------------------------


def test_an_aligned_packing_pads_each_tensor_with_zeros_and_unpacks_exactly():
    rng = np.random.default_rng(0)
    tree = {"a": rng.standard_normal((3, 5)).astype(np.float32), "b": np.ones(16, np.float32), "c": np.float32(2.0), "d": np.zeros((0,), np.float32)}
    flat, packing = pack(tree, align=A)
    assert packing.offsets == (0, 16, 32, 48, 48) and packing.size == 48
    assert packing.spans == (16, 16, 16, 0) and packing.sizes == (15, 16, 1, 0)
    np.testing.assert_array_equal(flat[15], 0.0)  # padding after "a"
    np.testing.assert_array_equal(flat[33:48], 0.0)  # after the scalar "c"
    np.testing.assert_array_equal(packing.segment_ids, np.repeat([0, 1, 2], 16))  # padding: the tensor before
    back = packing.unpack(flat)
    for k in ("a", "b"):
        np.testing.assert_array_equal(back[k], tree[k])
    assert back["c"] == 2.0 and back["d"].shape == (0,)
    assert Packing.from_dict(json.loads(json.dumps(packing.to_dict()))) == packing
    assert "align" not in pack(tree)[1].to_dict()  # unaligned packings read as before
    with pytest.raises(ValueError, match="align must be a positive int"):
        Packing.of(tree, align=0)


# -- the frontend: sums and broadcasts over blocks ---------------------------------------------


def _aligned_model(rng, sizes):
    spans = [-(-m // A) * A for m in sizes]
    x = np.zeros(sum(spans), np.float32)
    o = 0
    for m, s in zip(sizes, spans, strict=True):
        x[o : o + m] = rng.standard_normal(m)
        o += s
    block_ids = np.repeat(np.arange(len(sizes), dtype=np.int32), [s // A for s in spans])
    return x, spans, block_ids


@pytest.mark.parametrize("block_sums", ["tree", "scatter"])
def test_aligned_sums_equal_float64_per_tensor_sums(block_sums):
    rng = np.random.default_rng(5)
    sizes = [5, 40, 1, 0, 3000, 17, 16]
    x, spans, block_ids = _aligned_model(rng, sizes)

    @jax.jit
    def f(v, ids):
        with flat_segments(ids, 8, reduction="aligned", block_sums=block_sums):
            return tu.per_tensor_sum_sq(v.reshape(-1, A))

    got = np.asarray(f(x, block_ids))
    assert got.shape == (x.size // A, A)  # broadcast back to every element of every block
    starts = np.cumsum([0, *spans[:-1]])
    for k, (o, m) in enumerate(zip(starts, sizes, strict=True)):
        if m:
            want = (x[o : o + m].astype(np.float64) ** 2).sum()
            np.testing.assert_allclose(got.reshape(-1)[o : o + spans[k]], want, rtol=2e-6, err_msg=f"tensor {k}")


def test_aligned_context_refuses_counts_rows_and_other_shapes():
    ids = np.zeros((4, 1), np.int32)
    x = np.ones((4, A), np.float32)
    with flat_segments(ids, 2, reduction="aligned") as ctx:
        with pytest.raises(ValueError, match="element count.*zero padding.*'tree' or 'scatter'"):
            tu.per_tensor_rms(x)
        with pytest.raises(ValueError, match=r"leaf has shape \(64,\), expected \(4, 16\)"):
            ctx.sums(x.reshape(-1))
    with flat_segments(ids, 2, row_ids=np.zeros((64, 1), np.int32), reduction="aligned"):
        with pytest.raises(ValueError, match="needs row_ids.*does not take"):
            tu.per_row_mean(x)
    with pytest.raises(ValueError, match="block_sums.*'tree' or 'scatter'"):
        with flat_segments(ids, 2, reduction="aligned", block_sums="dense"):
            pass


# -- the compiler ------------------------------------------------------------------------------


def test_aligned_needs_whole_blocks_of_any_or_a_fixed_length_and_is_never_chosen_by_auto():
    cpu, cuda = CompileOptions(), CompileOptions(target=Target.CUDA)
    assert choose_segment_reduction("aligned", Layout.flat(size=64 * A), 8, cpu) == "aligned"
    assert choose_segment_reduction("aligned", Layout.flat(), 8, cpu) == "aligned"  # any length
    assert choose_segment_reduction("auto", Layout.flat(size=64 * A), 8, cpu) != "aligned"
    assert choose_segment_reduction("auto", Layout.flat(), 8, cpu) == "scatter"
    with pytest.raises(LayoutError, match="'tree' needs a fixed-size flat layout.*'aligned'"):
        choose_segment_reduction("tree", Layout.flat(), 8, cpu)
    with pytest.raises(LayoutError, match=f"multiple of {A}.*got 1000.*align={A}"):
        choose_segment_reduction("aligned", Layout.flat(size=1000), 8, cpu)
    k = 8
    assert _aligned_block_sums(Layout.flat(size=TREE_MIN_ELEMENTS_PER_SEGMENT * k * A), k, cpu) == "tree"
    assert _aligned_block_sums(Layout.flat(size=TREE_MIN_ELEMENTS_PER_SEGMENT * k * A - A), k, cpu) == "scatter"
    assert _aligned_block_sums(Layout.flat(size=A), k, cuda) == "tree"
    for opts in (cpu, cuda):  # any length: the tree's levels need static lengths
        assert _aligned_block_sums(Layout.flat().in_blocks(A), k, opts) == "scatter"
    assert str(Layout.flat().in_blocks(A).tree.shape[0]) == f"{A}*b"
    assert Layout.flat(size=64).in_blocks(A).size == 64


@pytest.mark.parametrize("layout", [Layout.flat(size=4 * A), Layout.flat()], ids=["fixed", "any-length"])
def test_transforms_that_need_counts_or_rows_are_refused_with_the_fix(layout):
    with pytest.raises(ValueError, match="element count.*--segment-reduction"):
        compile_optimizer(CASES["adafactor"](), layout, name="adafactor", segment_reduction="aligned", max_segments=4)
    with pytest.raises(ValueError, match="row_ids.*aligned flat module does not take"):
        compile_optimizer(CASES["centralize-adam"](), layout, name="c", segment_reduction="aligned", max_segments=4)


# -- compiled modules ----------------------------------------------------------------------------

_modules: dict = {}


def _aligned(case: str, size: int, max_segments: int) -> pr.Optimizer:
    key = (case, size, max_segments)
    if key not in _modules:
        _modules[key] = compile_optimizer(CASES[case](), Layout.flat(size=size), name=case, segment_reduction="aligned", max_segments=max_segments)
    return pr.load(_modules[key].vmfb, device="local-sync")


def _run(opt, packing, flat, grads):
    seg = opt.upload_segments(packing)
    p, s = flat, opt.init(flat)
    for g in grads:
        p, s = opt.step(p, packing.pack(g), s, segments=seg)
    return p, s


def _assert_matches_eager(case, got_flat, packing, want):
    got = packing.unpack(got_flat)
    for (name, x), (_, y) in zip(tree_leaves_with_names(got), tree_leaves_with_names(want), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6, err_msg=f"{case}: {name}")
    pad = np.ones(packing.size, bool)
    for o, m in zip(packing.offsets, packing.sizes, strict=False):
        pad[o : o + m] = False
    np.testing.assert_array_equal(np.asarray(got_flat)[pad], 0.0, err_msg=f"{case}: padding moved")


@pytest.mark.parametrize("case", ["lamb", *(pytest.param(c, marks=pytest.mark.slow) for c in ("lars", "fromage"))])  # the norms alike: two slow
def test_aligned_module_steps_like_eager_jax_on_the_tree(case):
    """20 steps on MODEL_A (tensors of 12, 4 and 12 elements: all padded), against the transform
    run eagerly on the model's own tree; the padding stays zero."""
    rng = np.random.default_rng(23)
    params = random_tree(rng, MODEL_A)
    flat, packing = pack(params, align=A)
    opt = _aligned(case, packing.size, 8)
    assert opt.manifest.segments == {"leaves": ["segment_ids"], "max": 8, "reduction": "aligned", "align": A}
    assert [s.shape for s in opt.manifest.group("segments")] == [(packing.size // A, 1)]
    grads = [random_tree(rng, MODEL_A) for _ in range(20)]
    want, _ = eager_tree_run(CASES[case](), params, grads)
    p, _s = _run(opt, packing, flat, grads)
    _assert_matches_eager(case, p.numpy(), packing, want)


BIG = {"emb": (700, 13), "b": (3,), "head": (5000,), "scale": ()}  # 882 blocks: the tree of block sums


@pytest.fixture(scope="module")
def big():
    params = random_tree(np.random.default_rng(2), BIG)
    flat, packing = pack(params, align=A)
    assert packing.size // A >= TREE_MIN_ELEMENTS_PER_SEGMENT * 8  # so its block sums take the tree
    return params, flat, packing, _aligned("lamb", packing.size, 8)


def test_aligned_module_over_many_blocks_matches_eager_jax(big):
    params, flat, packing, opt = big
    rng = np.random.default_rng(4)
    grads = [random_tree(rng, BIG) for _ in range(5)]
    want, _ = eager_tree_run(CASES["lamb"](), params, grads)
    p, _s = _run(opt, packing, flat, grads)
    _assert_matches_eager("lamb", p.numpy(), packing, want)


def test_aligned_module_takes_ids_per_element_or_per_block_and_refuses_the_rest(big):
    _params, flat, packing, opt = big
    blocks = packing.size // A
    per_element = np.asarray(packing.segment_ids)
    a = opt.upload_segments({"segment_ids": per_element})
    b = opt.upload_segments({"segment_ids": per_element[::A]})
    np.testing.assert_array_equal(a["segment_ids"], b["segment_ids"])
    assert a["segment_ids"].shape == (blocks, 1)
    with pytest.raises(pr.BindingError, match=r"Packing given has align=1.*pack\(params, align=16\)"):
        opt.upload_segments(pack(_params)[1])
    mixed = per_element.copy()
    mixed[A * 3 + 5] += 1
    with pytest.raises(pr.BindingError, match=r"block 3 \(elements 48\.\.63\) holds the ids.*a tensor starts inside it"):
        opt.upload_segments({"segment_ids": mixed})
    with pytest.raises(pr.BindingError, match=f"has 100 ids; this module takes one per element \\({blocks * A}\\) or one per block of 16 \\({blocks}\\)"):
        opt.upload_segments({"segment_ids": np.zeros(100, np.int32)})
    swapped = per_element[::A].copy()
    swapped[[0, -1]] = swapped[[-1, 0]]
    with pytest.raises(pr.BindingError, match="non-decreasing.*'aligned'.*at block 1"):
        opt.upload_segments({"segment_ids": swapped})
    with pytest.raises(pr.BindingError, match="must be non-decreasing"):
        opt.step(flat, flat, opt.init(flat), segments={"segment_ids": swapped})


def test_manifest_needs_the_alignment(big):
    raw = json.loads(big[3].manifest.to_json())
    del raw["segments"]["align"]
    with pytest.raises(pr.ModuleError, match="segments.align must be a positive int"):
        Manifest.from_dict(raw)


# -- any length: one module for every model packed with align=16 --------------------------------


@pytest.fixture(scope="module")
def any_length():
    """LAMB's aligned module of any length (a multiple of 16), compiled once."""
    art = compile_optimizer(CASES["lamb"](), Layout.flat(), name="lamb", segment_reduction="aligned", max_segments=8)
    return art


def test_any_length_aligned_module_serves_two_models_like_the_fixed_size_ones(any_length, big):
    """One module, two models (MODEL_A: 48 elements; BIG: 882 blocks) in turn: the fixed-size
    aligned module of each model (bit for bit where both sum the blocks with a scatter; BIG's
    fixed module sums them with the tree, in another order) and eager JAX on each model's tree."""
    m = any_length.manifest
    assert [s["shape"] for s in m["groups"]["params"]] == [[f"{A}*b"]]
    assert [s["shape"] for s in m["groups"]["segments"]] == [["b", 1]]
    assert m["segments"]["reduction"] == "aligned" and m["segments"]["align"] == A
    assert "--size N (static shapes, the tree of block sums) runs it 1.03-1.5x faster" in m["segments"]["notes"][0]
    opt = pr.load(any_length.vmfb, device="local-sync")
    rng = np.random.default_rng(31)
    small = random_tree(rng, MODEL_A)
    for shapes, params, fixed in ((MODEL_A, small, None), (BIG, big[0], big[3])):
        flat, packing = pack(params, align=A)
        fixed = fixed or _aligned("lamb", packing.size, 8)
        exact = packing.size // A < TREE_MIN_ELEMENTS_PER_SEGMENT * 8  # both scatter the block sums
        same = np.testing.assert_array_equal if exact else lambda x, y, err_msg="": np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6, err_msg=err_msg)
        grads = [random_tree(rng, shapes) for _ in range(6)]
        got, got_s = _run(opt, packing, flat, grads)
        want, want_s = _run(fixed, packing, flat, grads)
        same(got.numpy(), want.numpy())
        for name in got_s.names:
            same(np.asarray(got_s[name]), np.asarray(want_s[name]), err_msg=name)
        eager, _ = eager_tree_run(CASES["lamb"](), params, grads)
        _assert_matches_eager("lamb", got.numpy(), packing, eager)


def test_any_length_aligned_module_refuses_what_would_not_fit(any_length, big):
    """IREE does not check a length of 16*b (a shape assertion it drops): the runtime does, and
    that the segment ids are those of the same model."""
    opt = pr.load(any_length.vmfb, device="local-sync")
    with pytest.raises(pr.BindingError, match=r"length 25 along dynamic dimension '16\*b', which must be a multiple of 16.*align=16"):
        opt.init(np.ones(25, np.float32))
    flat, packing = pack({"a": np.ones(20, np.float32), "b": np.ones(5, np.float32)}, align=A)
    state = opt.init(flat)
    with pytest.raises(pr.BindingError, match=r"Packing given has align=1"):
        opt.step(flat, flat, state, segments=pack({"a": np.ones(20, np.float32), "b": np.ones(5, np.float32)})[1])
    other = opt.upload_segments(big[2])  # the ids of another model
    with pytest.raises(pr.BindingError, match=rf"segment_ids' has length {big[2].size // A} along dynamic dimension 'b', but another leaf of this call set b=3"):
        opt.step(flat, flat, state, segments=other)
    with pytest.raises(pr.BindingError, match="has 3 ids; this module of any length takes one per element"):
        opt.step(flat, flat, state, segments=np.array([0, 0, 1], np.int32))  # ids per block: refused
    p, _ = opt.step(flat, flat, state, segments=packing.segment_ids)  # ids per element: fine
    assert p.numpy().shape == (48,)
    # update (not donating params) gives the same step: params + updates
    u, _ = opt.update(flat, opt.init(flat), flat, segments=packing)
    np.testing.assert_allclose(flat + u.numpy(), p.numpy(), rtol=1e-6, atol=1e-7)


def test_any_length_aligned_step_writes_in_place_and_takes_the_fast_path(any_length):
    """The step's length comes from the segment ids' size (``b``), not from ``16*b // 16``
    computed on the device: IREE then writes params and state into their own buffers (no copy,
    no device round trip per call) and the runtime's steady state serves the loop."""
    opt = pr.load(any_length.vmfb, device="local-sync")
    rng = np.random.default_rng(5)
    flat, packing = pack(random_tree(rng, MODEL_A), align=A)
    seg, grads = opt.upload_segments(packing), [upload(opt.device, flat)]
    p, s = opt.step(flat, grads, opt.init(flat), segments=seg)
    p, s = opt.step(p, grads, s, segments=seg)  # the plan's first call learns the aliasing
    views = [*p._pristine_views(), *s._pristine_views()]
    for _ in range(3):
        p, s = opt.step(p, grads, s, segments=seg)
    plan = opt._plans["step"]
    assert plan.aliased is True and plan.fast is not None
    after = [*p._pristine_views(), *s._pristine_views()]
    assert [v.get_buffer().ref for v in after] == [v.get_buffer().ref for v in views]


def test_any_length_aligned_step_and_update_wait_for_the_device_once(any_length):
    """With ``b`` from JAX's ``divmod`` of the params' size, IREE computed it on the device and
    read it back mid-step (two fence waits a step, a copy of the params): one wait now, like
    every other flat module (test_compiler's test_step_waits_for_the_device_once)."""
    from test_compiler import _vm_function

    for fn in ("step", "update"):
        code = _vm_function(any_length, fn)
        assert code.count("@hal.fence.await") == 1, fn
        assert code.count("@hal.device.queue.execute") == 1, fn
        assert "@hal.device.queue.copy" not in code and "@hal.command_buffer.copy_buffer" not in code, fn


def test_dimension_variables_are_read_from_an_argument_that_has_them_as_a_size():
    """JAX solves ``b`` from the first argument that mentions it: ``16*b`` gives a ``divmod``
    IREE runs on the device. The rewrite passes the size of an argument of exactly ``b``
    instead, and leaves modules without one (``init``) and without variables as they were."""
    import jax.numpy as jnp

    from polaris_compiler.export import dimension_variables_from_sizes

    (b,) = jax.export.symbolic_shape("b")
    vec = jax.ShapeDtypeStruct((16 * b,), jnp.float32)
    ids = jax.ShapeDtypeStruct((b, 1), jnp.int32)

    def raw(fn, *args):
        return jax.export.export(jax.jit(fn), platforms=["cpu"])(*args)

    both = raw(lambda x, i: x.reshape(-1, 16) * i, vec, ids)
    text = both.mlir_module()
    assert "call @_wrapped_jax_export_main(%" in text and "@divmod" in text
    new = dimension_variables_from_sizes(text, both.in_avals)
    size = next(line.split(" = ")[0].strip() for line in new.split("\n") if "get_dimension_size %arg1, dim = 0" in line)
    call = next(line for line in new.split("\n") if "call @_wrapped_jax_export_main(" in line)
    assert f"call @_wrapped_jax_export_main({size}, %arg0, %arg1)" in call
    assert new.replace(call, "") == text.replace(next(ln for ln in text.split("\n") if "call @_wrapped_jax_export_main(" in ln), "")
    alone = raw(lambda x: x * 2, vec)  # init's case: nothing of size b, left as JAX wrote it
    assert dimension_variables_from_sizes(alone.mlir_module(), alone.in_avals) == alone.mlir_module()
    fixed = raw(lambda x: x * 2, jax.ShapeDtypeStruct((32,), jnp.float32))
    assert dimension_variables_from_sizes(fixed.mlir_module(), fixed.in_avals) == fixed.mlir_module()


def test_dynamic_reshapes_and_block_broadcasts_are_legalized_and_others_stay():
    from polaris_compiler.export import legalize_dynamic_reshapes

    split = "    %2 = stablehlo.dynamic_reshape %arg1, %1 : (tensor<?xf32>, tensor<2xi32>) -> tensor<?x16xf32> loc(#loc3)"
    merge = "    %9 = stablehlo.dynamic_reshape %2, %8 : (tensor<?x16xf32>, tensor<1xi32>) -> tensor<?xf32>"
    other = "    %5 = stablehlo.dynamic_reshape %4, %3 : (tensor<?x?xf32>, tensor<1xi32>) -> tensor<?xf32>"
    out = legalize_dynamic_reshapes("\n".join([split, merge, other])).split("\n")
    assert out[:4] == [
        "    %pi_c0 = arith.constant 0 : index",
        "    %pi_e0 = tensor.extract %1[%pi_c0] : tensor<2xi32>",
        "    %pi_d0 = arith.index_cast %pi_e0 : i32 to index",
        "    %2 = tensor.expand_shape %arg1 [[0, 1]] output_shape [%pi_d0, 16] : tensor<?xf32> into tensor<?x16xf32> loc(#loc3)",
    ]
    assert out[4] == "    %9 = tensor.collapse_shape %2 [[0, 1]] : tensor<?x16xf32> into tensor<?xf32>"
    assert out[5] == other  # two unknown dimensions: not one of ours, left for IREE to refuse
    assert legalize_dynamic_reshapes(other) == other
    # one value per block over its 16 elements: the expanding dimension is named; broadcasts
    # that expand nothing (a scalar, or an unknown length onto itself) are left as they are
    per_block = "    %7 = stablehlo.dynamic_broadcast_in_dim %5, %6, dims = [0, 1] : (tensor<?x1xf32>, tensor<2xi32>) -> tensor<?x16xf32>"
    assert legalize_dynamic_reshapes(per_block) == per_block.replace(
        "dims = [0, 1] :", "dims = [0, 1] {known_expanding_dimensions = array<i64: 1>, known_nonexpanding_dimensions = array<i64: 0>} :"
    )
    for same in ("    %2 = stablehlo.dynamic_broadcast_in_dim %c, %1, dims = [] : (tensor<f32>, tensor<2xi32>) -> tensor<?x16xf32>",
                 "    %3 = stablehlo.dynamic_broadcast_in_dim %x, %1, dims = [0] : (tensor<?xf32>, tensor<1xi32>) -> tensor<?xf32>"):
        assert legalize_dynamic_reshapes(same) == same


def test_cli_compiles_and_inspects_an_aligned_module_of_any_length(tmp_path):
    from click.testing import CliRunner

    from polaris.cli.__main__ import cli

    runner = CliRunner()
    r = runner.invoke(cli, ["compile", "lamb", "--segment-reduction", "aligned", "--max-segments", "8", "--no-cache"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    out = r.stdout.strip().splitlines()[-1]
    assert out.endswith("-aligned.vmfb") and "an aligned flat module of any length" in r.stderr
    text = runner.invoke(cli, ["inspect", out], catch_exceptions=False).output
    assert "layout flat, any multiple of 16 elements" in text and "segment_ids                      (b, 1)" in text
    header = runner.invoke(cli, ["inspect", out, "--c-header"], catch_exceptions=False).output
    assert "16*b: a length of 16 times b" in header and "_DIM_B -1" in header and "_DIM__16" not in header
    pathlib.Path(out).unlink()
    from test_runtime_nopython import CC, _syntax_check

    if CC is not None:  # the header compiles as C (-Werror -pedantic), tables included
        _syntax_check(tmp_path, {"lamb_any.h": header}, "int main(void) { return 0; }\n", [d for d in header.split() if d.endswith("DEFINE_TABLES")][:1])


def test_cli_compiles_and_inspects_an_aligned_module(tmp_path):
    output = cli_refuses_then_inspects(
        tmp_path, ["--size", "1000", "--segment-reduction", "aligned"], "multiple of 16",
        ["--size", "1024", "--max-segments", "8", "--segment-reduction", "aligned"],
    )
    assert "per-tensor sums: aligned (every tensor starts at a multiple of 16 elements" in output
    assert "segment_ids                      (64, 1)" in output


@pytest.mark.vulkan
@pytest.mark.parametrize("fixed", [True, False], ids=["fixed", "any-length"])
def test_lavapipe_runs_an_aligned_module_like_the_cpu(fixed):
    """GPU targets sum the blocks with the tree (fixed size; any length: a scatter over the
    4376 blocks); on lavapipe (past its 65535-workgroup limit in elements) the module steps as its
    CPU variant does."""
    from _devices import lavapipe_or_skip

    lavapipe_or_skip("a Vulkan device to run on")
    rng = np.random.default_rng(0)
    params = {"a": rng.standard_normal(69_990).astype(np.float32), "b": rng.standard_normal(10).astype(np.float32)}
    flat, packing = pack(params, align=A)
    opts = CompileOptions(target=Target.VULKAN, vulkan_target="llvmpipe", extra_targets=(Target.LLVM_CPU,))
    layout = Layout.flat(size=packing.size) if fixed else Layout.flat()
    art = compile_optimizer(CASES["lamb"](), layout, opts, name="lamb", max_segments=4, segment_reduction="aligned")
    out = []
    for device in ("vulkan", "local-sync"):
        opt = pr.load(art.vmfb, device=device)
        p, s = flat, opt.init(flat)
        for _ in range(3):
            p, s = opt.step(p, packing.pack(params), s, segments=packing)
        out.append(p.numpy())
    np.testing.assert_allclose(out[0], out[1], rtol=1e-6, atol=1e-6)
    assert np.abs(out[0] - flat).max() > 1e-3  # it stepped
