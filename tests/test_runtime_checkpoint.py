"""Checkpoints: bit-identical resume, atomic writes, refusal of checkpoints that do not belong."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import polaris_runtime as pr
from polaris_compiler import Layout
from polaris_runtime import checkpoint

PARAMS = {"enc": {"w": np.ones((3, 2), np.float32), "b": np.zeros(2, np.float32)}, "head": np.ones(4, np.float32)}
N = 50


def layout():
    return Layout.from_tree(PARAMS)


def grads(i: int, n: int = N) -> np.ndarray:
    return np.cos(np.arange(n, dtype=np.float32) * 0.11 + i).astype(np.float32)


def start(n: int = N) -> np.ndarray:
    return np.linspace(-2, 2, n, dtype=np.float32)


@pytest.fixture(scope="module")
def adam(modules):
    return modules.load("adam", dict(learning_rate=0.1))


def leaves_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_resume_continues_bit_identically(adam, tmp_path, suffix):
    p, s = start(), adam.init(start())
    for i in range(20):
        p, s = adam.step(p, grads(i), s)
    adam.set_hyperparameter(s, "learning_rate", 0.05)  # a tuned rate is part of the state
    for i in range(20, 30):
        p, s = adam.step(p, grads(i), s)
    path = tmp_path / f"ckpt{suffix}"
    assert adam.save_checkpoint(path, s, p) == path
    p_saved, s_saved = p.leaves(), s.leaves()  # saving reads back without consuming
    for i in range(30, 60):
        p, s = adam.step(p, grads(i), s)

    s2, p2 = adam.restore_checkpoint(path)
    leaves_equal(s2.leaves(), s_saved)
    leaves_equal(p2.leaves(), p_saved)
    assert adam.step_count(s2) == 30
    assert adam.current_learning_rate(s2) == np.float32(0.05)
    for i in range(30, 60):
        p2, s2 = adam.step(p2, grads(i), s2)
    leaves_equal(p2.leaves(), p.leaves())
    leaves_equal(s2.leaves(), s.leaves())
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_state_only_checkpoint_and_module_level_api(adam, tmp_path):
    s = adam.init(start())
    p, s = adam.step(start(), grads(0), s)
    path = checkpoint.save(tmp_path / "s.safetensors", adam, s)
    s2, params = checkpoint.restore(path, adam)
    assert params is None
    leaves_equal(s2.leaves(), s.leaves())
    meta, arrays = checkpoint.read(path)
    assert meta["module"]["name"] == "adam" and meta["module"]["options"]["learning_rate"] == 0.1
    assert meta["module"]["manifest_sha256"] == checkpoint.manifest_digest(adam.manifest)
    assert [x["name"] for x in meta["state"]] == ["0/count", "0/mu", "0/nu", "1/learning_rate"]
    assert meta["state"][1] == {"name": "0/mu", "shape": [N], "dtype": "float32"}
    assert meta["schema_version"] == 1 and sorted(arrays) == [f"state/{x['name']}" for x in meta["state"]]
    # Host dicts and lists are accepted as well as device trees.
    checkpoint.save(tmp_path / "h.npz", adam, s.numpy(), p.numpy())
    s3, p3 = checkpoint.restore(tmp_path / "h.npz", adam)
    leaves_equal(s3.leaves(), s.leaves())
    leaves_equal(p3.leaves(), p.leaves())


def test_restored_leaves_have_their_own_buffers(adam, tmp_path):
    """step writes state in place, so restore must not share one buffer between equal leaves."""
    s = adam.init(start())  # mu == nu == 0
    adam.save_checkpoint(tmp_path / "z.safetensors", s)
    s2, _ = adam.restore_checkpoint(tmp_path / "z.safetensors")
    assert len({id(a) for a in s2.arrays}) == len(s2.arrays)
    p, s2 = adam.step(start(), grads(0), s2)
    assert not np.array_equal(s2["0/mu"], s2["0/nu"])


@pytest.mark.parametrize("where", ["replace", "write"])
def test_crash_mid_save_keeps_the_previous_checkpoint(adam, tmp_path, monkeypatch, where):
    path = tmp_path / "c.safetensors"
    s = adam.init(start())
    p, s = adam.step(start(), grads(0), s)
    adam.save_checkpoint(path, s, p)
    before = path.read_bytes()
    p, s = adam.step(p, grads(1), s)

    def boom(*a, **k):
        raise OSError("disk on fire")

    if where == "replace":
        monkeypatch.setattr(os, "replace", boom)
    else:  # the file is half written when the writer dies
        real_fsync = os.fsync
        monkeypatch.setattr(os, "fsync", lambda fd: (real_fsync(fd), boom()))
    with pytest.raises(OSError, match="disk on fire"):
        adam.save_checkpoint(path, s, p)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["c.safetensors"]  # no temporary files left
    s2, p2 = adam.restore_checkpoint(path)
    assert adam.step_count(s2) == 1
    s.numpy()  # the live state was not consumed by the failed save


# -- checkpoints that do not belong --------------------------------------------------------------
@pytest.fixture(scope="module")
def saved(adam, tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    s = adam.init(start())
    p, s = adam.step(start(), grads(0), s)
    adam.save_checkpoint(d / "adam.safetensors", s, p)
    return d / "adam.safetensors"


@pytest.mark.parametrize(
    "other, message",
    [
        (("sgd", dict(learning_rate=0.1, momentum=0.9), None), r"optimizer: checkpoint 'adam', module 'sgd'"),
        (("adam", dict(learning_rate=0.1, b1=0.8), None), r"option b1: checkpoint 0.9, module 0.8"),
        (("adam", dict(learning_rate=0.1), "tree"), r"layout: checkpoint 'flat', module 'tree'"),
    ],
)
def test_a_checkpoint_of_another_module_is_refused(modules, saved, other, message):
    name, options, lay = other
    opt = modules.load(name, options, layout() if lay else None)
    with pytest.raises(pr.CheckpointError, match=f"does not belong to this module .*{message}"):
        opt.restore_checkpoint(saved)


def test_another_tree_layout_is_refused_naming_the_leaves(modules, tmp_path):
    a = modules.load("adam", dict(learning_rate=0.1), layout())
    other = {"enc": {"w": np.ones((3, 3), np.float32), "b": np.zeros(2, np.float32)}, "head": np.ones(4, np.float32)}
    b = modules.load("adam", dict(learning_rate=0.1), Layout.from_tree(other))
    a.save_checkpoint(tmp_path / "a.npz", a.init(PARAMS), PARAMS)
    with pytest.raises(pr.CheckpointError, match=r"parameter layout: checkpoint \[enc/b \(2,\) float32, enc/w \(3, 2\) float32"):
        b.restore_checkpoint(tmp_path / "a.npz")


def test_another_build_is_accepted_unless_strict(modules, saved, adam):
    other = modules.load("adam", dict(learning_rate=0.1), device="local-sync")  # same build, other driver
    s, p = other.restore_checkpoint(saved, strict=True)
    assert other.step_count(s) == 1
    meta, _ = checkpoint.read(saved)
    meta["module"]["manifest_sha256"] = "0" * 64
    assert checkpoint.differences(meta, adam.manifest) == []
    assert "manifest digest" in checkpoint.differences(meta, adam.manifest, strict=True)[0]


def test_refused_restore_leaves_the_live_state_alone(modules, saved):
    sgd = modules.load("sgd", dict(learning_rate=0.1, momentum=0.9))
    p = start()
    s = sgd.init(p)
    p, s = sgd.step(p, grads(0), s)
    before = s.leaves()
    with pytest.raises(pr.CheckpointError):
        sgd.restore_checkpoint(saved)
    leaves_equal(s.leaves(), before)
    sgd.step(p, grads(1), s)


# -- unreadable checkpoints -----------------------------------------------------------------------
def _corruptions(data: bytes) -> dict[str, bytes]:
    n = int.from_bytes(data[:8], "little")
    return {
        "truncated": data[: len(data) // 2],
        "header-only": data[: 8 + n],
        "tiny": data[:5],
        "empty": b"",
        "zeros": bytes(len(data)),
        "flipped-data": data[:-20] + bytes(b ^ 0xFF for b in data[-20:]),
        "flipped-header": data[:8] + data[8:40].replace(b"{", b"[") + data[40:],
    }


@pytest.mark.parametrize("cut", list(_corruptions(b"\x10" + bytes(7) + b"{" * 32 + bytes(64))))
def test_corrupt_or_truncated_checkpoints_are_refused(adam, saved, tmp_path, cut):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(_corruptions(saved.read_bytes())[cut])
    with pytest.raises(pr.CheckpointError, match="corrupt|truncated|not a readable"):
        adam.restore_checkpoint(bad)


@pytest.mark.parametrize("cut", ["truncated", "flipped"])
def test_corrupt_npz_is_refused(adam, tmp_path, cut):
    good = tmp_path / "good.npz"
    adam.save_checkpoint(good, adam.init(start()))
    data = good.read_bytes()
    bad = tmp_path / "bad.npz"
    bad.write_bytes(data[: len(data) // 2] if cut == "truncated" else data[:100] + bytes(200) + data[300:])
    with pytest.raises(pr.CheckpointError, match="corrupt|truncated|not a readable"):
        adam.restore_checkpoint(bad)


def test_foreign_files_and_missing_files(adam, tmp_path):
    from safetensors.numpy import save_file

    save_file({"w": np.ones(3, np.float32)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(pr.CheckpointError, match="not a polaris-iree checkpoint"):
        adam.restore_checkpoint(tmp_path / "model.safetensors")
    with pytest.raises(pr.CheckpointError, match="does not exist"):
        adam.restore_checkpoint(tmp_path / "nope.safetensors")
    np.savez(tmp_path / "plain.npz", w=np.ones(3))
    with pytest.raises(pr.CheckpointError, match="not a polaris-iree checkpoint"):
        adam.restore_checkpoint(tmp_path / "plain.npz")


def test_newer_checkpoint_schema_is_refused(adam, saved, tmp_path):
    data = saved.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    meta = json.loads(header["__metadata__"]["polaris.checkpoint"])
    meta["schema_version"] = 7
    header["__metadata__"]["polaris.checkpoint"] = json.dumps(meta)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    (tmp_path / "v7.safetensors").write_bytes(len(text).to_bytes(8, "little") + text + data[8 + n :])
    with pytest.raises(pr.CheckpointError, match="schema version 7; this runtime reads version 1"):
        adam.restore_checkpoint(tmp_path / "v7.safetensors")


def test_saving_a_consumed_or_wrong_tree_is_refused(adam, tmp_path):
    s = adam.init(start())
    p, s2 = adam.step(start(), grads(0), s)
    with pytest.raises(pr.CheckpointError, match="donated to step"):
        adam.save_checkpoint(tmp_path / "x.safetensors", s)
    with pytest.raises(pr.CheckpointError, match="tree passed as state has leaves"):
        adam.save_checkpoint(tmp_path / "x.safetensors", p)
    with pytest.raises(pr.CheckpointError, match="has dtype float64"):
        adam.save_checkpoint(tmp_path / "x.safetensors", s2, start().astype(np.float64))
    assert not list(tmp_path.iterdir())


def test_a_checkpoint_resumes_on_another_build_of_the_same_optimizer(modules, adam, tmp_path):
    """Another target/flags (here a generic-x86 build) is another manifest digest: accepted,
    refused only with strict=True."""
    generic = modules.load("adam", dict(learning_rate=0.1), cpu="generic")
    assert checkpoint.manifest_digest(generic.manifest) != checkpoint.manifest_digest(adam.manifest)
    p, s = start(), adam.init(start())
    for i in range(5):
        p, s = adam.step(p, grads(i), s)
    adam.save_checkpoint(tmp_path / "host.safetensors", s, p)
    with pytest.raises(pr.CheckpointError, match="manifest digest"):
        generic.restore_checkpoint(tmp_path / "host.safetensors", strict=True)
    s2, p2 = generic.restore_checkpoint(tmp_path / "host.safetensors")
    for i in range(5, 10):
        p, s = adam.step(p, grads(i), s)
        p2, s2 = generic.step(p2, grads(i), s2)
    assert generic.step_count(s2) == 10
    np.testing.assert_allclose(p2.numpy(), p.numpy(), rtol=1e-6, atol=1e-7)


def test_flat_checkpoints_move_between_any_length_and_fixed_size_modules(modules, adam, saved, tmp_path):
    """A flat checkpoint restores into the same optimizer compiled with ``--size`` for exactly its
    length, and back; another length is refused naming the shapes."""
    fixed = modules.load("adam", dict(learning_rate=0.1), Layout.flat(size=N))
    s, p = fixed.restore_checkpoint(saved)
    assert fixed.step_count(s) == 1
    for i in range(1, 4):
        p, s = fixed.step(p, grads(i), s)
    fixed.save_checkpoint(tmp_path / "fixed.safetensors", s, p)
    s2, p2 = adam.restore_checkpoint(tmp_path / "fixed.safetensors")
    leaves_equal(p2.leaves(), p.leaves())
    leaves_equal(s2.leaves(), s.leaves())
    shorter = modules.load("adam", dict(learning_rate=0.1), Layout.flat(size=N - 1))
    with pytest.raises(pr.CheckpointError, match=rf"does not belong to this module .*\({N},\)"):
        shorter.restore_checkpoint(saved)
