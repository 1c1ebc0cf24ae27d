"""bench/gpu_stream_stress.py (seventeenth pass; run on a GPU by bench/gpu_session.sh): its trials
run in processes of their own, both orders step a module alike, and a trial that fails is counted
as failed, with the error."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

BENCH = pathlib.Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(scope="module")
def module(tmp_path_factory):
    import polaris.optimizers as O
    from polaris_compiler import CompileOptions, Layout, compile_optimizer

    art = compile_optimizer(O.adam(1e-3), Layout.flat(size=256), CompileOptions(asynchronous=True, spare_counts=True), name="adam")
    return art.save(tmp_path_factory.mktemp("stress") / "adam-async.vmfb")


def _run(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCH / "gpu_stream_stress.py"), *map(str, args)], capture_output=True, text=True, timeout=120)


def test_both_orders_step_alike_on_local_sync(module, tmp_path):
    res = _run("run", module, "--out", tmp_path, "--device", "local-sync", "--steps", "300", "--trials", "2")
    assert res.returncode == 0, res.stdout + res.stderr
    rows = json.loads((tmp_path / "stress.json").read_text())["rows"]
    assert sorted(r["order"] for r in rows) == ["fences", "fences", "stream", "stream", "stream-1sem", "stream-1sem"]
    assert all(r["done"] == 300 and r["count"] == 300 and r["order_used"] == r["order"] for r in rows), rows
    assert len({r["digest"] for r in rows}) == 1  # every trial, both orders: the same parameters
    md = (tmp_path / "stress.md").read_text()
    for order in ("stream", "fences", "stream-1sem"):
        assert f"| {order} | 2 | 0 |  | 2 of 2 |" in md


def test_the_seventeenth_pass_order_signals_one_semaphore_and_the_product_a_ring(module):
    """stream-1sem is the order that failed on the H200: every call signals the module's one
    semaphore, each call's wait met at once; the product's stream order signals a ring."""
    sys.path.insert(0, str(BENCH))
    import gpu_stream_stress as S
    import numpy as np

    import polaris_runtime as pr

    mods = {o: pr.load(module, device="local-sync", order="stream") for o in ("stream", "stream-1sem")}
    S._one_semaphore(mods["stream-1sem"])
    for order, mod in mods.items():
        p = np.ones(256, np.float32)
        params, state = p, mod.init(p)
        for _ in range(11):
            params, state = mod.step(params, np.full(256, 1e-3, np.float32), state)
        mod.wait()
        assert mod.step_count(state) == 11
    assert mods["stream-1sem"]._sem.query() == 12  # init and 11 steps on one semaphore
    assert [s.query() for s in mods["stream"]._ring] == [2, 2, 2, 2, 1, 1, 1, 1]


def test_orders_are_checked(module, tmp_path):
    res = _run("run", module, "--out", tmp_path, "--device", "local-sync", "--orders", "stream")
    assert res.returncode == 2 and "that includes fences (the reference)" in res.stderr


def test_a_failing_trial_is_counted_with_its_error(module, tmp_path):
    # local-task may finish calls out of order: the runtime refuses order="stream" there
    res = _run("run", module, "--out", tmp_path, "--device", "local-task", "--steps", "50", "--trials", "1")
    rows = json.loads((tmp_path / "stress.json").read_text())["rows"]
    for order in ("stream", "stream-1sem"):
        (r,) = [r for r in rows if r["order"] == order]
        assert "order='stream' needs a driver" in r["error"] and r["done"] == 0
    md = (tmp_path / "stress.md").read_text()
    assert "| stream | 1 | 1 | 0 | 0 of 0 |" in md and "order='stream' needs a driver" in md
    assert "| stream-1sem | 1 | 1 | 0 | 0 of 0 |" in md and "| fences | 1 | 0 |  | 1 of 1 |" in md
    assert res.returncode == 0  # the fence-chained trial finished: the failure is a result, not the probe's


# the device host has the IREE runtime and numpy but no polaris package: the trials, processes of
# their own, must find polaris_runtime in the checkout (the nineteenth pass's first stress run
# lost every trial to "No module named 'polaris_runtime'")
_BARE = """
import runpy, sys
sys.meta_path[:] = [f for f in sys.meta_path if "polaris" not in getattr(f, "__module__", "")]  # the editable installs
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_a_trial_finds_the_runtime_in_a_bare_checkout(module, tmp_path):
    blocked = subprocess.run([sys.executable, "-c", _BARE.replace("runpy.run_path(sys.argv[0], run_name=\"__main__\")", "import polaris_runtime")],
                             capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert "No module named 'polaris_runtime'" in blocked.stderr  # the wrapper does hide the installed runtime
    res = subprocess.run([sys.executable, "-c", _BARE, str(BENCH / "gpu_stream_stress.py"), "one", str(module),
                          "--device", "local-sync", "--order", "fences", "--steps", "5"],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out.get("error") is None and out["done"] == 5 and out["count"] == 5, out
