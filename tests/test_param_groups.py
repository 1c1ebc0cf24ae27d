"""Parameter groups and frozen leaves from the layout file, compiled and run."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from click.testing import CliRunner

import polaris
import polaris_runtime as pr
from polaris.cli.__main__ import cli
from polaris_compiler import Layout
from polaris_compiler import groups as param_groups
from polaris_compiler.errors import LayoutError

LAYOUT = {
    "params": {"embed": {"w": [10, 4]}, "dense": {"kernel": [4, 3], "bias": [3]}, "norm": {"scale": [3]}},
    "groups": [
        {"label": "no_decay", "match": ["*/bias", "*/scale"], "optimizer": "adam", "options": {"learning_rate": 0.01}},
        {"label": "decay", "match": ["*"], "optimizer": "adamw", "options": {"learning_rate": 0.01, "decay": 0.1}},
    ],
    "freeze": ["embed/*"],
}


def params(rng):
    return {
        "embed": {"w": rng.standard_normal((10, 4)).astype(np.float32)},
        "dense": {"kernel": rng.standard_normal((4, 3)).astype(np.float32), "bias": rng.standard_normal(3).astype(np.float32)},
        "norm": {"scale": rng.standard_normal(3).astype(np.float32)},
    }


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    d = tmp_path_factory.mktemp("groups")
    (d / "layout.json").write_text(json.dumps(LAYOUT))
    r = CliRunner().invoke(cli, ["compile", "groups", "--layout", str(d / "layout.json"), "-o", str(d / "g.vmfb")])
    assert r.exit_code == 0, r.output + r.stderr
    return d / "g.vmfb", Layout.from_file(d / "layout.json")


def test_groups_module_matches_eager_jax_and_records_the_groups(compiled):
    path, layout = compiled
    opt = pr.load(path)
    m = opt.manifest.raw
    assert [g["label"] for g in m["param_groups"]] == ["no_decay", "decay"]
    assert m["labels"] == {"dense/bias": "no_decay", "dense/kernel": "decay", "embed/w": "frozen", "norm/scale": "no_decay"}
    assert m["frozen"] == ["embed/w"]
    assert set(opt.hyperparameters) == {"decay/learning_rate", "no_decay/learning_rate"}
    tx, _ = param_groups.build(layout)
    rng = np.random.default_rng(0)
    p0 = params(rng)
    grads = [params(rng) for _ in range(30)]
    s = opt.init(p0)
    p = p0
    for g in grads:
        p, s = opt.step(p, g, s)
    ref, rs = p0, tx.init(p0)
    step = jax.jit(lambda p, g, s: (lambda u, s2: (polaris.apply_updates(p, u), s2))(*tx.update(g, s, p)))
    for g in grads:
        ref, rs = step(ref, g, rs)
    got = p.numpy()
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got["embed"]["w"], p0["embed"]["w"])  # frozen
    # the bias follows plain adam (no decay); the kernel follows adamw
    adam = polaris.optimizers.adam(learning_rate=0.01)
    b, st = p0["dense"]["bias"], adam.init(p0["dense"]["bias"])
    for g in grads:
        u, st = adam.update(g["dense"]["bias"], st)
        b = b + u
    np.testing.assert_allclose(got["dense"]["bias"], b, rtol=1e-5, atol=1e-6)
    text = CliRunner().invoke(cli, ["inspect", str(path)]).output
    assert "no_decay: adam" in text and "frozen (no updates, no state): embed/w" in text


def test_one_group_hyperparameter_changes_alone(compiled):
    opt = pr.load(compiled[0])
    s = opt.init(params(np.random.default_rng(1)))
    opt.set_hyperparameter(s, "no_decay/learning_rate", 0.5)
    assert opt.get_hyperparameter(s, "no_decay/learning_rate") == pytest.approx(0.5)
    assert opt.get_hyperparameter(s, "decay/learning_rate") == pytest.approx(0.01)


def test_freeze_from_the_command_line(tmp_path):
    (tmp_path / "l.json").write_text(json.dumps({"a": [3], "b": [2]}))
    r = CliRunner().invoke(cli, ["compile", "sgd", "learning_rate=0.5", "--layout", str(tmp_path / "l.json"), "--freeze", "a", "-o", str(tmp_path / "s.vmfb")])
    assert r.exit_code == 0, r.stderr
    opt = pr.load(tmp_path / "s.vmfb")
    p = {"a": np.ones(3, np.float32), "b": np.ones(2, np.float32)}
    p2, _ = opt.step(p, {"a": np.ones(3, np.float32), "b": np.ones(2, np.float32)}, opt.init(p))
    np.testing.assert_array_equal(p2["a"], 1.0)
    np.testing.assert_allclose(p2["b"], 0.5)


@pytest.mark.parametrize(
    "layout, args, message",
    [
        ({"params": {"a": [3], "b": [2]}, "groups": [{"match": ["a"], "optimizer": "sgd"}]}, [], "leaf 'b' matches no parameter group"),
        ({"params": {"a": [3]}, "groups": [{"match": ["a"], "optimizer": "sgd"}, {"match": ["zzz"], "optimizer": "adam"}]}, [], "parameter groups ['group1'] match no leaf"),
        ({"params": {"a": [3]}, "groups": [{"match": ["*"], "optimizer": "adamm"}]}, [], "unknown optimizer 'adamm'"),
        ({"params": {"a": [3]}, "groups": [{"match": "*", "optimizer": "sgd"}]}, [], "`match` must be a list of patterns"),
        ({"params": {"a": [3]}, "groups": [{"match": ["*"], "optimizer": "sgd", "options": {"lr": 1}}]}, [], "unknown option 'lr'"),
        ({"a": [3]}, [], 'has no "groups" list'),
    ],
)
def test_bad_groups_exit_2(tmp_path, layout, args, message):
    (tmp_path / "l.json").write_text(json.dumps(layout))
    r = CliRunner().invoke(cli, ["compile", "groups", "--layout", str(tmp_path / "l.json"), "-o", str(tmp_path / "x.vmfb"), *args])
    assert r.exit_code == 2, r.output
    assert message in r.stderr, r.stderr


def test_masks_need_named_tensors():
    with pytest.raises(LayoutError, match="the flat layout has none"):
        param_groups.build(Layout.flat(), polaris.optimizers.sgd(), "sgd", ("a",))
    r = CliRunner().invoke(cli, ["compile", "groups"])
    assert r.exit_code == 2 and "needs --layout" in r.stderr
