"""The step plan: a repeated ``step`` skips the checks it already made, and only those.

``Optimizer.step`` remembers the Trees it returned and the layout of the gradients it checked;
a call with exactly those Trees and gradients of that layout goes straight to IREE. These tests
pin down that it engages, that its results are bit-identical to the checked path, and that every
change it cannot vouch for (another shape or dtype, a consumed tree, a hyperparameter set, host
arrays, segments) still goes through the checks and their errors.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

import polaris_runtime as pr
from polaris_compiler import Layout
from polaris_runtime import device as dev
from polaris_runtime.module import Module

N = 96


def _grads(i: int, n: int = N) -> np.ndarray:
    return (np.cos(np.arange(n, dtype=np.float32) * 0.21 + i) * 0.5).astype(np.float32)


@pytest.fixture(scope="module")
def adam(modules):
    return modules.load("adam", dict(learning_rate=0.05))


@pytest.fixture()
def checked_calls(monkeypatch):
    """Counts calls through the checked path (``Module._call``) for ``step``."""
    seen = []
    orig = Module._call

    def call(self, fname, groups):
        if fname in ("step", "update"):
            seen.append(fname)
        return orig(self, fname, groups)

    monkeypatch.setattr(Module, "_call", call)
    return seen


def _host_loop(opt, steps: int, n: int = N):
    p, s = np.linspace(-1, 1, n, dtype=np.float32), None
    s = opt.init(p)
    for i in range(steps):
        p, s = opt.step(p, _grads(i, n), s)  # numpy grads: the checked path every time
    return p.numpy(), s.leaves()


def test_plan_engages_and_matches_the_checked_path_bit_for_bit(adam, checked_calls):
    ref_p, ref_s = _host_loop(adam, 25)
    checked_calls.clear()
    p = np.linspace(-1, 1, N, dtype=np.float32)
    s = adam.init(p)
    for i in range(25):
        g = [dev.upload(adam.device, _grads(i))]  # fresh device grads each step, as a loss module gives
        p, s = adam.step(p, g, s)
    assert len(checked_calls) == 1, "only the first step should go through the checked path"
    assert adam._plans["step"].fast is not None  # the steady state: argument refs made once
    np.testing.assert_array_equal(p.numpy(), ref_p)
    for a, b in zip(s.leaves(), ref_s, strict=True):
        np.testing.assert_array_equal(a, b)
    assert adam.step_count(s) == 25


def test_same_gradient_arrays_every_step(adam, checked_calls):
    g = [dev.upload(adam.device, _grads(0))]
    p = np.linspace(-1, 1, N, dtype=np.float32)
    s = adam.init(p)
    for _ in range(10):
        p, s = adam.step(p, g, s)
    assert len(checked_calls) == 1
    plan = adam._plans["step"]
    assert plan.aliased is True  # adam's step writes params and state in place ...
    views = p._views
    p, s = adam.step(p, g, s)
    assert p._views is views  # ... so its results are the argument views, not read back
    p, s = adam.step(p, [dev.upload(adam.device, _grads(0))], s)  # fresh grads, same values
    ref = np.linspace(-1, 1, N, dtype=np.float32)
    rs = adam.init(ref)
    for _ in range(12):
        ref, rs = adam.step(ref, _grads(0), rs)
    np.testing.assert_array_equal(p.numpy(), ref.numpy())
    for a, b in zip(s.leaves(), rs.leaves(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_kept_argument_list_follows_the_gradient_arrays(adam, checked_calls):
    """A synchronous module keeps the call's argument list while the gradients are the very same
    arrays (double-buffered gradients, as a C host or a loss module with donated outputs gives
    them); a switch to other arrays builds a new one. Results stay bit-identical to the checked
    path for any order of switches."""
    bufs = [[dev.upload(adam.device, _grads(k + 3))] for k in range(2)]
    order = [0, 0, 0, 0, 1, 1, 0, 1, 0, 0, 1]
    p = np.linspace(-1, 1, N, dtype=np.float32)
    s = adam.init(p)
    lists = []
    for k in order:
        p, s = adam.step(p, bufs[k], s)
        plan = adam._plans["step"]
        lists.append(None if plan.kept is None else plan.kept[1])
    assert len(checked_calls) == 1
    # kept in the steady state (from the third step); the same list while the gradients stay,
    # a new one on each switch
    assert lists[2] is not None
    assert lists[2] is lists[3] and lists[4] is lists[5] and lists[8] is lists[9]
    assert lists[3] is not lists[4] and lists[5] is not lists[6] and lists[9] is not lists[10]
    ref = np.linspace(-1, 1, N, dtype=np.float32)
    rs = adam.init(ref)
    for k in order:
        ref, rs = adam.step(ref, _grads(k + 3), rs)  # host grads: the checked path every time
    np.testing.assert_array_equal(p.numpy(), ref.numpy())
    for a, b in zip(s.leaves(), rs.leaves(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_update_keeps_its_argument_list_per_gradient_arrays(adam):
    """``update``'s lean path keeps its argument list the same way; updates follow the switches."""
    bufs = [[dev.upload(adam.device, _grads(k + 7))] for k in range(2)]
    p0 = np.linspace(-1, 1, N, dtype=np.float32)
    order, s, got, lists = [0, 0, 0, 0, 1, 1, 0, 1], adam.init(p0), [], []
    for k in order:
        u, s = adam.update(bufs[k], s)
        got.append(u)
        lists.append(adam._plans["update"].kept)
    assert lists[2][1] is lists[3][1] and lists[4][1] is lists[5][1]
    assert lists[3][1] is not lists[4][1] and lists[5][1] is not lists[6][1]
    rs = adam.init(p0)
    for k, u in zip(order, got, strict=True):
        ru, rs = adam.update(_grads(k + 7), rs)  # host grads: the checked path
        np.testing.assert_array_equal(u.numpy(), ru.numpy())


