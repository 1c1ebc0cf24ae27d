"""Compiles the flat optimizer modules that ``bench/gpu.py`` times, for a GPU host with no compiler.

Run it here (it needs the compiler and JAX, not a GPU), copy the folder to the GPU machine, run
``bench/gpu.py --modules FOLDER --out RESULTS`` there.

    python bench/build_gpu_modules.py out/gpu-modules                     # cuda, sm_80 PTX
    python bench/build_gpu_modules.py out/gpu-modules --cuda-arch sm_86
    python bench/build_gpu_modules.py out/cpu-modules --target llvm-cpu   # dry run of gpu.py here

Writes ``<optimizer>-flat-<target>.vmfb`` for adam, adamw, sgd_momentum, lion and lamb (options
as in ``bench/_common.POLARIS``), fixed-length flat modules (``--size``: static shapes, a command
buffer recorded once and replayed) of the ``--fixed`` optimizers at each ``--fixed-sizes`` size,
each also with its scalars hoisted into dispatches of their own (``CompileOptions(hoist_scalars=True)``;
CUDA modules fuse them by default since the thirteenth pass of docs/performance.md),
zero-padded to a length IREE vectorises where the size is not one (1e6 -> 1000064 on CUDA;
``polaris_compiler.options.gpu_vector_multiple``) and
with the async-external model (``--async``; ``bench/gpu_async.py``; also with externalized
transients, ``CompileOptions(external_transients=True)``),
a GPT-2 small tree module (148 tensors; ``--gpt2``) of the ``--tree`` optimizers with a
fixed-length flat module of the same model packed, and
``index.json`` describing them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import _common as C  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", type=pathlib.Path)
    ap.add_argument("--target", default="cuda", help="cuda (default), or llvm-cpu / vulkan for a dry run")
    ap.add_argument("--cuda-arch", default="sm_80", help="sm_80 PTX also runs on Hopper (DESIGN.md)")
    ap.add_argument("--optimizers", type=C.parse_optimizers, default=list(C.OPTIMIZERS))
    ap.add_argument("--fixed", type=C.parse_optimizers, default=["adam", "adamw", "sgd_momentum", "lion"],
                    help="optimizers that also get fixed-length modules (the element-wise ones; flat LAMB's scatter is too slow to time)")
    ap.add_argument("--fixed-sizes", type=C.parse_sizes, default=[10**6, 10**7, 10**8])
    ap.add_argument("--no-async", dest="async_fixed", action="store_false",
                    help="skip the fixed-length modules built with IREE's async-external execution model (bench/gpu_async.py)")
    ap.add_argument("--tree", type=C.parse_optimizers, default=["adam"], help="optimizers that also get a GPT-2 tree module")
    ap.add_argument("--gpt2", choices=["full", "quarter", "none"], default="full", help="the tree module's shapes: GPT-2 small's 148 tensors, full size (124M) or every dim /4")
    args = ap.parse_args(argv)

    from polaris._src import registry
    from polaris_compiler import CompileOptions, Layout, Target, compile_optimizer
    from polaris_compiler.options import gpu_vector_multiple

    tgt = Target.parse(args.target)
    opts = CompileOptions(target=tgt, cuda_arch=args.cuda_arch)
    args.folder.mkdir(parents=True, exist_ok=True)
    index = {"target": tgt.value, "cuda_arch": args.cuda_arch if tgt is Target.CUDA else None,
             "versions": C.versions("iree-base-compiler", "iree-base-runtime", "jax", "polaris-iree"),
             "built": C.now(), "modules": {}}
    for key in args.optimizers:
        name, options = C.POLARIS[key]
        spec = registry.get(name)

        def build(layout, fname, **option_changes):
            """This optimizer compiled for ``layout`` (``opts`` with ``option_changes``), saved."""
            art = compile_optimizer(spec.build(**options), layout, dataclasses.replace(opts, **option_changes),
                                    name=name, optimizer_options={**spec.defaults(), **options})
            art.save(args.folder / fname)
            return art

        t0 = time.perf_counter()
        fname = f"{key}-flat-{tgt.value}.vmfb"
        art = build(Layout.flat(), fname)
        entry = index["modules"][key] = {"file": fname, "polaris_name": name, "options": options,
                                         "bytes_per_param": C.BYTES_PER_PARAM[key], "flags": art.flags, "notes": art.notes}
        C.say(f"  {fname}: {len(art.vmfb) / 1024:.0f} KiB in {time.perf_counter() - t0:.1f} s")
        if key in args.fixed:
            k = gpu_vector_multiple(opts, tgt)
            for n in args.fixed_sizes:
                fixed = Layout.flat(size=n)
                entry.setdefault("fixed", {})[str(n)] = fname_n = f"{key}-flat{n}-{tgt.value}.vmfb"
                art = build(fixed, fname_n)
                C.say(f"  {fname_n}: {len(art.vmfb) / 1024:.0f} KiB")
                # the same step with its scalars in dispatches of their own (2 -> 5 dispatches; the
                # CPU's default, CUDA's before the thirteenth pass)
                entry.setdefault("fixed_hoisted", {})[str(n)] = fname_h = f"{key}-flat{n}-hoisted-{tgt.value}.vmfb"
                build(fixed, fname_h, hoist_scalars=True)
                if k and n % k:  # a length IREE does not vectorise (1e6 on CUDA): the same step zero-padded to one it does
                    padded = -(-n // k) * k
                    fname_p = f"{key}-flat{padded}-{tgt.value}.vmfb"
                    entry.setdefault("fixed_padded", {})[str(n)] = {"file": fname_p, "size": padded}
                    build(Layout.flat(size=padded), fname_p)
                    C.say(f"  {fname_p}: {n} padded to a multiple of {k}")
                    if args.async_fixed:  # ... and async (the fastest 1e6 step: docs/performance.md, thirteenth pass)
                        fname_pa = f"{key}-flat{padded}-async-{tgt.value}.vmfb"
                        entry.setdefault("fixed_padded_async", {})[str(n)] = {"file": fname_pa, "size": padded}
                        build(Layout.flat(size=padded), fname_pa, asynchronous=True)
                if args.async_fixed:  # the same step with coarse fences: the caller orders, nobody waits
                    entry.setdefault("fixed_async", {})[str(n)] = fname_a = f"{key}-flat{n}-async-{tgt.value}.vmfb"
                    build(fixed, fname_a, extra_args=("--iree-execution-model=async-external",))
                    # ... and with its transient storage in a buffer the caller passes
                    # (CompileOptions.external_transients: no queue alloca/dealloca; gpu_async.py)
                    entry.setdefault("fixed_async_ext", {})[str(n)] = fname_x = f"{key}-flat{n}-async-ext-{tgt.value}.vmfb"
                    build(fixed, fname_x, asynchronous=True, external_transients=True)
                    C.say(f"  {fname_a}, {fname_x}")
        if key in args.tree and args.gpt2 != "none":  # the many-tensor layout: one module, 148 tensors
            import jax
            import numpy as np

            div = 1 if args.gpt2 == "full" else 4
            stem = f"{key}-gpt2{'' if div == 1 else f'-div{div}'}"
            sds = C.map_shapes(lambda s: jax.ShapeDtypeStruct(s, np.float32), C.gpt2_shapes(div))
            fname_t = f"{stem}-tree-{tgt.value}.vmfb"
            art = build(Layout.from_tree(sds, source="gpt2"), fname_t)
            C.say(f"  {fname_t}: {len(art.vmfb) / 1024:.0f} KiB")
            # the same model packed into one fixed-length flat module (one kernel; GPT-2's
            # 124439808 = 972186 x 128, a length IREE's CUDA kernel loads as vectors)
            n = sum(int(np.prod(s.shape)) for s in jax.tree.leaves(sds))
            fname_f = f"{stem}-flat{n}-{tgt.value}.vmfb"
            art = build(Layout.flat(size=n), fname_f)
            entry["gpt2"] = {"file": fname_t, "div": div, "flat_fixed": fname_f}
            C.say(f"  {fname_f}: {len(art.vmfb) / 1024:.0f} KiB")
            if args.async_fixed:  # ... and async (on CUDA with its transients passed in: the default)
                fname_fa = f"{stem}-flat{n}-async-{tgt.value}.vmfb"
                build(Layout.flat(size=n), fname_fa, asynchronous=True)
                entry["gpt2"]["flat_fixed_async"] = fname_fa
                C.say(f"  {fname_fa}")
    (args.folder / "index.json").write_text(json.dumps(index, indent=2) + "\n")
    print(args.folder / "index.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
