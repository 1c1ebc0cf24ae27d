"""Shared by the benchmarks: byte counts, layouts, timing, machine facts and report writing.

Imports numpy and the standard library only, so ``bench/gpu.py`` can use it on a host that has
no compiler and no frontend; puts this checkout's ``runtime/`` on the path for such a host.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import pathlib
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable
from importlib import metadata

import numpy as np

BENCH_DIR = pathlib.Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS = BENCH_DIR / "results"
# polaris_runtime from this checkout where it is not installed: the GPU host has the IREE runtime
# and numpy but no polaris package, and some benchmarks run trials in processes of their own
if str(REPO / "runtime") not in sys.path:
    sys.path.append(str(REPO / "runtime"))

# Bytes one step must move per f32 parameter (the memory-traffic floor of a fused kernel).
#   adam/adamw: read p, g, m, v; write p, m, v                       = 7 x 4 B
#   sgd momentum, lion: read p, g, m; write p, m                      = 5 x 4 B
#   lamb: adam's 28 B, plus the trust ratio's second pass: the norm of the update is known only
#         after a full pass, so p is written in a second pass that re-reads p, m, v (12 B)
BYTES_PER_PARAM = {"adam": 28, "adamw": 28, "sgd_momentum": 20, "lion": 20, "lamb": 40}
BYTES_NOTE = {
    "adam": "read p,g,m,v + write p,m,v",
    "adamw": "read p,g,m,v + write p,m,v",
    "sgd_momentum": "read p,g,m + write p,m",
    "lion": "read p,g,m + write p,m",
    "lamb": "28 B + second pass for the trust ratio (re-read p,m,v)",
}

# The polaris registry name and options of each benchmarked optimizer, and the Optax twin.
POLARIS = {
    "adam": ("adam", {}),
    "adamw": ("adamw", {"decay": 0.01}),
    "lamb": ("lamb", {"decay": 0.01}),
    "sgd_momentum": ("sgd", {"momentum": 0.9}),
    "lion": ("lion", {}),
}
OPTIMIZERS = tuple(POLARIS)
ALIASES = {"sgd-momentum": "sgd_momentum", "sgdm": "sgd_momentum", "sgd": "sgd_momentum"}


def optax_twin(opt: str):
    """The Optax transform matching ``POLARIS[opt]`` (imports optax)."""
    import optax

    if opt == "adam":
        return optax.adam(1e-3, b1=0.9, b2=0.999, eps=1e-8, eps_root=1e-15)
    if opt == "adamw":
        return optax.adamw(1e-3, b1=0.9, b2=0.999, eps=1e-8, eps_root=1e-15, weight_decay=0.01)
    if opt == "lamb":
        return optax.lamb(1e-2, b1=0.9, b2=0.999, eps=1e-8, eps_root=1e-15, weight_decay=0.01)
    if opt == "sgd_momentum":
        return optax.sgd(1e-2, momentum=0.9)
    if opt == "lion":
        return optax.lion(1e-4, b1=0.9, b2=0.99, weight_decay=1e-3)
    raise ValueError(opt)


def parse_optimizers(text: str) -> list[str]:
    out = []
    for t in text.split(","):
        t = ALIASES.get(t.strip().lower(), t.strip().lower())
        if t not in POLARIS:
            raise SystemExit(f"unknown optimizer {t!r}; choose from {', '.join(OPTIMIZERS)}")
        out.append(t)
    return out


def parse_sizes(text: str) -> list[int]:
    return [int(float(s)) for s in text.split(",") if s.strip()]


# -- GPT-2 small: 148 tensors ------------------------------------------------------------------
def gpt2_shapes(div: int = 1) -> dict:
    """GPT-2 small's 148 parameter tensors (nested dict of shapes); ``div`` divides every dim.

    wte 50257x768, wpe 1024x768, 12 blocks of (ln_1 g/b, attn c_attn w/b, attn c_proj w/b, ln_2
    g/b, mlp c_fc w/b, mlp c_proj w/b), ln_f g/b: 2 + 12 x 12 + 2 = 148; about 124.4M parameters
    (``div=4``: about 7.8M).
    """
    d, v, c = 768 // div, 50257 // div, 1024 // div
    t: dict = {"wte": (v, d), "wpe": (c, d), "ln_f": {"g": (d,), "b": (d,)}}
    for i in range(12):
        t[f"h{i:02d}"] = {
            "ln_1": {"g": (d,), "b": (d,)},
            "attn": {"c_attn": {"w": (d, 3 * d), "b": (3 * d,)}, "c_proj": {"w": (d, d), "b": (d,)}},
            "ln_2": {"g": (d,), "b": (d,)},
            "mlp": {"c_fc": {"w": (d, 4 * d), "b": (4 * d,)}, "c_proj": {"w": (4 * d, d), "b": (d,)}},
        }
    return t


def gpt2_data(shapes: dict, rng: np.random.Generator) -> tuple[dict, dict]:
    """Host parameters (std 0.02) and gradients (std 1e-3) of the shapes tree, float32."""
    p = map_shapes(lambda s: rng.standard_normal(s, dtype=np.float32) * np.float32(0.02), shapes)
    g = map_shapes(lambda s: rng.standard_normal(s, dtype=np.float32) * np.float32(1e-3), shapes)
    return p, g


def shape_leaves(tree: dict, prefix: str = "") -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) pairs in sorted-key order (JAX's and the runtime's order)."""
    out = []
    for k in sorted(tree):
        v = tree[k]
        name = f"{prefix}/{k}" if prefix else k
        if isinstance(v, dict):
            out.extend(shape_leaves(v, name))
        else:
            out.append((name, tuple(v)))
    return out