def test_a_donated_tree_is_still_refused(adam):
    g = [dev.upload(adam.device, _grads(0))]
    p = np.zeros(N, np.float32)
    s0 = adam.init(p)
    p1, s1 = adam.step(p, g, s0)
    p2, s2 = adam.step(p1, g, s1)  # planned
    with pytest.raises(pr.ConsumedError, match="donated to step"):
        adam.step(p1, g, s2)
    with pytest.raises(pr.ConsumedError, match="donated to step"):
        adam.step(p2, g, s1)


@pytest.mark.parametrize(
    "bad, match",
    [
        (lambda d: [dev.upload(d, np.zeros(N, np.float64))], "dtype float64"),
        (lambda d: [dev.upload(d, np.zeros(N + 1, np.float32))], "dynamic dimension"),
        (lambda d: [dev.upload(d, np.zeros((N, 1), np.float32))], "shape"),
        (lambda d: [], "has 0 arrays"),
    ],
)
def test_gradients_of_another_layout_go_through_the_checks(adam, bad, match):
    g = [dev.upload(adam.device, _grads(0))]
    p, s = adam.step(np.zeros(N, np.float32), g, adam.init(np.zeros(N, np.float32)))
    p, s = adam.step(p, g, s)  # planned
    with pytest.raises(pr.BindingError, match=match):
        adam.step(p, bad(adam.device), s)
    # nothing was consumed by the refused call: the loop goes on
    p, s = adam.step(p, g, s)
    assert adam.step_count(s) == 3


def test_a_hyperparameter_set_between_steps_is_used(adam):
    g = [dev.upload(adam.device, _grads(0))]
    p, s = adam.step(np.ones(N, np.float32), g, adam.init(np.ones(N, np.float32)))
    p, s = adam.step(p, g, s)
    adam.set_hyperparameter(s, "learning_rate", 0.0)
    before = p.numpy()
    p, s = adam.step(p, g, s)
    np.testing.assert_array_equal(p.numpy(), before)  # lr 0: no move
    adam.set_hyperparameter(s, "learning_rate", 0.05)
    p, s = adam.step(p, g, s)
    assert not np.array_equal(p.numpy(), before)
    assert adam.step_count(s) == 4


