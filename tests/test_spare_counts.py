"""Spare counts (``CompileOptions.spare_counts``; docs/performance.md, seventeenth pass): ``step``
writes each step counter's new value into a spare buffer the caller passes, and the runtime swaps
the two. On by default for async CUDA modules; here forced on for the CPU, where the runtime's
every call path (checked, planned, the two-phase steady state) is exercised and must step exactly
like the module without them."""

from __future__ import annotations

import numpy as np
import pytest

import polaris
import polaris_runtime as pr
from polaris_compiler import CompileOptions, Layout, Target
from polaris_runtime import device as dev
from polaris_runtime.errors import ModuleError

N = 1000


def test_the_default_is_on_for_async_cuda_modules_only():
    on = CompileOptions(target=Target.CUDA, asynchronous=True).resolved()
    assert on.spare_counts is True
    for o in (CompileOptions(target=Target.CUDA), CompileOptions(asynchronous=True), CompileOptions(target=Target.VULKAN, asynchronous=True),
              CompileOptions(target=Target.CUDA, extra_targets=(Target.LLVM_CPU,), asynchronous=True)):
        assert o.resolved().spare_counts is False, o
    assert CompileOptions(spare_counts=True).resolved().spare_counts is True


@pytest.mark.parametrize("name", ["adam", pytest.param("lamb", marks=pytest.mark.slow)])  # (LAMB's counter: also every_optimizer[lamb])
def test_the_manifest_names_the_counters_and_needs_schema_4(modules, name):
    art = modules.artifact(name, dict(learning_rate=0.01), Layout.flat(size=N), spare_counts=True)
    step = art.manifest["functions"]["step"]
    assert step["spares"] == ["0/count"]  # (LAMB: its scale_by_adam's counter, the chain's first state)
    assert art.manifest["groups"]["state"][0] == {"name": "0/count", "shape": [], "dtype": "int32"}
    assert art.manifest["schema_version"] == 4
    assert "spares" not in art.manifest["functions"]["update"]  # update writes them in place, as before
    plain = modules.artifact(name, dict(learning_rate=0.01), Layout.flat(size=N))
    assert "spares" not in plain.manifest["functions"]["step"] and plain.manifest["schema_version"] < 4


def test_a_transform_without_a_counter_gets_no_spares(modules):
    art = modules.artifact("sgd", dict(learning_rate=0.01, momentum=0.9), Layout.flat(size=N), spare_counts=True)
    assert "spares" not in art.manifest["functions"]["step"] and art.manifest["schema_version"] < 4


