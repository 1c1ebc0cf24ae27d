"""Experiment: the fixed-length Adam step without the per-call host wait (IREE's async-external model).

A module compiled the default way ends every exported function with a host wait on its own fence:
each ``step`` blocks until the device has finished it, so the device idles while the host prepares
the next call. Compiled with ``--iree-execution-model=async-external`` the function takes a wait
fence and a signal fence instead (``iree.abi.model = coarse-fences``) and returns as soon as the
work is queued; steps are ordered on the device by chaining the fences of one timeline semaphore.

For each size this times, round-robin in one process (``bench/_common.run_interleaved``):

* ``polaris fixed``: the product path (``polaris_runtime.load(...).step`` on the fixed-length module);
* ``bare sync``: the same module through ``vm_context.invoke`` (no runtime checks);
* ``bare async``: the async-external module, fences chained, one wait per sample;
* ``bare async, no transient``: the same with IREE's externalized transients
  (``CompileOptions(external_transients=True)``): no queue alloca/dealloca, whose CUDA dealloca
  blocks the host until the step is done, so nothing makes the host wait between steps;
  ``polaris async, no transient``: that module through the runtime (which passes the buffer);
* ``torch fused``, ``jax.jit(optax)``: the peers of ``bench/gpu.py``.

It checks that the async module's parameters after 10 steps equal the sync module's (relative L2
error <= 1e-6), and times reading 1e8 parameters back to the host through the runtime
(``polaris_runtime.device.to_host``) against ``torch.Tensor.cpu()``.

    python bench/build_gpu_modules.py out/gpu-modules               # here (builds the async ones too)
    python bench/gpu_async.py --modules out/gpu-modules --out OUT   # on the GPU host
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402

import _common as C  # noqa: E402
import gpu as G  # noqa: E402  (peers, device facts; imports polaris_runtime)


class _Async:
    """A fixed-length module's ``step`` with coarse fences: ``step()`` queues and returns."""

    def __init__(self, path, device: str, p: np.ndarray, g: np.ndarray, chained: bool = True):
        # chained=False: every step's wait fence is value 0 (already reached), so nothing orders
        # the steps but the driver's queue itself (IREE's CUDA HAL: one stream). Not a valid way
        # to call a module (IREE promises no order without fences); an experiment of gpu_percall.py
        self.chained = chained
        import iree.runtime as rt
        from polaris_runtime import device as dev

        self.rt, cfg = rt, dev.config_for(device)
        self.vm = rt.VmModule.copy_buffer(cfg.vm_instance, pathlib.Path(path).read_bytes())
        self.ctx = rt.SystemContext(config=cfg)
        self.ctx.add_vm_module(self.vm)
        if self.vm.lookup_function("step").reflection.get("iree.abi.model") != "coarse-fences":
            raise RuntimeError(f"{path} was not compiled with --iree-execution-model=async-external")
        self.sem, self.t = cfg.device.create_semaphore(0), 0
        # a step with externalized transients (CompileOptions.external_transients) takes its
        # transient storage as a buffer after the arrays: one, reused (the steps are chained),
        # allocated as the runtime does
        from polaris_runtime.module import _transient_buffer

        self.transients = _transient_buffer(self.vm, "step", cfg.device, str(path))
        pv, self.gv = dev.upload(cfg.device, p)._buffer_view, dev.upload(cfg.device, g)._buffer_view
        import polaris_runtime as pr

        self.n_state = len(pr.inspect_module(pathlib.Path(path).read_bytes()).group("state"))
        state = self._call("init", [pv], self.n_state)
        self.wait()
        state = [dev.upload(cfg.device, np.asarray(rt.DeviceArray(cfg.device, v).to_host()))._buffer_view for v in state]
        self.views, self.device = [pv, self.gv, *state], cfg.device

    def _call(self, fname, views, n_out):
        rt = self.rt
        args = rt.VmVariantList(len(views) + 3)
        for v in views:
            args.push_ref(v)
        if fname == "step" and self.transients is not None:
            args.push_ref(self.transients)
        args.push_ref(rt.HalFence.create_at(self.sem, self.t if self.chained or fname != "step" else 0))
        args.push_ref(rt.HalFence.create_at(self.sem, self.t + 1))
        ret = rt.VmVariantList(n_out)
        self.ctx.vm_context.invoke(self.vm.lookup_function(fname), args, ret)
        self.t += 1
        return [ret.get_as_object(j, rt.HalBufferView) for j in range(n_out)]

    def step(self):
        out = self._call("step", self.views, 1 + self.n_state)
        self.views = [out[0], self.gv, *out[1:]]

    def wait(self):
        self.rt.HalFence.create_at(self.sem, self.t).wait()

    def params(self) -> np.ndarray:
        self.wait()
        return np.asarray(self.rt.DeviceArray(self.device, self.views[0]).to_host())


