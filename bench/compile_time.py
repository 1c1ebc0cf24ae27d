"""Cold-start costs: ``polaris compile adam``, the runtime's import + load + first step, imports.

* compile: ``polaris compile adam -o X.vmfb`` in a fresh process (the CLI as a user runs it),
  wall time, median of 3; and, in another fresh process, the same compile split into phases
  (imports, jax tracing/export + MLIR merge, iree-compile).
* runtime cold start: a fresh process that imports ``polaris_runtime``, loads the module,
  runs ``init`` and one ``step`` on 1e6 parameters and reads the result back (median of 3).
* imports: ``python -X importtime -c "import M"`` cumulative time of each top-level module,
  and the wall time of that process.

Usage: ``python bench/compile_time.py [--repeats 3]``; writes
``bench/results/<date>-<device>-coldstart.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import _common as C  # noqa: E402

IMPORTS = ["numpy", "iree.runtime", "polaris_runtime", "jax", "iree.compiler", "polaris", "polaris_compiler", "polaris.cli.__main__"]

PHASES = r"""
import time, json, sys
t0 = time.perf_counter()
import jax
t1 = time.perf_counter()
import polaris_compiler.compile as pc
from polaris._src import registry
t2 = time.perf_counter()
spent = {}
real = pc._iree_compile
def timed(*a, **k):
    s = time.perf_counter(); r = real(*a, **k); spent["iree_compile"] = time.perf_counter() - s; return r
pc._iree_compile = timed
spec = registry.get("adam")
tx = spec.build()
t3 = time.perf_counter()
art = pc.compile_optimizer(tx, pc.Layout.flat(), pc.CompileOptions(), name="adam", optimizer_options=spec.defaults())
t4 = time.perf_counter()
art.save(sys.argv[1])
t5 = time.perf_counter()
print(json.dumps({"import jax": t1 - t0, "import polaris_compiler + frontend": t2 - t1, "build optimizer": t3 - t2,
                  "trace + export + merge (jax)": (t4 - t3) - spent["iree_compile"], "iree-compile": spent["iree_compile"],
                  "save": t5 - t4, "total in process": t5 - t0}))
"""

COLD_RUNTIME = r"""
import time, sys, json
t0 = time.perf_counter()
import numpy as np
import polaris_runtime as pr
from polaris_runtime import device as dev
t1 = time.perf_counter()
opt = pr.load(sys.argv[1])
t2 = time.perf_counter()
n = int(sys.argv[2])
p = np.ones(n, np.float32); g = np.full(n, 1e-3, np.float32)
state = opt.init(p)
t3 = time.perf_counter()
params, state = opt.step(p, g, state)
out = params.numpy()
t4 = time.perf_counter()
assert out.shape == (n,)
print(json.dumps({"import": t1 - t0, "load": t2 - t1, "init": t3 - t2, "first step + read back": t4 - t3, "total in process": t4 - t0,
                  "jax imported": "jax" in sys.modules}))
