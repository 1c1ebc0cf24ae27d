"""Footprint of a runtime-only deployment: installed size, and the time to import, load and step.

    .venv/bin/python bench/footprint.py              # sizes from this venv, 5 fresh-process timings
    .venv/bin/python bench/footprint.py --venv       # also: a fresh venv with `pip install ./runtime`

Size: what a deploy host installs for ``polaris-iree-runtime`` (``iree-base-runtime`` + ``numpy``
+ the ``polaris_runtime`` package; ``safetensors`` listed apart, it is optional), summed from the
installed files of each distribution (its RECORD), with IREE's tracing build and command-line
tools broken out since a host could strip them. ``--venv`` (slow; needs PyPI) instead measures a
real fresh install: ``python -m venv`` + ``pip install ./runtime``, the whole site-packages.

Time: a fresh interpreter (``python -c``) in which importing ``jax`` or the compiler would fail
runs ``import polaris_runtime``, ``load(module)``, ``init`` and the first ``step`` (with a
read-back), reporting each phase and the process's wall time; the median of ``--repeats`` runs.

Prints markdown and writes JSON and markdown under ``bench/results/``.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata, util

BENCH_DIR = pathlib.Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS = BENCH_DIR / "results"
MB = 10**6

RUNTIME_DISTS = ("iree-base-runtime", "numpy")
OPTIONAL_DISTS = ("safetensors",)

# Runs in the fresh interpreter: blocks JAX and the compiler, times each phase.
PROBE = r"""
import sys, time, json
t0 = time.perf_counter()
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("jax", "jaxlib", "polaris", "polaris_compiler") or name.startswith("iree.compiler"):
            raise ImportError(f"{name} is blocked: the runtime must not need it")
        return None
sys.meta_path.insert(0, Block())
import numpy as np
t1 = time.perf_counter()
import polaris_runtime as pr
t2 = time.perf_counter()
opt = pr.load(sys.argv[1])
t3 = time.perf_counter()
p = np.linspace(-1, 1, int(sys.argv[2]), dtype=np.float32)
s = opt.init(p)
t4 = time.perf_counter()
p, s = opt.step(p, np.ones_like(p), s)
p.numpy()
t5 = time.perf_counter()
print(json.dumps({"import_numpy": t1 - t0, "import_polaris_runtime": t2 - t1, "load": t3 - t2,
                  "init": t4 - t3, "first_step": t5 - t4, "total_in_process": t5 - t0,
                  "jax_loaded": any(m.split(".")[0] == "jax" for m in sys.modules)}))
"""


def dist_size(name: str) -> dict:
    """Bytes of a distribution's installed files, split into parts worth knowing about."""
    try:
        d = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return {"version": None, "bytes": 0, "files": 0}
    parts: dict[str, int] = {}
    total = 0
    files = d.files or []
    for f in files:
        try:
            size = f.size if f.size is not None else os.path.getsize(f.locate())
        except OSError:
            size = 0
        total += size
        s = str(f)
        if "_runtime_libs_tracy" in s:
            key = "tracing build (iree/_runtime_libs_tracy)"
        elif "_runtime_libs/iree-" in s:
            key = "command-line tools (iree-run-module, ...)"
        else:
            key = None
        if key:
            parts[key] = parts.get(key, 0) + size
    return {"version": d.version, "bytes": total, "files": len(files), "parts": parts}


def package_dir_size(module: str) -> dict:
    """Bytes of an imported package's directory (for editable installs), without caches."""
    spec = util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return {"bytes": 0, "files": 0}
    root = pathlib.Path(list(spec.submodule_search_locations)[0])
    files = [p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    try:
        version = metadata.version("polaris-iree-runtime")
    except metadata.PackageNotFoundError:
        version = None
    return {"version": version, "bytes": sum(p.stat().st_size for p in files), "files": len(files), "path": str(root)}


def sizes_here() -> dict:
    out = {name: dist_size(name) for name in (*RUNTIME_DISTS, *OPTIONAL_DISTS)}
    out["polaris_runtime"] = package_dir_size("polaris_runtime")
    required = sum(out[n]["bytes"] for n in (*RUNTIME_DISTS, "polaris_runtime"))
    strippable = sum(out["iree-base-runtime"].get("parts", {}).values())
    return {
        "dists": out,
        "required_bytes": required,
        "required_without_tracing_and_tools_bytes": required - strippable,
        "with_safetensors_bytes": required + out["safetensors"]["bytes"],
    }


def sizes_fresh_venv(tmp: pathlib.Path) -> dict:
    """``python -m venv`` + ``pip install ./runtime``; the size of site-packages (minus pip)."""
    venv = tmp / "venv"
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(REPO / "runtime")], check=True)
    seconds = time.perf_counter() - t0
    site = next((venv / "lib").glob("python*/site-packages"))
    total = skip = 0
    for p in site.rglob("*"):
        if p.is_file():
            n = p.stat().st_size
            total += n
            if p.relative_to(site).parts[0].startswith(("pip", "setuptools", "_distutils_hack")):
                skip += n
    return {"python": str(py), "site_packages_bytes": total - skip, "pip_and_setuptools_bytes": skip, "install_seconds": seconds}


