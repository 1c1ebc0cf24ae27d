"""Long loops do not leak: resident memory stays flat while stepping (bench/soak.py's loop)."""

from __future__ import annotations

import importlib.util
import pathlib

import pytest

BENCH = pathlib.Path(__file__).resolve().parents[1] / "bench"
MIB = 2**20


def _bench(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def adam(modules):
    return modules.load("adam", dict(learning_rate=1e-3))


def test_300_steps_do_not_grow_rss(adam, tmp_path):
    soak = _bench("soak")
    res = soak.soak(adam, steps=300, n=100_000, every=100, warmup=100, checkpoint_every=100, checkpoint_dir=tmp_path)
    assert res["step_count"] == 400
    assert [s[0] for s in res["samples"]] == [0, 100, 200, 300]
    assert res["growth_bytes"] < 2 * MIB, soak.markdown(res, {"when": "", "device": adam.driver, "module": "",
                                                               "limit_mib": 2, "passed": False})


@pytest.mark.slow
def test_soak_10k_steps(adam, tmp_path):
    soak = _bench("soak")
    res = soak.soak(adam, steps=10_000, n=100_000, every=500, warmup=200, checkpoint_every=2_500, checkpoint_dir=tmp_path)
    assert res["growth_bytes"] < 5 * MIB


def test_footprint_sizes_are_measured():
    fp = _bench("footprint")
    s = fp.sizes_here()
    assert s["dists"]["iree-base-runtime"]["bytes"] > 10 * 10**6
    assert 0 < s["dists"]["polaris_runtime"]["bytes"] < 10**6
    assert s["required_bytes"] > s["required_without_tracing_and_tools_bytes"] > 0
