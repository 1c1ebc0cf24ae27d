"""`make demo` end to end, shortened: build the modules, then train in a process without JAX."""

from __future__ import annotations

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_demo_builds_and_trains_on_iree_modules_alone(tmp_path):
    out = tmp_path / "demo"
    build = subprocess.run(
        [sys.executable, str(ROOT / "examples/mlp/build.py"), "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    assert (out / "adam.vmfb").is_file() and (out / "mlp.vmfb").is_file()
    train = subprocess.run(
        [sys.executable, str(ROOT / "examples/mlp/train.py"), "--out", str(out), "--steps", "400", "--every", "100"],
        capture_output=True, text=True, timeout=300,
    )
    assert train.returncode == 0, train.stdout + train.stderr
    assert "OK" in train.stdout.splitlines()[-1]
    assert "held-out accuracy" in train.stdout and "no recompile" in train.stdout


def test_demo_fails_when_the_loss_does_not_drop(tmp_path):
    """The demo's own check can fail: with a zero learning rate nothing is learned."""
    out = tmp_path / "demo"
    build = subprocess.run(
        [sys.executable, str(ROOT / "examples/mlp/build.py"), "--out", str(out), "--learning-rate", "0.0"],
        capture_output=True, text=True, timeout=300,
    )
    assert build.returncode == 0, build.stderr
    train = subprocess.run(
        [sys.executable, str(ROOT / "examples/mlp/train.py"), "--out", str(out), "--steps", "100", "--every", "50"],
        capture_output=True, text=True, timeout=300,
    )
    assert train.returncode == 1
    assert "FAIL: the loss did not drop" in train.stderr