def compile_module(out: pathlib.Path) -> pathlib.Path:
    cmd = [sys.executable, "-m", "polaris.cli", "compile", "adam", "learning_rate=0.001", "-o", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"compiling the module failed:\n{' '.join(cmd)}\n{r.stdout}{r.stderr}")
    return out


def time_first_step(python: str, module: pathlib.Path, n: int, repeats: int) -> dict:
    runs = []
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    for _ in range(repeats):
        t0 = time.perf_counter()
        r = subprocess.run([python, "-c", PROBE, str(module), str(n)], capture_output=True, text=True, env=env)
        wall = time.perf_counter() - t0
        if r.returncode != 0:
            raise SystemExit(f"the fresh-process probe failed:\n{r.stderr}")
        d = json.loads(r.stdout.strip().splitlines()[-1])
        d["process_wall"] = wall
        runs.append(d)
    keys = [k for k in runs[0] if k != "jax_loaded"]
    return {
        "median": {k: statistics.median(r[k] for r in runs) for k in keys},
        "runs": runs,
        "jax_loaded": any(r["jax_loaded"] for r in runs),
        "n": n,
    }


def markdown(res: dict) -> str:
    s = res["sizes"]
    d = s["dists"]
    lines = [f"# Runtime footprint ({res['when']})", "", "## Installed size (this venv)", "",
             "| package | version | files | MB |", "|---|---|---|---|"]
    for name in (*RUNTIME_DISTS, "polaris_runtime", *OPTIONAL_DISTS):
        x = d[name]
        opt = " (optional)" if name in OPTIONAL_DISTS else ""
        lines.append(f"| {name}{opt} | {x.get('version') or '-'} | {x.get('files', 0)} | {x['bytes'] / MB:.1f} |")
        for part, b in (x.get("parts") or {}).items():
            lines.append(f"| &nbsp;&nbsp;of which {part} | | | {b / MB:.1f} |")
    lines += [
        f"| **required total** | | | **{s['required_bytes'] / MB:.1f}** |",
        f"| required, without IREE's tracing build and tools | | | {s['required_without_tracing_and_tools_bytes'] / MB:.1f} |",
        f"| with safetensors | | | {s['with_safetensors_bytes'] / MB:.1f} |",
    ]
    if res.get("fresh_venv"):
        v = res["fresh_venv"]
        lines += ["", f"Fresh venv, `pip install ./runtime`: site-packages **{v['site_packages_bytes'] / MB:.1f} MB** "
                      f"(plus {v['pip_and_setuptools_bytes'] / MB:.1f} MB of pip/setuptools), install took {v['install_seconds']:.0f} s."]
    t = res["timing"]
    m = t["median"]
    lines += [
        "", f"## Fresh process: import, load, first step (median of {len(t['runs'])}; {t['n']:,} f32 parameters; "
        f"{res['device']})", "",
        "| phase | ms |", "|---|---|",
        f"| import numpy | {m['import_numpy'] * 1e3:.1f} |",
        f"| import polaris_runtime (+ iree.runtime) | {m['import_polaris_runtime'] * 1e3:.1f} |",
        f"| load(module) | {m['load'] * 1e3:.1f} |",
        f"| init | {m['init'] * 1e3:.1f} |",
        f"| first step + read-back | {m['first_step'] * 1e3:.1f} |",
        f"| **import polaris_runtime + load + init + first step** | **{(m['import_polaris_runtime'] + m['load'] + m['init'] + m['first_step']) * 1e3:.1f}** |",
        f"| whole process (interpreter start to exit) | {m['process_wall'] * 1e3:.1f} |",
        "", f"JAX imported in the probe: {t['jax_loaded']} (it is blocked there).",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--venv", action="store_true", help="also measure a fresh venv with `pip install ./runtime` (slow, needs PyPI)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--n", type=int, default=100_000, help="parameters for the first step")
    ap.add_argument("--module", type=pathlib.Path, help="a flat .vmfb (default: compile adam)")
    ap.add_argument("--out", type=pathlib.Path, default=RESULTS)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="polaris-footprint-") as tmp:
        tmpd = pathlib.Path(tmp)
        module = args.module or compile_module(tmpd / "adam-flat.vmfb")
        res = {"when": time.strftime("%Y-%m-%dT%H:%M:%S"), "sizes": sizes_here()}
        python = sys.executable
        if args.venv:
            res["fresh_venv"] = sizes_fresh_venv(tmpd)
            python = res["fresh_venv"]["python"]
        import polaris_runtime as pr

        res["device"] = pr.inspect_module(module).target.get("driver") or "local-task"
        res["timing"] = time_first_step(python, module, args.n, args.repeats)
        res["timing"]["python"] = python
    md = markdown(res)
    print(md)
    if not args.no_write:
        args.out.mkdir(parents=True, exist_ok=True)
        stem = args.out / f"{time.strftime('%Y-%m-%d')}-footprint"
        stem.with_suffix(".json").write_text(json.dumps(res, indent=2, default=str) + "\n")
        stem.with_suffix(".md").write_text(md)
        print(f"wrote {stem}.json and {stem}.md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
