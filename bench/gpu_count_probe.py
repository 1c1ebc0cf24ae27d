"""Adam's step count in two buffers (spare counts): the product's step against the one before it
and against a step with no count work at all (sixteenth and seventeenth passes, docs/performance.md).

Until the seventeenth pass, Adam's ``--size --async`` CUDA step was five operations in one command
buffer: a 1-thread dispatch that writes ``count + 1`` to a transient, a barrier, the element-wise
kernel (which reads it), a 4-byte copy of it into the count's buffer and a barrier. IREE 3.13 gives
a result it writes in place a transient and a copy whenever another dispatch of the same call reads
it. With spare counts (``CompileOptions.spare_counts``, the default for async CUDA modules since the
H200 measured this probe's first form) the kernel computes the new count from the old one, and the
stored count goes to a spare 4-byte buffer passed after the arrays, the caller swapping the two
after each call: the command buffer is two dispatches with no barrier between them, and nothing
else. The modules, per size:

- ``before``: ``spare_counts=False``, the product until the seventeenth pass;
- ``spare counts``: the product now;
- ``kernel-only`` (:func:`frozen_count`): a count that never changes (every step uses ``t = 1``),
  so that the step is the element-wise kernel alone: the floor of every count design. It computes
  other numbers and is not checked.

``run`` (on the device host) checks the product's parameters and count after 20 steps, called raw
and through the runtime (its two-phase steady state), against ``before`` (bit-identical
expected), then times the raw calls (``Module._invoke`` with argument lists of the probe's own),
both modules through the runtime, ``jax.jit(optax)`` and torch fused Adam in one process,
``--rounds`` times with the order reversed every other round.

    python bench/gpu_count_probe.py build out/gpu-count                   # here (compiler)
    python bench/gpu_count_probe.py run out/gpu-count --out OUT           # there (cuda)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import pathlib
import re
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402

import _common as C  # noqa: E402

SIZES = (1000064, 10**7, 10**8)  # 1e6 padded to a multiple of 128 (the CUDA vector loads)
COUNT_LEAF = "0/count"


@contextlib.contextmanager
def frozen_count():
    """Adam traced as under ``split_count`` (``t`` from the old count, in the kernel), but with the
    count returned unchanged: the step has no count work at all (a timing floor, not Adam)."""
    from gpu_tile_probe import split_count

    from polaris._src import adam as A

    with split_count():
        moments = A.adam_moments

        def adam_moments(updates, state, b1, b2):
            mu, nu, _ = moments(updates, state, b1, b2)
            return mu, nu, state.count

        A.adam_moments = adam_moments
        try:
            yield
        finally:
            A.adam_moments = moments


# module -> (tracing context, spare_counts): the product before the seventeenth pass, the
# product now (spare counts, the default for async CUDA modules; here on every target, so that a
# CPU dry run passes spares too), and the floor
KINDS = {"before": (contextlib.nullcontext, False), "spare counts": (contextlib.nullcontext, True),
         "kernel-only": (frozen_count, False)}


def vm_ops(vmfb_mlir: str) -> dict:
    """What the step does each call, read from ``--compile-to=vm`` output: the HAL calls of its
    memoized command buffer (``__step_memoize_apply``) and the queue operations of ``step``."""
    out = {}
    for name, key, pat in (("__step_memoize_apply", "command_buffer", r"@hal\.command_buffer\.(\w+)"),
                           ("step", "queue", r"@hal\.(device\.queue\.[\w.]+|fence\.create)")):
        head = re.search(rf"^( *)vm\.func private @{name}\(.*$", vmfb_mlir, re.M)
        if head is None:
            continue
        end = re.compile(rf"^{head.group(1)}}}", re.M).search(vmfb_mlir, head.end())
        body = vmfb_mlir[head.end() : end.start() if end else None]
        out[key] = [m.group(1) for line in body.splitlines() if (m := re.search(pat, line))]
    return out


def build(folder: pathlib.Path, target: str, sizes=SIZES) -> None:
    import iree.compiler as ic

    from polaris_compiler import CompileOptions, Target

    folder.mkdir(parents=True, exist_ok=True)
    # external transients: the CUDA default for async modules, and here on the CPU too, so that
    # a dry run passes the transient buffer as the GPU run will
    opts = CompileOptions(target=Target.parse(target), asynchronous=True, external_transients=True)
    index = {"target": target, "versions": C.versions("iree-base-compiler", "jax", "polaris-iree"), "cases": []}
    for n in sizes:
        case = {"n": n}
        for kind, (ctx, spares) in KINDS.items():
            with tempfile.TemporaryDirectory() as tmp, ctx():
                art = C.compile_bench_optimizer("adam", n, dataclasses.replace(opts, save_temps=tmp, spare_counts=spares))
                flags = art.flags
                text = pathlib.Path(tmp, "module.mlir").read_text()
            state = [s["name"] for s in art.manifest["groups"]["state"]]
            if kind == "kernel-only":
                vmfb = ic.compile_str(text, extra_args=flags)  # from the traced text: no cache entry can stand in
            else:
                vmfb = art.vmfb
            vm = ic.compile_str(text, extra_args=[*flags, "--compile-to=vm", "--mlir-print-debuginfo=false"]).decode()
            fname = f"adam-{n}-{kind.replace(' ', '-')}.vmfb"
            (folder / fname).write_bytes(vmfb)
            case[kind] = {"file": fname, "vm_ops": vm_ops(vm), "spares": art.manifest["functions"]["step"].get("spares", [])}
            C.say(f"  {fname}: {case[kind]['vm_ops']}")
        case["state"] = state
        index["cases"].append(case)
    (folder / "index.json").write_text(json.dumps(index, indent=1) + "\n")


class RawStep:
    """A module's ``step`` called with argument lists of our own (as the runtime's plan does for
    an async module: a new list a call, the module's fences and transient buffer appended)."""

    def __init__(self, path, device: str, p: np.ndarray, g: np.ndarray, state: list[str], spare: bool):
        import iree.runtime as rt
        import polaris_runtime as pr
        from polaris_runtime import device as dev

        self.rt, self.mod = rt, pr.load(path, device=device)
        init = self.mod.init(p)
        up = lambda a: dev.upload(self.mod.device, np.asarray(a))  # noqa: E731
        self.p, self.g = up(p), up(g)
        self.state = [up(init[k]) for k in state]  # a buffer of its own each
        self.c = state.index(COUNT_LEAF)
        self.spare = up(np.zeros((), np.int32)) if spare else None
        self.fn = self.mod._vm_module.lookup_function("step")
        self.tail = self.mod._tails.get("step", ())
        self.ret = rt.VmVariantList(2 + len(state))

    def step(self) -> None:
        args = self.rt.VmVariantList(8 + len(self.state))
        for a in (self.p, self.g, *self.state):
            args.push_ref(a._buffer_view)
        if self.spare is not None:
            args.push_ref(self.spare._buffer_view)
        for r in self.tail:
            args.push_ref(r)
        with self.mod._lock:
            self.mod._invoke("step", self.fn, args, self.ret)
        if self.spare is not None:  # the new count is in the spare: swap
            self.state[self.c], self.spare = self.spare, self.state[self.c]

    def sync(self) -> None:
        self.mod.wait()

    def read(self) -> tuple[np.ndarray, int]:
        from polaris_runtime import device as dev

        self.mod.wait()
        return dev.to_host(self.p).astype(np.float64), int(dev.to_host(self.state[self.c]))


