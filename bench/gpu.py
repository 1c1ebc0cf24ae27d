"""GPU benchmark: prebuilt polaris modules on CUDA vs torch.optim and jax.jit(optax).

Runs on a GPU host that has the IREE *runtime*, numpy, torch and jax (with CUDA) but no IREE
compiler: the modules come prebuilt from ``bench/build_gpu_modules.py`` (flat adam, adamw,
sgd_momentum, lion, lamb). ``polaris_runtime`` is imported from the installed package or, failing
that, from this checkout's ``runtime/`` folder. optax is optional: without it the JAX peer is the
same math written in plain ``jax.numpy`` (labelled so).

    python bench/build_gpu_modules.py gpu-modules          # here, with the compiler
    python bench/gpu.py --modules gpu-modules --out gpu-results    # on the GPU host

Peers per optimizer and size (1e6, 1e7, 1e8 by default):

* ``polaris``: ``polaris_runtime.load(module, device="cuda")``, Trees on the device, the gradient
  uploaded once; ``polaris fixed``: the same, with the module compiled for exactly that many
  elements (``polaris compile --size N``: IREE records the step once and replays it), where
  ``build_gpu_modules.py`` built one (on CUDA its scalars fused into the elementwise kernel, the
  default there); ``polaris fixed hoisted``: the fixed module with its scalars in dispatches of
  their own (``CompileOptions(hoist_scalars=True)``: Adam 2 -> 5 dispatches); ``polaris fixed padded (N)``: where n is not a length IREE vectorises (1e6 on
  CUDA: one float per thread), the fixed module for n zero-padded to N (1000064: 128-bit loads);
  ``polaris fixed async`` and ``polaris fixed padded async (N)``: the same, compiled with
  ``--async`` (on CUDA with the step's transient storage passed in), loaded with
  ``order="fences"`` (each call waits for the one before it); ``... async stream``: those loaded
  with ``order="stream"`` (no call waits: the CUDA stream orders them; since the eighteenth pass
  each call signals a semaphore of a ring, docs/runtime.md), after a check that many steps with
  three gradients in turn give the same parameters as ``"fences"``;
  ``iree-bare``: the flat module's ``step`` through IREE's
  FunctionInvoker;
* ``torch fused`` / ``torch foreach``: ``torch.optim.Adam(fused=True)`` / ``(foreach=True)``
  (AdamW and SGD-momentum likewise; torch has no Lion or LAMB);
* ``jax.jit(optax)``: params and state donated (``XLA_PYTHON_CLIENT_PREALLOCATE=false`` so JAX
  does not take the GPU's memory from the other peers).

Each sample is N steps followed by a device sync (IREE: ``opt.wait()``; torch:
``torch.cuda.synchronize()``; JAX: ``block_until_ready``); peers are sampled round-robin; the
median per-step time is reported with effective GB/s and the ratio to the floor (bytes / the
device's copy bandwidth, measured with a 1 GiB torch copy) and to the best peer. Writes
``<out>/<date>-<gpu>.md`` and ``.json`` (and ``.png`` where matplotlib is: ``bench/plot.py``). ``--device local-task`` with modules built by
``build_gpu_modules.py --target llvm-cpu`` is a dry run of this script on a CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import subprocess
import sys
import time
import traceback

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # before jax is imported
HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402

import _common as C  # noqa: E402

import polaris_runtime as pr  # noqa: E402  (from this checkout on the GPU host: _common)


# -- peers --------------------------------------------------------------------------------------
def one_tensor_segments(opt, flat) -> dict:
    """``step``'s keywords for ``opt`` stepping the vector ``flat``: a flat module that sums per
    tensor (flat LAMB) gets the whole vector as one tensor (all ids 0)."""
    if not getattr(opt, "takes_segments", False):
        return {}
    return {"segments": opt.upload_segments({"segment_ids": np.zeros(flat.size, np.int32)})}


def run_steps(path, device: str, p: np.ndarray, g: np.ndarray, steps: int, order: str | None = None,
              turns: int = 1) -> tuple[np.ndarray, float]:
    """The flat module at ``path`` stepped ``steps`` times from ``p`` with the gradient ``g``:
    ``(params as float64 on the host, seconds a step including the read-back)``. ``turns=3``:
    ``g``, ``-g / 2`` and ``2 g`` in turn, so that two steps run out of order change the result."""
    from polaris_runtime import device as dev

    opt = pr.load(path, device=device, order=order)
    kw = one_tensor_segments(opt, p)
    s, q = opt.init(p), p
    gd = [[dev.upload(opt.device, (g * f).astype(g.dtype))] for f in (1.0, -0.5, 2.0)[:turns]]
    t0 = time.perf_counter()
    for k in range(steps):
        q, s = opt.step(q, gd[k % turns], s, **kw)
    out = np.asarray(q.numpy(), np.float64)
    return out, (time.perf_counter() - t0) / steps


def stream_check(info: dict, path, device: str, p: np.ndarray, g: np.ndarray) -> None:
    """``order="stream"`` against ``order="fences"``: the same module, the same start, many steps
    with three gradients in turn;
    the largest difference of the parameters goes to ``info["notes"]`` (0 expected: same kernels)."""
    steps = 1000 if p.size <= 10**6 else 100 if p.size <= 10**7 else 20
    try:
        ref, _ = run_steps(path, device, p, g, steps, order="fences", turns=3)
        got, _ = run_steps(path, device, p, g, steps, order="stream", turns=3)
        note = f"order='stream' vs 'fences', {pathlib.Path(path).name}, {steps} steps: max |diff| {float(np.abs(got - ref).max()):.1e}"
    except Exception as e:
        note = f"order='stream' check of {pathlib.Path(path).name} failed: {type(e).__name__}: {e}"[:300]
    info["notes"].append(note)
    C.say("  " + note)


def polaris_peer(path, device, p, g, order: str | None = None) -> C.Timer:
    """``order``: ``polaris_runtime.load``'s (None: its default, "stream" for async modules on CUDA)."""
    from polaris_runtime import device as dev

    opt = pr.load(path, device=device, order=order)
    kw = one_tensor_segments(opt, p)
    state = opt.init(p)  # p: a flat array, or a dict tree for a tree module (g: its leaves in order)
    gd = [dev.upload(opt.device, x) for x in (g if isinstance(g, list) else [g])]
    params, state = opt.step(p, gd, state, **kw)
    box = {"p": params, "s": state}

    def step():
        box["p"], box["s"] = opt.step(box["p"], gd, box["s"], **kw)

    # waits for the device, as the peers' syncs do (torch.cuda.synchronize, block_until_ready);
    # until the seventeenth pass a scalar read back (box["s"][leaf]), which added its ~40 us
    # device-to-host copy to every repeat: +1.3 us a step at 1e7 on the H200
    t = C.Timer(step, opt.wait)
    t.keep = (opt, box, gd)
    return t


