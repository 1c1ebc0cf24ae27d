"""Flat modules that serve any model: per-tensor reductions through segments (docs/flat-modules.md).

One flat module (params: one f32 vector of any length) takes the packed model's tensor
boundaries (``segments``) when its transforms reduce per tensor, and then steps exactly like the
module compiled for the model's own tree layout.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import polaris
import polaris_runtime as pr
from polaris._src import registry
from polaris._src import tree_utils as tu
from polaris._src.base import tree_leaves_with_names
from polaris._src.segments import flat_segments
from polaris_compiler import Layout, LayoutError, compile_optimizer
from polaris_runtime.pack import Packing, pack, unpack

from _devices import lavapipe_or_skip

MODEL_A = {"w": (3, 4), "b": (4,), "sub": {"k": (2, 3, 2)}}
MODEL_B = {"emb": (5, 3), "head": {"w": (3, 2), "b": (2,)}, "scale": ()}
STEPS = 20


def random_tree(rng, shapes, scale=1.0):
    if isinstance(shapes, dict):
        return {k: random_tree(rng, v, scale) for k, v in shapes.items()}
    return (rng.standard_normal(shapes) * scale).astype(np.float32)


def centralized_adam():
    return polaris.chain(polaris.updates.centralize(), polaris.optimizers.adam(learning_rate=1e-2))


# name -> transform builder; registered optimizers use their registry example options
CASES = {
    "lamb": lambda: registry.get("lamb").build(learning_rate=1e-2, decay=1e-4),
    "lars": lambda: registry.get("lars").build(learning_rate=1e-1, weight_decay=1e-4),
    "fromage": lambda: registry.get("fromage").build(learning_rate=1e-2),
    # every tensor here is below min_dim_size_to_factor, so the tree module does not factor either
    "adafactor": lambda: registry.get("adafactor").build(learning_rate=1e-2, momentum=0.9, weight_decay_rate=1e-3),
    "centralize-adam": centralized_adam,
}

_compiled: dict = {}


def load(case: str, layout: Layout | None = None, **kw) -> pr.Optimizer:
    """Each (case, layout) compiled once per session."""
    lay = layout or Layout.flat()
    key = (case, repr(lay.tree) if lay.kind == "tree" else f"flat{lay.size or ''}", tuple(sorted(kw.items())))
    if key not in _compiled:
        _compiled[key] = compile_optimizer(CASES[case](), lay, name=case, **kw)
    return pr.load(_compiled[key].vmfb, device="local-task")


def eager_tree_run(tx, params, grads_seq):
    state = tx.init(params)

    @jax.jit
    def step(p, g, s):
        u, s = tx.update(g, s, p)
        return polaris.apply_updates(p, u), s

    p = params
    for g in grads_seq:
        p, state = step(p, g, state)
    return jax.tree.map(np.asarray, p), state


def flat_state_vs_tree_state(flat_state: pr.Tree, tree_state: pr.Tree, packing: Packing):
    """Pairs of (flat leaf, tree leaves packed) for the per-parameter leaves, and scalars."""
    tree = dict(zip(tree_state.names, tree_state.leaves(), strict=True))
    pairs = []
    for spec, a in zip(flat_state.specs, flat_state.leaves(), strict=True):
        if spec.shape == ("n",):
            parts = [tree.get(f"{spec.name}/{n}") for n in packing.names]
            if all(x is not None for x in parts):
                pairs.append((spec.name, a, np.concatenate([np.ravel(x) for x in parts])))
        elif spec.shape == () and spec.name in tree:
            pairs.append((spec.name, a, tree[spec.name]))
    return pairs


# LARS and Fromage (per-tensor norms, like LAMB) in the slow suite
@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow) if c in ("lars", "fromage") else c for c in CASES])
def test_flat_module_with_segments_matches_tree_module(case):
    rng = np.random.default_rng(7)
    params = random_tree(rng, MODEL_A)
    grads = [random_tree(rng, MODEL_A) for _ in range(STEPS)]
    tree_opt = load(case, Layout.from_tree(params))
    flat_opt = load(case)
    assert flat_opt.takes_segments and not tree_opt.takes_segments

    flat, packing = pack(params)
    segments = flat_opt.upload_segments(packing)  # checked and uploaded once
    f_state, t_state = flat_opt.init(flat), tree_opt.init(params)
    fp, tp = flat, params
    for i, g in enumerate(grads):
        fp, f_state = flat_opt.step(fp, packing.pack(g), f_state, segments=segments)
        tp, t_state = tree_opt.step(tp, g, t_state)
        if i in (0, 1, 9, STEPS - 1):
            got, want = packing.unpack(fp), tp.numpy()
            for (name, x), (_, y) in zip(tree_leaves_with_names(got), tree_leaves_with_names(want), strict=True):
                np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6, err_msg=f"{case}: {name} at step {i + 1}")
    pairs = flat_state_vs_tree_state(f_state, t_state, packing)
    assert pairs, "no state leaf compared"
    for name, a, b in pairs:
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=f"{case}: state {name}")


_STEP_UNDER_MALLOC_CHECK = """
import sys, numpy as np, polaris_runtime as pr
from polaris_runtime.pack import pack
opt = pr.load(sys.argv[1], device="local-sync")
flat, packing = pack({"a": np.ones((3, 4), np.float32), "b": np.ones(5, np.float32)})
seg, p = opt.upload_segments(packing), flat
s = opt.init(p)
for _ in range(3):
    p, s = opt.step(p, packing.pack({"a": np.full((3, 4), 0.5, np.float32), "b": np.ones(5, np.float32)}), s, segments=seg)