def _vectors(seed: int, n_grads: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Parameters and ``n_grads`` gradients of length ``N``, standard normal."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal(N).astype(np.float32), [rng.standard_normal(N).astype(np.float32) for _ in range(n_grads)]


def _run(opt, p, grads, steps, interleave=None):
    """``steps`` steps through the runtime's API (checked first call, then the plans), with a second
    state stepped on the same module every ``interleave`` steps; the parameters and counts."""
    gd = [dev.upload(opt.device, g) for g in grads]
    params, state = [dev.upload(opt.device, p.copy())], opt.init(p)
    other = ([dev.upload(opt.device, p.copy())], opt.init(p))
    counts = []
    for k in range(steps):
        params, state = opt.step(params, gd[k % len(gd)], state)
        if interleave and k % interleave == interleave - 1:
            other = opt.step(other[0], gd[0], other[1])
        if k % 9 == 4:
            counts.append(opt.step_count(state))  # a read mid-loop: the plan goes on
    opt.wait()
    if not interleave:
        return np.asarray(params.numpy()), opt.step_count(state)
    return np.asarray(params.numpy()), opt.step_count(state), np.asarray(other[0].numpy()), opt.step_count(other[1]), counts


# async: where spare counts are on by default (CUDA); a synchronous module with them forced on is slow
@pytest.mark.parametrize("asynchronous", [pytest.param(False, marks=pytest.mark.slow), True], ids=["sync", "async"])
def test_steps_exactly_like_the_module_without_them(modules, asynchronous):
    p, grads = _vectors(7, 3)
    lay = Layout.flat(size=N)
    got = {}
    for spares in (False, True):
        opt = modules.load("adam", dict(learning_rate=0.01), lay, asynchronous=asynchronous, spare_counts=spares)
        assert bool(opt._spares) is spares
        got[spares] = _run(opt, p, grads, 40, interleave=7)
        if spares:
            opt2 = modules.load("adam", dict(learning_rate=0.01), lay, asynchronous=asynchronous, spare_counts=True)
            plain_loop = _run(opt2, p, grads, 40)
            assert opt2._plans["step"].fast is not None  # the two-phase steady state ran
    np.testing.assert_array_equal(got[True][0], got[False][0])
    np.testing.assert_array_equal(got[True][2], got[False][2])
    assert got[True][1] == got[False][1] == 40 and got[True][3] == got[False][3] == 5
    assert got[True][4] == got[False][4] == [5, 14, 23, 32]
    assert plain_loop[1] == 40  # (without the interleaved state: its own numbers, checked below)
    np.testing.assert_array_equal(plain_loop[0], _run(modules.load("adam", dict(learning_rate=0.01), lay, asynchronous=asynchronous), p, grads, 40)[0])
    assert np.abs(got[True][0] - p).max() > 1e-2  # it did step


def test_the_count_moves_between_two_buffers_and_the_spare_is_never_a_live_leaf(modules):
    opt = modules.load("adam", dict(learning_rate=0.01), Layout.flat(size=N), spare_counts=True)
    g = dev.upload(opt.device, np.ones(N, np.float32))
    params, state = [dev.upload(opt.device, np.zeros(N, np.float32))], opt.init(np.zeros(N, np.float32))
    seen = set()
    for _ in range(6):
        params, state = opt.step(params, g, state)
        count_buf = state._pristine_views()[0].get_buffer().ref
        spare_buf = opt._spares["step"][0].get_buffer().ref
        assert count_buf != spare_buf  # the next call writes the spare: never the live count
        seen.add(repr(count_buf))
    assert len(seen) == 2 and opt.step_count(state) == 6


def test_checkpoints_round_trip(modules, tmp_path):
    lay = Layout.flat(size=N)
    opt = modules.load("adam", dict(learning_rate=0.01), lay, spare_counts=True)
    rng = np.random.default_rng(1)
    p = rng.standard_normal(N).astype(np.float32)
    g = dev.upload(opt.device, rng.standard_normal(N).astype(np.float32))
    params, state = [dev.upload(opt.device, p)], opt.init(p)
    for _ in range(5):
        params, state = opt.step(params, g, state)
    opt.save_checkpoint(tmp_path / "c.safetensors", state, params)
    s2, p2 = opt.restore_checkpoint(tmp_path / "c.safetensors")
    assert opt.step_count(s2) == 5
    a = opt.step(params, g, state)
    b = opt.step(p2, g, s2)
    np.testing.assert_array_equal(np.asarray(a[0].numpy()), np.asarray(b[0].numpy()))
    assert opt.step_count(a[1]) == opt.step_count(b[1]) == 6


def test_a_manifest_naming_a_bad_spare_is_refused():
    from polaris_runtime.manifest import Manifest

    base = {
        "schema": "polaris-iree/manifest", "schema_version": 4, "kind": "optimizer", "name": "x",
        "groups": {"params": [{"name": "w", "shape": [4], "dtype": "float32"}],
                   "state": [{"name": "count", "shape": [], "dtype": "int32"}, {"name": "mu", "shape": [4], "dtype": "float32"}]},
        "functions": {"step": {"inputs": ["params", "grads", "state"], "outputs": ["params", "state"],
                               "donates": ["params", "state"], "spares": ["count"]}},
    }
    assert Manifest.from_dict(base).functions["step"].spares == ("count",)
    for leaf, why in (("mu", "not an int32 scalar"), ("nope", "not a state leaf")):
        base["functions"]["step"]["spares"] = [leaf]
        with pytest.raises(ModuleError, match=why):
            Manifest.from_dict(base)


def test_the_c_header_lists_them(modules):
    from polaris_runtime.cheader import c_header
    from polaris_runtime.manifest import Manifest

    art = modules.artifact("adam", dict(learning_rate=0.01), Layout.flat(size=N), spare_counts=True)
    h = c_header(Manifest.from_dict(art.manifest))
    assert '#define POLARIS_STEP_NUM_SPARES 1' in h and '#define POLARIS_STEP_SPARE_0 "0/count"' in h
    assert "SPARE COUNTS (schema version 4)" in h and "POLARIS_UPDATE_NUM_SPARES" not in h
    plain = c_header(Manifest.from_dict(modules.artifact("adam", dict(learning_rate=0.01), Layout.flat(size=N)).manifest))
    assert "SPARE" not in plain


def test_the_cli_compiles_and_inspects_them(tmp_path):
    from click.testing import CliRunner

    from polaris.cli.__main__ import cli

    runner = CliRunner()
    res = runner.invoke(cli, ["compile", "adam", "--size", "64", "--spare-counts", "--no-cache", "-o", str(tmp_path / "a.vmfb")])
    assert res.exit_code == 0, res.output
    m = pr.inspect_module(tmp_path / "a.vmfb")
    assert m.schema_version == 4 and m.functions["step"].spares == ("0/count",)
    res = runner.invoke(cli, ["inspect", str(tmp_path / "a.vmfb")])
    assert res.exit_code == 0 and "spare counts: step writes 0/count" in res.output, res.output
    res = runner.invoke(cli, ["compile", "adam", "--size", "64", "--target", "cuda", "--async", "--no-spare-counts", "--no-cache",
                              "-o", str(tmp_path / "b.vmfb")])
    assert res.exit_code == 0, res.output
    assert pr.inspect_module(tmp_path / "b.vmfb").functions["step"].spares == ()


TREE = {"w": (3, 4), "b": (4,), "sub": {"k": (2, 3, 2)}}
FAST = ("lamb", "lion")  # a trust ratio, an anchored momentum; the rest (Adafactor too) are slow


def _tree_steps(opt, params, grads, steps=8):
    p, s = params, opt.init(params)
    for k in range(steps):
        p, s = opt.step(p, grads[k % len(grads)], s)
    return p.numpy(), s.numpy()


def _every_optimizer():
    from polaris._src import registry

    return [pytest.param(n, marks=() if n in FAST else pytest.mark.slow) for n in registry.names()]


@pytest.mark.parametrize("name", _every_optimizer())
def test_every_optimizer_steps_alike_with_them(modules, name):
    """Every registered optimizer's tree module, with and without spare counts: the same
    parameters and state, bit for bit, after 8 steps (the counters recognised or not)."""
    rng = np.random.default_rng(5)

    def tree(shapes, scale=1.0):
        return {k: tree(v, scale) if isinstance(v, dict) else (rng.standard_normal(v) * scale).astype(np.float32) for k, v in shapes.items()}

    params = tree(TREE)
    grads = [tree(TREE, 0.1) for _ in range(3)]
    lay = Layout.from_tree(params)
    got = {}
    for spares in (False, True):
        opt = modules.load(name, {}, lay, spare_counts=spares)
        got[spares] = _tree_steps(opt, params, grads)
        if spares:
            counters = opt.manifest.functions["step"].spares
    flat = lambda t: {k: v for k, v in pr.flatten_names(t).items()} if isinstance(t, dict) else {"": t}  # noqa: E731
    for part in (0, 1):
        a, b = flat(got[False][part]), flat(got[True][part])
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=f"{name} {k}")
    for c in counters:  # a recognised counter counted every step
        assert int(np.asarray(flat(got[True][1])[c])) == 8


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_threads_sharing_a_module_keep_their_own_counts(modules, asynchronous):
    """Two loops on one module in two threads, the interpreter switching as often as it can: the
    module's one set of spares is read and swapped under its lock, so neither loop ever writes
    its count into a buffer the other's state holds."""
    from _threads import race

    opt = modules.load("adam", dict(learning_rate=0.01), Layout.flat(size=N), asynchronous=asynchronous, spare_counts=True)

    def loop(k, steps=120):
        p = np.linspace(-1, 1, N, dtype=np.float32) * (k + 1)
        params, state = [dev.upload(opt.device, p)], opt.init(p)
        g = dev.upload(opt.device, np.full(N, 0.1 * (k + 1), np.float32))
        for _ in range(steps + 7 * k):  # different lengths: different counts
            params, state = opt.step(params, g, state)
        return np.asarray(params.numpy()), opt.step_count(state)

    sequential = [loop(0), loop(1)]
    got = race(loop)
    for (a, ca), (b, cb) in zip(sequential, got, strict=True):
        np.testing.assert_array_equal(a, b)
        assert ca == cb
    assert [c for _, c in got] == [120, 127]


