"""Compiled modules (llvm-cpu, through polaris_runtime) vs eager JAX vs Optax, over many steps."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import polaris
from polaris._src import registry
import polaris_runtime as pr
from polaris_compiler import Layout, compile_optimizer

TREE = {
    "w": (3, 4),
    "b": (4,),
    "sub": {"k": (2, 3, 2), "deep": {"v": (5,)}},
}


def random_tree(rng, shapes=TREE, scale=1.0):
    if isinstance(shapes, dict):
        return {k: random_tree(rng, v, scale) for k, v in shapes.items()}
    return (rng.standard_normal(shapes) * scale).astype(np.float32)


def tree_layout():
    return Layout.from_tree(random_tree(np.random.default_rng(0)))


def run_jitted(tx, params, grads_seq, apply):
    """Reference: a transform's init/update run eagerly (jitted) in JAX; params after each step."""
    state = tx.init(params)

    @jax.jit
    def step(p, g, s):
        u, s = tx.update(g, s, p)
        return apply(p, u), s

    out = []
    p = params
    for g in grads_seq:
        p, state = step(p, g, state)
        out.append(jax.tree.map(np.asarray, p))
    return out, state


def eager_run(tx, params, grads_seq):
    return run_jitted(tx, params, grads_seq, polaris.apply_updates)


def optax_run(otx, params, grads_seq):
    return run_jitted(otx, params, grads_seq, optax.apply_updates)[0]


def compiled_run(opt, params, grads_seq, segments=None):
    state = opt.init(params)
    out = []
    p = params
    for g in grads_seq:
        p, state = opt.step(p, g, state, segments=segments)
        out.append(p.numpy())
    return out, state


def assert_trees_close(a, b, rtol=1e-5, atol=1e-6, what=""):
    fa, fb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(fa) == len(fb)
    for x, y in zip(fa, fb, strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol, err_msg=what)


def sched_exp():
    return polaris.schedules.exponential_decay(1e-2, decay_rate=0.9, transition_steps=10)


# name, polaris options, optax transform
CASES = {
    "adam": ("adam", dict(learning_rate=1e-2, eps_root=0.0), lambda: optax.adam(1e-2)),
    "adamw": ("adamw", dict(learning_rate=1e-2, eps_root=0.0, decay=1e-2), lambda: optax.adamw(1e-2, weight_decay=1e-2)),
    "sgd": ("sgd", dict(learning_rate=1e-2), lambda: optax.sgd(1e-2)),
    "sgd-momentum": ("sgd", dict(learning_rate=1e-2, momentum=0.9), lambda: optax.sgd(1e-2, momentum=0.9)),
    "sgd-nesterov": ("sgd", dict(learning_rate=1e-2, momentum=0.9, nesterov=True), lambda: optax.sgd(1e-2, momentum=0.9, nesterov=True)),
    "adam-schedule": (
        "adam",
        dict(learning_rate=sched_exp(), eps_root=0.0),
        lambda: optax.adam(optax.exponential_decay(1e-2, transition_steps=10, decay_rate=0.9)),
    ),
    "sgd-cosine": (
        "sgd",
        dict(learning_rate=polaris.schedules.cosine_decay(0.1, decay_steps=50), momentum=0.5),
        lambda: optax.sgd(optax.cosine_decay_schedule(0.1, 50), momentum=0.5),
    ),
}
STEPS = 100


@pytest.mark.parametrize("case", list(CASES))
def test_step_matches_eager_jax_and_optax(case, modules):
    name, opts, make_optax = CASES[case]
    rng = np.random.default_rng(1)
    params = random_tree(rng)
    grads = [random_tree(rng) for _ in range(STEPS)]
    opt = modules.load(name, opts, tree_layout())
    got, state = compiled_run(opt, params, grads)
    ref, ref_state = eager_run(registry.get(name).build(**opts), params, grads)
    oref = optax_run(make_optax(), params, grads)
    for i in (0, 9, 49, STEPS - 1):
        assert_trees_close(got[i], ref[i], what=f"{case}: compiled vs eager JAX at step {i + 1}")
        assert_trees_close(got[i], oref[i], what=f"{case}: compiled vs optax at step {i + 1}")
    # the state too, leaf by leaf, in ABI order
    assert_trees_close(state.leaves(), jax.tree.leaves(ref_state), what=f"{case}: state")
    # the params really moved
    assert not np.allclose(got[-1]["w"], params["w"])


