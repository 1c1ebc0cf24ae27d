"""bench/plot.py: the CPU and GPU suites' JSON as a figure, one panel per optimizer and one for
the many-tensor layout."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

BENCH = pathlib.Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import plot as P  # noqa: E402


def _row(opt, layout, n, peer, gbs, **kw):
    return {"optimizer": opt, "layout": layout, "params": n, "peer": peer, "step_s": 28 * n / gbs / 1e9, "gbs": gbs, **kw}


GPU = {
    "info": {"date": "2026-11-27", "gpu": "NVIDIA H200", "copy_bandwidth": {"copy_gbs": 4196.0}},
    "results": [
        *(_row(o, "flat", n, peer, g * n / 1e8) for o in ("adam", "sgd_momentum") for n in (10**6, 10**7, 10**8)
          for peer, g in (("polaris fixed async", 4100), ("torch fused", 3400), ("jax.jit(optax)", 4150))),
        _row("adam", "flat", 10**6, "polaris", 1e3, error=None),
        {"optimizer": "adam", "layout": "flat", "params": 10**6, "peer": "torch foreach", "error": "CUDA out of memory"},
        *(_row("adam", "gpt2 tree (148 tensors)", 124_439_808, peer, g) for peer, g in (("polaris flat fixed async", 4190), ("torch fused", 3330))),
    ],
}


def test_a_gpu_run_gets_a_panel_per_optimizer_and_one_for_gpt2(tmp_path):
    titles = P.plot(GPU, tmp_path / "gpu.png")
    assert titles == ["adam", "sgd_momentum", "gpt2 (148 tensors)"]
    assert (tmp_path / "gpu.png").stat().st_size > 10_000
    assert P.floor_gbs(GPU["info"]) == 4196.0 and P.device_name(GPU["info"]) == "NVIDIA H200"


def test_a_cpu_run_keeps_its_peers_order_and_colors(tmp_path):
    cpu = {"info": {"date": "2026-11-27", "machine": {"cpu": "AMD EPYC", "cores": 2}, "copy_bandwidth": {"floor_gbs": 45.5}},
           "results": [_row("lion", "flat", n, p, g) for n in (10**4, 10**6) for p, g in (("polaris", 60), ("optax", 50))]
           + [_row("lion", "gpt2/4 tree", 7_800_192, "polaris", 44, form="tree")]}
    assert P.plot(cpu, tmp_path / "cpu.png", peers=("optax", "numpy", "polaris"), colors={"polaris": "C0"}) == ["lion", "gpt2/4 (148 tensors)"]
    assert P.device_name(cpu["info"]) == "AMD EPYC (2 cores)" and P.floor_gbs(cpu["info"]) == 45.5
    with pytest.raises(ValueError, match="no timed rows to plot"):
        P.plot(cpu, tmp_path / "none.png", peers=("numpy",))


def test_the_command_line_writes_a_png_beside_each_json(tmp_path):
    src = tmp_path / "run.json"
    src.write_text(json.dumps(GPU))
    res = subprocess.run([sys.executable, str(BENCH / "plot.py"), str(src), "--peers", "torch fused,polaris fixed async"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "wrote" in res.stdout and src.with_suffix(".png").is_file()
