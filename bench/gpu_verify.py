"""On the GPU host: the shipped catalog's GPU modules against its x86_64 ones, and (optionally)
the GPT-2 tree module compiled with the CUDA defaults, sync and async, timed against torch fused.

1. ``catalog``: for every optimizer, ``artifacts/<opt>-flat-f32-<platform>.vmfb`` run on
   ``--device`` and ``<opt>-flat-f32-x86_64.vmfb`` on ``local-task``, 10 steps from the same
   parameters and gradients (1e6 elements; LAMB with all segment ids 0); relative L2 error of the
   parameters, pass at <= 1e-6 and no NaN, or <= 1e-4 for modules that sum per tensor (LAMB):
   their scatter sums in another order on each target (x86_64: 4 lanes; GPU targets: one running
   sum, 2.4e-5 from float64 after 10 steps at 1e6 against 4e-6 for the CPU's; docs/flat-modules.md).
   This is the check for a change to what the compiler emits for GPU targets (the thirteenth pass
   made CUDA modules fuse their scalars).
2. ``--tree SYNC.vmfb,ASYNC.vmfb``: the GPT-2 (148 tensors) Adam tree modules, both through the
   runtime, against torch fused Adam (one Parameter per tensor) and jax.jit(optax) on the tree.

    python bench/gpu_verify.py --out OUT [--device cuda] [--tree a.vmfb,b.vmfb]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402

import _common as C  # noqa: E402
import gpu as G  # noqa: E402  (puts the runtime on the path where it is not installed)


SUMS_PER_TENSOR = ("lamb", "lars", "fromage")  # their flat modules take segment ids


def catalog(platform: str, device: str, n: int = 10**6, steps: int = 10) -> list[dict]:
    index = json.loads((ROOT / "artifacts" / "index.json").read_text())
    by = {(e["optimizer"], e["platform"]): e for e in index["entries"]}
    rng = np.random.default_rng(5)
    p = rng.standard_normal(n, dtype=np.float32)
    g = rng.standard_normal(n, dtype=np.float32) * np.float32(1e-2)
    rows = []
    for (opt, plat), e in sorted(by.items()):
        if plat != platform or (opt, "x86_64") not in by:
            continue
        row = {"optimizer": opt, "file": e["file"], "hoist_scalars": e["target"].get("hoist_scalars", True)}
        tol = 1e-4 if e.get("segments") or opt in SUMS_PER_TENSOR else 1e-6
        try:
            ref, _ = G.run_steps(ROOT / "artifacts" / by[(opt, "x86_64")]["file"], "local-task", p, g, steps)
            got, per_step = G.run_steps(ROOT / "artifacts" / e["file"], device, p, g, steps)
            rel = float(np.linalg.norm(got - ref) / np.linalg.norm(ref))
            row.update(rel_error=rel, nans=int(np.isnan(got).sum()), step_s=per_step, tol=tol, status="pass" if rel <= tol and not np.isnan(got).any() else "FAIL")
        except Exception as ex:  # one module's failure is a result too
            row.update(status="error", error=f"{type(ex).__name__}: {ex}"[:300])
        C.say(f"  {opt:14s} {row['status']}  rel {row.get('rel_error', float('nan')):.1e}")
        rows.append(row)
    return rows


def tree_timing(paths: list[str], device: str, repeats: int = 9, target_s: float = 0.05) -> list[list[str]]:
    shapes = C.gpt2_shapes(1)
    host_p, host_g = C.gpt2_data(shapes, np.random.default_rng(1))
    p_leaves = list(G.pr.flatten_names(host_p).values())
    g_leaves = list(G.pr.flatten_names(host_g).values())
    make = {f"polaris tree ({pathlib.Path(x).stem})": (lambda x=x: G.polaris_peer(x, device, host_p, g_leaves)) for x in paths}
    make["torch fused"] = lambda: G.torch_peer("adam", "fused", p_leaves, g_leaves)
    make["jax"] = lambda: G.jax_peer("adam", "gpu", host_p, host_g)
    rows = []
    timers = G.build_timers(make, lambda name, msg: rows.append([name, "error", msg[:120]]))
    C.run_interleaved(timers, repeats, 3, target_s)
    best = min(t.median for t in timers.values())
    for name, t in timers.items():
        q1, q3 = t.spread
        rows.append([name, C.fmt_time(t.median), f"[{C.fmt_time(q1)}, {C.fmt_time(q3)}]", f"{t.median / best:.2f}"])
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=pathlib.Path, required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--platform", default=None, help="catalog platform to check (default: the device's: cuda, vulkan)")
    ap.add_argument("--n", type=int, default=10**6)
    ap.add_argument("--tree", default="", help="comma-separated GPT-2 Adam tree modules to time")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    info = {"date": C.today(), "device": args.device, "versions": C.versions("iree-base-runtime", "numpy", "torch", "jax")}
    rows = catalog(args.platform or args.device, args.device, args.n)
    md = [f"# Catalog check on {args.device} ({info['date']})", "", f"- {info['versions']}; {args.n} elements, 10 steps, reference: x86_64 module on local-task", "",
          C.md_table(["optimizer", "file", "scalars", "status", "rel. error (tolerance)", "time/step"],
                     [[r["optimizer"], r["file"], "hoisted" if r["hoist_scalars"] else "fused", r["status"], f"{r.get('rel_error', float('nan')):.1e} ({r.get('tol', float('nan')):.0e})",
                       C.fmt_time(r["step_s"]) if "step_s" in r else r.get("error", "")] for r in rows]), ""]
    (args.out / "verify.md").write_text("\n".join(md) + "\n")
    if args.tree:
        trows = tree_timing([x for x in args.tree.split(",") if x], args.device)
        md += ["## GPT-2 small (148 tensors, 124.4M), Adam", "", C.md_table(["peer", "step", "IQR", "x best"], trows), ""]
    (args.out / "verify.md").write_text("\n".join(md) + "\n")
    C.write_json(args.out / "verify.json", {"info": info, "rows": rows})
    print("\n".join(md))
    return 0 if all(r["status"] == "pass" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