def bare_peer(path, device, p, g) -> C.Timer:
    import iree.runtime as rt
    from polaris_runtime import device as dev

    data = pathlib.Path(path).read_bytes()
    inputs = pr.inspect_module(data).functions["step"].inputs
    cfg = dev.config_for(device)
    vm = rt.VmModule.copy_buffer(cfg.vm_instance, data)
    ctx = rt.SystemContext(config=cfg)
    ctx.add_vm_module(vm)
    fns = ctx.modules[vm.name]
    groups = {"params": [dev.upload(cfg.device, p)], "grads": [dev.upload(cfg.device, g)]}
    s0 = fns["init"](*groups["params"])
    s0 = s0 if isinstance(s0, tuple) else (s0,)
    groups["state"] = [dev.upload(cfg.device, np.asarray(a.to_host())) for a in s0]  # a buffer of its own each
    if "segments" in inputs:
        ids = {"segment_ids": np.zeros(p.size, np.int32)}  # one tensor; every leaf of the group, as the runtime makes them
        groups["segments"] = [dev.upload(cfg.device, a) for a in pr.load(data, device=device)._segment_arrays("bare", ids)]
    idx = int(np.argmin([int(np.prod(a.shape)) for a in groups["state"]]))
    f = fns["step"]

    def step():
        r = f(*[a for grp in inputs for a in groups[grp]])
        groups["params"], groups["state"] = [r[0]], list(r[1:])

    def sync():
        groups["state"][idx].to_host()

    t = C.Timer(step, sync)
    t.keep = (ctx, groups)
    return t


