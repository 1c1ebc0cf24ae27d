"""Shared fixtures: compile each module once per session."""

from __future__ import annotations

import json
import os

import jax
import pytest

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1")


@pytest.fixture(autouse=True, scope="session")
def _isolated_compile_cache(tmp_path_factory):
    """The CLI's compile cache goes to a fresh folder for the test session."""
    old = os.environ.get("POLARIS_CACHE_DIR")
    os.environ["POLARIS_CACHE_DIR"] = str(tmp_path_factory.mktemp("compile-cache"))
    yield
    if old is None:
        os.environ.pop("POLARIS_CACHE_DIR", None)
    else:
        os.environ["POLARIS_CACHE_DIR"] = old
jax.config.update("jax_default_matmul_precision", "highest")


def _key(*parts) -> str:
    return json.dumps(parts, sort_keys=True, default=repr)


class ModuleCache:
    """Compiles (optimizer, options, layout, target) once per test session."""

    def __init__(self, tmp):
        self._tmp = tmp
        self._artifacts: dict[str, object] = {}

    def artifact(self, name: str, options: dict | None = None, layout=None, target: str = "llvm-cpu", **compile_kw):
        from polaris._src import registry
        from polaris_compiler import CompileOptions, Layout, Target, compile_optimizer

        options = dict(options or {})
        lay = layout if layout is not None else Layout.flat()
        key = _key(name, options, repr(lay.tree) if lay.kind == "tree" else f"flat{lay.size or ''}", target, compile_kw)
        compile_kw = dict(compile_kw)
        if key not in self._artifacts:
            spec = registry.get(name)
            tx = spec.build(**options)
            opts = CompileOptions(target=Target.parse(target), **compile_kw)
            self._artifacts[key] = compile_optimizer(
                tx, lay, opts, name=name, optimizer_options={**spec.defaults(), **options}
            )
        return self._artifacts[key]

    def path(self, name: str, options: dict | None = None, layout=None, target: str = "llvm-cpu", **kw):
        art = self.artifact(name, options, layout, target, **kw)
        key = abs(hash(_key(name, options, repr(layout), target, kw)))
        p = self._tmp / f"{name}-{key}-{target}.vmfb"
        if not p.exists():
            art.save(p)
        return p

    def load(self, name: str, options: dict | None = None, layout=None, device: str | None = None, target: str = "llvm-cpu", **kw):
        import polaris_runtime as pr

        return pr.load(self.path(name, options, layout, target=target, **kw), device=device)


@pytest.fixture(scope="session")
def modules(tmp_path_factory) -> ModuleCache:
    return ModuleCache(tmp_path_factory.mktemp("modules"))
