"""Experiment: where a small step's time goes on CUDA, and whether a flag of IREE's takes it back.

At 1e6 parameters an H100 moves Adam's 28 MB in about 10 us, yet every peer takes about 50 us a
step (H100, docs/performance.md, thirteenth pass: polaris ``--async`` 52.4 us, torch fused 49.6,
``jax.jit(optax)`` 52.5). Issue 6 asks for <= 0.9x torch fused there. For each module and peer
this measures, in one process:

* ``step``: (N steps + one sync) / N, the benchmark's number (throughput);
* ``enqueue``: the same N calls' wall time before the sync, / N: the host's cost of a call. When
  it is close to ``step``, the host is the bottleneck; when it is far below, the device (or a
  host round trip between steps) is;
* ``latency``: one call + one sync, median: what a loop that reads a result every step sees.

Modules (``build``, here): Adam at 1000064 compiled as ``polaris compile`` does for CUDA (sync;
``--async``), the async one with IREE's command buffer memoization off and with direct (not
indirect) bindings, SGD with momentum (one dispatch: the per-submission floor), Adam ``--async``
at 1e7, and any-length Adam, sync and async (``--async`` on a module without ``--size`` has
never run on a GPU: its correctness is checked here too).

Runtime flags (``run``, on the device host, each set in a fresh process since the CUDA driver
reads them when it is created): IREE's defaults; ``--cuda_use_streams=false`` (CUDA graphs);
``--cuda_allow_inline_execution=true``; ``--cuda_async_allocations=false``. torch fused Adam and
``jax.jit(optax)`` run in every process (``x torch fused``: against the torch of the same process;
``--rounds 2`` runs every set twice, for the spread between processes). The async Adam and SGD
modules are also called bare (``gpu_async._Async``), fences chained and with no wait at all (an
invalid call that only a one-stream driver orders: what the chaining costs). Every variant's
parameters after 5 steps are compared with the sync module's (relative L2 error <= 1e-6).

The polaris rows load modules with the runtime's default ``order`` ("stream" for async modules on
CUDA since the fourteenth pass; ``bench/results/2026-11-26-nvidia-h100-percall-{1,2}.md`` ran
before, with "fences").

    python bench/gpu_percall.py build out/gpu-percall                          # here
    python bench/gpu_percall.py run out/gpu-percall --out OUT --device cuda   # on the GPU host
"""

from __future__ import annotations

import json
import pathlib
import statistics
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402

import _common as C  # noqa: E402

PADDED = 1000064  # 1e6 rounded up to a length IREE vectorises on CUDA (thirteenth pass)
# (label, optimizer key of _common.POLARIS, size (None: any length, run at PADDED), CompileOptions changes, iree-compile args)
CASES = [
    ("adam sync", "adam", PADDED, {}, ()),
    ("adam async", "adam", PADDED, {"asynchronous": True}, ()),
    ("adam async, no memoization", "adam", PADDED, {"asynchronous": True}, ("--iree-hal-memoization=false",)),
    ("adam async, direct bindings", "adam", PADDED, {"asynchronous": True}, ("--iree-hal-indirect-command-buffers=false",)),
    ("sgd_momentum async", "sgd_momentum", PADDED, {"asynchronous": True}, ()),
    ("adam any-length sync", "adam", None, {}, ()),
    ("adam any-length async", "adam", None, {"asynchronous": True}, ()),
    ("adam sync 1e7", "adam", 10**7, {}, ()),
    ("adam async 1e7", "adam", 10**7, {"asynchronous": True}, ()),
]
BARE = ("adam async", "sgd_momentum async")  # also called bare (gpu_async._Async): chained fences, and no wait at all
FLAG_VARIANTS = {
    "defaults": [],
    "graphs": ["--cuda_use_streams=false"],
    "inline execution": ["--cuda_allow_inline_execution=true"],
    "no async allocations": ["--cuda_async_allocations=false"],
}


def build(folder: pathlib.Path, target: str) -> None:
    import dataclasses

    from polaris_compiler import CompileOptions, Target

    folder.mkdir(parents=True, exist_ok=True)
    base = CompileOptions(target=Target.parse(target))
    index = {"target": target, "versions": C.versions("iree-base-compiler", "jax", "polaris-iree"), "cases": []}
    for label, key, n, change, extra in CASES:
        fname = label.replace(",", "").replace(" ", "-") + ".vmfb"
        art = C.compile_bench_optimizer(key, n, dataclasses.replace(base, **change, extra_args=tuple(extra)))
        art.save(folder / fname)
        index["cases"].append({"label": label, "key": key, "n": n or PADDED, "file": fname, "flags": art.flags})
        C.say(f"  {fname}: {len(art.vmfb) / 1024:.0f} KiB")
    (folder / "index.json").write_text(json.dumps(index, indent=1) + "\n")


