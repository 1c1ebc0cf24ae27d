"""Parameter layouts: the names, shapes and dtypes a compiled module is specialised for.

A layout comes from
* a JSON file: a nested object whose leaves are ``{"shape": [..], "dtype": "float32"}`` or a bare
  shape list (float32); the whole file is the tree, or ``{"params": tree}``;
* an ``.npz`` or ``.safetensors`` file of parameters (shapes and dtypes read from it; keys with
  ``/`` nest);
* nothing: :meth:`Layout.flat`, one 1-D float32 vector of dynamic length ``n``, so one module
  serves a model of any size (pack the model's arrays into it).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from polaris._src.base import tree_leaves_with_names
from polaris_compiler.errors import LayoutError

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
FLAT_SYMBOL = "n"
BLOCK_SYMBOL = "b"  # blocks of a flat vector of any multiple of a block (Layout.in_blocks)


@dataclasses.dataclass(frozen=True)
class Layout:
    """A tree of ``jax.ShapeDtypeStruct`` (``kind="tree"``) or the dynamic flat vector (``"flat"``)."""

    kind: str
    tree: Any  # pytree of ShapeDtypeStruct (tree) or a single ShapeDtypeStruct (flat)
    source: str = "flat"
    # Parameter groups and frozen leaves from a layout file (see polaris_compiler/groups.py)
    groups: tuple = ()
    freeze: tuple[str, ...] = ()

    @classmethod
    def flat(cls, dtype: str = "float32", size: int | None = None) -> Layout:
        """One 1-D vector: of any length ``n`` (default), or of exactly ``size`` elements.

        A fixed length makes every shape in the module static, so IREE records the step's
        command buffer once and replays it on every call instead of recording it again
        (docs/flat-modules.md); a model of another size is refused at run time.
        """
        if size is None:
            (n,) = jax.export.symbolic_shape(FLAT_SYMBOL)
        elif isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
            raise LayoutError(f"flat layout: size must be a positive integer (elements), got {size!r}; omit it for any length")
        else:
            n = int(size)
        return cls("flat", jax.ShapeDtypeStruct((n,), _dtype(dtype, "flat layout")), "flat")

    def in_blocks(self, block: int) -> Layout:
        """A flat layout of any length as one of any multiple of ``block`` elements (the symbolic
        length ``block*b``: ``b`` blocks), so that a module can see its vectors as ``(b, block)``
        (the "aligned" segment reduction). A fixed-size layout is returned as it is."""
        if self.kind != "flat" or self.size is not None:
            return self
        (n,) = jax.export.symbolic_shape(f"{block}*{BLOCK_SYMBOL}")
        return dataclasses.replace(self, tree=jax.ShapeDtypeStruct((n,), self.tree.dtype))

    @property
    def size(self) -> int | None:
        """A flat layout's fixed length, or ``None`` (any length, or a tree layout)."""
        if self.kind != "flat":
            return None
        n = self.tree.shape[0]
        return n if isinstance(n, int) else None

    @property
    def parameters(self) -> int | None:
        """How many parameters a module of this layout steps: a fixed flat length, or every
        tree leaf's elements; ``None`` for a flat layout of any length."""
        if self.kind == "flat":
            return self.size
        return sum(int(np.prod(leaf.shape, dtype=np.int64)) for leaf in jax.tree.leaves(self.tree))

    @property
    def flat_dtype(self) -> str:
        """A flat layout's dtype name (``"float32"`` for tree layouts)."""
        return jnp.dtype(self.tree.dtype).name if self.kind == "flat" else "float32"

    @classmethod
    def from_tree(cls, tree: Any, source: str = "python") -> Layout:
        """From a pytree of arrays or ``ShapeDtypeStruct`` (only shapes and dtypes are kept)."""
        leaves = jax.tree.leaves(tree)
        if not leaves:
            raise LayoutError(f"layout from {source}: the parameter tree has no arrays")
        t = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), _dtype(str(x.dtype), source)), tree)
        return cls("tree", t, source)

    @classmethod
    def from_file(cls, path: str | pathlib.Path) -> Layout:
        p = pathlib.Path(path)
        if not p.is_file():
            raise LayoutError(f"layout file {str(p)!r} does not exist")
        suffix = p.suffix.lower()
        if suffix == ".json":
            return cls._from_json(p)
        if suffix == ".npz":
            return cls._from_npz(p)
        if suffix == ".safetensors":
            return cls._from_safetensors(p)
        raise LayoutError(
            f"layout file {str(p)!r}: unknown kind {suffix or '(no suffix)'!r}; valid: .json, .npz, .safetensors"
        )

    @classmethod
    def _from_json(cls, p: pathlib.Path) -> Layout:
        try:
            data = json.loads(p.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise LayoutError(f"layout file {str(p)!r} is not valid JSON: {e}") from None
        groups: tuple = ()
        freeze: tuple[str, ...] = ()
        if isinstance(data, dict) and isinstance(data.get("params"), dict) and set(data) <= {"params", "groups", "freeze"}:
            groups = tuple(data.get("groups", ()))
            freeze = tuple(data.get("freeze", ()))
            data = data["params"]
        if not isinstance(data, dict) or not data:
            raise LayoutError(
                f"layout file {str(p)!r}: expected a JSON object of parameters, e.g. "
                '{"dense": {"kernel": {"shape": [784, 128], "dtype": "float32"}}}, or '
                '{"params": {...}, "groups": [...], "freeze": [...]}'
            )
        return cls("tree", _parse_json_tree(data, str(p), []), str(p), groups, freeze)

    @classmethod
    def _from_npz(cls, p: pathlib.Path) -> Layout:
        try:
            with np.load(p, allow_pickle=False) as z:
                flat = {k: (z[k].shape, str(z[k].dtype)) for k in z.files}
        except Exception as e:  # zipfile.BadZipFile, ValueError, OSError
            raise LayoutError(f"layout file {str(p)!r} is not a readable .npz: {e}") from None
        return cls("tree", _nest(flat, str(p)), str(p))

    @classmethod
    def _from_safetensors(cls, p: pathlib.Path) -> Layout:
        # The header is JSON: 8-byte little-endian length, then {"name": {"dtype", "shape", ...}}.
        try:
            raw = p.read_bytes()
            n = int.from_bytes(raw[:8], "little")
            header = json.loads(raw[8 : 8 + n])
        except Exception as e:
            raise LayoutError(f"layout file {str(p)!r} is not a readable .safetensors: {e}") from None
        names = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}
        flat = {}
        for k, v in header.items():
            if k == "__metadata__":
                continue
            if v.get("dtype") not in names:
                raise LayoutError(
                    f"layout file {str(p)!r}: tensor {k!r} has dtype {v.get('dtype')}; valid: F32, F16, BF16"
                )
            flat[k] = (tuple(v["shape"]), names[v["dtype"]])
        return cls("tree", _nest(flat, str(p)), str(p))

    def leaves(self) -> list[tuple[str, jax.ShapeDtypeStruct]]:
        """Named leaves in ABI order."""
        if self.kind == "flat":
            return [("params", self.tree)]
        return tree_leaves_with_names(self.tree)

    def example(self, fill: float = 0.0):
        """Concrete zeros (or ``fill``) with this layout's static shapes (tree layouts only)."""
        return jax.tree.map(lambda s: jnp.full(s.shape, fill, s.dtype), self.tree)

    def describe(self) -> dict:
        return {
            "kind": self.kind,
            "source": self.source,
            "leaves": len(self.leaves()),
            "elements": self.size
            if self.kind == "flat"
            else int(sum(int(np.prod(s.shape)) for _, s in self.leaves())),
        }


