"""How often the stream order fails, and whether it is right when it does not (seventeenth pass).

On an H200 (IREE 3.13.0) a loop with ``order="stream"`` (no call waits for the one before it)
failed once after 6427 calls: ``timeline already at 6427, cannot signal 6426``, after which every
allocation on the device failed, and the runtime's default became ``order="fences"`` everywhere.
This probe says how often the failure happens and whether the loops that do not fail step exactly
like fence-chained ones. On an H100 (nineteenth pass) the ring below never failed in 11 trials and
matched fences bit for bit, and it is the CUDA default again (docs/runtime.md, "Ordering").

Three orders (eighteenth pass): ``fences``; ``stream``, the runtime's stream order since the
eighteenth pass (a ring of ``STREAM_RING`` semaphores: no two queued calls signal one semaphore,
so completions that come back out of order cannot fail a timeline); and ``stream-1sem``, the
seventeenth pass's stream order that failed (every call signals the one semaphore; the probe sets
it up on a stream-ordered module, :func:`_one_semaphore`), to see the failure's rate beside the
ring's in the same session.

Each trial is a process of its own (a failure leaves its device unusable): it loads one async
module with the given order, runs ``--steps`` steps through the runtime with three gradients in
turn (so that two calls run out of order change the result), waits, and reports the step count, a checksum of the parameters, the first error and the time per
step. ``run`` alternates ``--trials`` trials of each order and writes ``stress.md``/``.json``:
per order, how many trials failed and after how many calls, and whether every trial that finished
got the fence-chained parameters bit for bit.

    python bench/gpu_stream_stress.py run out/gpu-count/adam-1000064-spare-counts.vmfb --out OUT  # there (cuda)
    python bench/gpu_stream_stress.py run MODULE --out OUT --device local-sync                  # a dry run here
"""

from __future__ import annotations

import argparse
import hashlib
import json
import pathlib
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402

import _common as C  # noqa: E402

ORDERS = ("stream", "fences", "stream-1sem")


def _one_semaphore(mod) -> None:
    """Makes a stream-ordered module call as the seventeenth pass's stream order did: every call
    waits for value 0 of the module's one semaphore and signals the next value, no throttle."""
    import iree.runtime as rt

    zero = rt.HalFence.create_at(mod._sem, 0)

    def fences():
        t = mod._tick
        mod._tick = t + 1
        return zero, rt.HalFence.create_at(mod._sem, t + 1)

    mod._fences = fences
    mod._ring = None  # wait(): value _tick of the one semaphore


def one(path: pathlib.Path, device: str, order: str, steps: int) -> dict:
    """One trial, in this process: ``steps`` steps of the module at ``path`` with ``order``."""
    import polaris_runtime as pr
    from polaris_runtime import device as dev

    out = {"order": order, "steps": steps, "done": 0}
    try:
        opt = pr.load(path, device=device, order="stream" if order == "stream-1sem" else order)
        out["order_used"] = opt.order
        if order == "stream-1sem":
            _one_semaphore(opt)
            out["order_used"] += "-1sem"
        n = opt.manifest.params[0].shape[0]
        rng = np.random.default_rng(17)
        p = rng.standard_normal(n).astype(np.float32)
        # three gradients in turn: two calls that ran out of order would change the parameters
        # (with one gradient, two swapped steps on the same in-place buffers would not)
        g = [dev.upload(opt.device, (rng.standard_normal(n) * 1e-3).astype(np.float32)) for _ in range(3)]
        params, state = [dev.upload(opt.device, p)], opt.init(p)
        t0 = time.perf_counter()
        for k in range(steps):
            params, state = opt.step(params, g[k % 3], state)
            out["done"] = k + 1
        opt.wait()
        out["seconds_per_step"] = (time.perf_counter() - t0) / steps
        final = np.asarray(params.numpy(), np.float32).reshape(-1)
        out["checksum"] = float(np.abs(final.astype(np.float64)).sum())
        out["digest"] = hashlib.sha256(final.tobytes()).hexdigest()
        out["count"] = opt.step_count(state)
    except Exception as e:  # the result of the trial
        out["error"] = f"{type(e).__name__}: {e}"[:400]
    return out


