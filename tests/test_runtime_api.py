"""The runtime in real training loops: several optimizers, threads, step count, learning rate, apply_if_finite."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import polaris_runtime as pr
from polaris_compiler import Layout

PARAMS = {"enc": {"w": np.ones((3, 2), np.float32), "b": np.zeros(2, np.float32)}, "head": np.ones(4, np.float32)}


def grads_at(i: int, n: int = 64) -> np.ndarray:
    return np.sin(np.arange(n, dtype=np.float32) * 0.37 + i).astype(np.float32)


def train(opt, steps: int, n: int = 64, start=None):
    p = np.linspace(-1, 1, n, dtype=np.float32) if start is None else start
    s = opt.init(p)
    for i in range(steps):
        p, s = opt.step(p, grads_at(i, n), s)
    return p.numpy(), s.leaves()


@pytest.fixture(scope="module")
def adam(modules):
    return modules.load("adam", dict(learning_rate=0.1))


@pytest.fixture(scope="module")
def sgd_m(modules):
    return modules.load("sgd", dict(learning_rate=0.05, momentum=0.9))


def test_several_optimizers_in_one_process(modules, adam, sgd_m):
    """Two optimizers and a second copy of one, interleaved step by step, match each run alone."""
    adam2 = modules.load("adam", dict(learning_rate=0.1))
    assert adam2 is not adam and adam2.device is adam.device  # one IREE device per driver
    alone = {k: train(o, 20) for k, o in (("adam", adam), ("sgd", sgd_m))}
    opts = {"adam": adam, "sgd": sgd_m, "adam2": adam2}
    p = {k: np.linspace(-1, 1, 64, dtype=np.float32) for k in opts}
    s = {k: o.init(p[k]) for k, o in opts.items()}
    for i in range(20):
        for k, o in opts.items():
            p[k], s[k] = o.step(p[k], grads_at(i), s[k])
    np.testing.assert_array_equal(p["adam"].numpy(), alone["adam"][0])
    np.testing.assert_array_equal(p["adam2"].numpy(), alone["adam"][0])
    np.testing.assert_array_equal(p["sgd"].numpy(), alone["sgd"][0])
    for a, b in zip(s["sgd"].leaves(), alone["sgd"][1], strict=True):
        np.testing.assert_array_equal(a, b)


def _run_threads(jobs):
    results, errors = [None] * len(jobs), []
    barrier = threading.Barrier(len(jobs))

    def run(i, fn):
        try:
            barrier.wait()
            results[i] = fn()
        except BaseException as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i, fn)) for i, fn in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    return results


def test_two_threads_with_their_own_optimizers_match_sequential(adam, sgd_m):
    sequential = [train(adam, 200), train(sgd_m, 200)]
    threaded = _run_threads([lambda: train(adam, 200), lambda: train(sgd_m, 200)])
    for (p1, s1), (p2, s2) in zip(sequential, threaded, strict=True):
        np.testing.assert_array_equal(p1, p2)
        for a, b in zip(s1, s2, strict=True):
            np.testing.assert_array_equal(a, b)


def test_one_module_shared_by_threads_with_separate_states(adam):
    starts = [np.linspace(-1, 1, 64, dtype=np.float32) * (k + 1) for k in range(4)]
    sequential = [train(adam, 200, start=s) for s in starts]
    threaded = _run_threads([lambda s=s: train(adam, 200, start=s) for s in starts])
    for (p1, s1), (p2, s2) in zip(sequential, threaded, strict=True):
        np.testing.assert_array_equal(p1, p2)
        for a, b in zip(s1, s2, strict=True):
            np.testing.assert_array_equal(a, b)


def test_results_as_numpy_dict_or_leaves(modules):
    opt = modules.load("adam", dict(learning_rate=0.1), Layout.from_tree(PARAMS))
    s = opt.init(PARAMS)
    p, s = opt.step(PARAMS, PARAMS, s)
    tree = p.numpy()
    assert isinstance(tree["enc"]["w"], np.ndarray) and tree["enc"]["w"].shape == (3, 2)
    assert [a.shape for a in p.leaves()] == [(2,), (3, 2), (4,)]  # ABI order: enc/b, enc/w, head
    assert set(s.numpy()) == {"0", "1"}


# -- step count and learning rate ----------------------------------------------------------------
def test_step_count_and_learning_rate_of_a_numeric_rate(adam):
    p = np.ones(8, np.float32)
    s = adam.init(p)
    assert adam.count_leaf == "0/count"
    assert adam.step_count(s) == 0
    assert adam.current_learning_rate(s) == pytest.approx(0.1)
    for _ in range(3):
        p, s = adam.step(p, np.ones(8, np.float32), s)
    assert adam.step_count(s) == 3
    adam.set_hyperparameter(s, "learning_rate", 0.025)
    assert adam.current_learning_rate(s) == np.float32(0.025)
    p, s = adam.step(p, np.ones(8, np.float32), s)
    assert adam.step_count(s) == 4 and adam.current_learning_rate(s) == np.float32(0.025)


def test_learning_rate_of_a_schedule_comes_from_the_module(modules):
    import polaris
    from polaris._src import registry
    from polaris_compiler import compile_optimizer

    sched = polaris.schedules.exponential_decay(1e-2, decay_rate=0.5, transition_steps=2)
    art = compile_optimizer(
        registry.get("adam").build(learning_rate=sched), Layout.flat(), name="adam",
        optimizer_options={"learning_rate": "exponential_decay(0.01, decay_rate=0.5, transition_steps=2)"},
    )
    assert art.manifest["functions"]["learning_rate"] == {"inputs": ["state"], "outputs": ["learning_rate"]}
    assert art.manifest["hyperparameters"] == []
    opt = pr.load(art.vmfb)
    p = np.ones(5, np.float32)
    s = opt.init(p)
    for i in range(6):
        assert opt.step_count(s) == i
        assert opt.current_learning_rate(s) == pytest.approx(float(sched(i)), rel=1e-6)
        p, s = opt.step(p, np.ones(5, np.float32), s)
    s.numpy()  # learning_rate() does not donate the state


def test_no_counter_and_no_rate_are_explained(modules):
    sgd = modules.load("sgd", dict(learning_rate=0.1))
    s = sgd.init(np.ones(3, np.float32))
    with pytest.raises(pr.ModuleError, match="has no step counter .* its leaves: 1/learning_rate|has no step counter"):
        sgd.step_count(s)
    assert sgd.current_learning_rate(s) == pytest.approx(0.1)
    rms = modules.load("rmsprop", dict(learning_rate=0.1))
    assert rms.current_learning_rate(rms.init(np.ones(3, np.float32))) == pytest.approx(0.1)


# -- apply_if_finite through the runtime -----------------------------------------------------------
def _guarded_artifact():
    from polaris._src.base import chain
    from polaris.optimizers import adam
    from polaris.updates import apply_if_finite
    from polaris_compiler import compile_optimizer

    tx = chain(apply_if_finite(adam(learning_rate=0.1), max_consecutive_errors=3))
    return compile_optimizer(tx, Layout.from_tree(PARAMS), name="adam_if_finite",
                             optimizer_options={"learning_rate": 0.1, "max_consecutive_errors": 3})


@pytest.fixture(scope="module")
def guarded():
    return pr.load(_guarded_artifact().vmfb)


def test_apply_if_finite_runs_with_in_place_outputs(guarded):
    """Regression: with lax.cond, IREE 3.13 failed on donated buffers ('indirect buffer reference
    slot 0 is out of range'); apply_if_finite now selects instead of branching."""
    step = guarded.manifest.functions["step"]
    assert step.donates == ("params", "state")
    s = guarded.init(PARAMS)
    p, s = guarded.step(PARAMS, _grads(0.5), s)
    assert guarded.step_count(s) == 1


def test_update_returns_a_passed_through_state_leaf_unchanged():
    """Regression: JAX paired donated inputs with outputs by shape, aliasing a state leaf with the
    *updates* output; the compiler now pins state i -> state output i."""
    from typing import NamedTuple

    import jax.numpy as jnp

    from polaris._src.base import stateful
    from polaris_compiler import compile_optimizer

    class Keep(NamedTuple):
        keep: object

    tx = stateful(lambda p: Keep(jnp.full_like(p, 5.0)), lambda u, s, p: (u * 2, s))
    opt = pr.load(compile_optimizer(tx, Layout.flat(), name="passthrough").vmfb)
    p = np.full(4, 3.0, np.float32)
    u, s = opt.update(p, opt.init(p), p)
    np.testing.assert_array_equal(u.numpy(), np.full(4, 6.0, np.float32))
    np.testing.assert_array_equal(s["keep"], np.full(4, 5.0, np.float32))


def _grads(v):
    return {"enc": {"w": np.full((3, 2), v, np.float32), "b": np.full(2, v, np.float32)}, "head": np.full(4, v, np.float32)}


def test_apply_if_finite_skips_and_counts_a_nan_step(guarded):
    names = [s.name for s in guarded.manifest.state]
    assert names[:3] == ["notfinite_count", "last_finite", "total_notfinite"]
    assert guarded.count_leaf == "inner_state/0/count"
    s = guarded.init(PARAMS)
    p, s = guarded.step(PARAMS, _grads(0.5), s)
    p_before, s_before = p.leaves(), s.numpy()
    bad = _grads(0.5)
    bad["enc"]["w"][1, 1] = np.nan
    p, s = guarded.step(p, bad, s)
    for a, b in zip(p_before, p.leaves(), strict=True):
        np.testing.assert_array_equal(a, b)  # params unchanged
    after = s.numpy()
    assert int(after["notfinite_count"]) == 1 and int(after["total_notfinite"]) == 1
    assert not bool(after["last_finite"])
    for k in ("0", "1"):  # adam's own state untouched
        for x, y in zip(pr.flatten_names(s_before["inner_state"][k]).values(),
                        pr.flatten_names(after["inner_state"][k]).values(), strict=True):
            np.testing.assert_array_equal(x, y)
    assert guarded.step_count(s) == 1
    assert guarded.current_learning_rate(s) == pytest.approx(0.1)
    # Training continues: the next finite step applies and resets the consecutive count.
    p, s = guarded.step(p, _grads(0.5), s)
    after = s.numpy()
    assert int(after["notfinite_count"]) == 0 and int(after["total_notfinite"]) == 1
    assert bool(after["last_finite"]) and guarded.step_count(s) == 2
    assert not np.array_equal(p.leaves()[0], p_before[0])
    assert all(np.isfinite(a).all() for a in p.leaves())


# -- small reads from a GPU: one staging buffer per device, allocated once -----------------------
@pytest.mark.parametrize("value", [np.float32(0.125), np.int32(7), np.arange(5, dtype=np.float32), np.ones((2, 3), np.float16)])
def test_small_reads_through_the_staging_buffer_give_the_array(value):
    """``device._SmallReads`` (what GPU drivers use for reads of at most 4 KiB: a step count, a
    hyperparameter) gives back exactly what was uploaded, read after read; it declines larger
    arrays, which the general path serves. Forced here on a CPU device, whose memory IREE maps."""
    from polaris_runtime import device as dev

    cfg = dev.config_for("local-task")
    reads = dev._SmallReads(cfg.device)
    a = dev.upload(cfg.device, np.asarray(value))
    for _ in range(3):
        got = reads.read(a)
        assert got.dtype == np.asarray(value).dtype and got.shape == np.asarray(value).shape
        np.testing.assert_array_equal(got, np.asarray(value))
    assert reads.tick == 3
    big = dev.upload(cfg.device, np.zeros(dev.SMALL_READ_BYTES // 4 + 1, np.float32))
    assert reads.read(big) is None
    assert dev.to_host(big).shape == (dev.SMALL_READ_BYTES // 4 + 1,)


def test_gpu_drivers_read_small_arrays_through_the_staging_buffer():
    """A GPU driver's config gets a ``_SmallReads``; CPU drivers read mapped memory directly."""
    from _devices import device_or_skip

    from polaris_runtime import device as dev

    assert id(dev.config_for("local-task").device) not in dev._SMALL_READS
    device_or_skip("vulkan")
    d = dev.config_for("vulkan").device
    reads = dev._SMALL_READS[id(d)]
    before = reads.tick
    np.testing.assert_array_equal(dev.to_host(dev.upload(d, np.float32(2.5))), np.float32(2.5))
    assert reads.tick == before + 1


def test_a_process_that_read_through_the_staging_buffer_exits_cleanly():
    """The staging buffers are IREE objects: freed at exit while their device exists (left to the
    interpreter's shutdown, lavapipe's crashed the process: SIGSEGV after the last line)."""
    import subprocess
    import sys

    from _devices import device_or_skip

    device_or_skip("vulkan")
    code = (
        "import numpy as np\n"
        "from polaris_runtime import device as dev\n"
        "d = dev.config_for('vulkan').device\n"
        "assert dev.to_host(dev.upload(d, np.float32(2.5))) == np.float32(2.5)\n"
        "assert dev._SMALL_READS[id(d)].tick == 1\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