def _measure(timer, repeats: int, target_s: float, latency_calls: int = 60) -> dict:
    """``step``, ``enqueue`` and ``latency`` of one peer (module docstring), in seconds."""
    timer.calibrate(3, target_s)
    n, steps, enq = timer.n, [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(n):
            timer.step()
        t1 = time.perf_counter()
        timer.sync()
        t2 = time.perf_counter()
        steps.append((t2 - t0) / n)
        enq.append((t1 - t0) / n)
    lat = []
    for _ in range(latency_calls):
        t0 = time.perf_counter()
        timer.step()
        timer.sync()
        lat.append(time.perf_counter() - t0)
    return {"step": statistics.median(steps), "enqueue": statistics.median(enq), "latency": statistics.median(lat), "calls": n}


def _add(rows: list, row: dict) -> None:
    rows.append(row)
    C.say(f"  {row['case']} {C.fmt_size(row['n'])}: " + (row.get("error") or (
        f"step {C.fmt_time(row['step'])}, enqueue {C.fmt_time(row['enqueue'])}, latency {C.fmt_time(row['latency'])}")))


def _variant(folder: pathlib.Path, device: str, flags: list[str], out: pathlib.Path, repeats: int, target_s: float) -> None:
    """Child process: every case (and, with IREE's default flags, the peers) under ``flags``."""
    import iree.runtime as rt

    if flags:
        rt.flags.parse_flags(*flags)  # before the driver exists: it reads them once
    import gpu as G  # imports polaris_runtime

    index = json.loads((folder / "index.json").read_text())
    on_gpu = not device.startswith("local")
    rows = []

    def save():
        out.write_text(json.dumps(rows, indent=1) + "\n")

    rng = np.random.default_rng(7)
    data = {}
    for n in sorted({c["n"] for c in index["cases"]}):
        data[n] = (rng.standard_normal(n, dtype=np.float32), rng.standard_normal(n, dtype=np.float32) * np.float32(1e-3))
    refs = {}
    for case in index["cases"]:  # correctness first: 5 steps, against the sync module of the same size
        p, g = data[case["n"]]
        path = folder / case["file"]
        row = {"case": case["label"], "key": case["key"], "n": case["n"]}
        try:
            got, _ = G.run_steps(path, device, p, g, 5)
            ref_key = (case["key"], case["n"])
            if ref_key not in refs:
                refs[ref_key] = got
                row["rel_error"] = None
            else:
                ref = refs[ref_key]
                row["rel_error"] = float(np.linalg.norm(got - ref) / np.linalg.norm(ref))
            row.update(_measure(G.polaris_peer(path, device, p, g), repeats, target_s))
        except Exception as e:  # a failing case is a result: recorded, the others go on
            row["error"] = f"{type(e).__name__}: {e}"[:300]
        _add(rows, row)
        save()
        G._free()
        if case["label"] in BARE:  # the same module called bare, fences chained or not
            import gpu_async as A

            from polaris_runtime.module import STREAM_ORDERED_DRIVERS

            # no wait at all only where the driver runs submissions in order (else they may finish out of order)
            for chained in (True, False) if device.split("://")[0] in STREAM_ORDERED_DRIVERS else (True,):
                label = f"{case['label']}, bare, {'chained' if chained else 'no wait'}"
                row = {"case": label, "key": case["key"], "n": case["n"]}
                try:
                    a = A._Async(path, device, p, g, chained)
                    for _ in range(5):
                        a.step()
                    got = a.params().astype(np.float64)
                    ref = refs[(case["key"], case["n"])]
                    row["rel_error"] = float(np.linalg.norm(got - ref) / np.linalg.norm(ref))
                    del a
                    row.update(_measure(A.async_peer(path, device, p, g, chained), repeats, target_s))
                except Exception as e:
                    row["error"] = f"{type(e).__name__}: {e}"[:300]
                _add(rows, row)
                save()
                G._free()
    for n in sorted(data):
        p, g = data[n]
        peers = {"jax.jit(optax)": lambda: G.jax_peer("adam", "gpu" if on_gpu else "cpu", p, g)}
        if on_gpu:
            peers["torch fused"] = lambda: G.torch_peer("adam", "fused", p, g)
        for label, make in peers.items():
            row = {"case": label, "key": "adam", "n": n, "rel_error": None}
            try:
                row.update(_measure(make(), repeats, target_s))
            except Exception as e:
                row["error"] = f"{type(e).__name__}: {e}"[:300]
            _add(rows, row)
            save()
            G._free()


def run(folder: pathlib.Path, out: pathlib.Path, device: str, repeats: int, target_s: float, timeout: float, rounds: int = 1) -> int:
    import gpu as G

    out.mkdir(parents=True, exist_ok=True)
    on_gpu = not device.startswith("local")
    info = {"date": C.today(), "gpu": G.gpu_name() if on_gpu else C.cpu_model(), "device": device,
            "built_with": json.loads((folder / "index.json").read_text())["versions"],
            "versions": C.versions("iree-base-runtime", "numpy", "torch", "jax", "jaxlib", "optax")}
    variants = FLAG_VARIANTS if device == "cuda" else {"defaults": []}
    table, ok = [], True
    rounds_of = [(f"{v}{'' if rounds == 1 else f' #{i + 1}'}", flags) for i in range(rounds) for v, flags in variants.items()]
    for vlabel, flags in rounds_of:
        part = out / f"percall-{vlabel.replace(' ', '-').replace('#', '')}.json"
        t0 = time.perf_counter()
        try:
            r = subprocess.run([sys.executable, __file__, "_variant", str(folder), device, json.dumps(flags), str(part), str(repeats), str(target_s)],
                               capture_output=True, text=True, timeout=timeout)
            status = "ok" if r.returncode == 0 else f"exit {r.returncode}: {(r.stderr.strip().splitlines() or ['?'])[-1][:200]}"
        except subprocess.TimeoutExpired:
            status = f"cut at {timeout:.0f} s"
        C.say(f"{vlabel} ({time.perf_counter() - t0:.0f} s): {status}")
        rows = json.loads(part.read_text()) if part.exists() else []
        for row in rows:
            row["flags"] = vlabel
            err = row.get("rel_error")
            ok = ok and (err is None or err <= 1e-6) and "error" not in row
        table += rows
        if status != "ok":
            table.append({"flags": vlabel, "case": "(process)", "error": status})
    torch_at = {(r["flags"], r["n"]): r["step"] for r in table if r.get("case") == "torch fused" and "step" in r}
    lines = [f"# Per-call cost: {info['date']}, {info['gpu']} ({device})", "",
             f"- runtime side: {info['versions']}; modules built with {info['built_with']}",
             "- step: (N steps + one sync) / N; enqueue: the N calls before the sync, / N; latency: one call + one sync (medians)",
             "- rel. error: params after 5 steps against the sync module of the same optimizer and size (flags as in the row)", "",
             "| runtime flags | case | params | step | enqueue | latency | x torch fused | rel. error |", "|---|---|---|---|---|---|---|---|"]
    for r in table:
        if "error" in r:
            lines.append(f"| {r['flags']} | {r['case']} | {C.fmt_size(r['n']) if 'n' in r else ''} | error: {r['error'][:160]} | | | | |")
            continue
        tf, err = torch_at.get((r["flags"], r["n"])), r.get("rel_error")
        x_torch = "" if tf is None else f"{r['step'] / tf:.2f}"
        rel = "" if err is None else f"{err:.1e}"
        lines.append(f"| {r['flags']} | {r['case']} | {C.fmt_size(r['n'])} | {C.fmt_time(r['step'])} | {C.fmt_time(r['enqueue'])} | "
                     f"{C.fmt_time(r['latency'])} | {x_torch} | {rel} |")
    (out / "percall.md").write_text("\n".join(lines) + "\n")
    C.write_json(out / "percall.json", {"info": info, "rows": table})
    print((out / "percall.md").read_text())
    return 0 if ok else 1


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_variant":
        _variant(pathlib.Path(argv[1]), argv[2], json.loads(argv[3]), pathlib.Path(argv[4]), int(argv[5]), float(argv[6]))
        return 0
    ap, b, r = C.build_run_parser(__doc__, "compile the modules (here)", "time them under each set of runtime flags (on the device host)")
    b.add_argument("--target", default="cuda")
    r.add_argument("--out", type=pathlib.Path, required=True)
    r.add_argument("--device", default="cuda")
    r.add_argument("--repeats", type=int, default=9)
    r.add_argument("--target-s", type=float, default=0.03)
    r.add_argument("--timeout", type=float, default=100.0, help="seconds per set of runtime flags")
    r.add_argument("--rounds", type=int, default=1, help="times through the sets of flags (each a fresh process: the spread between processes)")
    args = ap.parse_args(argv)
    if args.cmd == "build":
        build(args.folder, args.target)
        return 0
    return run(args.folder, args.out, args.device, args.repeats, args.target_s, args.timeout, args.rounds)


if __name__ == "__main__":
    sys.exit(main())