def _trial(path: pathlib.Path, device: str, order: str, steps: int, timeout: float) -> dict:
    cmd = [sys.executable, str(pathlib.Path(__file__).resolve()), "one", str(path), "--device", device, "--order", order,
           "--steps", str(steps)]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"order": order, "steps": steps, "error": f"timed out after {timeout:.0f} s"}
    lines = [line for line in res.stdout.splitlines() if line.startswith("{")]
    if not lines:
        return {"order": order, "steps": steps, "error": f"exit {res.returncode}: {(res.stderr or res.stdout)[-300:]}"}
    return json.loads(lines[-1])


def run(path: pathlib.Path, out: pathlib.Path, device: str, steps: int, trials: int, timeout: float,
        orders: tuple[str, ...] = ORDERS) -> int:
    out.mkdir(parents=True, exist_ok=True)
    info = {"date": C.now(), "device": device, "module": path.name, "steps": steps, "trials": trials,
            "orders": list(orders), "versions": C.versions("iree-base-runtime", "numpy")}
    rows: list[dict] = []
    for t in range(trials):
        for order in (orders if t % 2 == 0 else orders[::-1]):
            r = _trial(path, device, order, steps, timeout)
            r["trial"] = t
            rows.append(r)
            C.say(f"  {order} #{t}: " + (r.get("error") or f"{r['done']} steps, {C.fmt_time(r['seconds_per_step'])} a step, count {r['count']}"))
            C.write_json(out / "stress.json", {"info": info, "rows": rows})
            _report(out, info, rows)  # after every trial: a cut keeps what ran
    print((out / "stress.md").read_text())
    ref = {r.get("digest") for r in rows if r["order"] == "fences" and "digest" in r}
    return 0 if len(ref) == 1 and not any("error" in r for r in rows if r["order"] == "fences") else 1


def _report(out: pathlib.Path, info: dict, rows: list[dict]) -> None:
    fences = {r["digest"] for r in rows if r["order"] == "fences" and "digest" in r}
    lines = [f"# The stream order under stress: {info['date']}, {info['device']}", "",
             f"- module {info['module']}; {info['steps']} steps a trial, each trial a process; runtime side {info['versions']}",
             "- same: the trial's parameters are the fence-chained trials' bit for bit", "",
             "| order | trials | failed | failed after (calls) | finished, same as fences | step (median) |", "|---|---|---|---|---|---|"]
    for order in ORDERS:
        rs = [r for r in rows if r["order"] == order]
        if not rs:
            continue
        failed = [r for r in rs if "error" in r]
        ok = [r for r in rs if "error" not in r]
        same = sum(1 for r in ok if len(fences) == 1 and r["digest"] in fences)
        step = C.fmt_time(float(np.median([r["seconds_per_step"] for r in ok]))) if ok else ""
        lines.append(f"| {order} | {len(rs)} | {len(failed)} | {', '.join(str(r.get('done', '?')) for r in failed)} | "
                     f"{same} of {len(ok)} | {step} |")
    errors = sorted({r["error"] for r in rows if "error" in r})
    if errors:
        lines += ["", "Errors:", "", *(f"- {e}" for e in errors)]
    if len(fences) > 1:
        lines += ["", f"**The fence-chained trials disagree among themselves ({len(fences)} results)**: the module is not deterministic, and 'same' means nothing."]
    (out / "stress.md").write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="alternate trials of both orders, each a process (on the device host)")
    r.add_argument("module", type=pathlib.Path)
    r.add_argument("--out", type=pathlib.Path, required=True)
    r.add_argument("--device", default="cuda")
    r.add_argument("--steps", type=int, default=100_000)
    r.add_argument("--trials", type=int, default=4)
    r.add_argument("--timeout", type=float, default=60.0, help="seconds a trial may take")
    r.add_argument("--orders", default=",".join(ORDERS), help=f"comma-separated, of {', '.join(ORDERS)}")
    o = sub.add_parser("one", help="one trial in this process (what run starts)")
    o.add_argument("module", type=pathlib.Path)
    o.add_argument("--device", default="cuda")
    o.add_argument("--order", choices=ORDERS, required=True)
    o.add_argument("--steps", type=int, required=True)
    a = ap.parse_args(argv)
    if a.cmd == "one":
        print(json.dumps(one(a.module, a.device, a.order, a.steps)))
        return 0
    orders = tuple(a.orders.split(","))
    if not orders or not set(orders) <= set(ORDERS) or "fences" not in orders:
        ap.error(f"--orders {a.orders!r}: a comma-separated list of {', '.join(ORDERS)} that includes fences (the reference)")
    return run(a.module, a.out, a.device, a.steps, a.trials, a.timeout, orders)


if __name__ == "__main__":
    raise SystemExit(main())
