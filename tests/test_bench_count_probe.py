"""bench/gpu_count_probe.py (a sixteenth-pass experiment, timed on a GPU by bench/gpu_session.sh):
the ping-pong module's CUDA step is two independent dispatches and nothing else, and on the CPU
it steps exactly like the product module while its count lands in the spare buffer."""

from __future__ import annotations

import json
import pathlib
import sys

import numpy as np
import pytest

BENCH = pathlib.Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import gpu_count_probe as P  # noqa: E402


@pytest.fixture(scope="module")
def cuda_modules(tmp_path_factory):
    folder = tmp_path_factory.mktemp("count-cuda")
    P.build(folder, "cuda", sizes=(1024,))
    return json.loads((folder / "index.json").read_text())["cases"][0]


def test_the_product_cuda_step_waits_on_a_count_dispatch_and_copies_the_count(cuda_modules):
    # what the probe is about: read from the VM code of the product's --size --async CUDA module
    ops = cuda_modules["product"]["vm_ops"]
    assert ops["command_buffer"] == ["create", "dispatch", "execution_barrier", "dispatch", "copy_buffer", "execution_barrier", "finalize"]
    assert ops["queue"] == ["device.queue.execute.indirect"]


def test_the_ping_pong_cuda_step_is_two_independent_dispatches(cuda_modules):
    ops = cuda_modules["ping-pong"]["vm_ops"]
    assert ops["command_buffer"] == ["create", "dispatch", "dispatch", "execution_barrier", "finalize"]
    assert ops["queue"] == ["device.queue.execute.indirect"]  # no queue allocation (the split count's cost)


def test_pingpong_moves_the_count_alias_to_a_spare_argument():
    text = """module @m {
  func.func public @step(%arg0: tensor<4xf32> {tf.aliasing_output = 0 : i32}, %arg1: tensor<i32> {tf.aliasing_output = 1 : i32}) -> (tensor<4xf32>, tensor<i32>) attributes {iree.reflection = {k = "v"}} {
    return %arg0, %arg1 : tensor<4xf32>, tensor<i32>
  }
}"""
    out = P.pingpong(text, count_arg=1, count_result=1)
    head = next(line for line in out.splitlines() if "func.func public @step(" in line)
    assert "%a1: tensor<i32>," in head  # the count is read, no longer written in place
    assert "%spare: tensor<i32> {tf.aliasing_output = 1 : i32}" in head
    assert "%a0: tensor<4xf32> {tf.aliasing_output = 0 : i32}" in head and 'iree.reflection = {k = "v"}' in head
    assert "func.func private @step__inner(" in out and "iree.reflection" not in out.split("@step__inner")[1].split("\n")[0]
    with pytest.raises(SystemExit, match="argument 0 is tensor<4xf32>"):
        P.pingpong(text, count_arg=0, count_result=1)


@pytest.mark.slow  # two compiles and their VM code (~10 s); `make bench` runs it beside the probe's dry run
def test_on_the_cpu_the_ping_pong_module_steps_like_the_product(tmp_path):
    P.build(tmp_path, "llvm-cpu", sizes=(1000,))
    case = json.loads((tmp_path / "index.json").read_text())["cases"][0]
    rng = np.random.default_rng(0)
    p = rng.standard_normal(1000, dtype=np.float32)
    g = rng.standard_normal(1000, dtype=np.float32)
    got = {}
    for kind, spare in (("product", False), ("ping-pong", True)):
        s = P.RawStep(tmp_path / case[kind]["file"], "local-sync", p, g, case["state"], spare)
        for _ in range(7):
            s.step()
        got[kind] = s.read()
    assert got["product"][1] == got["ping-pong"][1] == 7  # the ping-pong count went back and forth
    np.testing.assert_array_equal(got["product"][0], got["ping-pong"][0])
    assert np.abs(got["product"][0] - p).max() > 1e-3  # it did step
