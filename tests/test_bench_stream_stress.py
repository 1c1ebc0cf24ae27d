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
    assert sorted(r["order"] for r in rows) == ["fences", "fences", "stream", "stream"]
    assert all(r["done"] == 300 and r["count"] == 300 and r["order_used"] == r["order"] for r in rows), rows
    assert len({r["digest"] for r in rows}) == 1  # every trial, both orders: the same parameters
    md = (tmp_path / "stress.md").read_text()
    assert "| stream | 2 | 0 |  | 2 of 2 |" in md and "| fences | 2 | 0 |  | 2 of 2 |" in md


def test_a_failing_trial_is_counted_with_its_error(module, tmp_path):
    # local-task may finish calls out of order: the runtime refuses order="stream" there
    res = _run("run", module, "--out", tmp_path, "--device", "local-task", "--steps", "50", "--trials", "1")
    rows = json.loads((tmp_path / "stress.json").read_text())["rows"]
    (stream,) = [r for r in rows if r["order"] == "stream"]
    assert "order='stream' needs a driver" in stream["error"] and stream["done"] == 0
    md = (tmp_path / "stress.md").read_text()
    assert "| stream | 1 | 1 | 0 | 0 of 0 |" in md and "order='stream' needs a driver" in md
    assert res.returncode == 0  # the fence-chained trial finished: the failure is a result, not the probe's