@pytest.mark.parametrize("case", ["adam", "sgd-momentum", "adam-schedule"])
def test_update_matches_eager_jax(case, modules):
    name, opts, _ = CASES[case]
    rng = np.random.default_rng(2)
    params = random_tree(rng)
    opt = modules.load(name, opts, tree_layout())
    tx = registry.get(name).build(**opts)
    state = opt.init(params)
    ref_state = tx.init(params)
    upd = jax.jit(tx.update)
    for i in range(STEPS):
        g = random_tree(rng)
        updates, state = opt.update(g, state, params)
        ref_u, ref_state = upd(g, ref_state, params)
        if i % 25 == 0 or i == STEPS - 1:
            assert_trees_close(updates.numpy(), ref_u, what=f"{case}: updates at step {i + 1}")
    assert_trees_close(state.leaves(), jax.tree.leaves(ref_state), what=f"{case}: state")


def test_flat_module_serves_any_length(modules):
    """`polaris compile adam` with no layout: one module for every model size."""
    opt = modules.load("adam", dict(learning_rate=1e-2, eps_root=0.0))
    otx = optax.adam(1e-2)
    for n in (1, 1000, 65_537):
        rng = np.random.default_rng(n)
        p0 = rng.standard_normal(n).astype(np.float32)
        grads = [rng.standard_normal(n).astype(np.float32) for _ in range(20)]
        got, state = compiled_run(opt, p0, grads)
        ref = optax_run(otx, p0, grads)
        np.testing.assert_allclose(got[-1], ref[-1], rtol=1e-5, atol=1e-6, err_msg=f"n={n}")
        assert state["0/mu"].shape == (n,)
        assert int(state["0/count"]) == 20


def test_hyperparameter_changes_without_recompiling(modules):
    opt = modules.load("sgd", dict(learning_rate=0.1))
    assert opt.hyperparameters == pytest.approx({"learning_rate": 0.1})
    p = np.ones(4, np.float32)
    g = np.ones(4, np.float32)
    state = opt.init(p)
    p1, state = opt.step(p, g, state)
    np.testing.assert_allclose(p1.numpy(), 0.9, rtol=1e-6)
    opt.set_hyperparameter(state, "learning_rate", 0.5)
    assert opt.get_hyperparameter(state, "learning_rate") == pytest.approx(0.5)
    p2, state = opt.step(p1, g, state)
    np.testing.assert_allclose(p2.numpy(), 0.4, rtol=1e-6)


OPTIMIZERS = registry.names()


@pytest.mark.parametrize("layout_kind", ["tree", "flat"])
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_registered_optimizer_compiles_and_matches_eager(name, layout_kind, modules):
    """Every optimizer in the registry, compiled for llvm-cpu, against the same transform in JAX."""
    spec = registry.get(name)
    opts = dict(spec.example)
    rng = np.random.default_rng(3)
    if layout_kind == "tree":
        params = random_tree(rng)
        layout = tree_layout()
        grads = [random_tree(rng) for _ in range(20)]
    else:
        params = rng.standard_normal(37).astype(np.float32)
        layout = None
        grads = [rng.standard_normal(37).astype(np.float32) for _ in range(20)]
    opt = modules.load(name, opts, layout)
    # a flat module that reduces per tensor takes the tensor boundaries; one segment = the
    # whole vector, as the eager reference sees it (tests/test_flat_segments.py: several)
    segments = np.zeros(37, np.int32) if opt.takes_segments else None
    got, state = compiled_run(opt, params, grads, segments=segments)
    ref, ref_state = eager_run(spec.build(**opts), params, grads)
    for i in (0, 4, 19):
        assert_trees_close(got[i], ref[i], rtol=2e-5, atol=2e-6, what=f"{name}/{layout_kind} step {i + 1}")
    assert_trees_close(state.leaves(), jax.tree.leaves(ref_state), rtol=2e-5, atol=2e-6, what=f"{name}/{layout_kind}: state")
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(got[-1]))


