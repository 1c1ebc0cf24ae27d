"""Tracing with ``jax.export`` and merging several exports into one MLIR module.

``jax.export`` gives one ``@main`` per export; :func:`merge_modules` renames each module's symbols
(``main`` -> the entry point's name, private helpers prefixed) and moves the functions into one
module with the MLIR Python bindings shipped in iree-base-compiler. Donation attributes
(``tf.aliasing_output``) survive, and IREE turns them into in-place outputs.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

import jax

# Exporting for a platform that supports donation makes jax.export emit tf.aliasing_output.
EXPORT_PLATFORM = "cpu"


def export_text(
    fn: Callable, args: Sequence[jax.ShapeDtypeStruct], donate: Sequence[int] = ()
) -> str:
    """StableHLO text of ``fn`` traced at ``args`` (flat positional arrays)."""
    jitted = jax.jit(fn, donate_argnums=tuple(donate), keep_unused=True)
    exported = jax.export.export(jitted, platforms=[EXPORT_PLATFORM])(*args)
    return exported.mlir_module()


def merge_modules(parts: dict[str, str], reflection: dict[str, dict[str, str]], name: str = "polaris") -> str:
    """One MLIR module holding every ``parts[entry]``'s ``main`` renamed to ``entry``.

    ``reflection[entry]`` is added to that function's ``iree.reflection`` attribute (strings only).
    """
    from iree.compiler import ir

    with ir.Context(), ir.Location.unknown():
        out = ir.Module.create()
        out.operation.attributes["sym_name"] = ir.StringAttr.get(name)
        for entry, text in parts.items():
            m = ir.Module.parse(text)
            ops = list(m.body.operations)
            for op in ops:
                if "sym_name" not in op.attributes:
                    continue
                sym = ir.StringAttr(op.attributes["sym_name"]).value
                new = entry if sym == "main" else f"{entry}__{sym}"
                ir.SymbolTable.replace_all_symbol_uses(sym, new, m.operation)
                ir.SymbolTable.set_symbol_name(op, new)
                if sym == "main":
                    op.attributes["sym_visibility"] = ir.StringAttr.get("public")
                    attrs = {k: ir.StringAttr.get(v) for k, v in reflection.get(entry, {}).items()}
                    op.attributes["iree.reflection"] = ir.DictAttr.get(attrs)
                else:
                    op.attributes["sym_visibility"] = ir.StringAttr.get("private")
            for op in ops:
                out.body.append(op)
        return str(out.operation.get_asm(enable_debug_info=False))


def manifest_reflection(manifest: dict) -> dict[str, str]:
    from polaris_runtime.manifest import REFLECTION_KEY

    return {REFLECTION_KEY: json.dumps(manifest, sort_keys=True, separators=(",", ":"))}
