"""The one-way import rule: frontend -> compiler -> artifact <- runtime."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys
import textwrap

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _imports(folder: pathlib.Path, skip: tuple[str, ...] = ()) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for f in folder.rglob("*.py"):
        rel = f.relative_to(ROOT).as_posix()
        if any(rel.startswith(s) for s in skip):
            continue
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for n in names:
                found.setdefault(n.split(".")[0] if not n.startswith("iree.") else ".".join(n.split(".")[:2]), set()).add(rel)
    return found


def test_runtime_imports_only_iree_runtime_and_numpy():
    imports = _imports(ROOT / "runtime" / "polaris_runtime")
    allowed = {"iree.runtime", "numpy", "polaris_runtime", "safetensors", "__future__"}
    stdlib = set(sys.stdlib_module_names)
    bad = {k: v for k, v in imports.items() if k not in allowed and k not in stdlib}
    assert not bad, f"runtime/ must import only iree.runtime, numpy and the stdlib: {bad}"


def test_frontend_imports_no_iree_and_no_downstream_layer():
    imports = _imports(ROOT / "polaris", skip=("polaris/cli/",))
    bad = {k: v for k, v in imports.items() if k.startswith("iree") or k in ("polaris_compiler", "polaris_runtime")}
    assert not bad, f"polaris/ (the frontend) must not import IREE or the layers below it: {bad}"


def test_compiler_does_not_import_iree_runtime():
    imports = _imports(ROOT / "compiler" / "polaris_compiler")
    assert "iree.runtime" not in imports, imports.get("iree.runtime")


def test_runtime_works_where_jax_cannot_be_imported(tmp_path, modules):
    """A fresh interpreter in which `import jax` raises loads and steps a module."""
    path = modules.path("adam", dict(learning_rate=0.1))
    script = textwrap.dedent(
        f"""
        import sys, warnings
        warnings.simplefilter("error")
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("jax", "jaxlib", "polaris", "polaris_compiler", "iree.compiler"):
                    raise ImportError(f"blocked: {{name}}")
                if name == "iree.compiler":
                    raise ImportError(name)
        sys.meta_path.insert(0, Block())
        try:
            import jax
        except ImportError:
            pass
        else:
            raise SystemExit("jax imported")
        import numpy as np
        import polaris_runtime as pr
        opt = pr.load({str(path)!r})
        p = np.ones(8, np.float32)
        s = opt.init(p)
        p, s = opt.step(p, np.full(8, 0.5, np.float32), s)
        out = p.numpy()
        assert abs(out[0] - 0.9) < 1e-5, out
        bad = [m for m in sys.modules if m.split(".")[0] in ("jax", "jaxlib", "polaris", "polaris_compiler") or m.startswith("iree.compiler")]
        assert not bad, bad
        print("ok", out[0])
        """
    )
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith("ok")


def test_runtime_package_declares_only_runtime_dependencies():
    text = (ROOT / "runtime" / "pyproject.toml").read_text()
    deps = text.split("dependencies = [", 1)[1].split("]", 1)[0]
    assert "iree-base-runtime" in deps and "numpy" in deps
    for forbidden in ("jax", "iree-base-compiler", "polaris-iree\""):
        assert forbidden not in deps, forbidden


def test_compiler_and_runtime_pin_the_same_iree_version():
    import re

    root = (ROOT / "pyproject.toml").read_text()
    rt = (ROOT / "runtime" / "pyproject.toml").read_text()
    c = re.search(r"iree-base-compiler==([\d.]+)", root).group(1)
    r = re.search(r"iree-base-runtime==([\d.]+)", rt).group(1)
    assert c == r, f"compiler {c} and runtime {r} must be pinned to one IREE version"
