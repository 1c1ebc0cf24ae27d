"""Sum of squares as a dot product or as a reduction, per target: the measurement behind
``tree_utils.sum_of_squares`` (docs/performance.md, sixth pass).

On IREE 3.13's CPU backend ``jnp.dot(x, x)`` runs 3-4x faster than ``jnp.sum(x * x)``, so the
compiler traces the norms (trust ratio, global norm, block RMS) as dots where every target is a
CPU. On GPUs it is unmeasured, so GPU targets keep the reduction. This script settles it for a
target:

* ``python bench/norms.py build DIR [--target cuda]`` (here: needs the compiler) writes one
  module per form and size, plus an ``index.json``.
* ``python bench/norms.py run DIR [--device cuda]`` (on the device host: IREE runtime and numpy
  only) times each module and writes ``DIR/norms.md``. Each call returns the scalar, and reading
  it back is the sync. It also checks each value against float64.

``build --target llvm-cpu`` followed by ``run --device local-sync`` is the dry run here.
"""

from __future__ import annotations

import json
import pathlib
import sys
import time

if __package__ in (None, ""):
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import numpy as np

import _common as C

SIZES = (10**6, 10**7, 10**8)
FORMS = ("dot", "reduce")


def build(folder: pathlib.Path, target: str, sizes) -> None:
    import iree.compiler as ic
    import jax
    import jax.numpy as jnp
    from jax import export

    from polaris._src import tree_utils as tu
    from polaris_compiler import CompileOptions, Target, build_flags

    folder.mkdir(parents=True, exist_ok=True)
    flags = [f for f in build_flags(CompileOptions(target=Target.parse(target))) if not f.startswith("--iree-input-type=")]
    index = []
    for n in sizes:
        for form in FORMS:
            with tu.dot_reductions(form == "dot"):
                fn = jax.jit(lambda x: tu.sum_of_squares(x))  # a new function: no cached trace
                mlir = export.export(fn)(jax.ShapeDtypeStruct((n,), jnp.float32)).mlir_module()
            out = folder / f"{form}-{n}.vmfb"
            out.write_bytes(ic.compile_str(mlir, input_type="stablehlo", extra_args=flags))
            index.append({"file": out.name, "form": form, "n": n, "target": target})
            C.say(f"  built {out.name}")
    (folder / "index.json").write_text(json.dumps(index, indent=1))


def run(folder: pathlib.Path, device: str, target_s: float, repeats: int = 7) -> None:
    import iree.runtime as rt

    cfg = rt.Config(device)
    entries, timers, values = json.loads((folder / "index.json").read_text()), {}, {}
    for e in entries:
        ctx = rt.SystemContext(config=cfg)
        vm = rt.VmModule.mmap(cfg.vm_instance, str(folder / e["file"]))
        ctx.add_vm_module(vm)
        fn = ctx.modules[vm.name]["main"]
        x = np.random.default_rng(0).standard_normal(e["n"]).astype(np.float32)
        dx, last = rt.asdevicearray(cfg.device, x), [None]
        t0 = time.perf_counter()
        values[e["file"]] = (float(np.asarray(fn(dx))), float(np.sum(x.astype(np.float64) ** 2)))
        # as it goes: a form that takes seconds a call is then known even if a time limit ends the run
        C.say(f"  {e['file']}: first call {C.fmt_time(time.perf_counter() - t0)}")

        def step(fn=fn, dx=dx, last=last):
            last[0] = fn(dx)

        timers[e["file"]] = C.Timer(step, lambda last=last: float(np.asarray(last[0])))  # the read-back is the sync
    C.run_interleaved(timers, repeats, 3, target_s)  # both forms of a size sampled in turn
    rows = []
    for e in entries:
        med, (value, ref) = timers[e["file"]].median, values[e["file"]]
        rows.append({**e, "s": med, "gbs": 4 * e["n"] / med / 1e9, "rel_err": abs(value - ref) / ref})
        C.say(f"  {e['form']:>6} n={C.fmt_size(e['n']):>5}  {C.fmt_time(med):>9}  {rows[-1]['gbs']:6.1f} GB/s  rel err {rows[-1]['rel_err']:.1e}")
    table = [[r["form"], C.fmt_size(r["n"]), C.fmt_time(r["s"]), f"{r['gbs']:.1f}", f"{r['rel_err']:.1e}"] for r in rows]
    text = "\n".join([
        f"# sum of squares on {device} ({C.today()})", "",
        f"- versions: {C.versions('iree-base-runtime')}",
        "- dot = `jnp.dot(x, x)`, reduce = `sum(x * x)` as the frontend traces it for GPU targets", "",
        C.md_table(["form", "n", "time", "GB/s (4 B read per element)", "error vs float64"], table), "",
    ])
    (folder / "norms.md").write_text(text)
    C.write_json(folder / "norms.json", rows)
    print(text)


def main(argv=None) -> int:
    ap, b, r = C.build_run_parser(__doc__, "compile the modules (here)", "time them (on the device host)")
    b.add_argument("--target", default="cuda")
    b.add_argument("--sizes", type=C.parse_sizes, default=list(SIZES))
    r.add_argument("--device", default="cuda")
    r.add_argument("--target-s", type=float, default=0.05, help="wall time of one sample")
    args = ap.parse_args(argv)
    if args.cmd == "build":
        build(args.folder, args.target, args.sizes)
    else:
        run(args.folder, args.device, args.target_s)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
