"""The runtime's contract: binding by name or position, device residency, and errors that say what is wrong."""

from __future__ import annotations

import numpy as np
import pytest

import polaris_runtime as pr
from polaris_compiler import Layout

PARAMS = {"enc": {"w": np.ones((3, 2), np.float32), "b": np.zeros(2, np.float32)}, "head": np.ones(4, np.float32)}


def layout():
    return Layout.from_tree(PARAMS)


@pytest.fixture(scope="module")
def adam(modules):
    return modules.load("adam", dict(learning_rate=0.1), layout())


def grads(scale=0.5):
    return {"enc": {"w": np.full((3, 2), scale, np.float32), "b": np.full(2, scale, np.float32)}, "head": np.full(4, scale, np.float32)}


def test_binds_by_name_and_by_position(adam):
    s1 = adam.init(PARAMS)
    p1, s1 = adam.step(PARAMS, grads(), s1)
    order = [PARAMS["enc"]["b"], PARAMS["enc"]["w"], PARAMS["head"]]  # ABI order: names sorted
    assert adam.manifest.params[0].name == "enc/b"
    s2 = adam.init(order)
    g = grads()
    p2, s2 = adam.step(order, [g["enc"]["b"], g["enc"]["w"], g["head"]], s2)
    for a, b in zip(p1.leaves(), p2.leaves(), strict=True):
        np.testing.assert_array_equal(a, b)
    out = p1.numpy()
    assert set(out) == {"enc", "head"} and out["enc"]["w"].shape == (3, 2)
    assert p1["head"].shape == (4,)


def test_state_stays_on_device_and_is_donated(adam):
    s = adam.init(PARAMS)
    p, s2 = adam.step(PARAMS, grads(), s)
    with pytest.raises(pr.ConsumedError, match="donated to step"):
        adam.step(PARAMS, grads(), s)
    p3, s3 = adam.step(p, grads(), s2)
    with pytest.raises(pr.ConsumedError, match="this params tree was donated"):
        p.numpy()
    assert int(s3["0/count"]) == 2
    assert "Tree(state" in repr(s3)


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"enc": {"w": np.ones((3, 2), np.float32)}, "head": np.ones(4, np.float32)}, r"missing leaves \['enc/b'\]"),
        ({**PARAMS, "extra": np.ones(1, np.float32)}, r"unexpected leaves \['extra'\]"),
        ({"enc": {"w": np.ones((2, 3), np.float32), "b": np.zeros(2, np.float32)}, "head": np.ones(4, np.float32)}, r"params leaf 'enc/w' has shape \(2, 3\) but the module expects \(3, 2\)"),
        ({"enc": {"w": np.ones((3, 2), np.float64), "b": np.zeros(2, np.float32)}, "head": np.ones(4, np.float32)}, r"params leaf 'enc/w' has dtype float64 but the module expects float32"),
        ([np.ones(2, np.float32)], r"params has 1 arrays but the module expects 3: enc/b, enc/w, head"),
        ("nonsense", r"params must be a dict of arrays, a list in ABI order or a Tree"),
    ],
)
def test_bad_params_are_refused_before_calling_iree(adam, bad, message):
    with pytest.raises(pr.BindingError, match=message):
        adam.init(bad)


def test_bad_input_does_not_consume_the_state(adam):
    s = adam.init(PARAMS)
    p, s = adam.step(PARAMS, grads(), s)
    before = s.leaves()
    with pytest.raises(pr.BindingError):
        adam.step(p, {"enc": {"w": np.ones((3, 2), np.float32)}}, s)
    for a, b in zip(before, s.leaves(), strict=True):  # still usable, unchanged
        np.testing.assert_array_equal(a, b)
    adam.step(p, grads(), s)


def test_flat_dynamic_lengths_must_agree(modules):
    opt = modules.load("sgd", dict(learning_rate=0.1))
    s = opt.init(np.ones(5, np.float32))
    with pytest.raises(pr.BindingError, match="dynamic dimension 'n'"):
        opt.step(np.ones(5, np.float32), np.ones(6, np.float32), s)


def test_trees_from_another_device_are_refused(modules):
    a = modules.load("sgd", dict(learning_rate=0.1), device="local-sync")
    b = modules.load("sgd", dict(learning_rate=0.1), device="local-task")
    s = a.init(np.ones(3, np.float32))
    with pytest.raises(pr.DeviceError, match="lives on driver 'local-sync'"):
        b.step(np.ones(3, np.float32), np.ones(3, np.float32), s)


def test_module_for_another_target_is_refused(modules):
    path = modules.path("sgd", dict(learning_rate=0.1), target="cuda")
    with pytest.raises(pr.DeviceError, match="compiled for cuda and cannot run on driver 'local-task'; valid drivers for it: cuda"):
        pr.load(path, device="local-task")