def _dtype(name: str, where: str):
    try:
        return DTYPES[name]
    except KeyError:
        raise LayoutError(
            f"{where}: dtype {name!r} is not supported; valid: {', '.join(DTYPES)}"
        ) from None


def _parse_json_tree(node: dict, src: str, path: list[str]):
    out = {}
    for k, v in node.items():
        where = f"layout file {src!r}, leaf {'/'.join(path + [k])!r}"
        if isinstance(v, list):
            out[k] = jax.ShapeDtypeStruct(_shape(v, where), jnp.float32)
        elif isinstance(v, dict) and "shape" in v:
            extra = set(v) - {"shape", "dtype"}
            if extra:
                raise LayoutError(f"{where}: unknown keys {sorted(extra)}; valid: shape, dtype")
            out[k] = jax.ShapeDtypeStruct(_shape(v["shape"], where), _dtype(v.get("dtype", "float32"), where))
        elif isinstance(v, dict) and v:
            out[k] = _parse_json_tree(v, src, path + [k])
        else:
            raise LayoutError(
                f'{where}: expected {{"shape": [...], "dtype": "float32"}}, a shape list, or a '
                f"nested object, got {json.dumps(v)}"
            )
    return out


def _shape(v, where) -> tuple[int, ...]:
    if not isinstance(v, list) or not all(isinstance(d, int) and d >= 0 for d in v):
        raise LayoutError(f"{where}: shape must be a list of non-negative integers, got {v!r}")
    return tuple(v)


def _nest(flat: dict[str, tuple], src: str) -> dict:
    if not flat:
        raise LayoutError(f"layout file {src!r} holds no arrays")
    out: dict = {}
    for key, (shape, dtype) in flat.items():
        parts = key.split("/")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise LayoutError(f"layout file {src!r}: key {key!r} nests under an array")
        node[parts[-1]] = jax.ShapeDtypeStruct(tuple(shape), _dtype(dtype, f"layout file {src!r}, leaf {key!r}"))
    return out
