"""The GPU session kit runs: its scripts, dry-run on this CPU (``--target llvm-cpu`` modules on
``local-task``), so that the few device minutes a GPU session gets are not lost to a broken
script. Slow (three compiles per size and a timed run): ``make bench`` runs it."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

BENCH = pathlib.Path(__file__).resolve().parents[1] / "bench"


def _run(*args, timeout=600) -> str:
    r = subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    return r.stdout


@pytest.mark.slow
def test_the_gpu_scripts_dry_run_on_the_cpu(tmp_path):
    mods, out = tmp_path / "modules", tmp_path / "out"
    _run(BENCH / "build_gpu_modules.py", mods, "--target", "llvm-cpu", "--optimizers", "adam",
         "--fixed-sizes", "1e5", "--gpt2", "quarter")
    index = json.loads((mods / "index.json").read_text())
    adam = index["modules"]["adam"]
    assert set(adam["fixed"]) == set(adam["fixed_inline"]) == set(adam["fixed_async"]) == set(adam["fixed_async_ext"]) == {"100000"}
    assert "fixed_padded" not in adam  # the CPU vectorises any length (a CUDA build pads 1e6 to 1000064)
    assert adam["gpt2"]["flat_fixed"].endswith("flat7800192-llvm-cpu.vmfb")

    _run(BENCH / "gpu.py", "--modules", mods, "--out", out / "bench", "--device", "local-task", "--sizes", "1e5",
         "--optimizers", "adam", "--peers", "polaris,polaris-fixed,gpt2,jax", "--repeats", "3")
    (md,) = (out / "bench").glob("*.md")
    text = md.read_text()
    for peer in ("polaris fixed inline", "polaris flat fixed", "polaris tree"):
        assert f"| {peer} |" in text, text

    _run(BENCH / "gpu_async.py", "--modules", mods, "--out", out / "async", "--device", "local-task", "--repeats", "3")
    res = json.loads((out / "async" / "async.json").read_text())
    assert [c.get("module") for c in res["checks"]] == ["async", "async, no transient"]
    assert all(c["pass"] for c in res["checks"]), res["checks"]  # the same numbers as the sync module
    assert {r[1] for r in res["rows"]} >= {"bare async", "bare async, no transient", "polaris async, no transient", "polaris fixed"}