def run(folder: pathlib.Path, out: pathlib.Path, device: str, repeats: int, target_s: float, rounds: int, check_steps: int = 20) -> int:
    import gpu as G
    from gpu_percall import _measure

    index, info, on_gpu = C.probe_start(folder, out, device, rounds, G.gpu_name)
    rows, ok = [], True
    rng = np.random.default_rng(12)
    for case in index["cases"]:
        n = case["n"]
        p = rng.standard_normal(n, dtype=np.float32)
        g = rng.standard_normal(n, dtype=np.float32) * np.float32(1e-3)
        before, spares, floor = (folder / case[k]["file"] for k in ("before", "spare counts", "kernel-only"))
        check = {}
        try:  # correctness first: 20 steps of each, raw and (the product now) through the runtime
            got = {}
            for key, path, spare in (("before raw", before, False), ("spare counts raw", spares, True)):
                s = RawStep(path, device, p, g, case["state"], spare)
                for _ in range(check_steps):
                    s.step()
                got[key] = s.read()
                del s
                G._free()
            got["spare counts runtime"] = _runtime_steps(spares, device, p, g, check_steps)
            G._free()
            ref = got["before raw"][0]
            check = {"max_abs_diff": max(float(np.abs(v[0] - ref).max()) for v in got.values()),
                     "counts": [v[1] for v in got.values()]}
            ok = ok and check["max_abs_diff"] == 0.0 and check["counts"] == [check_steps] * 3
        except Exception as e:  # a failing check is a result
            check = {"error": f"{type(e).__name__}: {e}"[:300]}
            ok = False
        C.say(f"  {C.fmt_size(n)} check ({check_steps} steps): {check}")
        makers = {
            "before raw": lambda: RawStep(before, device, p, g, case["state"], False),
            "spare counts raw": lambda: RawStep(spares, device, p, g, case["state"], True),
            # the floor of any count design (not Adam: t = 1 every step)
            "kernel-only raw": lambda: RawStep(floor, device, p, g, case["state"], False),
            "before runtime": lambda: G.polaris_peer(before, device, p, g),
            "spare counts runtime": lambda: G.polaris_peer(spares, device, p, g),
            "jax.jit(optax)": lambda: G.jax_peer("adam", "gpu" if on_gpu else "cpu", p, g),
        }
        if on_gpu:
            makers["torch fused"] = lambda: G.torch_peer("adam", "fused", p, g)
        group = {k: {"n": n, "case": k, "steps": []} for k in makers}

        def measure(timer):
            if isinstance(timer, RawStep):
                timer = C.Timer(timer.step, timer.sync)
            return _measure(timer, repeats, target_s)  # step and enqueue

        ok = C.time_in_rounds(group, makers, rounds, measure, G._free, may_fail=("torch fused", "jax.jit(optax)")) and ok
        for key, row in group.items():
            if key.endswith(" raw"):
                row["vm_ops"] = case[key.removesuffix(" raw")]["vm_ops"]
            row.update(check=check) if key == "spare counts runtime" else None
            rows.append(row)
            C.say(f"  {C.fmt_size(n)} {key}: " + (row.get("error") or ", ".join(C.fmt_time(s) for s in row["steps"])))
        C.write_json(out / "count.json", {"info": info, "rows": rows})
        _report(out, info, rows, repeats, rounds, check_steps)  # after every size: a cut keeps what was measured
    print((out / "count.md").read_text())
    return 0 if ok else 1