print(float(p.numpy()[0]))
"""


def test_rows_outside_tensors_never_reach_the_scatter(tmp_path):
    """Regression: elements of rank <= 1 tensors have row id -1, which XLA's scatter skips and
    IREE 3.13's wrote 4 bytes before its buffer (a flat centralize module corrupted the heap;
    glibc's checks crashed the process). Run under MALLOC_CHECK_=3 in a fresh process."""
    import subprocess
    import sys

    path = tmp_path / "centralize-adam.vmfb"
    path.write_bytes(compile_optimizer(centralized_adam(), Layout.flat(), name="centralize-adam").vmfb)
    env = {**os.environ, "MALLOC_CHECK_": "3", "MALLOC_PERTURB_": "165"}
    r = subprocess.run([sys.executable, "-c", _STEP_UNDER_MALLOC_CHECK, str(path)], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"exit {r.returncode}: {r.stderr[-2000:]}"
    assert np.isfinite(float(r.stdout.split()[-1]))


def test_a_fixed_size_flat_module_takes_the_same_segments():
    """``--size``: the model's exact length; the packing and segments work unchanged, and the
    results equal the any-length module's (to rounding)."""
    rng = np.random.default_rng(11)
    params = random_tree(rng, MODEL_A)
    flat, packing = pack(params)
    any_length, fixed = load("lamb"), load("lamb", Layout.flat(size=packing.size))
    assert fixed.manifest.params[0].shape == (packing.size,)
    out = []
    for opt in (any_length, fixed):
        seg, p = opt.upload_segments(packing), flat
        s = opt.init(p)
        for i in range(5):
            p, s = opt.step(p, packing.pack(random_tree(np.random.default_rng(i), MODEL_A)), s, segments=seg)
        out.append(p.numpy())
    # equal up to the order of the per-tensor sums: a scatter of unknown length accumulates in
    # lanes, one of 28 elements in one accumulator (segments.SCATTER_LANES_MIN_INDICES)
    np.testing.assert_allclose(out[0], out[1], rtol=2e-7, atol=0)
    other, other_packing = pack(random_tree(rng, MODEL_B))
    with pytest.raises(pr.BindingError, match=f"expects \\({packing.size},\\)"):
        fixed.init(other)


def test_one_flat_module_serves_two_models():
    """The same lamb module, stepped on two differently shaped models in turn."""
    opt = load("lamb")
    tx = CASES["lamb"]()
    rng = np.random.default_rng(11)
    runs = {}
    for label, shapes in (("a", MODEL_A), ("b", MODEL_B)):
        params = random_tree(rng, shapes)
        grads = [random_tree(rng, shapes) for _ in range(10)]
        flat, packing = pack(params)
        runs[label] = dict(params=params, grads=grads, packing=packing, p=flat, s=opt.init(flat))
    assert runs["a"]["packing"].size != runs["b"]["packing"].size
    for i in range(10):  # interleaved: nothing leaks from one model to the other
        for r in runs.values():
            g = r["packing"].pack(r["grads"][i])
            r["p"], r["s"] = opt.step(r["p"], g, r["s"], segments=r["packing"])
    for label, r in runs.items():
        want, _ = eager_tree_run(tx, r["params"], r["grads"])
        got = unpack(r["p"], r["packing"])
        for (name, x), (_, y) in zip(tree_leaves_with_names(got), tree_leaves_with_names(want), strict=True):
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6, err_msg=f"model {label}: {name}")
    # the flat reference without segments (the whole vector as one tensor) differs: the
    # segments do change the result
    flat_b, _ = eager_tree_run(tx, pack(runs["b"]["params"])[0], [runs["b"]["packing"].pack(g) for g in runs["b"]["grads"]])
    assert not np.allclose(flat_b, runs["b"]["p"].numpy(), rtol=1e-4)


