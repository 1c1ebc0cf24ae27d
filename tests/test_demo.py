"""`make demo` end to end, shortened: build the modules, then train in a process without JAX."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    build = subprocess.run(
        [sys.executable, str(ROOT / "examples/mlp/build.py"), "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    assert (out / "adam.vmfb").is_file() and (out / "mlp.vmfb").is_file()
    return out


def _train(out, *args):
    return subprocess.run(
        [sys.executable, str(ROOT / "examples/mlp/train.py"), "--out", str(out), *args],
        capture_output=True, text=True, timeout=300,
    )


def test_demo_builds_and_trains_on_iree_modules_alone(built):
    train = _train(built, "--steps", "400", "--every", "100")
    assert train.returncode == 0, train.stdout + train.stderr
    assert "OK" in train.stdout.splitlines()[-1]
    assert "held-out accuracy" in train.stdout and "no recompile" in train.stdout


def test_demo_fails_when_the_loss_does_not_drop(built):
    """The demo's own check can fail: with a zero learning rate (set in the state of the same
    module) nothing is learned."""
    train = _train(built, "--steps", "100", "--every", "50", "--learning-rate", "0")
    assert train.returncode == 1, train.stdout + train.stderr
    assert "learning rate set to 0 (no recompile)" in train.stdout
    assert "FAIL: the loss did not drop" in train.stderr
