"""Where a step's time goes on a device: IREE's HAL profiler over ``iree-benchmark-module``.

For the open GPU question of docs/gpu-session.md (LAMB 4.8-8x ``jax.jit(optax.lamb)`` on CUDA,
thirteenth and fourteenth passes of docs/performance.md). ``build`` compiles the modules to
profile, here, with the defaults a user gets: LAMB ``--size`` (the tree reduction ``auto`` picks
for GPU targets; since the fourteenth pass it takes the segment bounds from the runtime instead of
searching for them every step), the same traced with ``bench/_tree_batched.py`` (every level's
query at once: an experiment of the fifteenth pass), and ``--whole-vector`` at 1000064 and 1e7,
Adam ``--size`` at 1e7 for reference. ``run``, on the device host, calls each module's ``step`` with splat inputs (no
data files but the bounds: every value is a constant, the segment ids 0, which is one tensor,
and the bounds those ids give, from a ``.npy`` beside the module) under ``iree-benchmark-module --device_profiling_mode=MODE`` and writes
``iree-profile statistics`` and ``dispatch`` of each bundle (every dispatch's count and device
time) under ``--out``. IREE 3.13's CUDA HAL has no profiler: there (or with ``--mode none``)
only the benchmark's times are written. Only the IREE runtime wheel is needed there (its tools
run as ``python3 -m iree._runtime.scripts.<tool>``).

    python bench/gpu_profile.py build out/gpu-profile                          # here
    python bench/gpu_profile.py run out/gpu-profile --out OUT --device cuda    # on the GPU host
    python bench/gpu_profile.py build DIR --target llvm-cpu; ... run DIR --out OUT --device local-task
                                                                               # the dry run on a CPU
"""

from __future__ import annotations

import contextlib
import json
import pathlib
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402

import _common as C  # noqa: E402

# (label, optimizer key of _common.POLARIS, size, compile_optimizer keywords). The H100's numbers
# before the bounds became an input (synchronous step, iree-benchmark-module): lamb-tree 0.452 ms
# at 1000064, 0.783 ms at 1e7; lamb-whole 0.125 and 0.405 ms; adam-1e7 0.146 ms
# (bench/results/2026-11-26-nvidia-h100-lamb-search.md)
# The H200's after it (fifteenth pass; bench/results/2026-11-26-nvidia-h200-pass15-verify-lamb.md):
# lamb-tree 0.413 / 0.693 ms, lamb-whole 0.111 / 0.406 ms, adam-1e7 0.113 ms. ``tree_batched``:
# the tree traced with bench/_tree_batched.py (every level's query at once; 80 -> 37 dispatches
# at 1000064).
CASES = [
    ("lamb-tree-1000064", "lamb", 1000064, {}),
    ("lamb-tree-1e7", "lamb", 10**7, {}),
    ("lamb-tree-batched-1000064", "lamb", 1000064, {"tree_batched": True}),
    ("lamb-tree-batched-1e7", "lamb", 10**7, {"tree_batched": True}),
    ("lamb-whole-1000064", "lamb", 1000064, {"segments": False}),
    ("lamb-whole-1e7", "lamb", 10**7, {"segments": False}),
    ("adam-1e7", "adam", 10**7, {}),
]
# what each driver's HAL records: device timestamps per dispatch on GPUs, host execution on the CPU
MODES = {"cuda": "dispatch-events,device-queue-events", "hip": "dispatch-events,device-queue-events"}


def _splat(spec: dict) -> str:
    """An ``iree-benchmark-module`` ``--input`` of one manifest leaf, every element the same."""
    dtype = {"float32": "f32", "int32": "i32", "float16": "f16", "bfloat16": "bf16"}[spec["dtype"]]
    value = "0" if dtype == "i32" else "0.01"
    shape = "x".join(str(d) for d in spec["shape"])
    return f"{shape}x{dtype}={value}" if shape else f"{dtype}={value}"


