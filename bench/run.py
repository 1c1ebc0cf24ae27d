"""The CPU benchmark suite (issue 6): optimizer step time and effective bandwidth.

Peers, each timed with its state and parameters resident where it computes:

* ``polaris``: this project through ``polaris_runtime`` (``Optimizer.step`` on device-resident
  Trees; the gradients pre-uploaded once, so no host copy per call);
* ``polaris-fixed`` (flat sizes and the GPT-2 flat form): the same, with the module compiled
  for exactly that many elements (``polaris compile --size N``: static shapes, so IREE records
  the step once and replays it; LAMB from 163840 elements sums per tensor with the segment tree
  instead of the scatter, docs/flat-modules.md);
* ``polaris-whole`` (LAMB's one-tensor rows): the module built for one tensor (``--whole-vector``);
* ``polaris-aligned`` (LAMB's flat rows): ``--size N --segment-reduction aligned``, the model
  packed with every tensor at a multiple of 16 elements (``pack(params, align=16)``);
* ``polaris-aligned-any`` (the same rows): ``--segment-reduction aligned`` without ``--size``, one
  module for any length that is a multiple of 16 (a scatter over the blocks instead of the tree);
* ``polaris-async``: the same step compiled with ``--async`` (IREE's async-external model: a call
  returns once its work is queued, calls chained on a semaphore) on ``local-task``, whose worker
  threads then run one step while Python issues the next;
* ``iree-bare``: the same ``.vmfb``'s ``step`` called through IREE's own ``FunctionInvoker`` on the
  same device, with no polaris binding or validation (what the runtime adds is the difference);
* ``optax``: ``jax.jit`` of the Optax twin, parameters and state donated;
* ``numpy``: an in-place NumPy step (``out=`` ufuncs, chunked; ``bench/_numpy_peer.py``);
* ``ort``: ONNX Runtime's on-device training, its AdamW optimizer step (adam: weight decay 0;
  adamw), where ``onnxruntime-training`` is installed (optional, ~300 MB: ``bench/_ort_peer.py``).

Each step is timed in blocks of N steps followed by one device sync (IREE: a scalar of the last
state read back; JAX: ``block_until_ready``), median over repeats; peers are sampled round-robin
so that load from other processes hits all of them alike. Bytes moved per parameter are in
``_common.BYTES_PER_PARAM``; the floor is bytes / copy bandwidth, with the copy bandwidth measured
in the same run (``np.copyto`` of 512 MB; the larger of one thread and one thread per core).

Usage::

    python bench/run.py                      # default suite, ~5-10 min on 2 cores
    python bench/run.py --quick              # ~1 min smoke run
    python bench/run.py --sizes 1e4,1e6 --optimizers adam,lion --gpt2 none
    python bench/run.py --gpt2 full          # GPT-2 small's real 124M parameters too

Writes ``bench/results/<date>-<device>[-quick].{md,json,png}``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import pathlib
import sys
import time
import warnings

if __package__ in (None, ""):
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

# OpenBLAS env tweaks set on some hosts (see the env README) slow NumPy's BLAS (LAMB's norms use
# np.dot). OpenBLAS reads them when it loads, so drop them for this process only, before numpy
# is imported, by re-executing once. IREE and XLA do not use OpenBLAS.
_OB = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
if __name__ == "__main__" and any(k in os.environ for k in _OB) and "--keep-openblas-env" not in sys.argv:
    env = {k: v for k, v in os.environ.items() if k not in _OB}
    env["POLARIS_BENCH_DROPPED_OPENBLAS_ENV"] = ",".join(f"{k}={os.environ[k]}" for k in _OB if k in os.environ)
    os.execve(sys.executable, [sys.executable, *sys.argv], env)

import numpy as np  # noqa: E402

import _common as C  # noqa: E402
import _ort_peer as _ort  # noqa: E402
from _numpy_peer import NumpyStep  # noqa: E402
from polaris_runtime import device as pr_device  # noqa: E402

CACHE = C.REPO / ".cache" / "bench"
PEERS = ("polaris", "polaris-fixed", "polaris-whole", "polaris-aligned", "polaris-aligned-any", "polaris-async", "iree-bare", "optax", "numpy", "ort")
# optimizers whose flat module reduces per tensor (takes segments): their one-tensor rows also
# time the module built for one tensor (`polaris compile NAME --size N --whole-vector`)
PER_TENSOR = ("lamb",)
ASYNC = ("--iree-execution-model=async-external",)  # what `polaris compile --async` adds


# -- modules ------------------------------------------------------------------------------------
def _source_digest() -> str:
    """A digest of the frontend's and compiler's sources (a changed transform recompiles)."""
    import polaris
    import polaris_compiler

    h = hashlib.sha256()
    for pkg in (polaris, polaris_compiler):
        root = pathlib.Path(pkg.__file__).parent
        for f in sorted(root.rglob("*.py")):
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def compiled_module(opt: str, layout_kind: str, shapes: dict | None, cpu: str = "host", extra: tuple[str, ...] = (), size: int | None = None, whole: bool = False, aligned: bool = False) -> pathlib.Path:
    """The ``.vmfb`` of ``opt`` for the flat layout (of any length, or exactly ``size``; ``whole``:
    one tensor, ``aligned``: ``--segment-reduction aligned``) or a tree of shapes, cached in
    .cache/bench."""
    from polaris._src import registry
    from polaris_compiler import CompileOptions, Layout, compile_optimizer

    name, options = C.POLARIS[opt]
    vers = C.versions("iree-base-compiler", "jax", "polaris-iree")
    key_src = repr((vers, name, sorted(options.items()), layout_kind, C.shape_leaves(shapes) if shapes else None, cpu, extra, C.cpu_model(), _source_digest(), size, whole, aligned))
    key = hashlib.sha256(key_src.encode()).hexdigest()[:12]
    path = CACHE / f"{opt}-{layout_kind}{size or ''}{'-whole' if whole else ''}{'-aligned' if aligned else ''}-{cpu}-{key}.vmfb"
    if path.exists():
        return path
    import jax

    if layout_kind == "flat":
        lay = Layout.flat(size=size)
    else:
        sds = C.map_shapes(lambda s: jax.ShapeDtypeStruct(s, np.float32), shapes)
        lay = Layout.from_tree(sds, source="bench")
    spec = registry.get(name)
    t0 = time.perf_counter()
    art = compile_optimizer(
        spec.build(**options), lay, CompileOptions(cpu=cpu, extra_args=tuple(extra)), name=name,
        optimizer_options={**spec.defaults(), **options}, **({"segments": False} if whole else {}),
        **({"segment_reduction": "aligned"} if aligned else {}),
    )
    C.say(f"  compiled {opt} ({layout_kind}{size or ''}, cpu={cpu}) in {time.perf_counter() - t0:.1f} s")
    art.save(path)
    return path


# -- peers --------------------------------------------------------------------------------------
def _smallest(specs) -> int:
    sizes = [int(np.prod([d if isinstance(d, int) else 1 << 30 for d in s.shape])) for s in specs]
    return int(np.argmin(sizes))


def _segment_ids(n: int, segments) -> dict:
    """The ``segments`` input of a flat module that reduces per tensor: one tensor unless told."""
    if segments is not None:
        return {"segment_ids": np.asarray(segments.segment_ids, np.int32)}
    return {"segment_ids": np.zeros(n, np.int32)}


def polaris_peer(path, params: dict | np.ndarray, grads: list[np.ndarray], driver: str, segments=None) -> C.Timer:
    """``segments``: a ``polaris_runtime.pack.Packing`` for flat modules that reduce per tensor."""
    import polaris_runtime as pr
    from polaris_runtime import device as dev

    opt = pr.load(path, device=driver)
    kw = {}
    if getattr(opt, "takes_segments", False):
        kw["segments"] = opt.upload_segments(_segment_ids(int(np.size(params)), segments))
    state = opt.init(params)
    gdev = [dev.upload(opt.device, g) for g in grads]
    p, s = opt.step(params, gdev, state, **kw)  # params uploaded once here; Trees from now on
    box = {"p": p, "s": s}
    leaf = s.names[_smallest(opt.manifest.group("state"))]

    def step():
        box["p"], box["s"] = opt.step(box["p"], gdev, box["s"], **kw)

    def sync():
        box["s"][leaf]  # reads one scalar back

    return C.Timer(step, sync)


def bare_peer(path, params: list[np.ndarray], grads: list[np.ndarray], driver: str, segments=None) -> C.Timer:
    """The module's ``step`` through IREE's FunctionInvoker: no polaris binding or checks."""
    import iree.runtime as rt
    import polaris_runtime as pr
    from polaris_runtime import device as dev

    data = pathlib.Path(path).read_bytes()
    inputs = pr.inspect_module(data).functions["step"].inputs
    cfg = dev.config_for(driver)  # the runtime's device: same executor, same worker threads
    vm = rt.VmModule.copy_buffer(cfg.vm_instance, data)
    ctx = rt.SystemContext(config=cfg)
    ctx.add_vm_module(vm)
    fns = ctx.modules[vm.name]
    groups = {"params": [dev.upload(cfg.device, x) for x in params], "grads": [dev.upload(cfg.device, x) for x in grads]}
    s0 = fns["init"](*groups["params"])
    s0 = s0 if isinstance(s0, tuple) else (s0,)
    groups["state"] = [dev.upload(cfg.device, np.asarray(a.to_host())) for a in s0]  # own buffer per leaf
    if "segments" in inputs:
        ids = _segment_ids(sum(int(np.size(x)) for x in params), segments)
        # every leaf of the group (a "tree" module's segment_bounds too), as the runtime makes them
        groups["segments"] = [dev.upload(cfg.device, a) for a in pr.load(data, device=driver)._segment_arrays("bare", ids)]
    idx = int(np.argmin([int(np.prod(a.shape)) for a in groups["state"]]))
    f = fns["step"]
    k = len(groups["params"])

    def step():
        r = f(*[a for grp in inputs for a in groups[grp]])
        groups["params"], groups["state"] = list(r[:k]), list(r[k:])

    def sync():
        groups["state"][idx].to_host()

    return C.Timer(step, sync)


def optax_peer(opt: str, params, grads) -> C.Timer:
    import jax
    import optax

    tx = C.optax_twin(opt)

    def f(p, g, s):
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    step_fn = jax.jit(f, donate_argnums=(0, 2))
    fresh = jax.jit(lambda t: jax.tree.map(lambda a: a * 1.0, t))  # XLA-owned buffers, donatable
    p = fresh(params)
    g = fresh(grads)
    box = {"p": p, "s": jax.jit(tx.init)(p)}

    def step():
        box["p"], box["s"] = step_fn(box["p"], g, box["s"])

    def sync():
        jax.block_until_ready(box["p"])

    return C.Timer(step, sync)


def numpy_peer(opt: str, params: list[np.ndarray], grads: list[np.ndarray]) -> C.Timer:
    ns = NumpyStep(opt, params, grads)
    return C.Timer(ns.step, lambda: None)


# -- the suite ----------------------------------------------------------------------------------
def _trim_device_caches() -> None:
    """Empties the caching allocators of the IREE devices opened so far, so that every row group
    starts as a process of its own would: the caching allocator keeps at most 64 free blocks, and
    after the groups before it those can all be of other sizes; a step's large transients then
    come back as fresh pages on every call (LAMB's GPT-2/4 aligned row: 43 ms instead of 13-14 ms
    late in the suite)."""
    import gc

    gc.collect()
    for cfg in list(pr_device._configs.values()):
        cfg.device.allocator.trim()


def measure_group(opt, label, form, n_params, make, repeats, warmup, target_s, results, floor_gbs):
    _trim_device_caches()
    timers = {}
    for peer, mk in make.items():
        try:
            timers[peer] = mk()
        except Exception as e:  # a failing peer is reported, not fatal
            C.say(f"  {opt} {label} {peer}: FAILED {type(e).__name__}: {e}")
            results.append({"optimizer": opt, "layout": label, "form": form, "params": n_params, "peer": peer, "error": f"{type(e).__name__}: {e}"})
    C.run_interleaved(timers, repeats, warmup, target_s)
    nbytes = C.BYTES_PER_PARAM[opt] * n_params
    t_floor = nbytes / (floor_gbs * 1e9)
    best = min(t.median for t in timers.values())
    optax_t = timers["optax"].median if "optax" in timers else float("nan")
    line = []
    for peer, t in timers.items():
        med = t.median
        q1, q3 = t.spread
        results.append({
            "optimizer": opt, "layout": label, "form": form, "params": n_params, "peer": peer,
            "step_s": med, "q1_s": q1, "q3_s": q3, "steps_per_sample": t.n, "samples": len(t.samples),
            "bytes": nbytes, "gbs": nbytes / med / 1e9, "x_floor": med / t_floor, "x_best": med / best,
            "x_optax": med / optax_t,
        })
        line.append(f"{peer} {C.fmt_time(med)}")
    C.say(f"  {opt:13s} {label:12s} " + " | ".join(line))
    # drop big arrays before the next group
    timers.clear()


def run_suite(args) -> dict:
    import jax

    jax.config.update("jax_platforms", "cpu")
    warnings.filterwarnings("ignore", message=".*donated buffers were not usable.*")
    info = {"date": C.today(), "started": C.now(), "machine": C.machine_info(), "args": vars(args)}
    info["versions"] = C.versions("jax", "jaxlib", "optax", "numpy", "iree-base-runtime", "iree-base-compiler", "polaris-iree", "polaris-iree-runtime")
    if os.environ.get("POLARIS_BENCH_DROPPED_OPENBLAS_ENV"):
        info["machine"]["openblas_env_dropped"] = os.environ["POLARIS_BENCH_DROPPED_OPENBLAS_ENV"]
    C.say(f"bench: {info['machine']['cpu']}, {info['machine']['cores']} cores; measuring copy bandwidth ...")
    bw = C.copy_bandwidth(512 * 2**20, repeats=5 if args.quick else 9)
    info["copy_bandwidth"] = bw
    floor = bw["floor_gbs"]
    C.say(f"  copy bandwidth: {', '.join(f'{k} {v:.1f}' for k, v in bw.items() if k.endswith('_gbs'))} GB/s")
    results: list[dict] = []
    rng = np.random.default_rng(0)
    t_start = time.perf_counter()
    driver = args.driver or pr_device.default_cpu_driver()  # the runtime's own default
    ort_here = False
    if "ort" in args.peers:
        ort_missing = _ort.available()  # imports onnxruntime.training once: None where it can run
        ort_here = ort_missing is None
        vers = ", ".join(f"{k} {v}" for k, v in C.versions(*_ort.VERSIONS).items() if k != "python")
        info["ort"] = ort_missing or f"{vers}; AdamW optimizer step alone, CPU execution provider, default threads"
        C.say(f"  {info['ort']}")

    for opt in args.optimizers:
        flat = compiled_module(opt, "flat", None)
        for n in args.sizes:
            p = rng.standard_normal(n, dtype=np.float32)
            g = rng.standard_normal(n, dtype=np.float32) * np.float32(1e-3)
            reps = args.repeats if n < 5_000_000 else max(3, args.repeats // 3)
            make = {
                "polaris": lambda: polaris_peer(flat, p, [g], driver),
                # the same step compiled for exactly n elements (polaris compile --size n)
                "polaris-fixed": lambda: polaris_peer(compiled_module(opt, "flat", None, size=n), p, [g], driver),
                # one tensor: the module without segments (--whole-vector), where that differs
                **({"polaris-whole": lambda: polaris_peer(compiled_module(opt, "flat", None, size=n, whole=True), p, [g], driver)} if opt in PER_TENSOR else {}),
                # blocks of 16 (--segment-reduction aligned), one tensor here
                **({"polaris-aligned": lambda: polaris_peer(compiled_module(opt, "flat", None, size=n, aligned=True), p, [g], driver)} if opt in PER_TENSOR and n % 16 == 0 else {}),
                **({"polaris-aligned-any": lambda: polaris_peer(compiled_module(opt, "flat", None, aligned=True), p, [g], driver)} if opt in PER_TENSOR and n % 16 == 0 else {}),
                "polaris-async": lambda: polaris_peer(compiled_module(opt, "flat", None, extra=ASYNC), p, [g], "local-task"),
                "iree-bare": lambda: bare_peer(flat, [p], [g], driver),
                "optax": lambda: optax_peer(opt, p, g),
                "numpy": lambda: numpy_peer(opt, [p], [g]),
                **({"ort": lambda: _ort.ort_peer(opt, [p])} if ort_here and opt in _ort.OPTIMIZERS else {}),
            }
            make = {k: v for k, v in make.items() if k in args.peers}
            measure_group(opt, C.fmt_size(n), "flat", n, make, reps, args.warmup, args.target_s, results, floor)
        if args.gpt2 != "none":
            div = 1 if args.gpt2 == "full" else 4
            shapes = C.gpt2_shapes(div)
            leaves = C.shape_leaves(shapes)
            total = sum(int(np.prod(s)) for _, s in leaves)
            tree_mod = compiled_module(opt, "tree", shapes)
            host_p, host_g = C.gpt2_data(shapes, rng)
            import polaris_runtime as pr

            p_leaves = list(pr.flatten_names(host_p).values())
            g_leaves = list(pr.flatten_names(host_g).values())
            assert list(pr.flatten_names(host_p)) == [nm for nm, _ in leaves]
            label = "gpt2" if div == 1 else f"gpt2/{div}"
            reps = max(3, args.repeats // 3)
            make = {
                "polaris": lambda: polaris_peer(tree_mod, host_p, g_leaves, driver),
                "polaris-async": lambda: polaris_peer(compiled_module(opt, "tree", shapes, extra=ASYNC), host_p, g_leaves, "local-task"),
                "iree-bare": lambda: bare_peer(tree_mod, p_leaves, g_leaves, driver),
                "optax": lambda: optax_peer(opt, host_p, host_g),
                "numpy": lambda: numpy_peer(opt, p_leaves, g_leaves),
                **({"ort": lambda: _ort.ort_peer(opt, p_leaves)} if ort_here and opt in _ort.OPTIMIZERS else {}),
            }
            make = {k: v for k, v in make.items() if k in args.peers}
            measure_group(opt, f"{label} tree", "tree", total, make, reps, args.warmup, args.target_s, results, floor)
            del p_leaves, g_leaves
            from polaris_runtime.pack import pack

            fp, packing = pack(host_p)
            fg = packing.pack(host_g)
            del host_p, host_g
            # numpy has no flat LAMB with per-tensor trust ratios: it gets the tensors as views
            np_p = [fp[a : a + n_] for a, n_ in zip(packing.offsets[:-1], packing.sizes, strict=True)] if opt == "lamb" else [fp]
            np_g = [fg[a : a + n_] for a, n_ in zip(packing.offsets[:-1], packing.sizes, strict=True)] if opt == "lamb" else [fg]
            if opt in PER_TENSOR:  # the model packed with every tensor at a multiple of 16
                fp16, packing16 = pack(packing.unpack(fp), align=16)
                fg16 = packing16.pack(packing.unpack(fg))
            make = {
                "polaris": lambda: polaris_peer(flat, fp, [fg], driver, segments=packing),
                # --size of the packed model: for LAMB the segment tree instead of the scatter
                "polaris-fixed": lambda: polaris_peer(compiled_module(opt, "flat", None, size=total), fp, [fg], driver, segments=packing),
                **({"polaris-aligned": lambda: polaris_peer(compiled_module(opt, "flat", None, size=packing16.size, aligned=True), fp16, [fg16], driver, segments=packing16)} if opt in PER_TENSOR else {}),
                **({"polaris-aligned-any": lambda: polaris_peer(compiled_module(opt, "flat", None, aligned=True), fp16, [fg16], driver, segments=packing16)} if opt in PER_TENSOR else {}),
                "iree-bare": lambda: bare_peer(flat, [fp], [fg], driver, segments=packing),
                "optax": lambda: optax_peer(opt, fp, fg),
                "numpy": lambda: numpy_peer(opt, np_p, np_g),
            }
            make = {k: v for k, v in make.items() if k in args.peers}
            measure_group(opt, f"{label} flat", "flat", total, make, reps, args.warmup, args.target_s, results, floor)
            del fp, fg, np_p, np_g
            if opt in PER_TENSOR:
                del fp16, fg16
    info["finished"] = C.now()
    info["seconds"] = round(time.perf_counter() - t_start, 1)
    try:
        info["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover
        pass
    return {"info": info, "results": results}


# -- reports ------------------------------------------------------------------------------------
def targets(results: list[dict]) -> list[dict]:
    """The issue-6 CPU targets, read off the results."""
    def ratio(opt, layout, peer="polaris"):
        a = [r for r in results if r["optimizer"] == opt and r["layout"] == layout and r["peer"] == peer and "step_s" in r]
        b = [r for r in results if r["optimizer"] == opt and r["layout"] == layout and r["peer"] == "optax" and "step_s" in r]
        return a[0]["step_s"] / b[0]["step_s"] if a and b else None

    out = []
    layouts = list(dict.fromkeys(r["layout"] for r in results if r["optimizer"] == "adam"))
    for layout in layouts:
        if layout in ("1M", "10M"):
            goal = 0.7
        elif layout in ("10k", "100k"):
            goal = 1.0
        elif layout.endswith("tree"):
            goal = 1.0
        else:
            continue
        for peer in ("polaris", "polaris-fixed", "polaris-async"):
            r = ratio("adam", layout, peer)
            if r is not None:
                out.append({"what": f"adam {layout}: {peer} / optax", "goal": goal, "ratio": r, "met": r <= goal})
    return out


def markdown(data: dict) -> str:
    info, results = data["info"], data["results"]
    m, v, bw = info["machine"], info["versions"], info["copy_bandwidth"]
    lines = [
        f"# Optimizer step benchmark: {info['date']}, {m['cpu']} ({m['cores']} cores)",
        "",
        f"- device: {m['cpu']}, {m['cores']} cores, ISA {'/'.join(m['isa']) or '-'}; {m['platform']}",
        "- versions: " + ", ".join(f"{k} {val}" for k, val in v.items()),
        f"- IREE driver: {info['args']['driver']}; modules compiled with --iree-llvmcpu-target-cpu=host",
        f"- copy bandwidth (np.copyto of {bw['bytes'] // 2**20} MB, read+write counted): "
        + ", ".join(f"{k.replace('_gbs', '').replace('threads_', '')} thread(s) {val:.1f} GB/s" for k, val in bw.items() if k.startswith("threads"))
        + f"; floor = bytes / {bw['floor_gbs']:.1f} GB/s",
        *([f"- ONNX Runtime peer (`ort`): {info['ort']}"] if "ort" in info else []),
        f"- load average at start {m['loadavg_at_start']}, at end {m.get('loadavg_at_end', '-')} (a shared machine: peers are sampled round-robin)",
        f"- run: {info['started']} .. {info['finished']} ({info['seconds']} s); command: `python bench/run.py{' --quick' if info['args']['quick'] else ''}`",
        "- bytes per parameter: " + "; ".join(f"{k} {C.BYTES_PER_PARAM[k]} B ({C.BYTES_NOTE[k]})" for k in C.OPTIMIZERS),
        "- step = median per-step time over repeats of N steps + one device sync; IQR in brackets; "
        "x floor = step / (bytes / copy bandwidth); x best = step / fastest peer of the row group; "
        "x optax = step / jax.jit(optax) donated",
        "",
    ]
    t = targets(results)
    if t:
        lines += ["## Issue-6 targets (CPU)", "", C.md_table(["target", "goal", "measured", "met"], [[x["what"], f"<= {x['goal']}", f"{x['ratio']:.2f}", "yes" if x["met"] else "**no**"] for x in t]), ""]
    rows = []
    for r in results:
        if "error" in r:
            rows.append([r["optimizer"], r["layout"], C.fmt_size(r["params"]), r["peer"], "error", "", "", "", "", r["error"][:60]])
            continue
        rows.append([
            r["optimizer"], r["layout"], C.fmt_size(r["params"]), r["peer"],
            C.fmt_time(r["step_s"]), f"[{C.fmt_time(r['q1_s'])}, {C.fmt_time(r['q3_s'])}]",
            f"{r['gbs']:.1f}", f"{r['x_floor']:.2f}", f"{r['x_best']:.2f}", f"{r['x_optax']:.2f}",
        ])
    lines += ["## Results", "", C.md_table(["optimizer", "layout", "params", "peer", "step", "IQR", "GB/s", "x floor", "x best", "x optax"], rows), ""]
    return "\n".join(lines)


# the CPU suite's colors (bench/plot.py gives other peers the palette's)
COLORS = {"polaris": "C0", "polaris-fixed": "C4", "polaris-whole": "C5", "polaris-aligned": "C6", "polaris-aligned-any": "C7",
          "polaris-async": "C3", "iree-bare": "C9", "optax": "C1", "numpy": "C2", "ort": "C8"}


def plot(data: dict, path: pathlib.Path) -> None:
    import plot as P

    P.plot(data, path, peers=PEERS, colors=COLORS)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run (well under a minute): every optimizer at 1e4 and 1e6, no GPT-2, 5 samples")
    ap.add_argument("--sizes", type=C.parse_sizes, default=None, help="flat sizes, e.g. 1e4,1e5,1e6,1e7")
    ap.add_argument("--optimizers", type=C.parse_optimizers, default=None, help=f"comma list of {','.join(C.OPTIMIZERS)}")
    ap.add_argument("--peers", default=",".join(PEERS), help=f"comma list of {','.join(PEERS)}")
    ap.add_argument("--gpt2", choices=["quarter", "full", "none"], default=None, help="many-tensor layout: GPT-2 small's 148 tensors, every dim /4 (default), full size, or none")
    ap.add_argument("--driver", default=None, help="IREE driver for the polaris peers (default: the runtime's: local-sync on <= 2 cores)")
    ap.add_argument("--repeats", type=int, default=None, help="samples per peer (a third of it at >= 5M params)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--target-s", type=float, default=None, help="wall time of one sample (N steps)")
    ap.add_argument("--out", type=pathlib.Path, default=C.RESULTS, help="folder for the .md/.json/.png")
    ap.add_argument("--name", default=None, help="file stem (default <date>-<device>[-quick])")
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--keep-openblas-env", action="store_true", help="do not drop OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE for this run")
    args = ap.parse_args(argv)
    if args.quick:
        args.sizes = args.sizes or [10_000, 1_000_000]
        args.optimizers = args.optimizers or list(C.OPTIMIZERS)
        args.gpt2 = args.gpt2 or "none"
        args.repeats = args.repeats or 5
        args.target_s = args.target_s or 0.02
    args.sizes = args.sizes or [10_000, 100_000, 1_000_000, 10_000_000]
    args.optimizers = args.optimizers or list(C.OPTIMIZERS)
    args.gpt2 = args.gpt2 or "quarter"
    args.repeats = args.repeats or 21
    args.target_s = args.target_s or 0.05
    args.peers = [p.strip() for p in args.peers.split(",")]
    bad = [p for p in args.peers if p not in PEERS]
    if bad:
        raise SystemExit(f"unknown peer(s) {bad}; choose from {', '.join(PEERS)}")

    data = run_suite(args)
    stem = args.name or f"{C.today()}-{C.device_slug()}{'-quick' if args.quick else ''}"
    args.out.mkdir(parents=True, exist_ok=True)
    md = args.out / f"{stem}.md"
    md.write_text(markdown(data))
    C.write_json(args.out / f"{stem}.json", data)
    if not args.no_plot:
        try:
            plot(data, args.out / f"{stem}.png")
        except ImportError as e:
            C.say(f"no plot ({e}); pip install matplotlib (the [bench] extra)")
    C.say(f"wrote {md} (+ .json, .png) in {data['info']['seconds']} s")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