def map_shapes(fn: Callable[[tuple[int, ...]], object], tree: dict) -> dict:
    return {k: map_shapes(fn, v) if isinstance(v, dict) else fn(tuple(v)) for k, v in tree.items()}


# -- timing ------------------------------------------------------------------------------------
class Timer:
    """One peer's step, timed in blocks: ``block(n)`` runs n steps and waits for the device.

    ``step()`` runs one step; ``sync()`` waits until all submitted work is done (a read-back of
    a scalar, ``block_until_ready``, ``torch.cuda.synchronize``). Per-step time of a block is
    (wall time of n steps + one sync) / n.
    """

    def __init__(self, step: Callable[[], None], sync: Callable[[], None]):
        self.step = step
        self.sync = sync
        self.n = 1
        self.samples: list[float] = []

    def block(self, n: int) -> float:
        step = self.step
        t0 = time.perf_counter()
        for _ in range(n):
            step()
        self.sync()
        return time.perf_counter() - t0

    def calibrate(self, warmup: int, target_s: float, max_n: int = 5000) -> None:
        for _ in range(max(1, warmup)):
            self.step()
        self.sync()
        n, t = 1, self.block(1)
        while t < target_s / 4 and n < max_n:
            n = min(max_n, n * 4)
            t = self.block(n)
        self.n = max(1, min(max_n, int(round(n * target_s / max(t, 1e-9)))))

    def sample(self) -> None:
        self.samples.append(self.block(self.n) / self.n)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def spread(self) -> tuple[float, float]:
        """The 25th and 75th percentiles of the per-step samples."""
        q = np.percentile(self.samples, [25, 75])
        return float(q[0]), float(q[1])


def run_interleaved(timers: dict[str, Timer], repeats: int, warmup: int, target_s: float) -> None:
    """Calibrates each peer, then samples them round-robin so load from elsewhere hits all alike."""
    for t in timers.values():
        t.calibrate(warmup, target_s)
    for _ in range(repeats):
        for t in timers.values():
            t.sample()