def test_no_write_after_read_hazard_in_place():
    """Regression: Lion reads the old momentum for the step and writes the new one on another
    path; with the momentum written in place IREE 3.13 wrote it first and ~0.4% of elements took
    the wrong sign. The compiler keeps only hazard-free in-place outputs (hazards.py)."""
    from polaris_compiler.hazards import safe_aliases

    tx = registry.get("lion").build(learning_rate=1e-3)
    n = 100_000
    rng = np.random.default_rng(5)
    p0 = rng.standard_normal(n).astype(np.float32)
    grads = [rng.standard_normal(n).astype(np.float32) for _ in range(20)]
    art = compile_optimizer(tx, Layout.flat(), name="lion")
    got, _ = compiled_run(pr.load(art.vmfb), p0, grads)
    ref, _ = eager_run(tx, p0, grads)
    np.testing.assert_array_equal(got[-1], ref[-1])

    # Lion's momentum is anchored on the parameter update, so it is written in place too
    step_sig = art.mlir.split("func.func public @step(", 1)[1].split(")", 1)[0]
    assert step_sig.count("tf.aliasing_output") == 4, step_sig

    # the analysis itself: x is read by the output's producer (safe) and by another path (not)
    spec = jax.ShapeDtypeStruct((4,), jnp.float32)
    safe = safe_aliases(lambda x, y: (x * 2, y + x), [spec, spec], {0: 0, 1: 1})
    assert safe == {1: 1}
    assert safe_aliases(lambda x: (x + 1,), [spec], {0: 0}) == {0: 0}


def test_anchoring_makes_an_alias_safe_and_keeps_every_value():
    """``anchored``: the new momentum gets a dependency on the parameter update that changes no
    value (signed zeros, infinities and large numbers included); a scalar cannot be anchored."""
    from polaris_compiler.hazards import anchored, safe_aliases

    def lion_like(p, m, g):
        return p - 0.1 * jnp.sign(0.9 * m + 0.1 * g), 0.99 * m + 0.01 * g

    spec = jax.ShapeDtypeStruct((6,), jnp.float32)
    assert safe_aliases(lion_like, [spec] * 3, {0: 0, 1: 1}) == {0: 0}
    fn, safe = anchored(lion_like, [spec] * 3, {0: 0, 1: 1})
    assert safe == {0: 0, 1: 1} and fn is not lion_like
    p = jnp.array([0.0, -0.0, np.inf, -np.inf, 3e38, 1.0], jnp.float32)
    m = jnp.array([-0.0, 0.0, 1.0, -2.0, -3e38, 1e-30], jnp.float32)
    g = jnp.array([0.0, -0.0, 5.0, 1.0, 3e38, -1e-30], jnp.float32)
    for a, b in zip(fn(p, m, g), lion_like(p, m, g), strict=True):
        np.testing.assert_array_equal(np.signbit(a), np.signbit(b))
        np.testing.assert_array_equal(a, b)
    # nothing to anchor on: a scalar result read elsewhere stays a fresh buffer
    s = jax.ShapeDtypeStruct((), jnp.float32)
    def counter(c, x):
        return c + 1, x * c

    fn2, safe2 = anchored(counter, [s, spec], {0: 0})
    assert safe2 == {} and fn2 is counter


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_flat_modules_keep_f32_state(dtype):
    """f16/bf16 parameters, f32 moments: the compiled module equals the same math in JAX."""
    import ml_dtypes

    np_dtype = {"float16": np.float16, "bfloat16": ml_dtypes.bfloat16}[dtype]
    tx = registry.get("adam").build(learning_rate=1e-2)
    opt = pr.load(compile_optimizer(tx, Layout.flat(dtype), name="adam").vmfb)
    assert opt.manifest.params[0].dtype == dtype
    assert {s.name: s.dtype for s in opt.manifest.state}["0/mu"] == "float32"
    rng = np.random.default_rng(9)
    p0 = rng.standard_normal(257).astype(np_dtype)
    grads = [rng.standard_normal(257).astype(np_dtype) for _ in range(10)]
    got, state = compiled_run(opt, p0, grads)
    ref, _ = eager_run(tx, jnp.asarray(p0), [jnp.asarray(g) for g in grads])
    assert got[-1].dtype == np_dtype
    # each step rounds the parameters to the half type, and XLA and IREE may round a value one
    # unit in the last place apart; over 10 steps that stays within ~2 ulp (absolute: near 0)
    ulp = {"float16": 2.0**-10, "bfloat16": 2.0**-7}[dtype]
    np.testing.assert_allclose(np.asarray(got[-1], np.float32), np.asarray(ref[-1], np.float32), rtol=2 * ulp, atol=0.05 * ulp)
    moved = np.abs(np.asarray(got[-1], np.float32) - np.asarray(p0, np.float32)).mean()
    assert moved > 10 * ulp * 0.01  # the parameters really moved
    assert state["0/nu"].dtype == np.float32
