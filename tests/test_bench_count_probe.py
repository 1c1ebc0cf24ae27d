"""bench/gpu_count_probe.py (the sixteenth and seventeenth passes' probe, timed on a GPU by
bench/gpu_session.sh): its three modules' CUDA steps are what the probe says they are, and on the
CPU the product's spare counts step exactly like the module before them."""

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


def test_before_spare_counts_the_cuda_step_waited_on_a_count_dispatch_and_copied_the_count(cuda_modules):
    ops = cuda_modules["before"]["vm_ops"]
    assert ops["command_buffer"] == ["create", "dispatch", "execution_barrier", "dispatch", "copy_buffer", "execution_barrier", "finalize"]
    assert ops["queue"] == ["device.queue.execute.indirect"]
    assert cuda_modules["before"]["spares"] == []


def test_with_spare_counts_the_cuda_step_is_two_independent_dispatches(cuda_modules):
    ops = cuda_modules["spare counts"]["vm_ops"]
    assert ops["command_buffer"] == ["create", "dispatch", "dispatch", "execution_barrier", "finalize"]
    assert ops["queue"] == ["device.queue.execute.indirect"]  # no queue allocation (the split count's cost)
    assert cuda_modules["spare counts"]["spares"] == ["0/count"]


def test_the_kernel_only_floor_is_one_dispatch(cuda_modules):
    # the floor row: no count work at all, so nothing but the element-wise kernel is left
    ops = cuda_modules["kernel-only"]["vm_ops"]
    assert ops["command_buffer"] == ["create", "dispatch", "execution_barrier", "finalize"]


@pytest.mark.slow  # three compiles and their VM code (~10 s); `make bench` runs it beside the probe's dry run
def test_on_the_cpu_spare_counts_step_like_the_module_before(tmp_path):
    P.build(tmp_path, "llvm-cpu", sizes=(1000,))
    case = json.loads((tmp_path / "index.json").read_text())["cases"][0]
    rng = np.random.default_rng(0)
    p = rng.standard_normal(1000, dtype=np.float32)
    g = rng.standard_normal(1000, dtype=np.float32)
    got = {}
    for kind, spare in (("before", False), ("spare counts", True)):
        s = P.RawStep(tmp_path / case[kind]["file"], "local-sync", p, g, case["state"], spare)
        for _ in range(7):
            s.step()
        got[kind] = s.read()
    got["runtime"] = P._runtime_steps(tmp_path / case["spare counts"]["file"], "local-sync", p, g, 7)
    assert got["before"][1] == got["spare counts"][1] == got["runtime"][1] == 7  # the counts went back and forth
    np.testing.assert_array_equal(got["before"][0], got["spare counts"][0])
    np.testing.assert_array_equal(got["before"][0], got["runtime"][0])
    assert np.abs(got["before"][0] - p).max() > 1e-3  # it did step