# -- the floor: copy bandwidth -----------------------------------------------------------------
def copy_bandwidth(nbytes: int = 512 * 2**20, repeats: int = 7) -> dict:
    """Bandwidth of ``np.copyto`` of ``nbytes`` (>= 256 MB), 1 thread and 2 threads (halves).

    Counts read + write (2 x nbytes per copy). Returns GB/s, median of ``repeats``.
    """
    import threading

    n = nbytes // 4
    src = np.ones(n, np.float32)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # fault the pages in

    def one():
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            np.copyto(dst, src)
            ts.append(time.perf_counter() - t0)
        return 2 * nbytes / statistics.median(ts) / 1e9

    def threaded(k):
        parts = np.array_split(np.arange(n), k)
        bounds = [(int(p[0]), int(p[-1]) + 1) for p in parts]
        ts = []
        for _ in range(repeats):
            th = [threading.Thread(target=np.copyto, args=(dst[a:b], src[a:b])) for a, b in bounds]
            t0 = time.perf_counter()
            for x in th:
                x.start()
            for x in th:
                x.join()
            ts.append(time.perf_counter() - t0)
        return 2 * nbytes / statistics.median(ts) / 1e9

    k = max(1, min(os.cpu_count() or 1, 8))
    out = {"bytes": nbytes, "threads_1_gbs": one()}
    if k > 1:
        out[f"threads_{k}_gbs"] = threaded(k)
    out["floor_gbs"] = max(v for key, v in out.items() if key.endswith("_gbs"))
    return out


# -- the machine --------------------------------------------------------------------------------
def _cpuinfo(field: str) -> str | None:
    """The first ``field`` value of /proc/cpuinfo, or None (no such file or field)."""
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(field):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    return _cpuinfo("model name") or platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    return (_cpuinfo("flags") or "").split()


def device_slug(kind: str = "cpu") -> str:
    model = re.sub(r"[^a-z0-9]+", "-", cpu_model().lower()).strip("-")
    model = re.sub(r"-(processor|cpu|\d+-core)$", "", model)
    return f"{kind}-{model}-{os.cpu_count()}c"


def versions(*names: str) -> dict[str, str]:
    out = {"python": platform.python_version()}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            out[n] = "-"
    return out


def machine_info() -> dict:
    flags = set(cpu_flags())
    avx = [f for f in ("avx2", "avx512f", "avx512bw", "avx512vl") if f in flags]
    try:
        load = os.getloadavg()
    except OSError:  # pragma: no cover
        load = (float("nan"),) * 3
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "isa": avx,
        "loadavg_at_start": [round(x, 2) for x in load],
        "platform": platform.platform(),
        "env": {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OMP_NUM_THREADS", "XLA_FLAGS") if k in os.environ},
    }


def today() -> str:
    return _dt.date.today().isoformat()


def now() -> str:
    return _dt.datetime.now().isoformat(timespec="seconds")


# -- reports ------------------------------------------------------------------------------------
def fmt_time(s: float) -> str:
    if s != s:  # nan
        return "-"
    if s < 1e-3:
        return f"{s * 1e6:.1f} us"
    if s < 1:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.2f} s"


def fmt_size(n: int) -> str:
    for div, suf in ((10**9, "G"), (10**6, "M"), (10**3, "k")):
        if n >= div:
            v = n / div
            return f"{v:.0f}{suf}" if abs(v - round(v)) < 0.05 else f"{v:.1f}{suf}"
    return str(n)


