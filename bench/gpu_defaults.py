"""Experiment: which compile options should a GPU target's fixed-length module get by default?

The first H100 session (docs/performance.md, thirteenth pass) found, one option at a time, that
on CUDA fusing the scalars into the kernel (``hoist_scalars=False``) and an async step with its
transient storage passed in (``asynchronous=True, external_transients=True``) are each faster.
This times their combinations side by side, all through the runtime (``polaris_runtime.load``),
so that the defaults are chosen from one table:

* ``sync`` (today's default), ``sync inline``, ``sync ext``, ``sync inline ext``;
* ``async``, ``async inline``, ``async ext``, ``async inline ext``;
* with ``jax.jit(optax)`` and (Adam) ``torch fused`` in the same process.

Adam at 1000064 (1e6 padded to a length IREE vectorises), 1e7 and 1e8; LAMB (per-tensor trust
ratio, the tree reduction that ``auto`` picks for GPU targets, one tensor) at 1000064 and 1e7.
Every variant's parameters after 5 steps are compared with the ``sync`` module's (relative L2
error <= 1e-6). The table is rewritten after every group, so a time limit loses nothing.

    python bench/gpu_defaults.py build out/gpu-defaults                         # here
    python bench/gpu_defaults.py run out/gpu-defaults --out OUT --device cuda  # on the GPU host
"""

from __future__ import annotations

import json
import pathlib
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402

import _common as C  # noqa: E402

# label -> CompileOptions changes
VARIANTS = {
    "sync": {},
    "sync inline": {"hoist_scalars": False},
    "sync ext": {"external_transients": True},
    "sync inline ext": {"hoist_scalars": False, "external_transients": True},
    "async": {"asynchronous": True},
    "async inline": {"asynchronous": True, "hoist_scalars": False},
    "async ext": {"asynchronous": True, "external_transients": True},
    "async inline ext": {"asynchronous": True, "hoist_scalars": False, "external_transients": True},
}
GROUPS = {"adam": (1000064, 10**7, 10**8), "lamb": (1000064, 10**7)}


