"""Probe: does hoisting Adam's bias corrections out of the elementwise loop speed up IREE's kernel?

In the compiled ``step`` of polaris' Adam, the per-element loop recomputes ``b1**count`` and
``b2**count`` (an exp2 polynomial, ~50 scalar instructions) on every 16-float vector iteration:
the count is read from a buffer that LLVM cannot prove unaliased with the outputs, so nothing is
hoisted (see docs/performance.md). This script compiles stand-alone Adam steps with the
same math and times them through IREE (raw invoke, local-task):

* ``inline``: the bias corrections inside the elementwise expression (polaris before the fix);
* ``barrier``: the scalars ``lr/(1-b1^t)`` and ``1/(1-b2^t)`` computed first and passed through
  ``jax.lax.optimization_barrier``, so IREE materialises them in a scalar dispatch and the loop
  only loads them;
* ``sort``: the same scalars hoisted with a one-element ``lax.sort`` (``tree_utils.hoisted``, what
  polaris does since the third pass): no host wait around them, unlike the barrier;
* ``jax``: jax.jit of ``inline`` on XLA:CPU, for reference.

Usage: ``python bench/kernel_probe.py [--sizes 1e5,1e6,1e7]`` (prints a markdown table).
"""

from __future__ import annotations

import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

import _common as C  # noqa: E402

B1, B2, EPS, EPS_ROOT, LR = 0.9, 0.999, 1e-8, 1e-15, 1e-3


def steps():
    import jax
    import jax.numpy as jnp

    def inline(p, g, m, v, t):
        t = t + 1
        tf = t.astype(jnp.float32)
        m = B1 * m + (1 - B1) * g
        v = B2 * v + (1 - B2) * g * g
        mh = m / (1 - B1**tf)
        vh = v / (1 - B2**tf)
        return p - LR * mh / (jnp.sqrt(vh + EPS_ROOT) + EPS), m, v, t

    def barrier(p, g, m, v, t):
        t = t + 1
        tf = t.astype(jnp.float32)
        a, b = jax.lax.optimization_barrier((LR / (1 - B1**tf), 1 / (1 - B2**tf)))
        m = B1 * m + (1 - B1) * g
        v = B2 * v + (1 - B2) * g * g
        return p - a * m / (jnp.sqrt(v * b + EPS_ROOT) + EPS), m, v, t

    def sort(p, g, m, v, t):
        t = t + 1
        tf = t.astype(jnp.float32)
        a, b = (jax.lax.sort(x.reshape(1))[0] for x in (LR / (1 - B1**tf), 1 / (1 - B2**tf)))
        m = B1 * m + (1 - B1) * g
        v = B2 * v + (1 - B2) * g * g
        return p - a * m / (jnp.sqrt(v * b + EPS_ROOT) + EPS), m, v, t

    return {"inline": inline, "barrier": barrier, "sort": sort}


def compile_iree(fn) -> bytes:
    import jax
    import iree.compiler as ic

    n = jax.export.symbolic_shape("n")[0]
    f32 = jax.ShapeDtypeStruct((n,), np.float32)
    t = jax.ShapeDtypeStruct((), np.int32)
    exp = jax.export.export(jax.jit(fn, donate_argnums=(0, 2, 3, 4)), platforms=["cpu"])(f32, f32, f32, f32, t)
    return ic.compile_str(exp.mlir_module(), target_backends=["llvm-cpu"], input_type="stablehlo",
                          extra_args=["--iree-llvmcpu-target-cpu=host"])


def iree_timer(vmfb: bytes, n: int) -> C.Timer:
    import iree.runtime as rt

    cfg = rt.Config("local-task")
    ctx = rt.SystemContext(config=cfg)
    vm = rt.VmModule.copy_buffer(cfg.vm_instance, vmfb)
    ctx.add_vm_module(vm)
    f = ctx.modules[vm.name]["main"]
    rng = np.random.default_rng(0)
    up = lambda a: rt.asdevicearray(cfg.device, a)  # noqa: E731
    box = {"a": [up(rng.standard_normal(n, dtype=np.float32)), up(rng.standard_normal(n, dtype=np.float32) * np.float32(1e-3)),
                 up(np.zeros(n, np.float32)), up(np.zeros(n, np.float32)), up(np.zeros((), np.int32))]}
    g = box["a"][1]

    def step():
        p, m, v, t = f(*box["a"])
        box["a"] = [p, g, m, v, t]

    return C.Timer(step, lambda: box["a"][4].to_host())


def jax_timer(fn, n: int) -> C.Timer:
    import jax

    step_fn = jax.jit(fn, donate_argnums=(0, 2, 3, 4))
    rng = np.random.default_rng(0)
    fresh = jax.jit(lambda a: a * 1)
    box = {"a": [fresh(rng.standard_normal(n, dtype=np.float32)), fresh(rng.standard_normal(n, dtype=np.float32)),
                 fresh(np.zeros(n, np.float32)), fresh(np.zeros(n, np.float32)), fresh(np.zeros((), np.int32))]}
    g = box["a"][1]

    def step():
        p, m, v, t = step_fn(*box["a"])
        box["a"] = [p, g, m, v, t]

    return C.Timer(step, lambda: jax.block_until_ready(box["a"][0]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=C.parse_sizes, default=[10**5, 10**6, 10**7])
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args(argv)
    fns = steps()
    mods = {k: compile_iree(f) for k, f in fns.items()}
    rows = []
    for n in args.sizes:
        timers = {f"iree {k}": iree_timer(b, n) for k, b in mods.items()}
        timers["jax.jit inline"] = jax_timer(fns["inline"], n)
        C.run_interleaved(timers, args.repeats if n < 5e6 else max(3, args.repeats // 3), 5, 0.05)
        rows.append([C.fmt_size(n), *[f"{C.fmt_time(t.median)} ({28 * n / t.median / 1e9:.0f} GB/s)" for t in timers.values()]])
        C.say("  " + " | ".join(rows[-1]))
    print(C.md_table(["params", *timers], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