def _runtime_steps(path, device: str, p: np.ndarray, g: np.ndarray, steps: int) -> tuple[np.ndarray, int]:
    """``steps`` steps through the runtime's API (its steady-state plan after the first): the
    parameters and the step count after them."""
    import polaris_runtime as pr
    from polaris_runtime import device as dev

    mod = pr.load(path, device=device)
    grads = dev.upload(mod.device, g)
    params, state = [dev.upload(mod.device, p)], mod.init(p)
    for _ in range(steps):
        params, state = mod.step(params, grads, state)
    return np.asarray(params.numpy(), np.float64).reshape(-1), mod.step_count(state)


def _report(out: pathlib.Path, info: dict, rows: list, repeats: int, rounds: int, check_steps: int) -> None:
    lines = [f"# Adam's count in two buffers (spare counts): {info['date']}, {info['gpu']} ({info['device']})", "",
             f"- runtime side: {info['versions']}; modules built with {info['built_with']}",
             f"- Adam `--size N --async`; step: (N steps + one sync) / N, median of {repeats} repeats; each case timed "
             f"{rounds} times, the order reversed every other round",
             "- before: `spare_counts=False` (the product until the seventeenth pass); spare counts: the default now; "
             "raw: `Module._invoke` with argument lists of the probe's own (the spare passed and swapped by the "
             "probe); runtime: `Optimizer.step` with the runtime's defaults",
             f"- check: max |params - params(before raw)| of spare counts raw and through the runtime, and the three "
             f"counts, after {check_steps} steps",
             "- kernel-only: the count never changes (t = 1 every step, not Adam, not checked): the floor of any "
             "count design",
             "- enqueue: the host's time to queue a step (median); where it is close to the step, the host bounds it "
             "and the device's savings cannot show", "",
             "| params | case | step (median) | each round | GB/s | x before raw | x torch fused | x jax | enqueue; check |",
             "|---|---|---|---|---|---|---|---|---|"]
    for n in sorted({r["n"] for r in rows}):
        at = {r["case"]: r.get("step") for r in rows if r["n"] == n}
        for r in (r for r in rows if r["n"] == n):
            chk = r.get("check", {})
            chk = chk.get("error", "") or (f"{chk['max_abs_diff']:.1e}, counts {chk['counts']}" if chk else "")
            last = "; ".join(filter(None, [C.fmt_time(r["enqueue"]) if "enqueue" in r else "", chk]))
            lines.append(C.step_row(n, r, 28, [at.get("before raw"), at.get("torch fused"), at.get("jax.jit(optax)")], last))
    lines += ["", "What each module's step does (from the VM code):", ""]
    for r in rows:
        if "vm_ops" in r and r["n"] == rows[0]["n"]:
            lines.append(f"- {r['case'].removesuffix(' raw')}: command buffer {r['vm_ops'].get('command_buffer')}; queue {r['vm_ops'].get('queue')}")
    (out / "count.md").write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    ap, b, _ = C.build_run_parser(__doc__, "compile both modules (here)", "check and time them (on the device host)", rounds=3)
    b.add_argument("--target", default="cuda", help="cuda, or llvm-cpu for a dry run")
    b.add_argument("--sizes", type=C.parse_sizes, default=list(SIZES))
    return C.probe_main(ap, argv, lambda a: build(a.folder, a.target, a.sizes), run)


if __name__ == "__main__":
    raise SystemExit(main())
