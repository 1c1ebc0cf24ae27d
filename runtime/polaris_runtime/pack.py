"""Packing a model's arrays into the one vector a flat module takes, and back (NumPy only).

A flat module (``polaris compile NAME`` without a layout) serves any model: its ``params`` is one
1-D vector of any length ``n``. :func:`pack` lays a nested dict of arrays end to end in the ABI's
leaf order (JAX's: dict keys sorted, depth first; leaves named by their path joined with ``/``)
and returns the :class:`Packing` that undoes it and that tells a module which element belongs
to which tensor::

    flat, packing = pack(params)                    # params: {"dense": {"kernel": ..., ...}}
    state = opt.init(flat)
    segments = opt.upload_segments(packing)         # once: the tensor boundaries, on the device
    p, state = opt.step(flat, packing.pack(grads), state, segments=segments)
    params = packing.unpack(p)                      # the nested dict again

* ``Packing.segment_ids`` (int32 ``[n]``): the index of the tensor every element belongs to
  (``0 .. num_segments - 1``, in leaf order). Modules whose transforms reduce per tensor (LAMB,
  LARS, Fromage, Adafactor's block RMS) take it as their ``segments`` input.
* ``Packing.row_ids`` (int32 ``[n]``): the global index of the row (slice along axis 0) each
  element of a rank >= 2 tensor belongs to, ``-1`` for tensors of rank <= 1; taken by modules
  that ``centralize``.

``pack(tree, align=16)`` starts every tensor at a multiple of 16 elements, zeros between them
(padding elements belong to the tensor before them): the layout of flat modules compiled with
``--segment-reduction aligned``, whose per-tensor sums and broadcasts then work on whole blocks
of 16 (docs/flat-modules.md). Grads must be packed the same way (``packing.pack(grads)``), so the
padding stays zero.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def _flatten(tree: Mapping, prefix: str = "") -> list[tuple[str, Any]]:
    if not isinstance(tree, Mapping):
        raise TypeError(f"pack: expected a nested dict of arrays, got {type(tree).__name__}")
    out: list[tuple[str, Any]] = []
    for k in sorted(tree, key=str):
        name = f"{prefix}/{k}" if prefix else str(k)
        v = tree[k]
        if isinstance(v, Mapping):
            if not v:
                continue  # an empty dict holds no leaves (as in JAX)
            out.extend(_flatten(v, name))
        else:
            out.append((name, v))
    return out


@dataclasses.dataclass(frozen=True)
class Packing:
    """Where each tensor of a model lies in its packed vector: names, shapes, offsets."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtype: str = "float32"
    align: int = 1  # every tensor starts at a multiple of this many elements (zeros between)

    def __post_init__(self):
        if len(self.names) != len(self.shapes):
            raise ValueError(f"Packing: {len(self.names)} names but {len(self.shapes)} shapes")
        if isinstance(self.align, bool) or not isinstance(self.align, int) or self.align < 1:
            raise ValueError(f"Packing: align must be a positive int (elements), got {self.align!r}")

    @classmethod
    def of(cls, tree: Mapping, dtype: str | np.dtype = "float32", align: int = 1) -> Packing:
        """The packing of ``tree``'s leaves (their shapes only; no data is copied)."""
        leaves = _flatten(tree)
        if not leaves:
            raise ValueError("pack: the tree holds no arrays")
        return cls(
            tuple(n for n, _ in leaves),
            tuple(tuple(int(d) for d in np.shape(v)) for _, v in leaves),
            np.dtype(dtype).name,
            align,
        )

    # -- geometry ---------------------------------------------------------------------------
    @functools.cached_property
    def sizes(self) -> tuple[int, ...]:
        return tuple(math.prod(s) for s in self.shapes)

    @functools.cached_property
    def spans(self) -> tuple[int, ...]:
        """Each tensor's size rounded up to ``align``: the elements it occupies, padding included."""
        a = self.align
        return tuple(-(-m // a) * a for m in self.sizes)

    @functools.cached_property
    def offsets(self) -> tuple[int, ...]:
        """Start of each tensor in the vector (and the total length last)."""
        return tuple(int(x) for x in np.concatenate([[0], np.cumsum(self.spans, dtype=np.int64)]))

    @property
    def size(self) -> int:
        """``n``: the length of the packed vector."""
        return self.offsets[-1]

    @property
    def num_segments(self) -> int:
        """The number of tensors (a module's ``segments.max`` must be at least this)."""
        return len(self.names)

    @functools.cached_property
    def num_rows(self) -> int:
        """The number of rows of rank >= 2 tensors (a module's ``segments.max_rows`` bound)."""
        return int(sum(s[0] for s in self.shapes if len(s) >= 2))

    @functools.cached_property
    def segment_ids(self) -> np.ndarray:
        """int32 ``[n]``: the tensor index of every element (padding: the tensor before it)."""
        ids = np.repeat(np.arange(self.num_segments, dtype=np.int32), self.spans)
        ids.setflags(write=False)
        return ids

    @functools.cached_property
    def row_ids(self) -> np.ndarray:
        """int32 ``[n]``: the global row of every element of a rank >= 2 tensor; -1 elsewhere."""
        out = np.full(self.size, -1, np.int32)
        row = 0
        for shape, start, size in zip(self.shapes, self.offsets, self.sizes, strict=False):
            if len(shape) >= 2 and size:
                per_row = size // shape[0]
                out[start : start + size] = np.repeat(np.arange(row, row + shape[0], dtype=np.int32), per_row)
            if len(shape) >= 2:
                row += shape[0]
        out.setflags(write=False)
        return out

    # -- packing ----------------------------------------------------------------------------
    def pack(self, tree: Mapping) -> np.ndarray:
        """``tree`` (same names and shapes as this packing) as one vector of ``dtype``."""
        leaves = dict(_flatten(tree))
        if list(leaves) != list(self.names):
            missing = [n for n in self.names if n not in leaves]
            extra = [n for n in leaves if n not in self.names]
            raise ValueError(
                f"pack: the tree does not match the packing: missing {missing}, unexpected {extra}"
            )
        out = np.empty(self.size, self.dtype) if self.align == 1 else np.zeros(self.size, self.dtype)
        for name, shape, start, size in zip(self.names, self.shapes, self.offsets, self.sizes, strict=False):
            a = np.asarray(leaves[name])
            if a.shape != shape:
                raise ValueError(f"pack: leaf {name!r} has shape {a.shape}, the packing {shape}")
            out[start : start + size] = a.reshape(-1)
        return out

    def unpack(self, flat) -> dict:
        """The nested dict of arrays (views into ``flat``) that :meth:`pack` came from.

        ``flat`` may be a NumPy vector or anything with ``.numpy()`` (a module's ``Tree``)."""
        if hasattr(flat, "numpy") and not isinstance(flat, np.ndarray):
            flat = flat.numpy()
        flat = np.asarray(flat)
        if flat.shape != (self.size,):
            raise ValueError(f"unpack: expected a vector of {self.size} elements, got shape {flat.shape}")
        out: dict = {}
        for name, shape, start, size in zip(self.names, self.shapes, self.offsets, self.sizes, strict=False):
            node = out
            parts = name.split("/")
            for p in parts[:-1]:
                node = node.setdefault(p, {})
            node[parts[-1]] = flat[start : start + size].reshape(shape)
        return out

    def leaf(self, flat, name: str) -> np.ndarray:
        """One tensor of ``flat`` by name (a view)."""
        i = self.names.index(name)
        return np.asarray(flat)[self.offsets[i] : self.offsets[i] + self.sizes[i]].reshape(self.shapes[i])

    def to_dict(self) -> dict:
        """A JSON-able description (store it next to a checkpoint of a flat module)."""
        d = {"names": list(self.names), "shapes": [list(s) for s in self.shapes], "dtype": self.dtype}
        if self.align != 1:
            d["align"] = self.align
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> Packing:
        return cls(tuple(d["names"]), tuple(tuple(s) for s in d["shapes"]), d.get("dtype", "float32"), int(d.get("align", 1)))


def pack(tree: Mapping, dtype: str | np.dtype = "float32", align: int = 1) -> tuple[np.ndarray, Packing]:
    """``(flat, packing)``: ``tree``'s leaves end to end in ABI order, cast to ``dtype``; with
    ``align`` > 1 each starts at a multiple of ``align`` elements, zeros between them (for
    modules compiled with ``--segment-reduction aligned``: ``align=16``)."""
    packing = Packing.of(tree, dtype, align)
    return packing.pack(tree), packing


def unpack(flat, packing: Packing) -> dict:
    """The inverse of :func:`pack`: the nested dict of arrays (views into ``flat``)."""
    return packing.unpack(flat)


__all__: Sequence[str] = ("Packing", "pack", "unpack")
