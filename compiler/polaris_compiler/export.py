"""Tracing with ``jax.export`` and merging several exports into one MLIR module.

``jax.export`` gives one ``@main`` per export; :func:`merge_modules` renames each module's symbols
(``main`` -> the entry point's name, private helpers prefixed) and moves the functions into one
module with the MLIR Python bindings shipped in iree-base-compiler. Donation attributes
(``tf.aliasing_output``) survive, and IREE turns them into in-place outputs.

:func:`export_text` also rewrites, in one place, what JAX writes that IREE 3.13 compiles badly
or not at all: dimension variables computed on the device
(:func:`dimension_variables_from_sizes`) and dynamic reshapes and broadcasts it cannot legalize
(:func:`legalize_dynamic_reshapes`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence

import jax

# Exporting for a platform that supports donation makes jax.export emit tf.aliasing_output.
EXPORT_PLATFORM = "cpu"


def export_text(
    fn: Callable, args: Sequence[jax.ShapeDtypeStruct], donate: Sequence[int] = ()
) -> str:
    """StableHLO text of ``fn`` traced at ``args`` (flat positional arrays).

    Prefer ``donate=()`` and :func:`merge_modules`'s ``aliases``: JAX pairs donated inputs with
    outputs by shape and dtype in order, which can alias a state input with an *updates* output.
    """
    jitted = jax.jit(fn, donate_argnums=tuple(donate), keep_unused=True)
    exported = jax.export.export(jitted, platforms=[EXPORT_PLATFORM])(*args)
    return legalize_dynamic_reshapes(dimension_variables_from_sizes(exported.mlir_module(), exported.in_avals))


# the dimension variables the exported ``main`` passes its body, in order:
# `func.func private @_wrapped_jax_export_main(%arg0: tensor<i32> {jax.global_constant = "b"}, ...`
_WRAPPED_SIGNATURE = re.compile(r"^\s*func\.func private @_wrapped_jax_export_main\((?P<args>.*)$", re.M)
_DIMENSION_VARIABLE = re.compile(r'%arg\d+: tensor<(?P<t>i32|i64)> \{jax\.global_constant = "(?P<name>\w+)"\}')
_WRAPPED_CALL = re.compile(r"(?P<head>= call @_wrapped_jax_export_main\()(?P<ops>[^)]*)\)")


def dimension_variables_from_sizes(text: str, in_avals: Sequence) -> str:
    """``text`` with each dimension variable read directly from an argument that has it as a size.

    JAX's exported ``main`` computes its dimension variables from the arguments' sizes, using the
    first argument that mentions each one: a vector of ``16*b`` elements gives ``b = size // 16``
    (with its sign-correct ``divmod``). IREE 3.13 runs that integer arithmetic on ``tensor<i32>``
    as a dispatch and reads its result back to the host before the step can size its buffers (a
    device round trip per call), and the sizes it derives from it are not provably those of the
    arguments, so IREE copies each result it should write in place into a fresh buffer. Where
    another argument has the variable itself as a size (the per-block segment ids, ``(b, 1)``),
    that size (``stablehlo.get_dimension_size``, which IREE reads from the buffer view) is
    passed instead: the same value for every call that passes the shape checks, which the
    runtime does (IREE drops JAX's shape assertions). Variables no argument has as a plain size
    are left as JAX computes them.
    """
    sig = _WRAPPED_SIGNATURE.search(text)
    if sig is None:
        return text
    names = [(m["name"], m["t"]) for m in _DIMENSION_VARIABLE.finditer(sig["args"])]
    main_at = text.find("func.func public @main(")
    call = _WRAPPED_CALL.search(text, main_at) if names and main_at >= 0 else None
    if call is None:
        return text
    ops = [o.strip() for o in call["ops"].split(",")]
    body = text[main_at : call.start()]
    for k, (name, t) in enumerate(names):
        where = [(i, d) for i, a in enumerate(in_avals) for d, n in enumerate(a.shape) if not isinstance(n, int) and str(n) == name]
        for i, d in where:
            size = re.search(rf"^\s*(%[\w.]+) = stablehlo\.get_dimension_size %arg{i}, dim = {d} : \(.*\) -> tensor<{t}>", body, re.M)
            if size is not None:
                ops[k] = size[1]
                break
    new_call = f"{call['head']}{', '.join(ops)})"
    return text[: call.start()] + new_call + text[call.end() :]


def merge_modules(
    parts: dict[str, str],
    reflection: dict[str, dict[str, str]],
    name: str = "polaris",
    aliases: dict[str, dict[int, int]] | None = None,
    transients: Sequence[str] = (),
) -> str:
    """One MLIR module holding every ``parts[entry]``'s ``main`` renamed to ``entry``.

    ``reflection[entry]`` is added to that function's ``iree.reflection`` attribute (strings only).
    ``aliases[entry]`` maps argument index -> result index: each such argument gets
    ``tf.aliasing_output`` (IREE writes that result into the argument's buffer), replacing any
    pairing JAX chose. Each entry in ``transients`` gets one more argument, last: a
    ``!hal.buffer {iree.abi.transients}`` that holds the function's transient storage (IREE's
    externalized transients; ``CompileOptions.external_transients``).
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
                    if aliases and entry in aliases:
                        _pin_aliases(ir, op, aliases[entry])
                    if entry in transients:
                        _add_transients_argument(ir, op)
                    attrs = {k: ir.StringAttr.get(v) for k, v in reflection.get(entry, {}).items()}
                    op.attributes["iree.reflection"] = ir.DictAttr.get(attrs)
                else:
                    op.attributes["sym_visibility"] = ir.StringAttr.get("private")
            for op in ops:
                out.body.append(op)
        return str(out.operation.get_asm(enable_debug_info=False))


# `%r = stablehlo.dynamic_reshape %x, %shape : (tensor<A>, tensor<Kxi32>) -> tensor<B> loc(...)`
_DYNAMIC_RESHAPE = re.compile(
    r"^(?P<ind>\s*)(?P<res>%[\w.#]+) = stablehlo\.dynamic_reshape (?P<x>%[\w.#]+), (?P<shape>%[\w.#]+) : "
    r"\(tensor<(?P<a>[^>]*)>, tensor<(?P<k>\d+)xi(?P<w>32|64)>\) -> tensor<(?P<b>[^>]*)>(?P<rest>.*)$"
)


# `%r = stablehlo.dynamic_broadcast_in_dim %x, %shape, dims = [..] : (tensor<A>, tensor<Kxi32>) -> tensor<B>...`
_DYNAMIC_BROADCAST = re.compile(
    r"^(?P<head>\s*%[\w.#]+ = stablehlo\.dynamic_broadcast_in_dim %[\w.#]+, %[\w.#]+, dims = \[(?P<dims>[\d, ]*)\])"
    r"(?P<tail> : \(tensor<(?P<a>[^>]*)>, tensor<\d+xi(?:32|64)>\) -> tensor<(?P<b>[^>]*)>.*)$"
)


def legalize_dynamic_reshapes(text: str) -> str:
    """Rewrites the dynamic reshapes and broadcasts IREE 3.13 cannot legalize.

    A flat vector of unknown length seen as blocks, ``(16*b,) <-> (b, 16)`` (the "aligned" segment
    reduction of a module of any length), reaches IREE as ``stablehlo.dynamic_reshape``, which its
    StableHLO input conversion refuses ("failed to legalize"). When the only unknown dimension
    is the leading one and the reshape splits it into ``(?, k)`` or merges ``(?, k)`` back, the
    same reshape is a ``tensor.expand_shape`` / ``tensor.collapse_shape``, which IREE folds into
    its dispatches (no copy). Other dynamic reshapes are left as they are.

    A ``stablehlo.dynamic_broadcast_in_dim`` of an operand with an unknown dimension (one value
    per block, ``(b, 1)``, over its 16 elements) is refused too unless it says which operand
    dimensions expand: JAX broadcasts a dimension of unknown length only onto the same length (a
    symbolic size is never proven to be 1), so each unknown operand dimension is marked
    non-expanding and each static 1 mapped onto a longer dimension expanding (only where one
    does: the others IREE takes as they are).
    """
    if "stablehlo.dynamic_reshape" not in text and "stablehlo.dynamic_broadcast_in_dim" not in text:
        return text
    out, k = [], 0
    for line in text.split("\n"):
        b = _DYNAMIC_BROADCAST.match(line) if "known_" not in line else None
        if b and (known := _broadcast_with_known_dims(b)) is not None:
            out.append(known)
            continue
        m = _DYNAMIC_RESHAPE.match(line)
        new = _reshape_as_tensor_op(m, k) if m else None
        if new is None:
            out.append(line)
            continue
        k += 1
        out.extend(new)
    return "\n".join(out)


def _dims(tensor_type: str) -> list[str]:
    """The dimensions of a ranked tensor type's body (``?x16xf32`` -> ``["?", "16"]``)."""
    return tensor_type.split("x")[:-1]  # the last "x" part is the element type


def _broadcast_with_known_dims(m: re.Match) -> str | None:
    a, b = _dims(m["a"]), _dims(m["b"])
    dims = [int(d) for d in m["dims"].split(",") if d.strip()]
    if "?" not in a or len(dims) != len(a) or any(d >= len(b) for d in dims):
        return None
    non = [i for i, d in enumerate(a) if d == "?"]
    exp = [i for i, d in enumerate(a) if d == "1" and b[dims[i]] != "1"]
    if not exp:  # nothing expands: IREE legalizes it as it is (left untouched)
        return None
    arr = lambda xs: f"array<i64{': ' + ', '.join(map(str, xs)) if xs else ''}>"  # noqa: E731
    return f"{m['head']} {{known_expanding_dimensions = {arr(exp)}, known_nonexpanding_dimensions = {arr(non)}}}{m['tail']}"


def _reshape_as_tensor_op(m: re.Match, k: int) -> list[str] | None:
    da, db = _dims(m["a"]), _dims(m["b"])
    if not da or not db or m["a"].rsplit("x", 1)[-1] != m["b"].rsplit("x", 1)[-1]:  # rank >= 1, one element type
        return None
    ind, res, x, rest = m["ind"], m["res"], m["x"], m["rest"]
    if not (da[0] == db[0] == "?" and "?" not in da[1:] + db[1:]):
        return None
    groups = lambda n: "[[0, 1]" + "".join(f", [{i}]" for i in range(2, n)) + "]"  # noqa: E731
    if len(db) == len(da) + 1 and db[2:] == da[1:] and db[1].isdigit():  # (?, *s) -> (?, k, *s)
        c, e, d = f"%pi_c{k}", f"%pi_e{k}", f"%pi_d{k}"
        return [
            f"{ind}{c} = arith.constant 0 : index",
            f"{ind}{e} = tensor.extract {m['shape']}[{c}] : tensor<{m['k']}xi{m['w']}>",
            f"{ind}{d} = arith.index_cast {e} : i{m['w']} to index",
            f"{ind}{res} = tensor.expand_shape {x} {groups(len(db))} output_shape [{d}, {', '.join(db[1:])}] "
            f": tensor<{m['a']}> into tensor<{m['b']}>{rest}",
        ]
    if len(da) == len(db) + 1 and da[2:] == db[1:] and da[1].isdigit():  # (?, k, *s) -> (?, *s)
        return [f"{ind}{res} = tensor.collapse_shape {x} {groups(len(da))} : tensor<{m['a']}> into tensor<{m['b']}>{rest}"]
    return None


def _pin_aliases(ir, func_op, aliases: dict[int, int]) -> None:
    n_args = len(func_op.regions[0].blocks[0].arguments)
    old = func_op.attributes["arg_attrs"] if "arg_attrs" in func_op.attributes else None
    i32 = ir.IntegerType.get_signless(32)
    new = []
    for i in range(n_args):
        entries = {}
        if old is not None:
            for named in ir.DictAttr(ir.ArrayAttr(old)[i]):
                if named.name not in ("tf.aliasing_output", "jax.buffer_donor"):
                    entries[named.name] = named.attr
        if i in aliases:
            entries["tf.aliasing_output"] = ir.IntegerAttr.get(i32, aliases[i])
        new.append(ir.DictAttr.get(entries))
    func_op.attributes["arg_attrs"] = ir.ArrayAttr.get(new)


def _add_transients_argument(ir, func_op) -> None:
    """Appends ``%transients: !hal.buffer {iree.abi.transients}`` to ``func_op``'s arguments."""
    buffer = ir.Type.parse("!hal.buffer")
    block = func_op.regions[0].blocks[0]
    n_args = len(block.arguments)
    fn_type = ir.FunctionType(ir.TypeAttr(func_op.attributes["function_type"]).value)
    func_op.attributes["function_type"] = ir.TypeAttr.get(ir.FunctionType.get([*fn_type.inputs, buffer], list(fn_type.results)))
    block.add_argument(buffer, ir.Location.unknown())
    old = list(ir.ArrayAttr(func_op.attributes["arg_attrs"])) if "arg_attrs" in func_op.attributes else [ir.DictAttr.get({})] * n_args
    func_op.attributes["arg_attrs"] = ir.ArrayAttr.get([*old, ir.DictAttr.get({"iree.abi.transients": ir.UnitAttr.get()})])


def manifest_reflection(manifest: dict) -> dict[str, str]:
    from polaris_runtime.manifest import REFLECTION_KEY

    return {REFLECTION_KEY: json.dumps(manifest, sort_keys=True, separators=(",", ":"))}