def test_segments_are_checked_and_named():
    opt = load("lamb")
    rng = np.random.default_rng(0)
    params = random_tree(rng, MODEL_A)
    flat, packing = pack(params)
    g = packing.pack(random_tree(rng, MODEL_A))

    with pytest.raises(pr.BindingError, match=r"step\(\): this flat module \(lamb.*needs segments=.*pack"):
        opt.step(flat, g, opt.init(flat))
    with pytest.raises(pr.BindingError, match=r"update\(\).*needs segments="):
        opt.update(g, opt.init(flat), flat)
    # ids as a plain vector work too, and are range-checked
    p1, _ = opt.step(flat, g, opt.init(flat), segments=packing.segment_ids)
    p2, _ = opt.step(flat, g, opt.init(flat), segments={"segment_ids": packing.segment_ids})
    np.testing.assert_array_equal(p1.numpy(), p2.numpy())
    bad = packing.segment_ids.copy()
    bad[-1] = 4096
    with pytest.raises(pr.BindingError, match=r"4097 tensors but this module was compiled for at most 4096.*--max-segments"):
        opt.step(flat, g, opt.init(flat), segments=bad)
    bad[-1] = -1
    with pytest.raises(pr.BindingError, match=r"holds -1; ids start at 0"):
        opt.step(flat, g, opt.init(flat), segments=bad)
    with pytest.raises(pr.BindingError, match=r"length 5 along dynamic dimension 'n'"):
        opt.step(flat, g, opt.init(flat), segments=np.zeros(5, np.int32))
    with pytest.raises(pr.BindingError, match=r"dtype float32; expected integer ids"):
        opt.step(flat, g, opt.init(flat), segments=np.zeros(flat.size, np.float32))
    many = Packing.of({f"t{i:05d}": np.zeros(()) for i in range(4097)})
    with pytest.raises(pr.BindingError, match=r"4097 tensors .* at most 4096"):
        opt.upload_segments(many)
    with pytest.raises(pr.BindingError, match=r"segments lack \['segment_ids'\]"):
        opt.step(flat, g, opt.init(flat), segments={"row_ids": packing.row_ids})

    # modules that take none refuse them, naming why
    adam = load_adam_flat()
    with pytest.raises(pr.BindingError, match=r"adam \(flat layout\) takes no segments: its transforms do not reduce per tensor.*drop segments="):
        adam.step(flat, g, adam.init(flat), segments=packing)
    tree = load("lamb", Layout.from_tree(params))
    with pytest.raises(pr.BindingError, match=r"takes no segments: a tree layout knows its tensors"):
        tree.step(params, unpack(g, packing), tree.init(params), segments=packing)


def adam_flat_artifact():
    key = ("adam", "flat")
    if key not in _compiled:
        _compiled[key] = compile_optimizer(polaris.optimizers.adam(learning_rate=1e-2), Layout.flat(), name="adam")
    return _compiled[key]