def async_peer(path, device, p, g, chained: bool = True) -> C.Timer:
    a = _Async(path, device, p, g, chained)
    t = C.Timer(a.step, a.wait)
    t.keep = a
    return t


def check(sync_path, async_path, device, n, steps=10) -> dict:
    """The async module's params after ``steps`` steps vs the sync module's, same start."""
    rng = np.random.default_rng(7)
    p = rng.standard_normal(n, dtype=np.float32)
    g = rng.standard_normal(n, dtype=np.float32) * np.float32(1e-2)
    ref, _ = G.run_steps(sync_path, device, p, g, steps)
    a = _Async(async_path, device, p, g)
    for _ in range(steps):
        a.step()
    got = a.params()
    rel = float(np.linalg.norm(got.astype(np.float64) - ref) / np.linalg.norm(ref))
    return {"n": n, "steps": steps, "rel_error": rel, "pass": bool(rel <= 1e-6 and not np.isnan(got).any())}


def readback(device, n=10**8) -> dict:
    """Host read-back of n float32 through the runtime, and through torch (pinned and pageable)."""
    from polaris_runtime import device as dev

    cfg = dev.config_for(device)
    a = dev.upload(cfg.device, np.ones(n, np.float32))
    dev.to_host(a)
    ts = []
    for _ in range(3):
        t0 = time.perf_counter()
        dev.to_host(a)
        ts.append(time.perf_counter() - t0)
    out = {"n": n, "bytes": 4 * n, "polaris_to_host_s": min(ts), "polaris_gbs": 4 * n / min(ts) / 1e9}
    try:
        import torch

        x = torch.ones(n, device="cuda")
        x.cpu()
        ts = []
        for _ in range(3):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            x.cpu()
            ts.append(time.perf_counter() - t0)
        out.update(torch_cpu_s=min(ts), torch_gbs=4 * n / min(ts) / 1e9)
    except Exception as e:  # no torch with CUDA
        out["torch_error"] = f"{type(e).__name__}: {e}"[:200]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--modules", type=pathlib.Path, required=True)
    ap.add_argument("--out", type=pathlib.Path, required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--target-s", type=float, default=0.05)
    args = ap.parse_args(argv)
    index = json.loads((args.modules / "index.json").read_text())
    entry = index["modules"]["adam"]
    on_gpu = not args.device.startswith("local")
    info = {"date": C.today(), "gpu": G.gpu_name() if on_gpu else C.cpu_model(), "device": args.device,
            "versions": C.versions("iree-base-runtime", "numpy", "torch", "jax", "jaxlib", "optax")}
    floor = G.gpu_copy_bandwidth()["copy_gbs"] if on_gpu else C.copy_bandwidth()["floor_gbs"]
    info["copy_gbs"] = floor
    rows, checks = [], []
    args.out.mkdir(parents=True, exist_ok=True)

    def report():
        md = [f"# Async-external experiment: {info['date']}, {info['gpu']} ({args.device})", "",
              f"- versions: {info['versions']}; copy bandwidth {floor:.0f} GB/s", "",
              C.md_table(["params", "peer", "step", "IQR", "GB/s", "x floor", "x best"], rows), "",
              "correctness (async vs sync module, 10 steps): " + "; ".join(f"{C.fmt_size(c['n'])} {c.get('module', 'async')} rel {c['rel_error']:.1e} {'pass' if c['pass'] else 'FAIL'}" for c in checks),
              ""]
        if "readback" in info:
            r = info["readback"]
            md.append(f"read-back of {r['bytes'] >> 20} MiB: polaris_runtime.device.to_host {r['polaris_to_host_s'] * 1e3:.1f} ms ({r['polaris_gbs']:.1f} GB/s)"
                      + (f"; torch .cpu() {r['torch_cpu_s'] * 1e3:.1f} ms ({r['torch_gbs']:.1f} GB/s)" if "torch_gbs" in r else ""))
        (args.out / "async.md").write_text("\n".join(md) + "\n")
        C.write_json(args.out / "async.json", {"info": info, "rows": rows, "checks": checks})

    for n_s, fname in entry.get("fixed", {}).items():
        n = int(n_s)
        apath = entry.get("fixed_async", {}).get(n_s)
        if not apath:
            continue
        xpath = entry.get("fixed_async_ext", {}).get(n_s)
        for path, label in ((apath, "async"), (xpath, "async, no transient")):
            if not path:
                continue
            try:
                checks.append({**check(args.modules / fname, args.modules / path, args.device, n), "module": label})
            except Exception as e:
                checks.append({"n": n, "module": label, "rel_error": float("nan"), "pass": False, "error": f"{type(e).__name__}: {e}"[:300]})
        rng = np.random.default_rng(0)
        p = rng.standard_normal(n, dtype=np.float32)
        g = rng.standard_normal(n, dtype=np.float32) * np.float32(1e-3)
        make = {"polaris fixed": lambda: G.polaris_peer(args.modules / fname, args.device, p, g),
                "bare sync": lambda: G.bare_peer(args.modules / fname, args.device, p, g),
                "bare async": lambda: async_peer(args.modules / apath, args.device, p, g)}
        if xpath:  # no queue alloca/dealloca, no fence of its own: nothing makes the host wait
            make["bare async, no transient"] = lambda: async_peer(args.modules / xpath, args.device, p, g)
            make["polaris async, no transient"] = lambda: G.polaris_peer(args.modules / xpath, args.device, p, g)
        if on_gpu:
            make["torch fused"] = lambda: G.torch_peer("adam", "fused", p, g)
        make["jax"] = lambda: G.jax_peer("adam", "gpu" if on_gpu else "cpu", p, g)
        timers = G.build_timers(make, lambda name, msg: rows.append([C.fmt_size(n), name, "error", "", "", "", msg[:100]]))
        C.run_interleaved(timers, args.repeats if n < 5 * 10**7 else max(3, args.repeats // 3), 5, args.target_s)
        best = min(t.median for t in timers.values())
        nbytes = 28 * n
        for name, t in timers.items():
            q1, q3 = t.spread
            rows.append([C.fmt_size(n), name, C.fmt_time(t.median), f"[{C.fmt_time(q1)}, {C.fmt_time(q3)}]", f"{nbytes / t.median / 1e9:.0f}",
                         f"{t.median / (nbytes / (floor * 1e9)):.2f}", f"{t.median / best:.2f}"])
        C.say(f"  adam {C.fmt_size(n)} " + " | ".join(f"{k} {C.fmt_time(t.median)}" for k, t in timers.items()))
        del timers, p, g
        G._free()
        report()
    try:
        info["readback"] = readback(args.device, 10**8 if on_gpu else 10**7)
    except Exception as e:
        info["readback_error"] = f"{type(e).__name__}: {e}"[:300]
    report()
    print((args.out / "async.md").read_text())
    return 0 if all(c["pass"] for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