def test_reading_results_between_steps_keeps_them_valid(adam, checked_calls):
    g = [dev.upload(adam.device, _grads(1))]
    p = np.linspace(0, 1, N, dtype=np.float32)
    s = adam.init(p)
    seen = []
    for _ in range(6):
        p, s = adam.step(p, g, s)
        seen.append((p.numpy().copy(), s["0/count"].item(), len(p.arrays), len(s.arrays)))
    assert [c for _, c, _, _ in seen] == [1, 2, 3, 4, 5, 6]
    assert all(not np.array_equal(a[0], b[0]) for a, b in zip(seen, seen[1:]))
    assert len(checked_calls) == 1


def test_a_second_loop_on_the_same_module_replans(adam, checked_calls):
    """Two states stepped alternately: each switch is a checked call, and both stay correct."""
    g = [dev.upload(adam.device, _grads(2))]
    a = b = np.linspace(-1, 1, N, dtype=np.float32)
    sa, sb = adam.init(a), adam.init(b)
    for _ in range(5):
        a, sa = adam.step(a, g, sa)
        b, sb = adam.step(b, g, sb)
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert adam.step_count(sa) == adam.step_count(sb) == 5


def test_tree_layout_with_a_grads_tree_from_another_call(modules):
    """A many-leaf module, gradients passed as a Tree (as a loss module returns them)."""
    params = {"enc": {"w": np.ones((3, 2), np.float32), "b": np.zeros(2, np.float32)}, "head": np.ones(4, np.float32)}
    opt = modules.load("adam", dict(learning_rate=0.1), layout=Layout.from_tree(params, source="test"))
    grads = {"enc": {"w": np.full((3, 2), 0.5, np.float32), "b": np.ones(2, np.float32)}, "head": -np.ones(4, np.float32)}
    ref_p, ref_s = params, opt.init(params)
    for _ in range(4):
        ref_p, ref_s = opt.step(ref_p, grads, ref_s)
    gtree = opt.update(grads, opt.init(params), params)[0]  # a live Tree with the grads' layout
    p, s = params, opt.init(params)
    for _ in range(4):
        p, s = opt.step(p, [dev.upload(opt.device, x) for x in pr.module.flatten_names(grads).values()], s)
    np.testing.assert_array_equal(p["enc/w"], ref_p["enc/w"])
    np.testing.assert_array_equal(p["head"], ref_p["head"])
    p, s = opt.step(p, gtree, s)  # a Tree of the right layout is accepted by the plan too
    assert opt.step_count(s) == 5