def load_adam_flat():
    return pr.load(adam_flat_artifact().vmfb, device="local-task")


def test_adam_flat_module_is_unchanged():
    """Element-wise optimizers take no segments: same inputs, all state in place."""
    art = adam_flat_artifact()
    m = art.manifest
    assert "segments" not in m and "segments" not in m["groups"]
    assert m["functions"]["update"]["inputs"] == ["grads", "state", "params"]
    assert m["functions"]["step"]["inputs"] == ["params", "grads", "state"]
    step_sig = art.mlir.split("func.func public @step(")[1].split(")")[0]
    assert step_sig.count("tf.aliasing_output") == 1 + 4  # params + (count, mu, nu, learning_rate)
    assert not pr.load(art.vmfb).takes_segments


def test_manifest_records_segments():
    m = load("lamb").manifest
    seg = dict(m.segments)
    notes = seg.pop("notes")
    assert seg == {"leaves": ["segment_ids"], "max": 4096, "reduction": "scatter"}
    # the module says how to sum faster: LAMB only sums, so the aligned form serves it
    assert len(notes) == 1 and "sums per tensor with a scatter over every element" in notes[0]
    assert "--segment-reduction aligned" in notes[0] and "--whole-vector" in notes[0] and "--layout FILE" in notes[0]
    # Adafactor divides by each tensor's element count: aligned cannot serve it, the tree can
    (ada,) = load("adafactor").manifest.segments["notes"]
    assert "aligned" not in ada and "--size N (a tree of block sums" in ada
    assert [s.to_dict() for s in m.group("segments")] == [{"name": "segment_ids", "shape": ["n", 1], "dtype": "int32"}]
    assert m.functions["step"].inputs == ("params", "grads", "state", "segments")
    assert m.functions["update"].inputs == ("grads", "state", "params", "segments")
    assert "segments" not in m.functions["step"].donates
    c = load("centralize-adam").manifest
    assert c.segments == {"leaves": ["row_ids"], "max_rows": 1 << 20}


def test_bounds_and_tree_layout_are_checked_at_compile_time():
    with pytest.raises(LayoutError, match="segments=True needs the flat layout"):
        compile_optimizer(CASES["lamb"](), Layout.from_tree({"w": np.zeros(3, np.float32)}), segments=True)
    with pytest.raises(LayoutError, match="max_segments"):
        compile_optimizer(CASES["lamb"](), Layout.flat(), max_segments=0)


# -- the frontend alone (no compiling) --------------------------------------------------------


def test_helpers_reduce_per_leaf_outside_and_per_segment_inside():
    x = np.arange(1.0, 7.0, dtype=np.float32)
    assert float(tu.per_tensor_norm(x)) == pytest.approx(np.linalg.norm(x))
    ids = np.array([0, 0, 0, 1, 1, 2], np.int32)
    with flat_segments(ids, 8) as ctx:
        norms = np.asarray(tu.per_tensor_norm(x))
        rms = np.asarray(tu.per_tensor_rms(x))
    np.testing.assert_allclose(norms, np.repeat([np.linalg.norm(x[:3]), np.linalg.norm(x[3:5]), 6.0], [3, 2, 1]), rtol=1e-6)
    np.testing.assert_allclose(rms, np.repeat([np.sqrt(np.mean(x[:3] ** 2)), np.sqrt(np.mean(x[3:5] ** 2)), 6.0], [3, 2, 1]), rtol=1e-6)
    assert ctx.used == {"segment_ids"}
    with flat_segments(ids, 8), pytest.raises(ValueError, match=r"leaf has shape \(3,\) but segment_ids has shape \(6,\)"):
        tu.per_tensor_norm(x[:3])
    with flat_segments(row_ids=ids), pytest.raises(ValueError, match="needs segment_ids"):
        tu.per_tensor_norm(x)