def md_table(headers: list[str], rows: list[list[object]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for r in rows:
        out.append("| " + " | ".join(str(x) for x in r) + " |")
    return "\n".join(out)


def write_json(path: pathlib.Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")


def say(*a) -> None:
    print(*a, file=sys.stderr, flush=True)


def build_run_parser(doc: str, build_help: str, run_help: str, rounds: int | None = None):
    """``(parser, build, run)``: a script of two commands, ``build FOLDER`` (here: compile) and
    ``run FOLDER`` (on the device host: run what ``build`` wrote), each to take more options.
    With ``rounds``, ``run`` takes a probe's timing options (``--out``, ``--device``,
    ``--repeats``, ``--target-s``, and ``--rounds``, defaulting to ``rounds``)."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help=build_help)
    b.add_argument("folder", type=pathlib.Path)
    r = sub.add_parser("run", help=run_help)
    r.add_argument("folder", type=pathlib.Path)
    if rounds is not None:
        r.add_argument("--out", type=pathlib.Path, required=True)
        r.add_argument("--device", default="cuda")
        r.add_argument("--repeats", type=int, default=7)
        r.add_argument("--target-s", type=float, default=0.03)
        r.add_argument("--rounds", type=int, default=rounds)
    return ap, b, r


def probe_main(ap: argparse.ArgumentParser, argv, build: Callable, run: Callable) -> int:
    """A probe's command line (``build_run_parser(..., rounds=)``): ``build(args)``, or ``run``
    with the timing options; returns the exit code."""
    args = ap.parse_args(argv)
    if args.cmd == "build":
        build(args)
        return 0
    return run(args.folder, args.out, args.device, args.repeats, args.target_s, args.rounds)


# -- probes: build here, time there -----------------------------------------------------------
def probe_start(folder: pathlib.Path, out: pathlib.Path, device: str, rounds: int, gpu_name: Callable[[], str]) -> tuple[dict, dict, bool]:
    """``(index, info, on_gpu)`` for a probe's ``run``: the ``index.json`` its ``build`` wrote, and
    the report's facts (date, GPU or CPU, device, rounds, versions on both sides); makes ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    on_gpu = not device.startswith("local")
    index = json.loads((folder / "index.json").read_text())
    info = {"date": today(), "gpu": gpu_name() if on_gpu else cpu_model(), "device": device, "rounds": rounds,
            "built_with": index["versions"], "versions": versions("iree-base-runtime", "numpy", "torch", "jax", "jaxlib", "optax")}
    return index, info, on_gpu


def compile_bench_optimizer(key: str, size: int | None, options, **kw):
    """``polaris_compiler.compile_optimizer`` of the benchmark's ``key`` optimizer (``POLARIS``)
    on a flat layout of exactly ``size`` elements (``None``: any length), with ``kw`` passed on
    (imports the compiler: build side only)."""
    from polaris._src import registry
    from polaris_compiler import Layout, compile_optimizer

    name, opts = POLARIS[key]
    spec = registry.get(name)
    return compile_optimizer(spec.build(**opts), Layout.flat(size=size), options, name=name,
                             optimizer_options={**spec.defaults(), **opts}, **kw)


def time_in_rounds(group: dict[str, dict], make: dict[str, Callable[[], object]], rounds: int,
                   measure: Callable[[object], float], free: Callable[[], None], may_fail=()) -> bool:
    """Times every row of ``group`` (key -> row with a ``steps`` list) ``rounds`` times, the order
    reversed every other round, each time from a fresh ``make[key]()`` timer; ``measure(timer)``
    gives one step time, or a dict of ``step`` and ``enqueue`` (the host's time to queue a step;
    kept in ``enqueues``). A row that fails keeps its ``error`` and is not retried. Returns False
    when a row failed whose key is not in ``may_fail`` (the peers)."""
    ok = True
    for r in range(rounds):
        for key in (list(group) if r % 2 == 0 else list(group)[::-1]):
            row = group[key]
            if "error" in row:
                continue
            try:
                timer = make[key]()
                m = measure(timer)
                del timer
                if isinstance(m, dict):
                    row.setdefault("enqueues", []).append(m["enqueue"])
                    m = m["step"]
                row["steps"].append(m)
            except Exception as e:  # a failing case is a result
                row["error"] = f"{type(e).__name__}: {e}"[:300]
                ok = ok and key in may_fail
            free()
    for row in group.values():
        if row["steps"]:
            row["step"] = statistics.median(row["steps"])
        if row.get("enqueues"):
            row["enqueue"] = statistics.median(row["enqueues"])
    return ok


def step_row(n: int, row: dict, bytes_per_param: int, ratios: list[float | None], last: str = "") -> str:
    """A probe report's table row: ``| size | case | median step | each round | GB/s | row's step
    / each of ratios | last |``, or the row's error in the step column."""
    if "step" not in row:
        return f"| {fmt_size(n)} | {row['case']} | error: {row.get('error', '?')[:150]} |" + " |" * (len(ratios) + 3)
    s = row["step"]
    cols = [f"{s / v:.3f}" if v else "" for v in ratios]
    return (f"| {fmt_size(n)} | {row['case']} | {fmt_time(s)} | {', '.join(fmt_time(v) for v in row['steps'])} | "
            f"{bytes_per_param * n / s / 1e9:.0f} | {' | '.join(cols)} | {last} |")
