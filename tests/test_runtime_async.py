"""Asynchronous modules (``polaris compile --async``): calls return once queued, results are right.

A module compiled with IREE's async-external execution model takes a wait fence and a signal
fence on every export; the runtime chains one module's calls on a timeline semaphore and waits
only where a result is read on the host or handed to another module. These tests pin down that
an async module computes exactly what the synchronous one does (both paths of ``step``, reads
between steps, checkpoints), that its results are finished before another module or the host
reads them, and what the compiler and the CLI record.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import polaris_runtime as pr
from polaris_compiler import CompileOptions, build_flags
from polaris_runtime import device as dev

N = 4099  # not a multiple of any vector width
BIG = 1 << 22  # enough work per step that an unwaited read would see steps in flight


def _grads(i: int, n: int = N) -> np.ndarray:
    return (np.sin(np.arange(n, dtype=np.float32) * 0.37 + i) * 0.3).astype(np.float32)


@pytest.fixture(scope="module")
def pair(modules):
    """(sync adam, async adam) on local-task, whose worker threads run queued work."""
    opts = dict(learning_rate=0.02)
    return modules.load("adam", opts, device="local-task"), modules.load("adam", opts, device="local-task", asynchronous=True)


def test_the_compiler_asks_for_the_async_model_and_records_it(modules):
    assert build_flags(CompileOptions(asynchronous=True))[-1] == "--iree-execution-model=async-external"
    assert "--iree-execution-model=async-external" not in build_flags(CompileOptions())
    art = modules.artifact("adam", dict(learning_rate=0.02), asynchronous=True)
    assert art.manifest["target"]["execution"] == "async"
    assert "execution" not in modules.artifact("adam", dict(learning_rate=0.02)).manifest["target"]


def test_an_async_step_never_waits_for_the_device(modules):
    from test_compiler import _vm_function

    step = _vm_function(modules.artifact("adam", dict(learning_rate=0.02), asynchronous=True), "step")
    assert step.count("@hal.fence.await") == 0 and step.count("@hal.device.queue.execute") == 1


def _assert_lockstep(ref, other, planned_steps: int) -> None:
    """``ref`` and ``other`` (modules of the same optimizer) stepped side by side from the same
    start give the same params and state bit for bit: 3 steps on host gradients (the checked
    path: uploads, then calls), then ``planned_steps`` on fresh device gradients (the planned
    path, then its steady state)."""
    p0 = np.linspace(-2, 2, N, dtype=np.float32)
    a, sa, b, sb = p0, ref.init(p0), p0, other.init(p0)
    for i in range(3):
        a, sa = ref.step(a, _grads(i), sa)
        b, sb = other.step(b, _grads(i), sb)
    for i in range(planned_steps):
        g = [dev.upload(ref.device, _grads(7 + i))]
        a, sa = ref.step(a, g, sa)
        b, sb = other.step(b, g, sb)
    assert ref._plans["step"].fast is not None and other._plans["step"].fast is not None
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    for x, y in zip(sa.leaves(), sb.leaves(), strict=True):
        np.testing.assert_array_equal(x, y)
    assert other.step_count(sb) == 3 + planned_steps


def test_async_steps_match_the_sync_module_bit_for_bit(pair):
    sync, asy = pair
    assert asy.asynchronous and not sync.asynchronous
    _assert_lockstep(sync, asy, planned_steps=20)


def test_reading_between_steps_sees_each_step(pair):
    sync, asy = pair
    p0 = np.full(N, 0.5, np.float32)
    a, sa, b, sb = p0, sync.init(p0), p0, asy.init(p0)
    g = [dev.upload(sync.device, _grads(1))]
    for _ in range(5):
        a, sa = sync.step(a, g, sa)
        b, sb = asy.step(b, g, sb)
        np.testing.assert_array_equal(a.numpy(), b.numpy())
        assert asy.get_hyperparameter(sb, "learning_rate") == pytest.approx(0.02)
    asy.set_hyperparameter(sb, "learning_rate", 0.0)  # frozen from here on
    before = b.numpy()
    b, sb = asy.step(b, g, sb)
    np.testing.assert_array_equal(b.numpy(), before)


def test_results_are_finished_before_they_are_read(modules):
    """Many queued steps of a big vector, then the params read at once: the host must see the
    last step's values (read without the runtime's wait, it saw steps 1-3 of 31 in flight), and
    so must a synchronous module handed the Tree."""
    sgd_async = modules.load("sgd", dict(learning_rate=1.0), device="local-task", asynchronous=True)
    sgd_sync = modules.load("sgd", dict(learning_rate=1.0), device="local-task")
    minus_one = np.full(BIG, -1.0, np.float32)
    g = [dev.upload(sgd_async.device, minus_one)]  # each step adds 1
    for reader in ("host", "another module"):
        q, s = np.zeros(BIG, np.float32), sgd_async.init(np.zeros(BIG, np.float32))
        for _ in range(30):
            q, s = sgd_async.step(q, g, s)
        if reader == "host":
            got, want = q.numpy(), 30.0
        else:
            out, _ = sgd_sync.step(q, g, sgd_sync.init(np.zeros(BIG, np.float32)))
            got, want = out.numpy(), 31.0
        np.testing.assert_array_equal(got, np.full(BIG, want, np.float32), err_msg=reader)


def test_init_while_steps_are_queued_keeps_the_timeline(modules):
    """IREE lowers an async ``init`` (it reads no argument's values) without waiting for its wait
    fence: called while steps were still queued, it signalled first, and the module's timeline
    failed ("semaphore already signaled past"). The runtime waits for the queued calls first."""
    adam = modules.load("adam", dict(learning_rate=0.01), device="local-task", asynchronous=True)
    p = np.linspace(-1, 1, BIG, dtype=np.float32)
    g = [dev.upload(adam.device, np.full(BIG, 0.1, np.float32))]
    q, s = p, adam.init(p)
    for _ in range(20):
        q, s = adam.step(q, g, s)
    fresh = adam.init(p)  # with 20 steps in flight
    q, s = adam.step(q, g, s)
    assert adam.step_count(s) == 21 and adam.step_count(fresh) == 0
    assert np.isfinite(q.numpy()).all()


def test_checkpoints_of_an_async_module(pair, tmp_path):
    _, asy = pair
    p0 = np.linspace(0, 1, N, dtype=np.float32)
    b, sb = p0, asy.init(p0)
    g = [dev.upload(asy.device, _grads(3))]
    for _ in range(4):
        b, sb = asy.step(b, g, sb)
    asy.save_checkpoint(tmp_path / "c.safetensors", sb, b)
    sb2, b2 = asy.restore_checkpoint(tmp_path / "c.safetensors")
    for _ in range(3):
        b, sb = asy.step(b, g, sb)
        b2, sb2 = asy.step(b2, g, sb2)
    np.testing.assert_array_equal(b.numpy(), b2.numpy())
    assert asy.step_count(sb2) == 7


def test_cli_compiles_and_inspects_an_async_module(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from polaris.cli.__main__ import cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("POLARIS_NO_CACHE", "1")
    r = CliRunner().invoke(cli, ["compile", "sgd", "--async"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "sgd-flat-f32-llvm-cpu-async.vmfb").exists()
    text = CliRunner().invoke(cli, ["inspect", "sgd-flat-f32-llvm-cpu-async.vmfb"]).output
    assert "execution: async" in text
    m = json.loads(CliRunner().invoke(cli, ["inspect", "sgd-flat-f32-llvm-cpu-async.vmfb", "--json"]).output)
    assert m["target"]["execution"] == "async"
    monkeypatch.delenv("POLARIS_CPU_DRIVER", raising=False)
    opt = pr.load(tmp_path / "sgd-flat-f32-llvm-cpu-async.vmfb")
    assert opt.driver == "local-task" and opt.asynchronous  # where its calls overlap the host
    s = opt.init(np.ones(10, np.float32))
    lr = opt.get_hyperparameter(s, "learning_rate")
    p, s = opt.step(np.ones(10, np.float32), np.full(10, 2.0, np.float32), s)
    np.testing.assert_allclose(p.numpy(), np.full(10, 1.0 - 2.0 * lr, np.float32), rtol=1e-6)


def test_a_call_that_fails_before_it_is_queued_does_not_block_the_next(pair):
    """The fences of a call IREE refused are signalled by the runtime: the next call (which
    waits for them on the device) and ``wait()`` go on instead of waiting forever."""
    import threading

    from polaris_runtime.module import _unblock

    _, asy = pair
    p0 = np.ones(BIG, np.float32)
    g = [dev.upload(asy.device, np.full(BIG, 0.1, np.float32))]
    b, sb = p0, asy.init(p0)
    for _ in range(10):  # still running when the failing call comes
        b, sb = asy.step(b, g, sb)
    with asy._lock:
        fences = asy._fences()  # what a call takes just before IREE raises
    _unblock(fences)  # must not signal past the steps still in flight
    errors, done = [], threading.Event()

    def waiter():
        try:
            asy.wait()
        except Exception as e:  # reported below
            errors.append(e)
        done.set()

    threading.Thread(target=waiter, daemon=True).start()
    assert done.wait(60), "wait() blocked on the fence of a call that never ran"
    assert not errors, errors
    b, sb = asy.step(b, g, sb)
    assert asy.step_count(sb) == 11


def test_the_c_header_says_the_functions_take_fences(modules):
    from polaris_runtime.cheader import c_header

    asy = pr.inspect_module(modules.path("adam", dict(learning_rate=0.02), asynchronous=True))
    sync = pr.inspect_module(modules.path("adam", dict(learning_rate=0.02)))
    assert "#define ADAM_ASYNC 1" in c_header(asy, prefix="adam") and "wait fence and a signal fence" in c_header(asy, prefix="adam")
    assert "#define ADAM_ASYNC 0" in c_header(sync, prefix="adam")


def test_update_then_apply_on_an_async_module_equals_its_step(pair):
    """``update`` (state donated, updates returned) chains on the same fences as ``step``."""
    _, asy = pair
    p0 = np.linspace(-1, 1, N, dtype=np.float32)
    b, sb = p0, asy.init(p0)
    s2 = asy.init(p0)
    q = p0.copy()
    for i in range(6):
        g = _grads(i)
        b, sb = asy.step(b, g, sb)
        u, s2 = asy.update(g, s2, q)
        q = q + u.numpy()
    np.testing.assert_allclose(b.numpy(), q, rtol=1e-6, atol=1e-7)
    assert asy.step_count(s2) == 6


# -- order="stream": no call waits for the one before it; the driver's queue orders them ---------
def test_the_default_order_is_fences_off_cuda(pair):
    sync, asy = pair
    assert sync.order == "fences" and asy.order == "fences"  # local-task may finish calls out of order


def test_order_picks_stream_only_where_it_was_checked():
    from polaris_runtime.module import STREAM_ORDERED_DRIVERS, resolve_order

    # IREE 3.13 on CUDA: the ring ran 1e5-step trials on an H100 bit-identical to fences (nineteenth pass)
    assert resolve_order(None, True, "cuda", iree_version="3.13.0") == "stream"
    assert resolve_order(None, True, "cuda://0", iree_version="3.13.1") == "stream"
    assert resolve_order(None, True, "cuda", iree_version="3.14.0") == "fences"  # not checked yet
    assert resolve_order(None, True, "cuda", iree_version="3.1.0") == "fences"  # "3.13." is not a prefix of it
    assert resolve_order("fences", True, "cuda", iree_version="3.13.0") == "fences"  # asked for: kept
    assert resolve_order("stream", True, "cuda", iree_version="3.14.0") == "stream"  # asked for: allowed
    assert resolve_order(None, False, "cuda", iree_version="3.13.0") == "fences"  # a sync module
    assert resolve_order(None, True, "local-task", iree_version="3.13.0") == "fences"
    assert resolve_order(None, True, "vulkan", iree_version="3.13.0") == "fences"
    assert resolve_order("stream", True, "local-sync") == "stream"
    assert resolve_order("fences", False, "vulkan") == "fences"
    assert set(STREAM_ORDERED_DRIVERS) == {"cuda", "local-sync"}


@pytest.mark.parametrize("ahead", [(8, 8), (64, 32)], ids=["cuda", "default"])
def test_fences_order_bounds_the_calls_queued_ahead(modules, ahead):
    """order="fences": with ``limit`` calls unfinished the host waits until ``resume - 1`` are
    (polaris_runtime.module.FENCES_AHEAD; unbounded, an H100 took 64 us a step over 2000 steps and
    over 250 us over 100000, local-task 336 us over 20000 and 20 KB a queued call: nineteenth
    pass). A failure met while waiting is reported as the device's, with nothing queued."""
    import threading

    from polaris_runtime.errors import ModuleError
    from polaris_runtime.module import FENCES_AHEAD, FENCES_AHEAD_DEFAULT

    assert FENCES_AHEAD["cuda"] == (8, 8) and FENCES_AHEAD_DEFAULT == (64, 32)
    mod = pr.load(modules.path("adam", dict(learning_rate=0.02), asynchronous=True), device="local-sync", order="fences")
    assert mod._ring is None and mod._ahead == FENCES_AHEAD_DEFAULT  # local-sync is not named
    mod._ahead = limit, resume = ahead
    with mod._lock:
        held = [mod._fences() for _ in range(limit)]  # calls 0..limit-1 queued, none finished
    assert mod._tick == limit
    got = []
    worker = threading.Thread(target=lambda: got.append(mod._fences()))
    worker.start()
    worker.join(0.3)
    assert worker.is_alive() and mod._tick == limit  # call `limit` waits
    for k in range(limit - resume):
        held[k][1].signal()  # calls 0..limit-resume-1 finished: still limit - (limit-resume) = resume unfinished
    worker.join(0.3)
    assert worker.is_alive()
    held[limit - resume][1].signal()  # resume - 1 unfinished
    worker.join(5)
    assert not worker.is_alive() and mod._tick == limit + 1 and got
    for k in range(limit - resume + 1, limit - 1):
        held[k][1].signal()
    held[limit - 1][1].fail("injected device failure")  # the last held call failed on the device
    with mod._lock, pytest.raises(ModuleError, match="failed on the device"):
        mod._fences()  # call limit + 1 would wait for it
    assert mod._tick == limit + 1  # and was not queued


def test_fences_order_takes_its_bound_from_the_driver(pair):
    from polaris_runtime.module import FENCES_AHEAD_DEFAULT

    _, asy = pair
    assert asy.driver.startswith("local-task") and asy._ahead == FENCES_AHEAD_DEFAULT


@pytest.mark.parametrize(
    "order, asynchronous, driver, match",
    [
        ("stream", True, "local-task", "needs a driver that runs submissions in the order they are made \\(cuda, local-sync\\); 'local-task'"),
        ("stream", True, "vulkan", "'vulkan' may finish them out of order: leave order as 'fences'"),
        ("stream", False, "cuda", "order='stream' is for modules compiled with --async"),
        ("streams", True, "cuda", "order='streams' is not an ordering polaris knows; use one of: fences, stream"),
    ],
)
def test_an_order_that_cannot_work_is_refused_with_the_valid_choices(order, asynchronous, driver, match):
    from polaris_runtime.errors import ModuleError
    from polaris_runtime.module import resolve_order

    with pytest.raises((ModuleError, ValueError), match=match):
        resolve_order(order, asynchronous, driver)


def test_load_refuses_stream_order_on_local_task(modules):
    from polaris_runtime.errors import ModuleError

    path = modules.path("adam", dict(learning_rate=0.02), asynchronous=True)
    with pytest.raises(ModuleError, match="may finish them out of order"):
        pr.load(path, device="local-task", order="stream")


@pytest.fixture(scope="module")
def streamed(modules):
    """(async adam with fences, the same with order="stream") on local-sync, which runs each
    call to its end on the caller's thread: in order, as IREE's CUDA HAL does on its one stream."""
    path = modules.path("adam", dict(learning_rate=0.02), asynchronous=True)
    return pr.load(path, device="local-sync", order="fences"), pr.load(path, device="local-sync", order="stream")


def test_stream_order_steps_match_fenced_steps_bit_for_bit(streamed):
    fenced, streamed_ = streamed
    assert fenced.order == "fences" and streamed_.order == "stream"
    _assert_lockstep(fenced, streamed_, planned_steps=30)


def test_a_failed_call_under_stream_order_does_not_block_the_next(streamed):
    from polaris_runtime.module import _unblock

    _, mod = streamed
    p0 = np.ones(N, np.float32)
    b, sb = p0, mod.init(p0)
    for _ in range(3):
        b, sb = mod.step(b, _grads(0), sb)
    with mod._lock:
        t, ring = mod._tick, mod._ring
        fences = mod._fences()  # what a call takes just before IREE raises
        assert ring[t % len(ring)].query() == t // len(ring)  # its wait is met: it waits for nothing
        _unblock(fences)
    mod.wait()
    b, sb = mod.step(b, _grads(1), sb)
    assert mod.step_count(sb) == 4


def _ring_values(mod):
    return [sem.query() for sem in mod._ring]


def test_stream_order_signals_a_ring_of_semaphores_one_call_each(modules):
    """Call k signals semaphore k % STREAM_RING of the module's ring with k // STREAM_RING + 1:
    no two queued calls signal one semaphore, so completions that arrive out of order cannot
    fail a timeline (seventeenth pass: "timeline already at 6427, cannot signal 6426")."""
    from polaris_runtime.module import STREAM_RING

    mod = pr.load(modules.path("adam", dict(learning_rate=0.02), asynchronous=True), device="local-sync", order="stream")
    assert len(mod._ring) == STREAM_RING == 8 and len({id(s) for s in mod._ring}) == 8
    mod.wait()  # nothing queued yet: returns at once
    p0 = np.ones(N, np.float32)
    b, sb = p0, mod.init(p0)  # call 0
    for k in range(1, 20):
        b, sb = mod.step(b, _grads(k), sb)  # calls 1..19
    mod.wait()
    assert mod._tick == 20 and _ring_values(mod) == [3, 3, 3, 3, 2, 2, 2, 2]
    assert mod.step_count(sb) == 19


def test_stream_order_queues_a_call_only_once_the_last_call_on_its_semaphore_signalled(modules):
    """The ring's throttle: with STREAM_RING calls queued and the oldest not finished, the next
    call waits on the host for it; it goes on once that call signals, and a failure there is
    reported as the device's, with nothing queued."""
    import threading

    from polaris_runtime.errors import ModuleError

    mod = pr.load(modules.path("adam", dict(learning_rate=0.02), asynchronous=True), device="local-sync", order="stream")
    n = len(mod._ring)
    with mod._lock:
        held = [mod._fences() for _ in range(n)]  # n calls queued that have not finished
    got = []
    worker = threading.Thread(target=lambda: got.append(mod._fences()))
    worker.start()
    worker.join(0.3)
    assert worker.is_alive() and mod._tick == n  # waiting for call 0
    for f in held[1:]:
        f[1].signal()
    worker.join(0.3)
    assert worker.is_alive()  # calls 1..n-1 finishing does not free semaphore 0
    held[0][1].signal()
    worker.join(5)
    assert not worker.is_alive() and mod._tick == n + 1
    assert got[0][0] is not None and mod._ring[0].query() == 1
    got[0][1].signal()
    mod.wait()
    # the oldest call failed on the device: the next call says so and queues nothing
    with mod._lock:
        held = [mod._fences() for _ in range(n)]
    held[1][1].fail("injected device failure")  # the second oldest call
    for f in held[2:] + held[:1]:
        f[1].signal()
    t = mod._tick
    with mod._lock:
        mod._fences()  # semaphore 0: its last call finished
        with pytest.raises(ModuleError, match="failed on the device"):
            mod._fences()
    assert mod._tick == t + 1


def test_threads_sharing_a_stream_ordered_module_step_as_they_would_alone(streamed):
    """Two loops on one stream-ordered module in two threads, the interpreter switching as often
    as it can: the ring's tick, fences and throttle are taken under the module's lock, so each
    loop gets the numbers it gets alone, and the ring ends where the calls say."""
    from _threads import race

    _, mod = streamed

    def loop(k, steps=60):
        p = np.linspace(-1, 1, N, dtype=np.float32) * (k + 1)
        params, state = p, mod.init(p)
        g = [dev.upload(mod.device, _grads(3 + k))]
        for _ in range(steps + 5 * k):
            params, state = mod.step(params, g, state)
        return np.asarray(params.numpy()), mod.step_count(state)

    sequential = [loop(0), loop(1)]
    t0 = mod._tick
    got = race(loop)
    for (a, ca), (b, cb) in zip(sequential, got, strict=True):
        np.testing.assert_array_equal(a, b)
        assert ca == cb
    mod.wait()
    n, t = len(mod._ring), mod._tick
    assert t == t0 + 2 + 60 + 65  # two inits and the steps
    assert [s.query() for s in mod._ring] == [t // n + (i < t % n) for i in range(n)]


def test_stream_order_serves_update_and_hyperparameters_like_fences(streamed):
    """Every export goes through the ring, not only step: update, a learning rate set in the
    state between calls, init of a second state while steps are queued, and steps give what the
    fence-chained module gives, bit for bit."""
    def host(x):
        return np.asarray(x if isinstance(x, np.ndarray) else x.numpy())

    out = []
    for mod in streamed:
        p0 = np.linspace(-1, 1, N, dtype=np.float32)
        params, state = p0, mod.init(p0)
        for k in range(12):
            if k == 5:
                mod.set_hyperparameter(state, "learning_rate", 0.005)
            if k % 4 == 3:
                u, state = mod.update(_grads(k), state, params)
                params = host(params) + host(u)
            else:
                params, state = mod.step(params, _grads(k), state)
            if k == 7:
                other = mod.init(p0)  # waits for the queued calls first (UNCHAINED_EXPORTS)
        mod.wait()
        out.append((host(params), [np.asarray(x) for x in state.leaves()], mod.get_hyperparameter(state, "learning_rate"),
                    mod.step_count(other)))
    (a, sa, lra, ca), (b, sb, lrb, cb) = out
    np.testing.assert_array_equal(a, b)
    for x, y in zip(sa, sb, strict=True):
        np.testing.assert_array_equal(x, y)
    assert lra == lrb == pytest.approx(0.005) and ca == cb == 0