def build(folder: pathlib.Path, target: str, groups: dict) -> None:
    import dataclasses

    from polaris_compiler import CompileOptions, Target

    folder.mkdir(parents=True, exist_ok=True)
    base = CompileOptions(target=Target.parse(target))
    index = {"target": target, "versions": C.versions("iree-base-compiler", "jax", "polaris-iree"), "groups": []}
    for key, sizes in groups.items():
        for n in sizes:
            files = {}
            for label, change in VARIANTS.items():
                fname = f"{key}-{n}-{label.replace(' ', '-')}.vmfb"
                try:
                    art = C.compile_bench_optimizer(key, n, dataclasses.replace(base, **change))
                except Exception as e:  # a refusal is a result too
                    C.say(f"  {fname}: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
                    continue
                art.save(folder / fname)
                files[label] = fname
            index["groups"].append({"key": key, "n": n, "files": files})
            C.say(f"  {key} {n}: {len(files)} variants")
    (folder / "index.json").write_text(json.dumps(index, indent=1) + "\n")


def _check(paths: dict, device: str, n: int, steps: int = 5) -> dict:
    """Every variant's params after ``steps`` steps, relative L2 error against the ``sync`` one's."""
    import gpu as G

    rng = np.random.default_rng(7)
    p = rng.standard_normal(n, dtype=np.float32)
    g = rng.standard_normal(n, dtype=np.float32) * np.float32(1e-2)
    out, ref = {}, None
    for label, path in paths.items():
        got, _ = G.run_steps(path, device, p, g, steps)
        if ref is None:
            ref = got
        out[label] = float(np.linalg.norm(got - ref) / np.linalg.norm(ref))
    return out


def run(folder: pathlib.Path, out: pathlib.Path, device: str, repeats: int, target_s: float) -> int:
    import gpu as G  # imports polaris_runtime

    index = json.loads((folder / "index.json").read_text())
    on_gpu = not device.startswith("local")
    info = {"date": C.today(), "gpu": G.gpu_name() if on_gpu else C.cpu_model(), "device": device,
            "built_with": index["versions"], "versions": C.versions("iree-base-runtime", "numpy", "torch", "jax", "jaxlib", "optax")}
    floor = G.gpu_copy_bandwidth()["copy_gbs"] if on_gpu else C.copy_bandwidth()["floor_gbs"]
    rows, checks, ok = [], [], True
    out.mkdir(parents=True, exist_ok=True)

    def report():
        md = [f"# Default options for GPU modules: {info['date']}, {info['gpu']} ({device})", "",
              f"- runtime side: {info['versions']}; modules built with {info['built_with']}; copy bandwidth {floor:.0f} GB/s",
              "- every polaris row goes through `polaris_runtime.load(...).step`; median of per-step times (N steps + one sync)", "",
              C.md_table(["optimizer", "params", "peer", "step", "IQR", "x floor", "x best", "rel. error vs sync (5 steps)"], rows), ""]
        (out / "defaults.md").write_text("\n".join(md) + "\n")
        C.write_json(out / "defaults.json", {"info": info, "rows": rows, "checks": checks})

    for grp in index["groups"]:
        key, n = grp["key"], grp["n"]
        paths = {label: folder / f for label, f in grp["files"].items()}
        t0 = time.perf_counter()
        try:
            errs = _check(paths, device, n) if n <= 10**7 else {}
        except Exception as e:
            errs, ok = {}, False
            checks.append({"key": key, "n": n, "error": f"{type(e).__name__}: {e}"[:300]})
        checks.append({"key": key, "n": n, "rel_errors": errs})
        ok = ok and all(v <= 1e-6 for v in errs.values())
        rng = np.random.default_rng(0)
        p = rng.standard_normal(n, dtype=np.float32)
        g = rng.standard_normal(n, dtype=np.float32) * np.float32(1e-3)
        make = {label: (lambda path=path: G.polaris_peer(path, device, p, g)) for label, path in paths.items()}
        if on_gpu and key == "adam":
            make["torch fused"] = lambda: G.torch_peer("adam", "fused", p, g)
        make["jax"] = lambda: G.jax_peer(key, "gpu" if on_gpu else "cpu", p, g)
        timers = G.build_timers(make, lambda name, msg: rows.append([key, C.fmt_size(n), name, "error", "", "", "", msg[:120]]))
        C.run_interleaved(timers, repeats if n < 5 * 10**7 else max(3, repeats // 3), 3, target_s)
        best = min(t.median for t in timers.values())
        nbytes = C.BYTES_PER_PARAM[key] * n
        for name, t in timers.items():
            q1, q3 = t.spread
            err = errs.get(name)
            rows.append([key, C.fmt_size(n), name, C.fmt_time(t.median), f"[{C.fmt_time(q1)}, {C.fmt_time(q3)}]",
                         f"{t.median / (nbytes / (floor * 1e9)):.2f}", f"{t.median / best:.2f}", "" if err is None else f"{err:.1e}"])
        C.say(f"  {key} {C.fmt_size(n)} ({time.perf_counter() - t0:.0f} s): " + " | ".join(f"{k} {C.fmt_time(t.median)}" for k, t in timers.items()))
        del timers, p, g
        G._free()
        report()
    print((out / "defaults.md").read_text())
    return 0 if ok else 1


def main(argv=None) -> int:
    ap, b, r = C.build_run_parser(__doc__, "compile the variants (here)", "time them (on the device host)")
    b.add_argument("--target", default="cuda")
    b.add_argument("--adam-sizes", type=C.parse_sizes, default=list(GROUPS["adam"]))
    b.add_argument("--lamb-sizes", type=C.parse_sizes, default=list(GROUPS["lamb"]))
    r.add_argument("--out", type=pathlib.Path, required=True)
    r.add_argument("--device", default="cuda")
    r.add_argument("--repeats", type=int, default=9)
    r.add_argument("--target-s", type=float, default=0.04)
    args = ap.parse_args(argv)
    if args.cmd == "build":
        build(args.folder, args.target, {"adam": args.adam_sizes, "lamb": args.lamb_sizes})
        return 0
    return run(args.folder, args.out, args.device, args.repeats, args.target_s)


if __name__ == "__main__":
    sys.exit(main())