TORCH_OPTS = {
    "adam": ("Adam", dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8)),
    "adamw": ("AdamW", dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)),
    "sgd_momentum": ("SGD", dict(lr=1e-2, momentum=0.9)),
}


def torch_peer(opt_key, mode, p, g) -> C.Timer:
    """``p``, ``g``: one array each, or lists of arrays (one torch Parameter per tensor)."""
    import torch

    cls_name, kw = TORCH_OPTS[opt_key]
    ps, gs = (p, g) if isinstance(p, list) else ([p], [g])
    params = []
    for a, b in zip(ps, gs):
        param = torch.nn.Parameter(torch.from_numpy(a).to("cuda"))
        param.grad = torch.from_numpy(b).to("cuda")
        params.append(param)
    opt = getattr(torch.optim, cls_name)(params, **kw, **{mode: True})
    opt.step()  # creates the state (and checks that this torch offers `mode` here)
    torch.cuda.synchronize()
    t = C.Timer(opt.step, torch.cuda.synchronize)
    t.keep = (params, opt)
    return t


def jax_twin(opt_key):
    """(tx.init, tx.update, apply) from optax if installed, else plain jax.numpy (same math)."""
    try:
        import optax

        tx = C.optax_twin(opt_key)
        return "jax.jit(optax)", tx.init, tx.update, optax.apply_updates
    except ImportError:
        pass
    import jax.numpy as jnp

    def init(p):
        z = jnp.zeros_like(p)
        return (jnp.zeros([], jnp.int32), z, z) if opt_key in ("adam", "adamw", "lamb") else (z,)

    def update(g, s, p):
        if opt_key in ("adam", "adamw", "lamb"):
            t, m, v = s
            t = t + 1
            m = 0.9 * m + 0.1 * g
            v = 0.999 * v + 0.001 * g * g
            tf = t.astype(jnp.float32)
            r = (m / (1 - 0.9**tf)) / (jnp.sqrt(v / (1 - 0.999**tf) + 1e-15) + 1e-8)
            if opt_key == "adam":
                return -1e-3 * r, (t, m, v)
            r = r + 0.01 * p
            if opt_key == "adamw":
                return -1e-3 * r, (t, m, v)
            pn, rn = jnp.linalg.norm(p), jnp.linalg.norm(r)
            trust = jnp.where((pn > 0) & (rn > 0), pn / rn, 1.0)
            return -1e-2 * trust * r, (t, m, v)
        (m,) = s
        if opt_key == "sgd_momentum":
            m = g + 0.9 * m
            return -1e-2 * m, (m,)
        u = jnp.sign(0.9 * m + 0.1 * g) + 1e-3 * p
        return -1e-4 * u, (0.99 * m + 0.01 * g,)

    return "jax.jit(jax.numpy)", init, update, lambda p, u: p + u


def jax_peer(opt_key, device_kind, p, g):
    import jax

    label, init, update, apply = jax_twin(opt_key)
    if device_kind == "gpu":
        devs = [d for d in jax.devices() if d.platform in ("gpu", "cuda")]
    else:
        devs = jax.devices("cpu")
    if not devs:
        raise RuntimeError(f"jax sees no {device_kind} device: {jax.devices()}")
    d = devs[0]

    def f(p, g, s):
        u, s = update(g, s, p)
        return apply(p, u), s

    step_fn = jax.jit(f, donate_argnums=(0, 2))
    pj = jax.tree.map(lambda a: jax.device_put(a, d) * 1.0, p)  # buffers XLA owns (donatable)
    gj = jax.tree.map(lambda a: jax.device_put(a, d), g)
    box = {"p": pj, "s": jax.jit(init)(pj)}

    def step():
        box["p"], box["s"] = step_fn(box["p"], gj, box["s"])

    t = C.Timer(step, lambda: jax.block_until_ready(box["p"]))
    t.keep = (box, gj)
    t.label = label
    return t