def test_unknown_driver_is_named(modules):
    with pytest.raises(pr.DeviceError, match="driver 'warp-drive'"):
        pr.load(modules.path("sgd", dict(learning_rate=0.1)), device="warp-drive")


@pytest.mark.parametrize("cut", ["truncated", "zeros", "flipped", "tiny"])
def test_corrupt_or_truncated_modules_are_refused(modules, tmp_path, cut):
    data = modules.path("adam", dict(learning_rate=0.1)).read_bytes()
    bad = {
        "truncated": data[: len(data) // 2],
        "zeros": bytes(len(data)),
        "flipped": data[:64] + bytes(256) + data[320:],
        "tiny": b"vmfb",
    }[cut]
    f = tmp_path / "bad.vmfb"
    f.write_bytes(bad)
    with pytest.raises(pr.ModuleError, match="not a valid IREE module|not an IREE module"):
        pr.load(f)
    with pytest.raises(pr.ModuleError):
        pr.inspect_module(f)


def _compile_with_manifest_edit(modules, edit):
    import iree.compiler as ic

    art = modules.artifact("sgd", dict(learning_rate=0.1))
    mlir = edit(art.mlir)
    return ic.compile_str(mlir, target_backends=["llvm-cpu"], input_type="stablehlo", extra_args=["--iree-llvmcpu-target-cpu=host"])


def test_unknown_schema_version_is_refused_naming_both(modules):
    vmfb = _compile_with_manifest_edit(modules, lambda t: t.replace("schema_version\\22:1", "schema_version\\22:99"))
    with pytest.raises(pr.SchemaVersionError, match=r"schema version 99, but this runtime .* reads schema version\(s\) 1, 2"):
        pr.load(vmfb)


def test_module_without_manifest_is_refused(modules):
    vmfb = _compile_with_manifest_edit(modules, lambda t: t.replace("polaris.manifest", "other.key"))
    with pytest.raises(pr.ModuleError, match="carries no polaris-iree manifest"):
        pr.load(vmfb)


def test_missing_file(tmp_path):
    with pytest.raises(pr.ModuleError, match="does not exist"):
        pr.load(tmp_path / "nope.vmfb")


def test_unknown_hyperparameter_names_the_valid_ones(adam):
    s = adam.init(PARAMS)
    with pytest.raises(KeyError, match="tunable: learning_rate"):
        adam.set_hyperparameter(s, "momentum", 0.9)


def test_unknown_function_and_groups(adam):
    with pytest.raises(pr.ModuleError, match="exports no function 'train'"):
        adam.call("train", params=PARAMS)
    with pytest.raises(pr.BindingError, match="missing"):
        adam.call("step", params=PARAMS)
    with pytest.raises(AttributeError, match="exported functions: init, step, update"):
        adam.nothing  # noqa: B018


def test_the_same_device_array_twice_in_a_donated_group_is_refused(modules):
    import iree.runtime as rt

    opt = modules.load("adam", dict(learning_rate=0.1))
    s = opt.init(np.ones(3, np.float32))
    mu = s.arrays[1]
    arrays = [s.arrays[0], mu, mu, s.arrays[3]]
    assert isinstance(mu, rt.DeviceArray)
    with pytest.raises(pr.BindingError, match="same device array as another donated leaf"):
        opt.step(np.ones(3, np.float32), np.ones(3, np.float32), arrays)


def test_init_gives_every_state_leaf_its_own_buffer(modules):
    """IREE may return one buffer for equal results (mu = nu = 0); step writes in place."""
    opt = modules.load("adam", dict(learning_rate=0.1, eps_root=0.0))
    p = np.ones(3, np.float32)
    s = opt.init(p)
    _, s = opt.step(p, np.ones(3, np.float32), s)
    np.testing.assert_allclose(s["0/mu"], 0.1, rtol=1e-6)
    np.testing.assert_allclose(s["0/nu"], 0.001, rtol=1e-6)


def test_default_cpu_driver_follows_the_core_count(monkeypatch, modules):
    """local-sync on <= 2 cores (measured faster there), local-task above; env overrides."""
    from polaris_runtime import device as dev

    monkeypatch.delenv("POLARIS_CPU_DRIVER", raising=False)
    monkeypatch.setattr(dev.os, "cpu_count", lambda: 2)
    assert dev.pick_driver(["llvm-cpu"], None) == "local-sync"
    monkeypatch.setattr(dev.os, "cpu_count", lambda: 16)
    assert dev.pick_driver(["llvm-cpu"], None) == "local-task"
    assert dev.pick_driver(["vulkan"], None) == "vulkan"
    monkeypatch.setenv("POLARIS_CPU_DRIVER", "local-sync")
    assert dev.pick_driver(["llvm-cpu"], None) == "local-sync"
    assert pr.load(modules.path("sgd", dict(learning_rate=0.1))).driver == "local-sync"