"""


def polaris_cmd() -> list[str]:
    exe = pathlib.Path(sys.executable).with_name("polaris")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("polaris")
    return [found] if found else [sys.executable, "-m", "polaris.cli"]


def timed_run(cmd: list[str], **kw) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return dt, r


def import_time(module: str) -> dict:
    wall, r = timed_run([sys.executable, "-X", "importtime", "-c", f"import {module}"])
    cum = None
    for line in r.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        parts = [x.strip() for x in line[len("import time:"):].split("|")]
        if len(parts) == 3 and parts[2].strip() == module:
            cum = int(parts[1]) / 1e6
    return {"cumulative_s": cum, "process_wall_s": wall}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--size", type=int, default=1_000_000, help="parameters for the runtime cold start")
    ap.add_argument("--out", type=pathlib.Path, default=C.RESULTS)
    args = ap.parse_args(argv)
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE=os.environ.get("PYTHONDONTWRITEBYTECODE", ""))
    data: dict = {"info": {"date": C.today(), "started": C.now(), "machine": C.machine_info(),
                           "versions": C.versions("jax", "jaxlib", "iree-base-compiler", "iree-base-runtime", "numpy", "polaris-iree")}}
    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(tmp) / "adam.vmfb"
        # compile through the CLI, fresh process each time, compile cache off (cold)
        walls = []
        cold_env = dict(env, POLARIS_NO_CACHE="1")
        for _ in range(args.repeats):
            out.unlink(missing_ok=True)
            dt, _ = timed_run([*polaris_cmd(), "compile", "adam", "-o", str(out)], env=cold_env)
            walls.append(dt)
            C.say(f"  polaris compile adam (cold, POLARIS_NO_CACHE=1): {dt:.2f} s")
        data["compile_cli"] = {"cmd": "POLARIS_NO_CACHE=1 polaris compile adam -o X.vmfb", "walls_s": walls, "median_s": statistics.median(walls), "target_s": 3.0}
        # and a compile-cache hit (an empty cache of our own, filled by the first run)
        hit_env = dict(env, POLARIS_CACHE_DIR=str(pathlib.Path(tmp) / "cache"))
        hit_env.pop("POLARIS_NO_CACHE", None)
        hits = []
        for i in range(args.repeats + 1):
            (pathlib.Path(tmp) / "hit.vmfb").unlink(missing_ok=True)
            dt, _ = timed_run([*polaris_cmd(), "compile", "adam", "-o", str(pathlib.Path(tmp) / "hit.vmfb")], env=hit_env)
            if i:
                hits.append(dt)
        data["compile_cache_hit"] = {"walls_s": hits, "median_s": statistics.median(hits), "target_s": 0.3}
        C.say(f"  polaris compile adam (cache hit): {statistics.median(hits):.2f} s")
        # the same, by phase
        phases = []
        for _ in range(args.repeats):
            _, r = timed_run([sys.executable, "-c", PHASES, str(pathlib.Path(tmp) / "adam2.vmfb")], env=env)
            phases.append(json.loads(r.stdout.strip().splitlines()[-1]))
        data["compile_phases"] = {k: statistics.median(p[k] for p in phases) for k in phases[0]}
        C.say("  phases: " + ", ".join(f"{k} {v:.2f}s" for k, v in data["compile_phases"].items()))
        # runtime cold start (no jax)
        colds, walls = [], []
        for _ in range(args.repeats):
            dt, r = timed_run([sys.executable, "-c", COLD_RUNTIME, str(out), str(args.size)], env=env)
            colds.append(json.loads(r.stdout.strip().splitlines()[-1]))
            walls.append(dt)
        data["runtime_cold"] = {k: statistics.median(c[k] for c in colds) for k in colds[0] if k != "jax imported"}
        data["runtime_cold"]["process_wall_s"] = statistics.median(walls)
        data["runtime_cold"]["jax_imported"] = any(c["jax imported"] for c in colds)
        data["runtime_cold"]["params"] = args.size
        data["runtime_cold"]["target_s"] = 0.3
        C.say("  runtime cold start: " + ", ".join(f"{k} {v}" for k, v in data["runtime_cold"].items()))
    imports = {}
    for m in IMPORTS:
        rs = [import_time(m) for _ in range(args.repeats)]
        imports[m] = {"cumulative_s": statistics.median(r["cumulative_s"] for r in rs if r["cumulative_s"] is not None),
                      "process_wall_s": statistics.median(r["process_wall_s"] for r in rs)}
        C.say(f"  import {m}: {imports[m]['cumulative_s']:.3f} s (process {imports[m]['process_wall_s']:.3f} s)")
    data["imports"] = imports
    base = import_time("sys")  # interpreter start-up alone
    data["python_startup_s"] = base["process_wall_s"]

    m = data["info"]["machine"]
    cc, rc = data["compile_cli"], data["runtime_cold"]
    lines = [
        f"# Cold start: {data['info']['date']}, {m['cpu']} ({m['cores']} cores)", "",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in data["info"]["versions"].items()),
        f"- load average at start {m['loadavg_at_start']} (shared machine)", "",
        "## Compile", "",
        C.md_table(["what", "median", "runs", "target"], [
            [f"`{cc['cmd']}` (fresh process, cold)", f"{cc['median_s']:.2f} s", ", ".join(f"{w:.2f}" for w in cc["walls_s"]), "<= 3 s"],
            ["the same with a compile-cache hit", f"{data['compile_cache_hit']['median_s']:.2f} s", ", ".join(f"{w:.2f}" for w in data["compile_cache_hit"]["walls_s"]), "<= 0.3 s"],
        ]), "",
        C.md_table(["phase (fresh process, in-process timers)", "median"], [[k, f"{v:.3f} s"] for k, v in data["compile_phases"].items()]), "",
        "## Runtime: import + load + init + first step", "",
        C.md_table(["phase", "median"], [[k, f"{v:.3f} s" if isinstance(v, float) else str(v)] for k, v in rc.items()]), "",
        f"(python start-up alone: {data['python_startup_s']:.3f} s)", "",
        "## Imports (`python -X importtime -c 'import M'`, cumulative)", "",
        C.md_table(["module", "import (cumulative)", "process wall"], [[m_, f"{v['cumulative_s']:.3f} s", f"{v['process_wall_s']:.3f} s"] for m_, v in imports.items()]), "",
    ]
    stem = f"{C.today()}-{C.device_slug()}-coldstart"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.md").write_text("\n".join(lines))
    C.write_json(args.out / f"{stem}.json", data)
    print(args.out / f"{stem}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
