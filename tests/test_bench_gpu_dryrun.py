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
    assert set(adam["fixed"]) == set(adam["fixed_hoisted"]) == set(adam["fixed_async"]) == set(adam["fixed_async_ext"]) == {"100000"}
    assert "fixed_padded" not in adam  # the CPU vectorises any length (a CUDA build pads 1e6 to 1000064)
    assert adam["gpt2"]["flat_fixed"].endswith("flat7800192-llvm-cpu.vmfb")

    _run(BENCH / "gpu.py", "--modules", mods, "--out", out / "bench", "--device", "local-task", "--sizes", "1e5",
         "--optimizers", "adam", "--peers", "polaris,polaris-fixed,gpt2,jax", "--repeats", "3")
    (md,) = (out / "bench").glob("*.md")
    text = md.read_text()
    for peer in ("polaris fixed hoisted", "polaris fixed async", "polaris flat fixed", "polaris flat fixed async", "polaris tree"):
        assert f"| {peer} |" in text, text
    assert md.with_suffix(".png").stat().st_size > 10_000  # bench/plot.py's figure of the run
    # order="stream" (no call waits for the one before it): local-sync runs calls in order, as CUDA does
    _run(BENCH / "gpu.py", "--modules", mods, "--out", out / "stream", "--device", "local-sync", "--sizes", "1e5",
         "--optimizers", "adam", "--peers", "polaris-fixed,polaris-stream", "--repeats", "3")
    (md,) = (out / "stream").glob("*.md")
    text = md.read_text()
    assert "| polaris fixed async stream |" in text and "max |diff| 0.0e+00" in text, text

    _run(BENCH / "gpu_async.py", "--modules", mods, "--out", out / "async", "--device", "local-task", "--repeats", "3")
    res = json.loads((out / "async" / "async.json").read_text())
    assert [c.get("module") for c in res["checks"]] == ["async", "async, no transient"]
    assert all(c["pass"] for c in res["checks"]), res["checks"]  # the same numbers as the sync module
    assert {r[1] for r in res["rows"]} >= {"bare async", "bare async, no transient", "polaris async, no transient", "polaris fixed"}


@pytest.mark.slow
def test_the_gpu_check_dry_runs_on_the_cpu_and_writes_every_row(tmp_path):
    """bench/gpu_check.py builds every case (CPU, CUDA and Vulkan code in one module each) and
    checks them on two CPU drivers; a case above its size cap is skipped, not run."""
    mods, out = tmp_path / "check", tmp_path / "out"
    _run(BENCH / "gpu_check.py", "build", mods, "--vulkan-target", "llvmpipe")
    index = json.loads((mods / "index.json").read_text())
    assert list(index["modules"]) == ["adam", "adamw", "sgd_nesterov", "lion", "lamb", "lamb_aligned"]
    _run(BENCH / "gpu_check.py", "run", mods, "--out", out, "--drivers", "local-sync,local-task", "--sizes", "1000,20000000", "--steps", "3")
    rows = json.loads((out / "gpu-check.json").read_text())["rows"]
    status = {(r["module"], r["n"], r["driver"]): r["status"] for r in rows}
    assert len(status) == 6 * 2 * 2
    assert status["lamb", 20000000, "local-task"].startswith("skipped (n > 1e+06")
    assert all(s == "pass" for (m, n, d), s in status.items() if d == "local-task" and (m, n) != ("lamb", 20000000)), status


@pytest.mark.slow
def test_the_defaults_experiment_and_the_catalog_check_dry_run(tmp_path):
    """bench/gpu_defaults.py (the 8 option combinations, thirteenth pass) builds and times every
    variant with the same numbers as the sync module; bench/gpu_verify.py checks the catalog's
    lavapipe modules against its x86_64 ones."""
    mods, out = tmp_path / "defaults", tmp_path / "out"
    _run(BENCH / "gpu_defaults.py", "build", mods, "--target", "llvm-cpu", "--adam-sizes", "4096", "--lamb-sizes", "1024")
    _run(BENCH / "gpu_defaults.py", "run", mods, "--out", out, "--device", "local-task", "--repeats", "2", "--target-s", "0.005")
    res = json.loads((out / "defaults.json").read_text())
    assert [len(c["rel_errors"]) for c in res["checks"]] == [8, 8]
    assert all(e <= 1e-6 for c in res["checks"] for e in c["rel_errors"].values()), res["checks"]
    _run(BENCH / "gpu_verify.py", "--out", out, "--device", "vulkan", "--platform", "vulkan-llvmpipe", "--n", "1000")
    rows = json.loads((out / "verify.json").read_text())["rows"]
    assert len(rows) >= 7 and all(r["status"] == "pass" for r in rows), rows


