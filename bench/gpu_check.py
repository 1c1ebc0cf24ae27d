"""One artifact on every device: correctness of the same multi-target module on CPU, CUDA and Vulkan.

The GPU host has the IREE runtime but no compiler, so the modules are built here and carried:

    python bench/gpu_check.py build out/gpu-check                      # here: needs the compiler
    python bench/gpu_check.py run out/gpu-check --out OUT              # there: runtime + numpy only

``build`` compiles flat adam, adamw, sgd (momentum, Nesterov), lion and lamb (per-element and
``--segment-reduction aligned`` sums; the aligned case rounds n up to three whole tensors of
blocks of 16), each as one module
for ``llvm-cpu`` (portable x86-64 variants), ``cuda`` (sm_80 PTX, which Hopper JIT-compiles) and
``vulkan`` (``--vulkan-target``, default ``ampere`` for NVIDIA). ``run`` steps each module on
``local-task`` (the reference), ``cuda`` and ``vulkan`` at each size, every case in its own
process with a time limit (Vulkan stalled from ~4M elements on an H100 in DESIGN.md's run: a
stall is recorded as such, not waited for), and compares the final parameters with the
reference: relative error (L2) <= 1e-6 and no NaN passes. Writes ``<out>/gpu-check.{md,json}``
with the device, driver, IREE version, per-case time per step and pass/fail.

``--drivers local-sync,vulkan --sizes 1e3,1e5`` with ``build --vulkan-target llvmpipe`` is a dry
run on a CPU machine with Mesa's lavapipe.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "runtime"))  # polaris_runtime from this checkout if not installed

import numpy as np  # noqa: E402

CASES = {
    "adam": ("adam", {"learning_rate": 1e-2, "eps_root": 0.0}),
    "adamw": ("adamw", {"learning_rate": 1e-2, "decay": 1e-2}),
    "sgd_nesterov": ("sgd", {"learning_rate": 1e-2, "momentum": 0.9, "nesterov": True}),
    "lion": ("lion", {"learning_rate": 1e-3}),
    "lamb": ("lamb", {"learning_rate": 1e-2}),
    # any length that is a multiple of 16, per-tensor sums over blocks (docs/flat-modules.md);
    # last, so that a session out of time loses it first
    "lamb_aligned": ("lamb", {"learning_rate": 1e-2}, {"segment_reduction": "aligned"}),
}
# the largest n a case runs at: the per-element scatter of flat LAMB took ~1 s a step at 1e7 on
# an H200 and stalled past 45 s at 1e8 on CUDA and Vulkan (bench/results/*-h200-gpu-check.md);
# at 1e7 it took 12.9 s of the session's 150 s on an H100 and the check ran out before
# lamb_aligned (nineteenth pass; its 1e7 CUDA row passed, bench/results/*-h100-gpu-check-pass19.md)
MAX_N = {"lamb": 10**6}


def build(folder: pathlib.Path, vulkan_target: str, cuda_arch: str) -> int:
    from polaris._src import registry
    from polaris_compiler import CompileOptions, Layout, Target, compile_optimizer

    folder.mkdir(parents=True, exist_ok=True)
    opts = CompileOptions(cpu="portable", extra_targets=(Target.CUDA, Target.VULKAN), vulkan_target=vulkan_target, cuda_arch=cuda_arch)
    index = {"vulkan_target": vulkan_target, "cuda_arch": cuda_arch, "modules": {}}
    for key, (name, options, *how) in CASES.items():
        spec = registry.get(name)
        art = compile_optimizer(
            spec.build(**options), Layout.flat(), opts, name=name, optimizer_options={**spec.defaults(), **options}, **(how[0] if how else {})
        )
        art.save(folder / f"{key}.vmfb")
        index["modules"][key] = {"file": f"{key}.vmfb", "flags": art.flags, "notes": art.notes}
        print(f"  {key}.vmfb {len(art.vmfb) / 1024:.0f} KiB", flush=True)
    index["versions"] = art.manifest["versions"]
    (folder / "index.json").write_text(json.dumps(index, indent=2) + "\n")
    return 0


def _one(path: str, driver: str, n: int, steps: int, out: str) -> None:
    """Child process: ``steps`` steps of the module on ``driver``; final params to ``out``."""
    import polaris_runtime as pr

    opt = pr.load(path, device=driver)
    seg, third = None, max(1, n // 3)
    align = (opt.manifest.segments or {}).get("align", 1) if opt.takes_segments else 1
    if align > 1:  # three tensors, each a whole number of blocks (pack(params, align=16))
        third = -(-third // align) * align
        n = 3 * third
    rng = np.random.default_rng(n)
    p = rng.standard_normal(n, dtype=np.float32)
    g = rng.standard_normal(n, dtype=np.float32)
    if opt.takes_segments:  # three tensors
        seg = opt.upload_segments(np.minimum(np.arange(n) // third, 2).astype(np.int32))
    s = opt.init(p)
    p, s = opt.step(p, g, s, segments=seg)  # first step: upload and checks
    p.numpy()
    from polaris_runtime import device as dev

    g_dev = [dev.upload(opt.device, g * np.float32(0.5))]
    leaf = s.names[int(np.argmin([int(np.prod([d if isinstance(d, int) else n for d in sp.shape])) for sp in opt.manifest.group("state")]))]
    t0 = time.perf_counter()
    for _ in range(steps - 1):
        p, s = opt.step(p, g_dev, s, segments=seg)
    s[leaf]  # a scalar read back: waits for the device, leaves the big read-back out of the timing
    dt = (time.perf_counter() - t0) / max(1, steps - 1)
    host = p.numpy()
    np.save(out, host)
    print(json.dumps({"seconds_per_step": dt, "count": opt.step_count(s) if opt.count_leaf else None}))


def run(folder: pathlib.Path, out: pathlib.Path, drivers: list[str], sizes: list[int], steps: int, timeout: float) -> int:
    import polaris_runtime as pr

    index = json.loads((folder / "index.json").read_text())
    out.mkdir(parents=True, exist_ok=True)
    info = _host_info(drivers, sizes, index, pr)
    rows = []
    stalled_at: dict[str, int] = {}  # driver -> smallest n that stalled: larger ones are skipped
    with tempfile.TemporaryDirectory() as tmp:
        for key, entry in index["modules"].items():
            path = str(folder / entry["file"])
            for n in sizes:
                ref = None
                for driver in drivers:
                    npy = os.path.join(tmp, f"{key}-{driver}-{n}.npy")
                    row = {"module": key, "driver": driver, "n": n, "steps": steps}
                    if n > MAX_N.get(key, n):
                        row["status"] = f"skipped (n > {MAX_N[key]:.0e} for this case)"
                        rows.append(row)
                        continue
                    if driver in stalled_at and n >= stalled_at[driver]:
                        row["status"] = f"skipped (stalled at n={stalled_at[driver]:.0e})"
                        rows.append(row)
                        continue
                    t0 = time.perf_counter()
                    try:
                        r = subprocess.run(
                            [sys.executable, __file__, "_one", path, driver, str(n), str(steps), npy],
                            capture_output=True, text=True, timeout=timeout,
                        )
                        if r.returncode != 0:
                            last = (r.stderr.strip().splitlines() or ["?"])[-1]
                            # a documented device limit the runtime enforces is not a failure
                            row["status"] = "refused" if "BindingError" in last and "at most" in last else "error"
                            row["error"] = last[:300]
                        else:
                            row.update(json.loads(r.stdout.strip().splitlines()[-1]))
                            got = np.load(npy)
                            if ref is None:
                                ref, row["status"] = got, "reference"
                            else:
                                rel = float(np.linalg.norm(got.astype(np.float64) - ref) / max(np.linalg.norm(ref.astype(np.float64)), 1e-30))
                                nans = int(np.isnan(got).sum())
                                row.update(rel_error=rel, nans=nans, status="pass" if rel <= 1e-6 and nans == 0 else "FAIL")
                                os.remove(npy)
                    except subprocess.TimeoutExpired:
                        row["status"] = f"stalled (> {timeout:.0f} s)"
                        stalled_at[driver] = min(n, stalled_at.get(driver, n))
                    row["wall_s"] = round(time.perf_counter() - t0, 2)
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                    _write_report(out, info, index, rows, drivers, steps)  # each row: a time limit loses nothing
    _write_report(out, info, index, rows, drivers, steps)
    print(out / "gpu-check.md")
    return 0 if all(r["status"] in ("pass", "reference", "refused") or r["status"].startswith("skipped") for r in rows) else 1


def _host_info(drivers: list[str], sizes: list[int], index: dict, pr) -> dict:
    info = {"drivers": drivers, "sizes": sizes, "index": index, "runtime": pr.__version__ if hasattr(pr, "__version__") else None}
    try:
        info["gpu"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"], capture_output=True, text=True, timeout=30).stdout.strip()
    except Exception:  # no nvidia-smi (a dry run)
        info["gpu"] = None
    try:
        from importlib import metadata

        info["iree_runtime"] = metadata.version("iree-base-runtime")
    except Exception:
        info["iree_runtime"] = None
    return info


def _write_report(out: pathlib.Path, info: dict, index: dict, rows: list[dict], drivers: list[str], steps: int) -> None:
    (out / "gpu-check.json").write_text(json.dumps({"info": info, "rows": rows}, indent=2) + "\n")
    lines = [
        "# One artifact on every device",
        "",
        f"- device: {info['gpu']}; IREE runtime {info['iree_runtime']}; modules built with {index.get('versions')}",
        f"- modules: llvm-cpu (portable) + cuda ({index['cuda_arch']}) + vulkan ({index['vulkan_target']}) in one .vmfb each; "
        f"{steps} steps; reference: {drivers[0]}; pass: relative L2 error <= 1e-6 and no NaN",
        "- time/step: steps 2..N through the runtime, ended by a scalar read-back (reading the parameters back is not timed)",
        "",
        "| module | n | driver | status | rel. error | time/step |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        rel = f"{r['rel_error']:.1e}" if "rel_error" in r else ""
        t = f"{r['seconds_per_step'] * 1e3:.3f} ms" if "seconds_per_step" in r else ""
        status = r["status"] + (f": {r['error'][:140]}" if "error" in r else "")
        lines.append(f"| {r['module']} | {r['n']:.0e} | {r['driver']} | {status} | {rel} | {t} |")
    (out / "gpu-check.md").write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_one":
        _one(argv[1], argv[2], int(argv[3]), int(argv[4]), argv[5])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("folder", type=pathlib.Path)
    b.add_argument("--vulkan-target", default="ampere")
    b.add_argument("--cuda-arch", default="sm_80")
    r = sub.add_parser("run")
    r.add_argument("folder", type=pathlib.Path)
    r.add_argument("--out", type=pathlib.Path, required=True)
    r.add_argument("--drivers", default="local-task,cuda,vulkan")
    r.add_argument("--sizes", default="1e3,1e6,1e7,1e8")
    r.add_argument("--steps", type=int, default=10)
    r.add_argument("--timeout", type=float, default=120.0)
    a = ap.parse_args(argv)
    if a.cmd == "build":
        return build(a.folder, a.vulkan_target, a.cuda_arch)
    return run(a.folder, a.out, a.drivers.split(","), [int(float(x)) for x in a.sizes.split(",")], a.steps, a.timeout)


if __name__ == "__main__":
    sys.exit(main())
