"""The versioned artifact catalog in ``artifacts/``: prebuilt flat modules and their index.

``python -m polaris_compiler.catalog build`` (``make artifacts``) rebuilds every entry;
``python -m polaris_compiler.catalog check`` rebuilds into a temporary folder and reports each
entry whose bytes differ from the committed ones, and why (which manifest fields changed, or the
same manifest with different code: the compiler's output changed). ``make test`` checks
:func:`quick_entries`; ``make bench`` (the slow tests) checks every entry.

Every entry is a flat module (one f32 vector of any length), so one file serves any model.
The index (``artifacts/index.json``) records for each: file, sha256, optimizer, full options,
target, schema version, and the versions of polaris-iree, JAX and IREE. See docs/versioning.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import pathlib
import sys
import tempfile

CATALOG_VERSION = 1
ROOT = pathlib.Path(__file__).resolve().parents[2]
DEFAULT_DIR = ROOT / "artifacts"

# optimizer -> options (the rest are the optimizer's defaults, recorded in full in the index)
OPTIMIZERS: dict[str, dict] = {
    "adam": {},
    "adamw": {"decay": 1e-4},
    "sgd": {"momentum": 0.9},
    "lamb": {},
    "lion": {},
    "rmsprop": {},
    "adagrad": {},
}

# platform -> compile options
PLATFORMS: dict[str, dict] = {
    "x86_64": {"target": "llvm-cpu", "cpu": "portable"},
    "aarch64": {"target": "llvm-cpu", "cpu": "aarch64-portable", "cpu_triple": "aarch64-unknown-linux-gnu"},
    "cuda": {"target": "cuda", "cuda_arch": "sm_80"},
    "vulkan": {"target": "vulkan", "vulkan_target": "ampere"},
    "vulkan-llvmpipe": {"target": "vulkan", "vulkan_target": "llvmpipe"},
}


def entry_file(optimizer: str, platform: str) -> str:
    return f"{optimizer}-flat-f32-{platform}.vmfb"


def _compile(optimizer: str, options: dict, platform: str):
    from polaris._src import registry
    from polaris_compiler import CompileOptions, Layout, Target, compile_optimizer

    spec = registry.get(optimizer)
    kw = dict(PLATFORMS[platform])
    target = Target.parse(kw.pop("target"))
    art = compile_optimizer(
        spec.build(**options),
        Layout.flat(),
        CompileOptions(target=target, **kw),
        name=optimizer,
        optimizer_options={**spec.defaults(), **options},
    )
    return art


def build(out_dir: pathlib.Path = DEFAULT_DIR, only: list[str] | None = None, log=print) -> dict:
    """Compiles every entry into ``out_dir`` and writes ``index.json``; returns the index."""
    out_dir.mkdir(parents=True, exist_ok=True)
    entries = []
    for opt, options in OPTIMIZERS.items():
        for platform in PLATFORMS:
            name = entry_file(opt, platform)
            if only and name not in only:
                continue
            art = _compile(opt, options, platform)
            art.save(out_dir / name)
            m = art.manifest
            entries.append(
                {
                    "file": name,
                    "sha256": hashlib.sha256(art.vmfb).hexdigest(),
                    "bytes": len(art.vmfb),
                    "optimizer": opt,
                    "options": m["options"],
                    "platform": platform,
                    "target": m["target"],
                    "schema_version": m["schema_version"],
                    "versions": m["versions"],
                }
            )
            log(f"  {name:42s} {len(art.vmfb) / 1024:7.1f} KiB  {art.seconds:5.1f} s")
    index = {"catalog_version": CATALOG_VERSION, "layout": "flat", "entries": entries}
    if not only:
        (out_dir / "index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return index


def quick_entries() -> list[str]:
    """Every optimizer on one platform and one optimizer on every platform: a change of the
    frontend's math reaches the first, a change of one platform's flags the second."""
    first = next(iter(OPTIMIZERS))
    return sorted({entry_file(o, "x86_64") for o in OPTIMIZERS} | {entry_file(first, p) for p in PLATFORMS})


def load_index(d: pathlib.Path = DEFAULT_DIR) -> dict:
    return json.loads((d / "index.json").read_text())


def explain(old: dict, new: dict, old_manifest: dict | None = None, new_manifest: dict | None = None) -> str:
    """Why a rebuilt entry differs from the committed one: its index fields, else the manifests
    embedded in the two modules (a note's wording, a hyperparameter record), else the code."""
    diffs = []
    for key in ("options", "target", "schema_version", "versions"):
        if old.get(key) != new.get(key):
            if isinstance(old.get(key), dict) and isinstance(new.get(key), dict):
                ks = sorted(k for k in set(old[key]) | set(new[key]) if old[key].get(k) != new[key].get(k))
                diffs.append(
                    f"{key}: " + ", ".join(f"{k} {old[key].get(k)!r} -> {new[key].get(k)!r}" for k in ks)
                )
            else:
                diffs.append(f"{key}: {old.get(key)!r} -> {new.get(key)!r}")
    if not diffs and old_manifest is not None and new_manifest is not None and old_manifest != new_manifest:
        keys = sorted(k for k in set(old_manifest) | set(new_manifest) if old_manifest.get(k) != new_manifest.get(k))
        diffs.append(f"the embedded manifest differs in {', '.join(map(repr, keys))}")
    if not diffs:
        diffs.append("same manifest, different code: the frontend's math or the compiler's output changed")
    return "; ".join(diffs)


def _manifest(path: pathlib.Path) -> dict | None:
    from polaris_runtime.module import inspect_module

    try:
        return inspect_module(path).raw
    except Exception:  # noqa: BLE001 - a module the runtime cannot read says so elsewhere
        return None


def check(committed: pathlib.Path = DEFAULT_DIR, log=print, only: list[str] | None = None) -> list[str]:
    """Rebuilds the catalog and returns one line per entry that is not byte-identical.

    ``only`` (entry file names) rebuilds and compares those entries alone: ``make test`` checks
    a subset that every change of the frontend or of a platform's flags reaches
    (:func:`quick_entries`), ``make bench`` and ``python -m polaris_compiler.catalog check`` all.
    """
    old = {e["file"]: e for e in load_index(committed)["entries"]}
    if only is not None:
        unknown = sorted(set(only) - {entry_file(o, p) for o in OPTIMIZERS for p in PLATFORMS})
        if unknown:
            raise ValueError(f"only: {unknown} are not catalog entries; entries are named like "
                             f"{entry_file('adam', 'cuda')!r} (optimizers {list(OPTIMIZERS)}, "
                             f"platforms {list(PLATFORMS)})")
        old = {k: v for k, v in old.items() if k in only}
    problems = []
    with tempfile.TemporaryDirectory() as tmp:
        new_index = build(pathlib.Path(tmp), only=only, log=lambda *_: None)
        new = {e["file"]: e for e in new_index["entries"]}
        rebuilt = {name: _manifest(pathlib.Path(tmp) / name) for name, e in new.items()
                   if name in old and e["sha256"] != old[name]["sha256"]}
    for name in sorted(set(old) | set(new)):
        if name not in new:
            problems.append(f"{name}: in the committed index but no longer built")
        elif name not in old:
            problems.append(f"{name}: built but missing from the committed index (run `make artifacts`)")
        elif not (committed / name).is_file():
            problems.append(f"{name}: listed in the index but the file is missing")
        elif hashlib.sha256((committed / name).read_bytes()).hexdigest() != old[name]["sha256"]:
            problems.append(f"{name}: the committed file does not match its index sha256")
        elif old[name]["sha256"] != new[name]["sha256"]:
            why = explain(old[name], new[name], _manifest(committed / name), rebuilt.get(name))
            problems.append(f"{name}: rebuild differs ({why})")
    for p in problems:
        log(p)
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m polaris_compiler.catalog")
    ap.add_argument("command", choices=["build", "check"])
    ap.add_argument("--dir", type=pathlib.Path, default=DEFAULT_DIR)
    args = ap.parse_args(argv)
    if args.command == "build":
        print(f"building the artifact catalog into {args.dir}")
        build(args.dir)
        return 0
    problems = check(args.dir)
    print("catalog is byte-identical to a rebuild" if not problems else f"{len(problems)} entries differ")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