@pytest.mark.slow
def test_the_profile_kit_dry_runs_on_the_cpu(tmp_path):
    """bench/gpu_profile.py: every module's step runs under iree-benchmark-module with splat
    inputs, and iree-profile reads its bundle (host-execution on the CPU; dispatch events on GPUs)."""
    mods, out = tmp_path / "profile", tmp_path / "out"
    _run(BENCH / "gpu_profile.py", "build", mods, "--target", "llvm-cpu")
    _run(BENCH / "gpu_profile.py", "run", mods, "--out", out, "--device", "local-sync", "--repetitions", "1")
    for case in json.loads((mods / "index.json").read_text())["cases"]:
        text = (out / f"{case['label']}.txt").read_text()
        assert "BM_step" in text and "IREE HAL device statistics" in text and "update_dispatch" in text, text[-2000:]
    # --mode none: timings only (what a CUDA HAL without a profiler, IREE 3.13's, falls back to)
    _run(BENCH / "gpu_profile.py", "run", mods, "--out", out / "none", "--device", "local-sync", "--repetitions", "1", "--mode", "none")
    assert all("BM_step" in (out / "none" / f"{c['label']}.txt").read_text() for c in json.loads((mods / "index.json").read_text())["cases"])


@pytest.mark.slow
def test_the_per_call_experiment_dry_runs_on_the_cpu(tmp_path):
    """bench/gpu_percall.py (fourteenth pass): every module and peer gets step, enqueue and
    latency, and every async variant the sync module's parameters."""
    mods, out = tmp_path / "percall", tmp_path / "out"
    _run(BENCH / "gpu_percall.py", "build", mods, "--target", "llvm-cpu")
    _run(BENCH / "gpu_percall.py", "run", mods, "--out", out, "--device", "local-task", "--repeats", "2", "--target-s", "0.005")
    rows = json.loads((out / "percall.json").read_text())["rows"]
    cases = {r["case"] for r in rows}
    assert {"adam sync", "adam async", "adam async, bare, chained", "adam any-length async", "jax.jit(optax)"} <= cases, cases
    assert not any("error" in r for r in rows), [r for r in rows if "error" in r]
    assert all(r["rel_error"] == 0.0 for r in rows if r["case"].startswith("adam async")), rows


@pytest.mark.slow
def test_the_workgroup_probe_rewrites_cuda_configurations_and_dry_runs_on_the_cpu(tmp_path):
    """bench/gpu_tile_probe.py (fifteenth pass): for CUDA every 1-D element-wise configuration
    is widened and keeps its vector loads; on the CPU the run path gives identical parameters."""
    cuda = tmp_path / "cuda"
    _run(BENCH / "gpu_tile_probe.py", "build", cuda, "--cases", "1024:128:4,1024:512:4,1024:1024:8,1024:128:4:split")
    cases = json.loads((cuda / "index.json").read_text())["cases"]
    assert [c["rewritten"] for c in cases] == [0, 2, 2, 0], cases  # step and update each have one
    assert [c["ptx_v4_loads"] for c in cases] == [7, 7, 14, 7], cases  # 8-wide threads: two v4 per array
    mods, out = tmp_path / "cpu", tmp_path / "out"
    _run(BENCH / "gpu_tile_probe.py", "build", mods, "--target", "llvm-cpu", "--cases", "1024:128:4,1024:512:4,1024:128:4:split")
    _run(BENCH / "gpu_tile_probe.py", "run", mods, "--out", out, "--device", "local-task", "--repeats", "2", "--target-s", "0.005")
    rows = json.loads((out / "tiles.json").read_text())["rows"]
    assert [r["case"] for r in rows][:3] == ["polaris w128 t4 (32 threads)", "polaris w512 t4 (128 threads)",
                                             "polaris w128 t4 (32 threads, split count)"], rows
    assert not any("error" in r for r in rows), rows
    assert all(r["max_abs_diff"] == 0.0 and len(r["steps"]) == 2 for r in rows if "wg" in r), rows


@pytest.mark.slow
def test_the_count_probe_dry_runs_on_the_cpu(tmp_path):
    """bench/gpu_count_probe.py (sixteenth and seventeenth passes): its run path checks the
    product's spare counts (raw and through the runtime), times its modules and the peers, and
    writes the report."""
    mods, out = tmp_path / "cpu", tmp_path / "out"
    _run(BENCH / "gpu_count_probe.py", "build", mods, "--target", "llvm-cpu", "--sizes", "1e4")
    _run(BENCH / "gpu_count_probe.py", "run", mods, "--out", out, "--device", "local-task", "--repeats", "2",
         "--target-s", "0.005", "--rounds", "2")
    rows = json.loads((out / "count.json").read_text())["rows"]
    assert [r["case"] for r in rows] == ["before raw", "spare counts raw", "kernel-only raw", "before runtime", "spare counts runtime", "jax.jit(optax)"], rows
    assert not any("error" in r for r in rows) and all(len(r["steps"]) == 2 for r in rows), rows
    assert rows[4]["check"] == {"max_abs_diff": 0.0, "counts": [20, 20, 20]}
    assert "| 10k | spare counts runtime |" in (out / "count.md").read_text()