def test_flat_module_with_segments(modules, checked_calls):
    """Flat LAMB: the uploaded segments Tree rides along; other segments go through the checks."""
    opt = modules.load("lamb", dict(learning_rate=1e-2))
    n = 300
    two = opt.upload_segments(np.minimum(np.arange(n) // 150, 1).astype(np.int32))
    three = opt.upload_segments(np.minimum(np.arange(n) // 100, 2).astype(np.int32))
    g = [dev.upload(opt.device, _grads(3, n))]

    def run(segs, planned):
        checked_calls.clear()
        p = np.linspace(-1, 1, n, dtype=np.float32)
        s = opt.init(p)
        for seg in segs:
            p, s = opt.step(p, g, s, segments=seg)
        assert len(checked_calls) == planned
        return p.numpy()

    a = run([two] * 6, planned=1)
    b = run([two, two, two, three, three, three], planned=2)  # the switch is checked
    host = np.minimum(np.arange(n) // 150, 1).astype(np.int32)
    c = run([host] * 6, planned=6)  # host ids: converted and checked every call
    np.testing.assert_array_equal(a, c)
    assert not np.array_equal(a, b)


def test_a_module_with_fresh_result_buffers_reads_them_back(modules, checked_calls):
    """Flat adafactor's step counter is not written in place (docs/flat-modules.md): the plan
    sees that on its first call and reads every later call's results instead of assuming them."""
    from polaris._src import registry

    opt = modules.load("adafactor", dict(registry.get("adafactor").example))
    n = 200
    seg = np.minimum(np.arange(n) // 120, 1).astype(np.int32)
    p0 = np.linspace(-1, 1, n, dtype=np.float32)
    ref, rs = p0, opt.init(p0)
    for i in range(8):
        ref, rs = opt.step(ref, _grads(i, n), rs, segments=seg)  # host arrays: checked each call
    checked_calls.clear()
    segs, p, s = opt.upload_segments(seg), p0, opt.init(p0)
    for i in range(8):
        p, s = opt.step(p, [dev.upload(opt.device, _grads(i, n))], s, segments=segs)
    assert len(checked_calls) == 1
    assert opt._plans["step"].aliased is False
    np.testing.assert_array_equal(p.numpy(), ref.numpy())
    for a, b in zip(s.leaves(), rs.leaves(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert opt.step_count(s) == 8


def test_update_loop_is_planned_too(adam, checked_calls):
    """``update`` (Polaris's API): the state it returned and device grads of the same layout skip
    the checks; without params, zeros are made on the device once (no read-back of the grads)."""
    p0 = np.linspace(-1, 1, N, dtype=np.float32)
    ref_s = adam.init(p0)
    ref_u = []
    for i in range(6):
        u, ref_s = adam.update(_grads(i), ref_s)  # numpy grads: checked every call
        ref_u.append(u.numpy())
    checked_calls.clear()
    s = adam.init(p0)
    kept = []
    for i in range(6):
        u, s = adam.update([dev.upload(adam.device, _grads(i))], s)
        np.testing.assert_array_equal(u.numpy(), ref_u[i])
        kept.append(u)
    assert checked_calls == ["update"]
    assert adam._plans["update"].aliased is True  # the state is written in place ...
    assert adam._plans["update"].lean is not None
    for u, ref in zip(kept, ref_u, strict=True):  # ... but each call's updates are its own
        np.testing.assert_array_equal(u.numpy(), ref)
    zeros = adam._zeros_cache[1]
    adam.update([dev.upload(adam.device, _grads(0))], s)
    assert adam._zeros_cache[1] is zeros  # reused, not rebuilt
    with pytest.raises(pr.ConsumedError):
        adam.update([dev.upload(adam.device, _grads(0))], s)  # s was donated above


def test_update_with_params_of_another_shape_is_checked(adam):
    s = adam.init(np.zeros(N, np.float32))
    g = [dev.upload(adam.device, _grads(0))]
    _, s = adam.update(g, s, [dev.upload(adam.device, np.zeros(N, np.float32))])
    _, s = adam.update(g, s, [dev.upload(adam.device, np.zeros(N, np.float32))])  # planned
    with pytest.raises(pr.BindingError, match="dynamic dimension"):
        adam.update(g, s, [dev.upload(adam.device, np.zeros(N + 2, np.float32))])


def test_a_fixed_size_flat_module_steps_like_the_any_length_one(modules, adam, checked_calls):
    """``Layout.flat(size=N)`` (``polaris compile --size N``): same results bit for bit, the plan
    engages, and a vector of another length is refused naming the size."""
    from polaris_compiler import Layout

    fixed = modules.load("adam", dict(learning_rate=0.05), Layout.flat(size=N))
    p0 = np.linspace(-1, 1, N, dtype=np.float32)
    a, sa, b, sb = p0, adam.init(p0), p0, fixed.init(p0)
    checked_calls.clear()
    for i in range(12):
        g = [dev.upload(adam.device, _grads(i))]
        a, sa = adam.step(a, g, sa)
        b, sb = fixed.step(b, g, sb)
    assert len(checked_calls) == 2  # one checked call each, then planned
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    for x, y in zip(sa.leaves(), sb.leaves(), strict=True):
        np.testing.assert_array_equal(x, y)
    with pytest.raises(pr.BindingError, match=rf"has shape \({N + 1},\) but the module expects \({N},\)"):
        fixed.init(np.zeros(N + 1, np.float32))


def test_a_leaf_set_in_the_steady_state_is_used(adam, checked_calls):
    """``Tree.set`` between planned steps (params here; hyperparameters above): the lean path
    sees the changed array and the checked path binds it, so the step uses the new values."""
    g = [dev.upload(adam.device, _grads(4))]
    p, s = np.linspace(-1, 1, N, dtype=np.float32), None
    s = adam.init(p)
    for _ in range(4):
        p, s = adam.step(p, g, s)
    assert adam._plans["step"].lean is not None
    new = np.full(N, 3.0, np.float32)
    p.set("params", new)
    state = s.leaves()
    p, s = adam.step(p, g, s)
    assert len(checked_calls) == 2  # the first step and the one after set
    ref = adam.init(np.zeros(N, np.float32))  # the same state, by hand, stepped from `new`
    for name, leaf in zip(ref.names, state, strict=True):
        ref.set(name, leaf)
    ref_p, ref_s = adam.step(new, _grads(4), ref)
    np.testing.assert_array_equal(p.numpy(), ref_p.numpy())


@pytest.mark.parametrize("persistent", [False, True], ids=["fresh-grads", "persistent-grads"])
def test_threads_sharing_a_module_each_get_their_own_gradients(adam, persistent):
    """Two loops on one module in two threads, fresh device gradients every step (or each its
    own persistent ones, whose argument lists the plans keep), the interpreter switching threads
    as often as it can: the module's plan is shared, and each loop must still step with its own
    gradients and get its own results."""
    from _threads import race

    def loop(k, steps=150):
        p = np.linspace(-1, 1, N, dtype=np.float32) * (k + 1)
        s = adam.init(p)
        mine = [dev.upload(adam.device, _grads(k + 2))]
        for i in range(steps):
            g = mine if persistent else [dev.upload(adam.device, _grads(i * (k + 2)))]
            p, s = adam.step(p, g, s)
        return p.numpy()

    sequential = [loop(0), loop(1)]
    got = race(loop)
    for a, b in zip(sequential, got, strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_process_that_stepped_exits_cleanly(modules):
    """A training script must exit with status 0: the steady state keeps IREE refs in the call
    plans, which once outlived their device at interpreter shutdown (SIGSEGV on exit after any
    loop of two or more steps). Sync, async and update loops, and a module dropped mid-run."""
    import subprocess
    import textwrap

    sync = modules.path("adam", dict(learning_rate=0.05))
    asy = modules.path("adam", dict(learning_rate=0.05), asynchronous=True)
    script = textwrap.dedent(f"""
        import gc, numpy as np
        import polaris_runtime as pr
        from polaris_runtime import device as dev

        def loop(path, device, steps, update=False):
            opt = pr.load(path, device=device)
            p = np.linspace(-1, 1, {N}, dtype=np.float32)
            s = opt.init(p)
            g = [dev.upload(opt.device, np.full({N}, 0.1, np.float32))]
            for _ in range(steps):
                if update:
                    u, s = opt.update(g, s)
                else:
                    p, s = opt.step(p, g, s)
            return opt, p, s

        loop({str(sync)!r}, "local-sync", 4)  # dropped: its plans go to the garbage collector
        gc.collect()
        kept = [loop({str(sync)!r}, "local-sync", 5), loop({str(asy)!r}, "local-task", 5),
                loop({str(sync)!r}, "local-sync", 5, update=True)]
        print("stepped", kept[0][0].step_count(kept[0][2]))
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"exit status {r.returncode}\n{r.stdout}\n{r.stderr[-2000:]}"
    assert r.stdout.strip() == "stepped 5"