def build(folder: pathlib.Path, target: str) -> None:
    from _tree_batched import batched_tree
    from polaris_compiler import CompileOptions, Target

    folder.mkdir(parents=True, exist_ok=True)
    index = []
    for label, key, n, kw in CASES:
        kw = dict(kw)
        with batched_tree() if kw.pop("tree_batched", False) else contextlib.nullcontext():
            art = C.compile_bench_optimizer(key, n, CompileOptions(target=Target.parse(target)), **kw)
        fname = f"{label}-{target}.vmfb"
        art.save(folder / fname)
        groups = art.manifest["groups"]
        inputs = [_splat(s) for g in ("params", "params", "state") for s in groups[g]]  # step(params, grads, state)
        for s in groups.get("segments", []):
            if s["name"] != "segment_bounds":
                inputs.append(_splat(s))
                continue
            # the bounds of ids all 0 (one tensor): [0, n, n, ...], what the runtime would compute
            bounds = np.full(s["shape"], n, np.int32)
            bounds[0] = 0
            np.save(folder / f"{label}-bounds.npy", bounds)
            inputs.append(f"@{label}-bounds.npy")  # relative to the folder (run resolves it)
        index.append({"label": label, "file": fname, "n": n, "inputs": inputs, "notes": art.notes,
                      "reduction": art.manifest.get("segments", {}).get("reduction")})
        C.say(f"  {fname}: {len(inputs)} inputs")
    (folder / "index.json").write_text(json.dumps({"target": target, "versions": C.versions("iree-base-compiler", "jax"), "cases": index}, indent=1) + "\n")


def _tool(name: str, *args: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", f"iree._runtime.scripts.{name}", *args], capture_output=True, text=True, timeout=timeout)


def run(folder: pathlib.Path, out: pathlib.Path, device: str, mode: str | None, repetitions: int, timeout: float) -> int:
    index = json.loads((folder / "index.json").read_text())
    mode = mode or MODES.get(device, "host-execution")
    out.mkdir(parents=True, exist_ok=True)
    failed = 0
    for case in index["cases"]:
        bundle = out / f"{case['label']}.ireeprof"
        args = [f"--module={folder / case['file']}", f"--device={device}", "--function=step",
                *[f"--input=@{folder / x[1:]}" if x.startswith("@") else f"--input={x}" for x in case["inputs"]],
                f"--benchmark_repetitions={repetitions}"]
        profiling = [] if mode == "none" else [f"--device_profiling_mode={mode}", f"--device_profiling_output={bundle}"]
        t0 = time.perf_counter()
        text = [f"# {case['label']} ({case['n']} elements, reduction {case['reduction']}) on {device}, mode {mode}", ""]
        try:
            bench = _tool("iree_benchmark_module", *args, *profiling, timeout=timeout)
            if bench.returncode != 0 and profiling and "profiling is not implemented" in bench.stderr:
                # IREE 3.13's CUDA HAL has no profiler (H100, 2026-11-26): the step's time alone
                text += [f"(no HAL profiler for {device} in this runtime: {bench.stderr.strip().splitlines()[-1][:200]})", ""]
                bench, profiling = _tool("iree_benchmark_module", *args, timeout=timeout), []
            text += ["## iree-benchmark-module", "", bench.stdout[-3000:], bench.stderr[-2000:]]
            if bench.returncode == 0 and not profiling:
                pass  # timings only (no profiler): nothing more to project
            elif bench.returncode == 0 and bundle.exists():
                for cmd in ("statistics", "dispatch"):
                    res = _tool("iree_profile", cmd, str(bundle), timeout=timeout)
                    text += [f"## iree-profile {cmd}", "", res.stdout[-12000:], res.stderr[-1000:]]
            else:
                failed += 1
        except subprocess.TimeoutExpired:
            failed += 1
            text.append(f"timed out after {timeout:.0f} s")
        (out / f"{case['label']}.txt").write_text("\n".join(text) + "\n")
        bundle.unlink(missing_ok=True)  # large; its projections are kept
        C.say(f"  {case['label']}: {time.perf_counter() - t0:.1f} s")
    return 1 if failed else 0


def main(argv=None) -> int:
    ap, b, r = C.build_run_parser(__doc__, "compile the modules to profile (here)", "profile them (on the device host)")
    b.add_argument("--target", default="cuda")
    r.add_argument("--out", type=pathlib.Path, required=True)
    r.add_argument("--device", default="cuda")
    r.add_argument("--mode", default=None, help="--device_profiling_mode (default: dispatch-events,device-queue-events on GPUs, host-execution on the CPU; none: timings only)")
    r.add_argument("--repetitions", type=int, default=5)
    r.add_argument("--timeout", type=float, default=60.0, help="seconds per tool call")
    args = ap.parse_args(argv)
    if args.cmd == "build":
        build(args.folder, args.target)
        return 0
    return run(args.folder, args.out, args.device, args.mode, args.repetitions, args.timeout)


if __name__ == "__main__":
    sys.exit(main())
