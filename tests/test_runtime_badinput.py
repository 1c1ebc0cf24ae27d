"""Every kind of bad input is refused with a named error, and none of them touches the live state."""

from __future__ import annotations

import numpy as np
import pytest

import polaris_runtime as pr
from polaris_compiler import Layout

PARAMS = {"enc": {"w": np.ones((3, 2), np.float32), "b": np.zeros(2, np.float32)}, "head": np.ones(4, np.float32)}


def grads(v=0.5):
    return {"enc": {"w": np.full((3, 2), v, np.float32), "b": np.full(2, v, np.float32)}, "head": np.full(4, v, np.float32)}


@pytest.fixture(scope="module")
def adam(modules):
    return modules.load("adam", dict(learning_rate=0.1), Layout.from_tree(PARAMS), device="local-task")


@pytest.fixture(scope="module")
def adam_sync(modules):
    return modules.load("adam", dict(learning_rate=0.1), Layout.from_tree(PARAMS), device="local-sync")


def _bad_calls(adam, adam_sync, tmp_path):
    g = grads()
    other_state = adam_sync.init(PARAMS)
    sgd_ckpt = tmp_path / "sgd.safetensors"
    return {
        "missing grads leaf": (lambda p, s: adam.step(p, {"enc": {"w": g["enc"]["w"]}, "head": g["head"]}, s), pr.BindingError, "missing leaves"),
        "extra grads leaf": (lambda p, s: adam.step(p, {**g, "x": np.ones(1, np.float32)}, s), pr.BindingError, "unexpected leaves"),
        "wrong shape": (lambda p, s: adam.step(p, {**g, "head": np.ones(5, np.float32)}, s), pr.BindingError, r"grads leaf 'head' has shape \(5,\)"),
        "wrong dtype": (lambda p, s: adam.step(p, {**g, "head": np.ones(4, np.float64)}, s), pr.BindingError, "dtype float64"),
        "params tree as state": (lambda p, s: adam.step(p, g, p), pr.BindingError, "tree passed as state"),
        "state from another device": (lambda p, s: adam.step(p, g, other_state), pr.DeviceError, "lives on driver 'local-sync'"),
        "grads on another device": (lambda p, s: adam.step(p, adam_sync.step(PARAMS, g, adam_sync.init(PARAMS))[0], s), pr.DeviceError, "lives on driver 'local-sync'"),
        "checkpoint that does not belong": (lambda p, s: adam.restore_checkpoint(sgd_ckpt), pr.CheckpointError, "does not belong"),
        "corrupt checkpoint": (lambda p, s: adam.restore_checkpoint(tmp_path / "corrupt.safetensors"), pr.CheckpointError, "corrupt|truncated|not a readable"),
    }


CASES = [
    "missing grads leaf", "extra grads leaf", "wrong shape", "wrong dtype", "params tree as state",
    "state from another device", "grads on another device", "checkpoint that does not belong", "corrupt checkpoint",
]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_named_and_leaves_the_state_intact(modules, adam, adam_sync, tmp_path, case):
    sgd = modules.load("sgd", dict(learning_rate=0.1, momentum=0.9), Layout.from_tree(PARAMS))
    sgd.save_checkpoint(tmp_path / "sgd.safetensors", sgd.init(PARAMS))
    adam.save_checkpoint(tmp_path / "good.safetensors", adam.init(PARAMS))
    data = (tmp_path / "good.safetensors").read_bytes()
    (tmp_path / "corrupt.safetensors").write_bytes(data[: len(data) - 7])

    s = adam.init(PARAMS)
    p, s = adam.step(PARAMS, grads(), s)
    p_before, s_before = p.leaves(), s.leaves()
    call, err, message = _bad_calls(adam, adam_sync, tmp_path)[case]
    with pytest.raises(err, match=message):
        call(p, s)
    for a, b in zip(p_before + s_before, p.leaves() + s.leaves(), strict=True):
        np.testing.assert_array_equal(a, b)
    # ... and both stay usable: the next step gives what an undisturbed run gives.
    p2, s2 = adam.step(p, grads(), s)
    ref = adam.init(PARAMS)
    rp, ref = adam.step(PARAMS, grads(), ref)
    rp, ref = adam.step(rp, grads(), ref)
    for a, b in zip(rp.leaves() + ref.leaves(), p2.leaves() + s2.leaves(), strict=True):
        np.testing.assert_array_equal(a, b)
