"""A content-addressed compile cache: a second identical ``polaris compile`` is instant.

The key is a SHA-256 over everything that can change the module: optimizer name and options,
the layout (a file's bytes, or the flat layout's dtype), target and compile options, the IREE
flags' inputs, the versions of polaris-iree, JAX and IREE, and a digest of the frontend's and
the compiler's source files (so editing a transform invalidates modules built from the old code).
Computing a key imports neither JAX nor IREE's compiler. Entries are written atomically and
checked against their recorded SHA-256 when read; a damaged entry is a miss.

Location: ``$POLARIS_CACHE_DIR``, else ``$XDG_CACHE_HOME/polaris-iree``, else
``~/.cache/polaris-iree``. ``POLARIS_NO_CACHE=1`` (or ``polaris compile --no-cache``) disables it.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import pathlib
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from polaris_runtime.fileio import atomic_write


def cache_dir() -> pathlib.Path:
    if os.environ.get("POLARIS_CACHE_DIR"):
        return pathlib.Path(os.environ["POLARIS_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base) / "polaris-iree"


def enabled() -> bool:
    return os.environ.get("POLARIS_NO_CACHE", "") in ("", "0")


def _version(pkg: str) -> str:
    try:
        return version(pkg)
    except PackageNotFoundError:
        return "unknown"


@functools.lru_cache(maxsize=1)
def source_digest() -> str:
    """SHA-256 over the .py files of the frontend, the compiler and the runtime (its manifest schema),
    found without importing them."""
    h = hashlib.sha256()
    for pkg in ("polaris", "polaris_compiler", "polaris_runtime"):
        spec = importlib.util.find_spec(pkg)
        if spec is None or not spec.submodule_search_locations:
            continue
        root = pathlib.Path(list(spec.submodule_search_locations)[0])
        for f in sorted(root.rglob("*.py")):
            if "cli" in f.relative_to(root).parts:
                continue
            h.update(str(f.relative_to(root)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()


@functools.lru_cache(maxsize=1)
def host_cpu() -> str:
    """Identifies this machine's CPU (for ``--cpu host`` modules, which differ per CPU)."""
    import platform

    text = ""
    try:
        with open("/proc/cpuinfo") as f:
            text = "".join(line for line in f if line.startswith(("model name", "flags")))
    except OSError:
        pass
    return platform.machine() + ":" + hashlib.sha256(text.encode()).hexdigest()[:16]


def file_digest(path: str | os.PathLike) -> str:
    return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


def request_key(request: dict[str, Any]) -> str:
    """The cache key of a compile request (a JSON-able dict), versions and sources included."""
    full = {
        "request": request,
        "versions": {p: _version(p) for p in ("polaris-iree", "jax", "jaxlib", "iree-base-compiler")},
        "sources": source_digest(),
    }
    return hashlib.sha256(json.dumps(full, sort_keys=True, default=repr).encode()).hexdigest()


def get(key: str) -> tuple[bytes, dict[str, Any]] | None:
    """``(module bytes, info)`` cached for ``key``, or None (absent, disabled, or damaged)."""
    if not enabled():
        return None
    d = cache_dir() / key[:2]
    blob, meta = d / f"{key}.vmfb", d / f"{key}.json"
    try:
        data = blob.read_bytes()
        info = json.loads(meta.read_text())
        recorded = info["sha256"]
    except (OSError, ValueError, KeyError):
        return None
    if hashlib.sha256(data).hexdigest() != recorded:
        return None
    return data, info


def put(key: str, vmfb: bytes, info: dict[str, Any] | None = None) -> None:
    """Stores ``vmfb`` under ``key`` atomically; failures to write are ignored (a cache)."""
    if not enabled():
        return
    d = cache_dir() / key[:2]
    try:
        d.mkdir(parents=True, exist_ok=True)
        atomic_write(d / f"{key}.vmfb", vmfb)
        meta = {"sha256": hashlib.sha256(vmfb).hexdigest(), **(info or {})}
        atomic_write(d / f"{key}.json", json.dumps(meta, default=repr).encode())
    except OSError:
        pass