def build_timers(make: dict, failed) -> dict:
    """Each peer's Timer by its label (``jax`` as its twin's name); a peer that cannot be built
    is reported through ``failed(name, message)`` and left out: one peer's failure is a result too."""
    timers = {}
    for name, mk in make.items():
        try:
            t = mk()
            timers[getattr(t, "label", name) if name == "jax" else name] = t
        except Exception as e:
            failed(name, f"{type(e).__name__}: {e}".splitlines()[0][:300])
    return timers


def measure(args, info, index, opts, floor, on_gpu, results, key, n, layout, make) -> None:
    """Builds the peers of one group, samples them round-robin, appends a row each to ``results``
    and rewrites the report (a run cut short by a time limit keeps what it measured)."""
    def failed(name, msg):
        C.say(f"  {key} {C.fmt_size(n)} {name}: FAILED {msg}")
        results.append({"optimizer": key, "layout": layout, "params": n, "peer": name, "error": msg, "trace": traceback.format_exc()[-2000:]})

    timers = build_timers(make, failed)
    if not timers:
        return
    try:
        C.run_interleaved(timers, args.repeats if n < 5 * 10**7 else max(3, args.repeats // 3), 5, args.target_s)
    except Exception as e:
        msg = f"{type(e).__name__}: {e}".splitlines()[0][:300]
        C.say(f"  {key} {C.fmt_size(n)}: timing FAILED {msg}")
        results.append({"optimizer": key, "layout": layout, "params": n, "peer": "*", "error": msg, "trace": traceback.format_exc()[-2000:]})
        timers.clear()
        _free()
        return
    nbytes = C.BYTES_PER_PARAM[key] * n
    best = min(t.median for t in timers.values())
    ref = timers.get("torch fused")
    for name, t in timers.items():
        q1, q3 = t.spread
        results.append({"optimizer": key, "layout": layout, "params": n, "peer": name, "step_s": t.median, "q1_s": q1, "q3_s": q3,
                        "steps_per_sample": t.n, "samples": len(t.samples), "bytes": nbytes, "gbs": nbytes / t.median / 1e9,
                        "x_floor": t.median / (nbytes / (floor * 1e9)) if floor == floor else float("nan"),
                        "x_best": t.median / best, "x_torch_fused": t.median / ref.median if ref else float("nan")})
    C.say(f"  {key:13s} {C.fmt_size(n):5s} {layout} " + " | ".join(f"{k} {C.fmt_time(t.median)}" for k, t in timers.items()))
    timers.clear()
    _free()
    _report(args, info, index, opts, floor, on_gpu, results)


def add_peers(make: dict, key: str, peers: list[str], torch_ok: bool, for_torch: tuple, for_jax: tuple, jax_kind: str) -> None:
    """Adds the torch (fused, foreach; arrays or lists of arrays) and jax.jit(optax) (arrays or
    trees) peers of one group to ``make``."""
    if torch_ok and key in TORCH_OPTS:
        for mode in ("fused", "foreach"):
            if f"torch-{mode}" in peers:
                make[f"torch {mode}"] = lambda mode=mode: torch_peer(key, mode, *for_torch)
    if "jax" in peers:
        make["jax"] = lambda: jax_peer(key, jax_kind, *for_jax)


def gpt2_group(args, info, index, opts, floor, on_gpu, results, key, flat_path, tree, peers, have_torch_cuda) -> None:
    """The many-tensor layout: GPT-2 small's 148 tensors as one tree module, against the same
    parameters as one flat module, torch with one Parameter per tensor and jax.jit(optax) on the
    tree."""
    shapes = C.gpt2_shapes(tree["div"])
    rng = np.random.default_rng(1)
    host_p, host_g = C.gpt2_data(shapes, rng)
    p_leaves = list(pr.flatten_names(host_p).values())
    g_leaves = list(pr.flatten_names(host_g).values())
    n = sum(a.size for a in p_leaves)
    tree_path = args.modules / tree["file"]
    make = {}
    if "polaris" in peers:
        make["polaris tree"] = lambda: polaris_peer(tree_path, args.device, host_p, g_leaves)
        make["polaris flat"] = lambda: polaris_peer(flat_path, args.device, np.concatenate([a.ravel() for a in p_leaves]),
                                                    np.concatenate([a.ravel() for a in g_leaves]))
        flat_p, flat_g = np.concatenate([a.ravel() for a in p_leaves]), np.concatenate([a.ravel() for a in g_leaves])
        if tree.get("flat_fixed_async") and "polaris-stream" in peers:
            stream_check(info, args.modules / tree["flat_fixed_async"], args.device, flat_p, flat_g)
        for label, k, order in (("polaris flat fixed", "flat_fixed", "fences"), ("polaris flat fixed async", "flat_fixed_async", "fences"),
                                ("polaris flat fixed async stream", "flat_fixed_async", "stream")):
            if tree.get(k) and (order == "fences" or "polaris-stream" in peers):  # the model packed, one fixed-length module
                make[label] = lambda k=k, order=order: polaris_peer(args.modules / tree[k], args.device, flat_p, flat_g, order)
    add_peers(make, key, peers, on_gpu and have_torch_cuda, (p_leaves, g_leaves), (host_p, host_g), "gpu" if on_gpu else "cpu")
    label = f"gpt2{'' if tree['div'] == 1 else '/' + str(tree['div'])} tree ({len(p_leaves)} tensors)"
    measure(args, info, index, opts, floor, on_gpu, results, key, n, label, make)


# -- device facts -------------------------------------------------------------------------------
def gpu_name() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except ImportError:
        pass
    try:
        r = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
        if r.returncode == 0 and r.stdout.strip():
            return r.stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown GPU"


def gpu_copy_bandwidth(nbytes=2**30, repeats=10) -> dict:
    """Device-to-device copy bandwidth (read + write counted), torch with CUDA events."""
    import torch

    a = torch.empty(nbytes // 4, dtype=torch.float32, device="cuda").fill_(1.0)
    b = torch.empty_like(a)
    b.copy_(a)
    ts = []
    for _ in range(repeats):
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        b.copy_(a)
        e1.record()
        torch.cuda.synchronize()
        ts.append(e0.elapsed_time(e1) / 1e3)
    del a, b
    torch.cuda.empty_cache()
    return {"bytes": nbytes, "copy_gbs": 2 * nbytes / float(np.median(ts)) / 1e9}


def _free():
    import gc

    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


# -- main ---------------------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modules", type=pathlib.Path, required=True, help="folder from build_gpu_modules.py (index.json + .vmfb)")
    ap.add_argument("--out", type=pathlib.Path, required=True, help="folder for the .md/.json")
    ap.add_argument("--device", default="cuda", help="IREE driver (cuda; local-task for a CPU dry run)")
    ap.add_argument("--sizes", type=C.parse_sizes, default=[10**6, 10**7, 10**8])
    ap.add_argument("--optimizers", type=C.parse_optimizers, default=None)
    ap.add_argument("--repeats", type=int, default=15, help="samples per peer (a third at 1e8)")
    ap.add_argument("--target-s", type=float, default=0.05, help="wall time of one sample")
    ap.add_argument("--peers", default="polaris,polaris-fixed,polaris-stream,iree-bare,torch-fused,torch-foreach,jax,gpt2",
                    help="peers, and gpt2 for the many-tensor group of optimizers that have a GPT-2 tree module")
    args = ap.parse_args(argv)

    index = json.loads((args.modules / "index.json").read_text())
    opts = args.optimizers or list(index["modules"])
    peers = [x.strip() for x in args.peers.split(",")]
    on_gpu = not args.device.startswith("local")
    have_torch_cuda = False
    try:
        import torch

        have_torch_cuda = torch.cuda.is_available()
    except ImportError:
        pass

    info = {"date": C.today(), "started": C.now(), "device": args.device, "modules": str(args.modules),
            "module_index": {k: v for k, v in index.items() if k != "modules"},
            "versions": C.versions("iree-base-runtime", "numpy", "torch", "jax", "jaxlib", "optax", "polaris-iree-runtime"),
            "host": {"cpu": C.cpu_model(), "cores": os.cpu_count()}, "notes": []}
    info["gpu"] = gpu_name() if on_gpu else f"(dry run on {args.device}: {C.cpu_model()})"
    if on_gpu and have_torch_cuda:
        info["copy_bandwidth"] = gpu_copy_bandwidth()
    elif not on_gpu:
        info["copy_bandwidth"] = {"bytes": 512 * 2**20, "copy_gbs": C.copy_bandwidth()["floor_gbs"]}
    else:
        info["copy_bandwidth"] = {"copy_gbs": float("nan")}
        info["notes"].append("no torch with CUDA: no copy-bandwidth floor, no torch peers")
    floor = info["copy_bandwidth"]["copy_gbs"]
    C.say(f"gpu bench: {info['gpu']}, driver {args.device}, copy {floor:.0f} GB/s")

    results = []
    for key in opts:
        if key not in index["modules"]:
            info["notes"].append(f"{key}: no module in {args.modules}")
            continue
        path = args.modules / index["modules"][key]["file"]
        for n in args.sizes:
            rng = np.random.default_rng(0)
            p = rng.standard_normal(n, dtype=np.float32)
            g = rng.standard_normal(n, dtype=np.float32) * np.float32(1e-3)
            make = {}
            if "polaris" in peers:
                make["polaris"] = lambda: polaris_peer(path, args.device, p, g)
            fixed = index["modules"][key].get("fixed", {}).get(str(n))
            if "polaris-fixed" in peers and fixed:  # the same step compiled for exactly n elements
                make["polaris fixed"] = lambda: polaris_peer(args.modules / fixed, args.device, p, g)
            hoisted = index["modules"][key].get("fixed_hoisted", {}).get(str(n))
            if "polaris-fixed" in peers and hoisted:  # ... with its scalars in dispatches of their own
                make["polaris fixed hoisted"] = lambda: polaris_peer(args.modules / hoisted, args.device, p, g)
            padded = index["modules"][key].get("fixed_padded", {}).get(str(n))
            if "polaris-fixed" in peers and padded:  # ... zero-padded to a length IREE vectorises
                pp, gp = (np.pad(x, (0, padded["size"] - n)) for x in (p, g))
                make[f"polaris fixed padded ({padded['size']})"] = lambda: polaris_peer(args.modules / padded["file"], args.device, pp, gp)
            # ... compiled with --async (on CUDA its transient storage passed in: what `polaris compile --async` builds)
            fixed_async = index["modules"][key].get("fixed_async_ext", {}).get(str(n))
            if "polaris-fixed" in peers and fixed_async:
                make["polaris fixed async"] = lambda: polaris_peer(args.modules / fixed_async, args.device, p, g, "fences")
            padded_async = index["modules"][key].get("fixed_padded_async", {}).get(str(n))
            if padded_async:
                pa, ga = (np.pad(x, (0, padded_async["size"] - n)) for x in (p, g))
            if "polaris-fixed" in peers and padded_async:
                make[f"polaris fixed padded async ({padded_async['size']})"] = lambda: polaris_peer(
                    args.modules / padded_async["file"], args.device, pa, ga, "fences")
            # ... loaded with order="stream" (no call waits for the one before; the CUDA stream orders them)
            if "polaris-stream" in peers and fixed_async:
                stream_check(info, args.modules / fixed_async, args.device, p, g)
                make["polaris fixed async stream"] = lambda: polaris_peer(args.modules / fixed_async, args.device, p, g, "stream")
            if "polaris-stream" in peers and padded_async:
                stream_check(info, args.modules / padded_async["file"], args.device, pa, ga)
                make[f"polaris fixed padded async stream ({padded_async['size']})"] = lambda: polaris_peer(
                    args.modules / padded_async["file"], args.device, pa, ga, "stream")
            if "iree-bare" in peers:
                make["iree-bare"] = lambda: bare_peer(path, args.device, p, g)
            add_peers(make, key, peers, on_gpu and have_torch_cuda, (p, g), (p, g), "gpu" if on_gpu else "cpu")
            measure(args, info, index, opts, floor, on_gpu, results, key, n, "flat", make)
            del p, g
        tree = index["modules"][key].get("gpt2")
        if tree and "gpt2" in peers:
            gpt2_group(args, info, index, opts, floor, on_gpu, results, key, path, tree, peers, have_torch_cuda)
    info["finished"] = C.now()
    md = _report(args, info, index, opts, floor, on_gpu, results)
    try:  # the device host may have no matplotlib: then bench/plot.py here, on the .json
        import plot as P

        P.plot({"info": info, "results": results}, md.with_suffix(".png"))
    except (ImportError, ValueError) as e:
        C.say(f"no plot ({e}); python bench/plot.py {md.with_suffix('.json')} where matplotlib is")
    print(md)
    return 0


def _report(args, info, index, opts, floor, on_gpu, results) -> pathlib.Path:
    """Writes the .md and .json of the results so far (after every group: a run cut short by a
    time limit keeps what it measured)."""
    rows = []
    for r in results:
        if "error" in r:
            rows.append([r["optimizer"], r.get("layout", "flat"), C.fmt_size(r["params"]), r["peer"], "error", "", "", "", "", "", r["error"][:80]])
        else:
            rows.append([r["optimizer"], r.get("layout", "flat"), C.fmt_size(r["params"]), r["peer"], C.fmt_time(r["step_s"]),
                         f"[{C.fmt_time(r['q1_s'])}, {C.fmt_time(r['q3_s'])}]", f"{r['gbs']:.0f}", f"{r['x_floor']:.2f}",
                         f"{r['x_best']:.2f}", f"{r['x_torch_fused']:.2f}" if r["x_torch_fused"] == r["x_torch_fused"] else "-", ""])
    v = info["versions"]
    md = [f"# GPU optimizer step benchmark: {info['date']}, {info['gpu']}", "",
          f"- IREE driver {args.device}; modules: target {index.get('target')} {index.get('cuda_arch') or ''}, built with {index.get('versions', {})}",
          "- versions here: " + ", ".join(f"{k} {val}" for k, val in v.items()),
          f"- host CPU: {info['host']['cpu']} ({info['host']['cores']} cores)",
          f"- copy bandwidth (floor): {floor:.0f} GB/s (device copy of {info['copy_bandwidth'].get('bytes', 0) // 2**20} MiB, read+write)",
          "- bytes per parameter: " + "; ".join(f"{k} {C.BYTES_PER_PARAM[k]} B" for k in opts),
          "- step: median per-step time of N steps + one device sync; x floor = step / (bytes / copy bandwidth)",
          *[f"- note: {x}" for x in info["notes"]], "",
          C.md_table(["optimizer", "layout", "params", "peer", "step", "IQR", "GB/s", "x floor", "x best", "x torch fused", "error"], rows), ""]
    args.out.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^a-z0-9]+", "-", str(info["gpu"]).lower()).strip("-")[:40] if on_gpu else C.device_slug()
    stem = f"{C.today()}-{slug}-gpu{'' if on_gpu else '-dryrun'}"
    (args.out / f"{stem}.md").write_text("\n".join(md))
    C.write_json(args.out / f"{stem}.json", {"info": info, "results": results})
    return args.out / f"{stem}.md"


if __name__ == "__main__":
    t0 = time.perf_counter()
    rc = main()
    C.say(f"done in {time.perf_counter() - t0:.0f} s")
    sys.exit(rc)
