"""Experiment: Adam's step count written to a second buffer (ping-pong), so that the CUDA step's
kernel waits for nothing (sixteenth pass, docs/performance.md).

Adam's ``--size --async`` CUDA step is three operations in one command buffer, in order: a
1-thread dispatch that writes ``count + 1`` to a transient, the element-wise kernel (which reads
it) and a 4-byte copy of it into the count's buffer. IREE 3.13 gives a result it writes in place
a transient and a copy whenever another dispatch of the same call reads it. The fifteenth pass's
split count (``gpu_tile_probe.split_count``: the kernel computes ``t`` from the *old* count) took
the kernel off the count dispatch's back, but IREE then allocated a new count buffer every call:
the old one, which the kernel still reads, cannot take the new value in place (1e7 -2%, 1e6
+40-110%).

Here the new count goes to a **second buffer**. The module built by :func:`pingpong` takes a spare
4-byte ``tensor<i32>`` after the arrays as the storage of its count result (``tf.aliasing_output``
moves from the count's argument to it); the caller passes the two count buffers in turn, step k
reading one and writing the other. Read from the VM code (``vm_ops`` in ``index.json``), the
step's memoized command buffer is then two dispatches with no barrier between them and nothing
else: no copy, no queue allocation. The runtime does not do this swap (it would change the
module ABI); the probe calls both modules the same way, through ``Module._invoke`` with argument
lists of its own, so that only the module differs.

``run`` (on the device host) checks the two modules' parameters after 20 steps (bit-identical
expected: the same element-wise math) and the count after them, then times both, the product
module through the runtime and torch fused Adam in one process, ``--rounds`` times with the order
reversed every other round.

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


def pingpong(text: str, count_arg: int, count_result: int) -> str:
    """The module ``text`` with its ``step`` wrapped: the wrapper takes one more ``tensor<i32>``
    after the arrays, the storage of result ``count_result`` (argument ``count_arg`` loses its
    alias, if it had one: under ``split_count`` the hazard check has already dropped it), and
    calls the old ``step`` (now private) with everything else."""
    from iree.compiler import ir

    with ir.Context(), ir.Location.unknown():
        m = ir.Module.parse(text)
        (fn,) = [op for op in m.body.operations if "sym_name" in op.attributes and ir.StringAttr(op.attributes["sym_name"]).value == "step"]
        ftype = ir.FunctionType(ir.TypeAttr(fn.attributes["function_type"]).value)
        arg_types, res_types = [str(t) for t in ftype.inputs], [str(t) for t in ftype.results]
        arg_attrs = [ir.DictAttr(a) for a in ir.ArrayAttr(fn.attributes["arg_attrs"])]
        reflection = str(fn.attributes["iree.reflection"])
        aliases = {i: ir.IntegerAttr(a["tf.aliasing_output"]).value for i, a in enumerate(arg_attrs) if "tf.aliasing_output" in a}
        if arg_types[count_arg] != "tensor<i32>" or res_types[count_result] != "tensor<i32>":
            raise SystemExit(f"step's argument {count_arg} is {arg_types[count_arg]}, its result {count_result} {res_types[count_result]}")
        fn.attributes["sym_name"] = ir.StringAttr.get("step__inner")
        fn.attributes["sym_visibility"] = ir.StringAttr.get("private")
        del fn.attributes["iree.reflection"]
        inner = str(m.operation.get_asm(enable_debug_info=False))
    n_arrays = sum(1 for t in arg_types if t.startswith("tensor<"))
    spare = n_arrays  # after the arrays, before the transient buffer (if any)

    def attrs(i: int) -> str:
        a = {}
        if i in aliases and i != count_arg:
            a["tf.aliasing_output"] = f"{aliases[i]} : i32"
        if arg_types[i] == "!hal.buffer":
            a["iree.abi.transients"] = None
        body = ", ".join(k if v is None else f"{k} = {v}" for k, v in a.items())
        return f" {{{body}}}" if body else ""

    params = [f"%a{i}: {t}{attrs(i)}" for i, t in enumerate(arg_types)]
    params.insert(spare, f"%spare: tensor<i32> {{tf.aliasing_output = {count_result} : i32}}")
    call_args = ", ".join(f"%a{i}" for i in range(len(arg_types)))
    results = ", ".join(res_types)
    wrapper = (
        f"  func.func public @step({', '.join(params)}) -> ({results}) attributes {{iree.reflection = {reflection}}} {{\n"
        f"    %r:{len(res_types)} = call @step__inner({call_args}) : ({', '.join(arg_types)}) -> ({results})\n"
        f"    return {', '.join(f'%r#{k}' for k in range(len(res_types)))} : {results}\n  }}\n"
    )
    end = inner.rstrip().rfind("}")
    return inner[:end] + wrapper + inner[end:]


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
    from gpu_tile_probe import split_count

    from polaris_compiler import CompileOptions, Target

    folder.mkdir(parents=True, exist_ok=True)
    # external transients: the CUDA default for async modules, and here on the CPU too, so that
    # a dry run passes the transient buffer as the GPU run will
    opts = CompileOptions(target=Target.parse(target), asynchronous=True, external_transients=True)
    index = {"target": target, "versions": C.versions("iree-base-compiler", "jax", "polaris-iree"), "cases": []}
    for n in sizes:
        case = {"n": n}
        for kind in ("product", "ping-pong"):
            with tempfile.TemporaryDirectory() as tmp, (split_count() if kind == "ping-pong" else contextlib.nullcontext()):
                art = C.compile_bench_optimizer("adam", n, dataclasses.replace(opts, save_temps=tmp))
                flags = art.flags
                text = pathlib.Path(tmp, "module.mlir").read_text()
            state = [s["name"] for s in art.manifest["groups"]["state"]]
            n_p = len(art.manifest["groups"]["params"])
            if kind == "ping-pong":
                text = pingpong(text, 2 * n_p + state.index(COUNT_LEAF), n_p + state.index(COUNT_LEAF))
                vmfb = ic.compile_str(text, extra_args=flags)
            else:
                vmfb = art.vmfb
            vm = ic.compile_str(text, extra_args=[*flags, "--compile-to=vm", "--mlir-print-debuginfo=false"]).decode()
            fname = f"adam-{n}-{kind}.vmfb"
            (folder / fname).write_bytes(vmfb)
            case[kind] = {"file": fname, "vm_ops": vm_ops(vm)}
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
        files = {"product raw": case["product"]["file"], "ping-pong raw": case["ping-pong"]["file"], "product runtime": case["product"]["file"]}
        check = {}
        try:  # correctness first: 20 steps of each, raw
            got = {}
            for key, spare in (("product raw", False), ("ping-pong raw", True)):
                s = RawStep(folder / files[key], device, p, g, case["state"], spare)
                for _ in range(check_steps):
                    s.step()
                got[key] = s.read()
                del s
                G._free()
            check = {"max_abs_diff": float(np.abs(got["product raw"][0] - got["ping-pong raw"][0]).max()),
                     "counts": [got["product raw"][1], got["ping-pong raw"][1]]}
            ok = ok and check["max_abs_diff"] == 0.0 and check["counts"] == [check_steps, check_steps]
        except Exception as e:  # a failing check is a result
            check = {"error": f"{type(e).__name__}: {e}"[:300]}
            ok = False
        C.say(f"  {C.fmt_size(n)} check ({check_steps} steps): {check}")
        makers = {
            "product raw": lambda: RawStep(folder / files["product raw"], device, p, g, case["state"], False),
            "ping-pong raw": lambda: RawStep(folder / files["ping-pong raw"], device, p, g, case["state"], True),
            "product runtime": lambda: G.polaris_peer(folder / files["product runtime"], device, p, g),
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
            if key in ("product raw", "ping-pong raw"):
                kind = "product" if key.startswith("product") else "ping-pong"
                row["vm_ops"] = case[kind]["vm_ops"]
            row.update(check=check) if key == "ping-pong raw" else None
            rows.append(row)
            C.say(f"  {C.fmt_size(n)} {key}: " + (row.get("error") or ", ".join(C.fmt_time(s) for s in row["steps"])))
        C.write_json(out / "count.json", {"info": info, "rows": rows})
        _report(out, info, rows, repeats, rounds, check_steps)  # after every size: a cut keeps what was measured
    print((out / "count.md").read_text())
    return 0 if ok else 1


def _report(out: pathlib.Path, info: dict, rows: list, repeats: int, rounds: int, check_steps: int) -> None:
    lines = [f"# Adam's count in two buffers (ping-pong): {info['date']}, {info['gpu']} ({info['device']})", "",
             f"- runtime side: {info['versions']}; modules built with {info['built_with']}",
             f"- Adam `--size N --async`; step: (N steps + one sync) / N, median of {repeats} repeats; each case timed "
             f"{rounds} times, the order reversed every other round",
             "- raw: `Module._invoke` with argument lists of the probe's own (the ping-pong module needs its spare "
             "count passed); runtime: `Optimizer.step` with the runtime's defaults",
             f"- check: max |params(product) - params(ping-pong)| and both counts after {check_steps} steps",
             "- enqueue: the host's time to queue a step (median); where it is close to the step, the host bounds it "
             "and the device's savings cannot show", "",
             "| params | case | step (median) | each round | GB/s | x product raw | x torch fused | x jax | enqueue; check |",
             "|---|---|---|---|---|---|---|---|---|"]
    for n in sorted({r["n"] for r in rows}):
        at = {r["case"]: r.get("step") for r in rows if r["n"] == n}
        for r in (r for r in rows if r["n"] == n):
            chk = r.get("check", {})
            chk = chk.get("error", "") or (f"{chk['max_abs_diff']:.1e}, counts {chk['counts']}" if chk else "")
            last = "; ".join(filter(None, [C.fmt_time(r["enqueue"]) if "enqueue" in r else "", chk]))
            lines.append(C.step_row(n, r, 28, [at.get("product raw"), at.get("torch fused"), at.get("jax.jit(optax)")], last))
    lines += ["", "What each module's step does (from the VM code):", ""]
    for r in rows:
        if "vm_ops" in r and r["n"] == rows[0]["n"]:
            lines.append(f"- {r['case'].split()[0]}: command buffer {r['vm_ops'].get('command_buffer')}; queue {r['vm_ops'].get('queue')}")
    (out / "count.md").write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    ap, b, _ = C.build_run_parser(__doc__, "compile both modules (here)", "check and time them (on the device host)", rounds=3)
    b.add_argument("--target", default="cuda", help="cuda, or llvm-cpu for a dry run")
    b.add_argument("--sizes", type=C.parse_sizes, default=list(SIZES))
    return C.probe_main(ap, argv, lambda a: build(a.folder, a.target, a.sizes), run)


if __name__ == "__main__":
    raise SystemExit(main())