@pytest.mark.parametrize("reduction", ["scatter", "tree", "aligned"])
def test_several_sums_equal_one_sum_each(reduction):
    rng = np.random.default_rng(11)
    ids = np.repeat(np.arange(5, dtype=np.int32), [16, 48, 0, 32, 64])  # sorted, one empty segment
    if reduction == "scatter":  # any order, and -1 (dropped)
        ids = rng.permutation(ids)
        ids[:3] = -1
    xs = [rng.standard_normal(ids.shape[0]).astype(np.float32) for _ in range(3)]
    if reduction == "aligned":
        xs, ids = [x.reshape(-1, 16) for x in xs], ids[::16]
    with flat_segments(ids, 8, reduction=reduction, block_sums="scatter") as ctx:
        together = ctx.sums_of(xs)
        apart = [ctx.sums(x) for x in xs]
    flat_ids = np.repeat(ids, 16) if reduction == "aligned" else ids
    for x, a, b in zip(xs, together, apart, strict=True):
        want = np.bincount(flat_ids[flat_ids >= 0], x.reshape(-1)[flat_ids >= 0], minlength=8)
        np.testing.assert_allclose(np.asarray(a), want, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_lamb_of_any_length_scatters_once_per_step():
    """The trust ratio's two norms share one scatter over the elements (``sums_of``): IREE runs
    a scatter one index at a time, so a second one would cost a second pass of them all."""
    tx = CASES["lamb"]()
    n = jax.export.symbolic_shape("n")[0]
    vec, ids = jax.ShapeDtypeStruct((n,), jnp.float32), jax.ShapeDtypeStruct((n, 1), jnp.int32)

    def update(g, p, seg):
        with flat_segments(seg, 4096):
            return tx.update(g, tx.init(p), p)[0]

    text = jax.export.export(jax.jit(update))(vec, vec, ids).mlir_module()
    assert text.count("\"stablehlo.scatter\"(") == 1, text.count("\"stablehlo.scatter\"(")


@pytest.mark.parametrize("n", [100, 5000])
def test_scatter_lanes_sum_the_same(n):
    """Lanes (``_scatter_sum(..., lanes)``) change the order of the sums, not their value; below
    ``SCATTER_LANES_MIN_INDICES`` indices (and above ``SCATTER_LANES_MAX_SEGMENTS`` segments)
    a scatter keeps one accumulator."""
    from polaris._src import segments as S

    rng = np.random.default_rng(n)
    ids = np.sort(rng.integers(-1, 6, n)).astype(np.int32)[:, None]
    x = rng.standard_normal((n, 2)).astype(np.float32)
    one, four = S._scatter_sum(x, ids, 8), S._scatter_sum(x, ids, 8, lanes=4)
    want = np.stack([np.bincount(ids[ids >= 0], x[ids[:, 0] >= 0, k], minlength=8) for k in range(2)], axis=1)
    np.testing.assert_allclose(np.asarray(four), want, rtol=1e-5, atol=1e-5)
    if n < S.SCATTER_LANES_MIN_INDICES:
        np.testing.assert_array_equal(np.asarray(four), np.asarray(one))
    # the lanes' accumulators: (segments + 1) x lanes of them, or one per segment
    m = jax.export.symbolic_shape("m")[0]
    for num, lanes, rows in ((8, 4, 36), (S.SCATTER_LANES_MAX_SEGMENTS + 1, 4, S.SCATTER_LANES_MAX_SEGMENTS + 2)):
        f = jax.jit(lambda v, i, num=num, lanes=lanes: S._scatter_sum(v, i, num, lanes))
        text = jax.export.export(f)(jax.ShapeDtypeStruct((m,), jnp.float32), jax.ShapeDtypeStruct((m, 1), jnp.int32)).mlir_module()
        assert f"tensor<{rows}xf32>" in text


def test_cpu_modules_scatter_in_lanes_and_gpu_modules_do_not(tmp_path):
    from polaris_compiler import CompileOptions, Target
    from polaris_compiler.compile import SCATTER_LANES

    assert SCATTER_LANES > 1
    for target, rows in ((Target.LLVM_CPU, 4097 * SCATTER_LANES), (Target.VULKAN, 4097)):
        temps = tmp_path / target.value
        compile_optimizer(CASES["lamb"](), Layout.flat(), CompileOptions(target=target, save_temps=str(temps)), name="lamb")
        text = (temps / "module.mlir").read_text()
        assert f"tensor<{rows}x2xf32>" in text or f"tensor<{rows}xf32>" in text, target


@pytest.mark.parametrize("case", list(CASES))
def test_eager_flat_with_segments_matches_tree(case):
    tx = CASES[case]()
    rng = np.random.default_rng(5)
    params = random_tree(rng, MODEL_B)
    grads = [random_tree(rng, MODEL_B) for _ in range(5)]
    want, _ = eager_tree_run(tx, params, grads)
    flat, packing = pack(params)

    @jax.jit
    def step(p, g, s, seg, rows):
        with flat_segments(seg, 16, row_ids=rows, num_rows=16):
            u, s = tx.update(g, s, p)
        return polaris.apply_updates(p, u), s

    s = tx.init(jnp.asarray(flat))
    p = flat
    for g in grads:
        p, s = step(p, packing.pack(g), s, packing.segment_ids, packing.row_ids)
    got = packing.unpack(np.asarray(p))
    for (name, x), (_, y) in zip(tree_leaves_with_names(got), tree_leaves_with_names(want), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6, err_msg=f"{case}: {name}")


# -- packing ----------------------------------------------------------------------------------

_names = st.text(alphabet="abcxyz_0", min_size=1, max_size=4)
_shapes = st.lists(st.integers(0, 4), min_size=0, max_size=3).map(tuple)
_trees = st.recursive(
    st.dictionaries(_names, _shapes, min_size=1, max_size=4),
    lambda children: st.dictionaries(_names, children, min_size=1, max_size=3),
    max_leaves=8,
)


def _materialize(shapes, rng):
    if isinstance(shapes, dict):
        return {k: _materialize(v, rng) for k, v in shapes.items()}
    return rng.standard_normal(shapes).astype(np.float32)


@settings(max_examples=60, deadline=None)
@given(_trees, st.integers(0, 2**31 - 1))
def test_pack_unpack_round_trip(shapes, seed):
    tree = _materialize(shapes, np.random.default_rng(seed))
    flat, packing = pack(tree)
    leaves = jax.tree.leaves(tree)
    # JAX's leaf order and names
    assert list(packing.names) == [n for n, _ in tree_leaves_with_names(tree)]
    np.testing.assert_array_equal(flat, np.concatenate([np.ravel(x) for x in leaves]) if leaves else flat)
    back = unpack(flat, packing)
    assert jax.tree.structure(back) == jax.tree.structure(tree)
    for a, b in zip(jax.tree.leaves(back), leaves, strict=True):
        assert a.shape == b.shape
        np.testing.assert_array_equal(a, b)
    # segments: one id per element, tensor i holds size_i elements, contiguous and sorted
    ids = packing.segment_ids
    assert ids.dtype == np.int32 and ids.shape == (packing.size,)
    np.testing.assert_array_equal(np.bincount(ids, minlength=packing.num_segments), [x.size for x in leaves])
    assert np.all(np.diff(ids) >= 0)
    # rows: rank >= 2 tensors give shape[0] rows of prod(shape[1:]) elements; others -1
    rows = packing.row_ids
    for x, start, size in zip(leaves, packing.offsets, packing.sizes, strict=False):
        r = rows[start : start + size]
        if x.ndim < 2:
            assert np.all(r == -1)
        elif size:
            counts = np.bincount(r - r.min())
            assert len(counts) == x.shape[0] and np.all(counts == size // x.shape[0])
    assert rows.max(initial=-1) < packing.num_rows
    assert Packing.from_dict(packing.to_dict()) == packing


def test_pack_refuses_a_different_tree():
    _, packing = pack({"a": np.zeros((2, 2)), "b": np.zeros(3)})
    with pytest.raises(ValueError, match=r"missing \['b'\], unexpected \['c'\]"):
        packing.pack({"a": np.zeros((2, 2)), "c": np.zeros(3)})
    with pytest.raises(ValueError, match=r"leaf 'a' has shape \(4,\), the packing \(2, 2\)"):
        packing.pack({"a": np.zeros(4), "b": np.zeros(3)})
    with pytest.raises(ValueError, match="expected a vector of 7 elements"):
        packing.unpack(np.zeros(6, np.float32))
    with pytest.raises(ValueError, match="holds no arrays"):
        pack({})


@pytest.mark.vulkan
def test_vulkan_llvmpipe_refuses_more_elements_than_workgroups():
    """A segment sum runs one workgroup per element; llvmpipe allows 65535 (docs/targets.md)."""
    from polaris_compiler import CompileOptions, Target
    lavapipe_or_skip("the limit is checked on lavapipe (llvmpipe)")
    art = compile_optimizer(CASES["lamb"](), Layout.flat(), CompileOptions(target=Target.VULKAN, vulkan_target="llvmpipe"), name="lamb")
    opt = pr.load(art.vmfb, device="vulkan")
    rng = np.random.default_rng(0)
    for n in (65_535, 65_536):
        params = {"a": rng.standard_normal(n - 10).astype(np.float32), "b": rng.standard_normal(10).astype(np.float32)}
        flat, packing = pack(params)
        if n <= 65_535:
            p, _ = opt.step(flat, packing.pack(params), opt.init(flat), segments=packing)
            want, _ = eager_tree_run(CASES["lamb"](), params, [params])
            np.testing.assert_allclose(packing.unpack(p)["a"], want["a"], rtol=1e-5, atol=1e-6)
        else:
            with pytest.raises(pr.BindingError, match=r"cannot cover 65536 elements on a Vulkan llvmpipe device.*65535 workgroups"):
                opt.upload_segments(packing)


def test_cli_sets_the_bound_and_inspect_shows_it(tmp_path):
    from click.testing import CliRunner

    from polaris.cli.__main__ import cli

    out = tmp_path / "lamb.vmfb"
    runner = CliRunner()
    r = runner.invoke(cli, ["compile", "lamb", "--max-segments", "64", "-o", str(out)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "note: lamb: a flat module of any length sums per tensor with a scatter" in r.stderr
    seg = pr.inspect_module(out).segments
    assert {k: v for k, v in seg.items() if k != "notes"} == {"leaves": ["segment_ids"], "max": 64, "reduction": "scatter"}
    text = runner.invoke(cli, ["inspect", str(out)], catch_exceptions=False).output
    assert "takes segments: segment_ids (at most 64 tensors" in text
    assert f"note: {seg['notes'][0]}" in text
    assert "step(params, grads, state, segments)" in text
    r = runner.invoke(cli, ["compile", "lamb", "--max-segments", "0", "-o", str(out)])
    assert r.exit_code != 0 and "--max-segments" in r.output


def test_zero_padding_for_gpu_vector_loads_is_inert(modules):
    """docs/flat-modules.md: a model packed with ``pack(params, align=128)`` (so that a GPU module
    of its length loads vectors) steps exactly like the same model packed tightly, and its padding
    stays zero (AdamW: moments, weight decay)."""
    opt = modules.load("adamw", dict(learning_rate=0.05, decay=0.1))
    rng = np.random.default_rng(5)
    params = _materialize(MODEL_A, rng)
    grads = [_materialize(MODEL_A, rng) for _ in range(4)]
    results = {}
    for align in (1, 128):
        flat, packing = pack(params, align=align)
        state = opt.init(flat)
        p = flat
        for g in grads:
            p, state = opt.step(p, packing.pack(g), state)
        got = np.asarray(p.numpy())
        assert got.size == packing.size == (sum(x.size for x in jax.tree.leaves(params)) if align == 1 else 3 * 128)
        padding = np.ones(got.size, bool)
        for start, size in zip(packing.offsets, packing.sizes, strict=False):
            padding[start : start + size] = False
        np.testing.assert_array_equal(got[padding], 0.0)
        results[align] = packing.unpack(got)
    for a, b in zip(jax.tree.leaves(results[1]), jax.tree.leaves(results[128]), strict=True):
        np.testing.assert_array_equal(a, b)