def test_a_loop_that_sets_hyperparameters_and_mixes_update_with_step_steps_alike(modules):
    """The two-phase steady state meets a state changed in place (a learning rate set between
    steps), ``update`` (whose count stays in place) and a schedule read from the count: the same
    numbers as the module without spare counts."""
    p0, gs = _vectors(11, 2)
    lay = Layout.flat(size=N)
    got = {}
    for spares in (False, True):
        opt = modules.load("adam", dict(learning_rate=polaris.schedules.cosine_decay(0.05, decay_steps=40)), lay, spare_counts=spares)
        tuned = modules.load("adam", dict(learning_rate=0.05), lay, spare_counts=spares)
        g = [dev.upload(opt.device, x) for x in gs]
        params, state = [dev.upload(opt.device, p0)], opt.init(p0)
        rates = []
        for k in range(25):  # (the last one a step: params a Tree)
            if k % 6 == 5:  # update, then apply by hand, then on with step
                u, state = opt.update(g[k % 2], state, params)
                params = [dev.upload(opt.device, np.asarray(params.numpy()) + np.asarray(u.numpy()))]
            else:
                params, state = opt.step(params, g[k % 2], state)
            rates.append(opt.current_learning_rate(state))
        t_params, t_state = [dev.upload(tuned.device, p0)], tuned.init(p0)
        for k in range(12):
            if k == 6:
                t_state = tuned.set_hyperparameter(t_state, "learning_rate", 0.01)
            t_params, t_state = tuned.step(t_params, g[k % 2], t_state)
        got[spares] = (np.asarray(params.numpy()), opt.step_count(state), rates, np.asarray(t_params.numpy()),
                       tuned.get_hyperparameter(t_state, "learning_rate"), tuned.step_count(t_state))
    a, b = got[False], got[True]
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[3], b[3])
    assert a[1] == b[1] == 25 and a[5] == b[5] == 12
    assert a[2] == b[2] and a[2][0] > a[2][-1]  # the schedule read the same counts, and decayed
    assert a[4] == b[4] == pytest.approx(0.01)
