"""Where a polaris_runtime step spends its time on CPU, and what would make it faster.

Sections (all Adam, f32):

* ``breakdown``: per call, interleaved, for the flat module at 1e4 and GPT-2/4's 148-tensor tree:
  ``Optimizer.step`` vs the prototype fast path (``_fastcall.FastStep``) vs IREE's
  ``FunctionInvoker`` vs a bare ``VmContext.invoke`` with a prebuilt argument list (the floor of
  any Python caller); plus a cProfile of ``Module.call`` split into polaris binding/validation,
  numpy dtype checks, IREE's Python marshalling and the IREE invoke itself.
* ``drivers``: local-task (2 workers, 1 worker, spinning workers) vs local-sync, 1e4..1e7, each
  configuration in a fresh process (task-system flags are read when the device is created).
* ``cpu``: ``--iree-llvmcpu-target-cpu`` host vs x86-64-v3 (AVX2) vs generic.

Usage: ``python bench/overhead.py [--only breakdown,drivers,cpu] [--quick]``; writes
``bench/results/<date>-<device>-overhead.{md,json}``.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pathlib
import pstats
import subprocess
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

import _common as C  # noqa: E402

DRIVER_CONFIGS = {
    "local-task (default: 2 workers)": ("local-task", []),
    "local-task, 1 worker": ("local-task", ["--task_topology_group_count=1"]),
    "local-task, workers spin 100 us": ("local-task", ["--task_worker_spin_us=100"]),
    "local-sync (caller's thread)": ("local-sync", []),
}


def _adam_path(layout="flat", shapes=None, cpu="host"):
    import run

    return run.compiled_module("adam", layout, shapes, cpu=cpu)


def peers_for(path, driver: str, params, grads, which=("polaris", "fast", "invoker", "raw")) -> dict[str, C.Timer]:
    """Timers for one module on one device: the runtime, the fast path, FunctionInvoker, raw invoke."""
    import iree.runtime as rt
    import polaris_runtime as pr
    from _fastcall import FastStep
    from polaris_runtime import device as dev

    out = {}
    opt = pr.load(path, device=driver)
    gdev = [dev.upload(opt.device, g) for g in grads]
    leaf = opt.manifest.group("state")[0].name  # count or the smallest: only read at sync

    def sizes(specs):
        return [int(np.prod([d if isinstance(d, int) else 1 << 30 for d in s.shape])) for s in specs]

    leaf = opt.manifest.group("state")[int(np.argmin(sizes(opt.manifest.group("state"))))].name

    if "polaris" in which:
        p, s = opt.step(params, gdev, opt.init(params))
        box = {"p": p, "s": s}

        def step():
            box["p"], box["s"] = opt.step(box["p"], gdev, box["s"])

        out["polaris"] = C.Timer(step, lambda: box["s"][leaf])
    if "fast" in which:
        fast = FastStep(opt)
        p, s = fast.step(params, gdev, opt.init(params))
        fbox = {"p": p, "s": s}

        def fstep():
            fbox["p"], fbox["s"] = fast.step(fbox["p"], gdev, fbox["s"])

        out["fast path (prototype)"] = C.Timer(fstep, lambda: fbox["s"][leaf])
    if "invoker" in which or "raw" in which:
        p, s = opt.step(params, gdev, opt.init(params))
        f = opt._functions["step"]  # IREE's FunctionInvoker for this module
        k = len(p)
        ibox = {"a": [*p.arrays, *gdev, *s.arrays]}
        idx = 2 * k + s.names.index(leaf)

        def istep():
            r = f(*ibox["a"])
            ibox["a"] = [*r[:k], *gdev, *r[k:]]

        if "invoker" in which:
            out["iree FunctionInvoker"] = C.Timer(istep, lambda: ibox["a"][idx].to_host())
        if "raw" in which:
            ctx, vf = opt._context.vm_context, opt._vm_module.lookup_function("step")
            args = rt.VmVariantList(len(ibox["a"]))
            for a in ibox["a"]:
                args.push_ref(a._buffer_view)  # in place: the outputs alias these buffers
            n_out = len(ibox["a"]) - k
            keep = ibox["a"][idx]

            def rstep():
                ctx.invoke(vf, args, rt.VmVariantList(n_out))

            out["bare VmContext.invoke (prebuilt args)"] = C.Timer(rstep, lambda: keep.to_host())
    return out


def profile_call(path, driver, params, grads, calls: int) -> dict:
    """cProfile of ``calls`` steps, total time split by where it was spent."""
    import polaris_runtime as pr
    from polaris_runtime import device as dev

    opt = pr.load(path, device=driver)
    gdev = [dev.upload(opt.device, g) for g in grads]
    p, s = opt.step(params, gdev, opt.init(params))
    for _ in range(20):
        p, s = opt.step(p, gdev, s)
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(calls):
        p, s = opt.step(p, gdev, s)
    prof.disable()
    st = pstats.Stats(prof)
    cats = {"IREE invoke (C++: submit, dispatch, wait)": 0.0, "IREE Python marshalling (FunctionInvoker)": 0.0,
            "polaris_runtime binding + validation": 0.0, "numpy (dtype/shape checks)": 0.0, "other": 0.0}
    top = []
    for (fn, line, name), (_cc, nc, tt, ct, _callers) in st.stats.items():
        if name == "_invoke" and "iree/runtime" in fn:
            # VmContext.invoke is a nanobind function, which cProfile does not see as a call of
            # its own: its time is the tottime of FunctionInvoker._invoke, its only caller.
            k = "IREE invoke (C++: submit, dispatch, wait)"
        elif "iree/runtime" in fn or (fn == "~" and "iree" in name):
            k = "IREE Python marshalling (FunctionInvoker)"
        elif "polaris_runtime" in fn:
            k = "polaris_runtime binding + validation"
        elif "numpy" in fn:
            k = "numpy (dtype/shape checks)"
        else:
            k = "other"
        cats[k] += tt
        top.append((tt, f"{pathlib.Path(fn).name}:{line}({name})", nc))
    total = sum(cats.values())
    top.sort(reverse=True)
    return {
        "calls": calls,
        "us_per_call_profiled": total / calls * 1e6,
        "fractions": {k: v / total for k, v in cats.items()},
        "top": [{"us_per_call": tt / calls * 1e6, "where": w, "ncalls": nc} for tt, w, nc in top[:12]],
    }


def section_breakdown(args) -> dict:
    rng = np.random.default_rng(0)
    out = {}
    cases = [("flat 10k", "flat", None, 10_000)]
    if not args.quick:
        cases.append(("flat 1M", "flat", None, 1_000_000))
    cases.append(("gpt2/4 tree (148 tensors)", "tree", C.gpt2_shapes(4), None))
    for label, kind, shapes, n in cases:
        path = _adam_path(kind, shapes)
        if kind == "flat":
            params, grads = rng.standard_normal(n, dtype=np.float32), [rng.standard_normal(n, dtype=np.float32)]
        else:
            import polaris_runtime as pr

            params = C.map_shapes(lambda s: rng.standard_normal(s, dtype=np.float32) * np.float32(0.02), shapes)
            grads = [rng.standard_normal(s, dtype=np.float32) * np.float32(1e-3) for _, s in C.shape_leaves(shapes)]
            n = sum(int(np.prod(s)) for _, s in C.shape_leaves(shapes))
            assert list(pr.flatten_names(params)) == [nm for nm, _ in C.shape_leaves(shapes)]
        timers = peers_for(path, "local-task", params, grads)
        C.run_interleaved(timers, 5 if args.quick else 15, 10, 0.05)
        row = {k: t.median for k, t in timers.items()}
        prof = profile_call(path, "local-task", params, grads, 300 if n > 1e6 else 2000)
        out[label] = {"params": n, "median_s": row, "profile": prof}
        C.say(f"  breakdown {label}: " + ", ".join(f"{k} {C.fmt_time(v)}" for k, v in row.items()))
    return out


def worker(spec: dict) -> dict:
    """Runs in a fresh process: set IREE flags, then time adam flat on one driver."""
    import iree.runtime as rt

    if spec["flags"]:
        rt.flags.parse_flags(*spec["flags"])
    rng = np.random.default_rng(0)
    res = {}
    for n in spec["sizes"]:
        p = rng.standard_normal(n, dtype=np.float32)
        g = rng.standard_normal(n, dtype=np.float32)
        timers = peers_for(spec["path"], spec["driver"], p, [g], which=("polaris", "fast", "raw"))
        C.run_interleaved(timers, spec["repeats"] if n < 5e6 else max(3, spec["repeats"] // 2), 5, 0.04)
        res[str(n)] = {k: t.median for k, t in timers.items()}
    return res


def section_drivers(args) -> dict:
    path = str(_adam_path())
    sizes = [10_000, 1_000_000] if args.quick else [10_000, 100_000, 1_000_000, 10_000_000]
    rounds = 1 if args.quick else 2
    runs: dict[str, list] = {k: [] for k in DRIVER_CONFIGS}
    for _ in range(rounds):  # alternate configurations so slow phases of a shared machine hit all
        for label, (driver, flags) in DRIVER_CONFIGS.items():
            spec = {"path": path, "driver": driver, "flags": flags, "sizes": sizes, "repeats": 5 if args.quick else 9}
            r = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True, timeout=900)
            if r.returncode != 0:
                C.say(f"  {label}: failed\n{r.stderr[-2000:]}")
                continue
            runs[label].append(json.loads(r.stdout.strip().splitlines()[-1]))
    out = {}
    for label, rs in runs.items():
        if not rs:
            continue
        out[label] = {n: {k: float(np.median([r[n][k] for r in rs])) for k in rs[0][n]} for n in rs[0]}
        C.say(f"  {label}: " + "; ".join(f"{C.fmt_size(int(n))}: " + ", ".join(f"{k.split()[0]} {C.fmt_time(v)}" for k, v in d.items()) for n, d in out[label].items()))
    return out


def section_cpu(args) -> dict:
    cpus = ["host", "x86-64-v3", "generic"]
    sizes = [10_000, 1_000_000] if args.quick else [10_000, 1_000_000, 10_000_000]
    rng = np.random.default_rng(0)
    paths = {}
    for c in cpus:
        try:
            paths[c] = _adam_path(cpu=c)
        except Exception as e:
            C.say(f"  cpu={c}: compile failed: {e}")
    out: dict = {}
    for n in sizes:
        p = rng.standard_normal(n, dtype=np.float32)
        g = rng.standard_normal(n, dtype=np.float32)
        timers = {}
        for c, path in paths.items():
            timers[c] = peers_for(path, "local-task", p, [g], which=("raw",))["bare VmContext.invoke (prebuilt args)"]
        C.run_interleaved(timers, 5 if args.quick or n > 5e6 else 11, 3, 0.05)
        out[str(n)] = {c: t.median for c, t in timers.items()}
        C.say(f"  cpu {C.fmt_size(n)}: " + ", ".join(f"{c} {C.fmt_time(t.median)}" for c, t in timers.items()))
    return out


def markdown(data: dict) -> str:
    info = data["info"]
    m = info["machine"]
    lines = [f"# Runtime overhead: {info['date']}, {m['cpu']} ({m['cores']} cores)", "",
             "- versions: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()),
             f"- load average at start {m['loadavg_at_start']} (shared machine)", "- Adam, f32; times are medians per step", ""]
    b = data.get("breakdown")
    if b:
        lines += ["## Per-call cost (local-task)", ""]
        heads = list(next(iter(b.values()))["median_s"])
        rows = [[k, C.fmt_size(v["params"])] + [C.fmt_time(v["median_s"][h]) for h in heads] for k, v in b.items()]
        lines += [C.md_table(["case", "params", *heads], rows), ""]
        for k, v in b.items():
            pr = v["profile"]
            lines += [f"### cProfile of `Optimizer.step`, {k} ({pr['calls']} calls, {pr['us_per_call_profiled']:.0f} us/call under the profiler)", ""]
            lines += [C.md_table(["where", "share of time"], [[c, f"{f * 100:.0f}%"] for c, f in pr["fractions"].items()]), ""]
            ms = v["median_s"]
            if {"polaris", "iree FunctionInvoker", "bare VmContext.invoke (prebuilt args)"} <= set(ms):
                pol, inv, raw = ms["polaris"], ms["iree FunctionInvoker"], ms["bare VmContext.invoke (prebuilt args)"]
                lines += [
                    "Without the profiler (which inflates Python time), by difference of the medians above: "
                    f"polaris binding/validation {C.fmt_time(pol - inv)} ({(pol - inv) / pol * 100:.0f}%), "
                    f"FunctionInvoker marshalling {C.fmt_time(inv - raw)} ({(inv - raw) / pol * 100:.0f}%), "
                    f"IREE invoke incl. the kernel {C.fmt_time(raw)} ({raw / pol * 100:.0f}%).",
                    "",
                ]
            lines += [C.md_table(["function", "us/call (tottime)", "calls"], [[t["where"], f"{t['us_per_call']:.1f}", t["ncalls"]] for t in pr["top"][:8]]), ""]
    d = data.get("drivers")
    if d:
        lines += ["## Drivers and task-system settings (fresh process each)", ""]
        sizes = list(next(iter(d.values())))
        kinds = list(next(iter(next(iter(d.values())).values())))
        rows = []
        for label, per in d.items():
            for kind in kinds:
                rows.append([label, kind] + [C.fmt_time(per[n][kind]) for n in sizes])
        lines += [C.md_table(["driver", "call path", *[C.fmt_size(int(n)) for n in sizes]], rows), ""]
    c = data.get("cpu")
    if c:
        lines += ["## --iree-llvmcpu-target-cpu (bare invoke, local-task)", ""]
        cpus = list(next(iter(c.values())))
        lines += [C.md_table(["params", *cpus], [[C.fmt_size(int(n)), *[C.fmt_time(r[x]) for x in cpus]] for n, r in c.items()]), ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="breakdown,drivers,cpu")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=pathlib.Path, default=C.RESULTS)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    data = {"info": {"date": C.today(), "started": C.now(), "machine": C.machine_info(),
                     "versions": C.versions("iree-base-runtime", "iree-base-compiler", "numpy", "polaris-iree-runtime")}}
    t0 = time.perf_counter()
    for sec in args.only.split(","):
        C.say(f"overhead: {sec} ...")
        data[sec] = {"breakdown": section_breakdown, "drivers": section_drivers, "cpu": section_cpu}[sec](args)
    data["info"]["seconds"] = round(time.perf_counter() - t0, 1)
    stem = f"{C.today()}-{C.device_slug()}-overhead{'-quick' if args.quick else ''}"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.md").write_text(markdown(data))
    C.write_json(args.out / f"{stem}.json", data)
    print(args.out / f"{stem}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
