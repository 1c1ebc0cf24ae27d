"""Soak: many steps of adam through the Python runtime, watching the process's resident memory.

    .venv/bin/python bench/soak.py                    # 10,000 steps, 100k flat f32, RSS every 500
    .venv/bin/python bench/soak.py --steps 2000 --n 1000000 --checkpoint-every 500

A training loop runs for days; a leak of a few bytes per step (a buffer kept alive by a handle, a
growing cache) shows up as resident memory that climbs with the step count. This runs the loop a
host would run (numpy gradients in, device-resident params and state carried from step to step),
samples RSS from ``/proc/self/statm`` every ``--every`` steps after a warm-up, and fails (exit 1)
when RSS grew by more than ``--limit-mib`` between the first and the last sample.

The module is compiled in a child process (``python -m polaris.cli compile adam``) unless
``--module`` names one, so this process imports only the runtime: JAX's own memory never mixes
into the numbers. Prints a markdown table and writes JSON and markdown under ``bench/results/``.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import _common  # noqa: E402  (bench/_common.py: stdlib and numpy only)

BENCH_DIR = pathlib.Path(__file__).resolve().parent
RESULTS = BENCH_DIR / "results"
PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
MIB = 2**20


def rss_bytes() -> int:
    """Resident set size of this process (``/proc/self/statm``, second field, in pages)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def compile_adam(out: pathlib.Path, options: tuple[str, ...] = ("learning_rate=0.001",)) -> pathlib.Path:
    """Compiles flat adam in a child process (keeps JAX out of this one)."""
    cmd = [sys.executable, "-m", "polaris.cli", "compile", "adam", *options, "-o", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"compiling the soak module failed:\n{' '.join(cmd)}\n{r.stdout}{r.stderr}")
    return out


def soak(opt, *, steps: int, n: int, every: int, warmup: int, checkpoint_every: int = 0,
         checkpoint_dir: pathlib.Path | None = None) -> dict:
    """Runs ``steps`` adam steps on an ``n``-vector after ``warmup`` steps; samples RSS.

    Returns ``{"samples": [(step, rss_bytes, seconds)], "growth_bytes", "max_growth_bytes", ...}``.
    """
    rng = np.random.default_rng(0)
    p = rng.standard_normal(n).astype(np.float32)
    grads = [rng.standard_normal(n).astype(np.float32) * 1e-2 for _ in range(4)]
    state = opt.init(p)
    ckpt = None
    if checkpoint_every and checkpoint_dir is not None:
        ckpt = checkpoint_dir / "soak.safetensors"
    for i in range(warmup):
        p, state = opt.step(p, grads[i % 4], state)
    if ckpt is not None:  # warm the checkpoint path (safetensors import, first buffers) too
        opt.save_checkpoint(ckpt, state, p)
    samples = [(0, rss_bytes(), 0.0)]
    t0 = time.perf_counter()
    for i in range(1, steps + 1):
        p, state = opt.step(p, grads[i % 4], state)
        if ckpt is not None and i % checkpoint_every == 0:
            opt.save_checkpoint(ckpt, state, p)
        if i % every == 0 or i == steps:
            _ = state["0/count"]  # a read-back: the queue has drained to here
            samples.append((i, rss_bytes(), time.perf_counter() - t0))
    final = p.numpy()
    if not np.isfinite(final).all():
        raise SystemExit("soak: parameters became non-finite")
    base = samples[0][1]
    return {
        "steps": steps,
        "n": n,
        "warmup": warmup,
        "every": every,
        "checkpoint_every": checkpoint_every,
        "samples": samples,
        "growth_bytes": samples[-1][1] - base,
        "max_growth_bytes": max(s[1] for s in samples) - base,
        "seconds": samples[-1][2],
        "step_count": int(opt.step_count(state)),
    }


def markdown(res: dict, meta: dict) -> str:
    lines = [
        f"# Soak: {res['steps']} adam steps, {res['n']:,} f32 parameters ({meta['device']})",
        "",
        f"{meta['when']}; warm-up {res['warmup']} steps; RSS from /proc/self/statm; "
        f"checkpoint every {res['checkpoint_every'] or '-'} steps; module {meta['module']}",
        "",
        "| step | RSS (MiB) | growth (MiB) | elapsed (s) | steps/s |",
        "|---|---|---|---|---|",
    ]
    base = res["samples"][0][1]
    for step, rss, t in res["samples"]:
        rate = f"{step / t:,.0f}" if t > 0 else "-"
        lines.append(f"| {step} | {rss / MIB:.2f} | {(rss - base) / MIB:+.2f} | {t:.2f} | {rate} |")
    lines += [
        "",
        f"RSS growth first to last sample: **{res['growth_bytes'] / MIB:+.2f} MiB** "
        f"(max {res['max_growth_bytes'] / MIB:+.2f} MiB; limit {meta['limit_mib']} MiB): "
        f"**{'PASS' if meta['passed'] else 'FAIL'}**",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=10_000)
    ap.add_argument("--n", type=int, default=100_000, help="parameters (flat f32 vector)")
    ap.add_argument("--every", type=int, default=500, help="sample RSS every this many steps")
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--limit-mib", type=float, default=5.0, help="fail when RSS grows more than this")
    ap.add_argument("--checkpoint-every", type=int, default=0, help="also save a checkpoint every N steps")
    ap.add_argument("--module", type=pathlib.Path, help="a flat adam .vmfb (default: compile one)")
    ap.add_argument("--device", default=None, help="IREE driver (default: the module's own)")
    ap.add_argument("--out", type=pathlib.Path, default=RESULTS, help="where to write the JSON and markdown")
    ap.add_argument("--no-write", action="store_true", help="print only")
    args = ap.parse_args(argv)

    import polaris_runtime as pr

    with tempfile.TemporaryDirectory(prefix="polaris-soak-") as tmp:
        module = args.module or compile_adam(pathlib.Path(tmp) / "adam-flat.vmfb")
        opt = pr.load(module, device=args.device)
        res = soak(opt, steps=args.steps, n=args.n, every=args.every, warmup=args.warmup,
                   checkpoint_every=args.checkpoint_every, checkpoint_dir=pathlib.Path(tmp))
    passed = res["growth_bytes"] <= args.limit_mib * MIB
    meta = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "device": opt.driver,
        "module": "compiled: adam learning_rate=0.001, flat" if args.module is None else str(args.module),
        "limit_mib": args.limit_mib,
        "passed": passed,
        "cpu": _common.cpu_model(),
        "cores": os.cpu_count(),
        "versions": _versions(),
    }
    md = markdown(res, meta)
    print(md)
    if not args.no_write:
        args.out.mkdir(parents=True, exist_ok=True)
        stem = args.out / f"{time.strftime('%Y-%m-%d')}-soak-{opt.driver}"
        stem.with_suffix(".json").write_text(json.dumps({**meta, **res}, indent=2) + "\n")
        stem.with_suffix(".md").write_text(md)
        print(f"wrote {stem}.json and {stem}.md", file=sys.stderr)
    return 0 if passed else 1


def _versions() -> dict:
    from importlib import metadata

    out = {"python": sys.version.split()[0]}
    for name in ("iree-base-runtime", "numpy", "polaris-iree-runtime"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "-"
    return out


if __name__ == "__main__":
    sys.exit(main())
