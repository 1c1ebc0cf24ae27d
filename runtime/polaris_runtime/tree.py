"""Device-resident arrays by name: :class:`Tree` (a group of a module's leaves, as ``step`` and
``init`` return them), the name <-> nested-dict helpers, and the shape and dtype checks that bind
host arrays to a module's leaf specs."""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import iree.runtime as rt
import numpy as np

from polaris_runtime import device as dev
from polaris_runtime.errors import BindingError, ConsumedError
from polaris_runtime.manifest import LeafSpec, dim_ref

if TYPE_CHECKING:
    from polaris_runtime.module import Module


class Tree:
    """A group of arrays (params, state, updates, ...) living on a device, in ABI order.

    ``numpy()`` gives a nested dict (or a single array for a one-leaf group); ``tree["mu/w"]``
    one leaf. A tree passed to a call that donates it (``step`` donates params and state) is
    consumed: its buffers now hold the results, so using it again raises :class:`ConsumedError`.
    """

    def __init__(self, group: str, specs: Sequence[LeafSpec], arrays: Sequence[Any], owner: Module):
        self.group = group
        self.specs = tuple(specs)
        self._arr: list | None = list(arrays)
        self._views: tuple | None = None  # the buffer views, where a step plan produced the tree
        self._dtypes: tuple = ()
        self._owner = owner
        self._consumed_by: str | None = None
        # (module, dims, arrays) once a module has checked (or produced) exactly these arrays
        self._verified: tuple | None = None

    @classmethod
    def _of_views(cls, group: str, specs: tuple, views: tuple, dtypes: tuple, owner: Module, dims: tuple) -> Tree:
        """A tree of a call's result buffer views; its ``DeviceArray``s are made when first used."""
        t = cls.__new__(cls)
        t.group, t.specs, t._arr, t._views, t._dtypes = group, specs, None, views, dtypes
        t._owner, t._consumed_by, t._verified = owner, None, (owner, dims, None)
        return t

    @property
    def _arrays(self) -> list:
        a = self._arr
        if a is None:
            device, array = self._owner.device, rt.DeviceArray
            a = self._arr = [array(device, bv, True, d) for bv, d in zip(self._views, self._dtypes, strict=True)]
            v = self._verified
            if v is not None and v[2] is None:
                self._verified = (v[0], v[1], tuple(a))
        return a

    @_arrays.setter
    def _arrays(self, value) -> None:
        self._arr, self._views = list(value), None

    def _pristine_views(self) -> tuple | None:
        """The buffer views, if the arrays are exactly what the module produced or checked."""
        if self._arr is None:
            return self._views
        v = self._verified
        if v is None or v[2] is None or not _same_arrays(self._arr, v[2]):
            return None
        views = self._views
        if views is None:
            views = self._views = tuple(a._buffer_view for a in self._arr)
        return views

    # -- access ---------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return [s.name for s in self.specs]

    @property
    def arrays(self) -> list[Any]:
        """The leaves as device arrays (ABI order); for an async module's results, once the
        calls that write them have finished."""
        self._check_live()
        self._owner.wait()
        return self._arrays

    def __len__(self) -> int:
        return len(self.specs)

    def __contains__(self, name: str) -> bool:
        return any(s.name == name for s in self.specs)

    def __getitem__(self, name: str) -> np.ndarray:
        return dev.to_host(self.arrays[self._index(name)])

    def _index(self, name: str) -> int:
        for i, s in enumerate(self.specs):
            if s.name == name:
                return i
        raise KeyError(
            f"{self.group} has no leaf {name!r}; its leaves: {', '.join(self.names) or '(none)'}"
        )

    def set(self, name: str, value) -> None:
        """Replaces one leaf (uploaded to the device), checking its shape and dtype."""
        i = self._index(name)
        spec = self.specs[i]
        arr = _check_leaf(self.group, spec, np.asarray(value, dtype=spec.dtype), {})
        self.arrays[i] = dev.upload(self._owner.device, arr)

    def numpy(self):
        """All leaves read back to the host: a nested dict, or an array for a one-leaf group."""
        leaves = [dev.to_host(a) for a in self.arrays]
        if len(self.specs) == 1 and (
            self.specs[0].name == self.group
            # grads/updates of a flat module mirror its single "params" leaf
            or (self.specs[0].name == "params" and self._owner.manifest.layout == "flat")
        ):
            return leaves[0]
        return unflatten_names([s.name for s in self.specs], leaves)

    def leaves(self) -> list[np.ndarray]:
        """All leaves read back to the host, in ABI order."""
        return [dev.to_host(a) for a in self.arrays]

    def _check_live(self) -> None:
        if self._consumed_by is not None:
            raise ConsumedError(
                f"this {self.group} tree was donated to {self._consumed_by}() and its buffers now "
                f"hold that call's results; use the {self.group} it returned"
            )

    def __repr__(self) -> str:
        state = f", consumed by {self._consumed_by}()" if self._consumed_by else ""
        return f"Tree({self.group}: {len(self.specs)} leaves on {self._owner.driver}{state})"


def _same_arrays(a: Sequence[Any], b: Sequence[Any]) -> bool:
    return len(a) == len(b) and all(map(operator.is_, a, b))


def flatten_names(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": x}}`` -> ``{"a/b": x}`` (keys sorted, JAX's order)."""
    out: dict[str, Any] = {}
    for k in sorted(tree, key=str):
        v = tree[k]
        name = f"{prefix}/{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            out.update(flatten_names(v, name))
        else:
            out[name] = v
    return out


def unflatten_names(names: Sequence[str], values: Sequence[Any]) -> dict:
    """The inverse of :func:`flatten_names`."""
    out: dict = {}
    for name, v in zip(names, values, strict=True):
        parts = name.split("/")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = v
    return out


_NP_DTYPES: dict[str, Any] = {}


def _np_dtype(name: str):
    """``np.dtype(name)``, cached; None where numpy has no such dtype (bfloat16 without ml_dtypes)."""
    try:
        return _NP_DTYPES[name]
    except KeyError:
        try:
            d = np.dtype(name)
        except TypeError:
            d = None
        _NP_DTYPES[name] = d
        return d


def _group_dims(specs: Sequence[LeafSpec], dims: dict[str, int]) -> tuple:
    """The dynamic dimensions (symbols) that ``specs`` use, with their values in ``dims``."""
    syms = dict.fromkeys(dim_ref(d)[1] for s in specs for d in s.shape if isinstance(d, str))
    return tuple((d, dims[d]) for d in syms if d in dims)


def _merge_dims(dims: dict[str, int], known: tuple) -> bool:
    """Adds ``known`` to ``dims``; False (and ``dims`` unchanged) if any value disagrees."""
    if any(dims.get(d, n) != n for d, n in known):
        return False
    dims.update(known)
    return True


def _check_leaf(group: str, spec: LeafSpec, arr: np.ndarray, dims: dict[str, int]) -> np.ndarray:
    shape = tuple(arr.shape)
    if len(shape) != len(spec.shape):
        raise BindingError(
            f"{group} leaf {spec.name!r} has shape {shape} but the module expects {spec.shape_str()}"
        )
    for got, want in zip(shape, spec.shape, strict=True):
        if isinstance(want, str):
            k, sym = dim_ref(want)
            if k != 1:
                if got % k:
                    raise BindingError(
                        f"{group} leaf {spec.name!r} has length {got} along dynamic dimension {want!r}, "
                        f"which must be a multiple of {k} (every tensor starts a block of {k}: pack the "
                        f"model with polaris_runtime.pack.pack(params, align={k}))"
                    )
                got //= k
            if sym in dims and dims[sym] != got:
                raise BindingError(
                    f"{group} leaf {spec.name!r} has length {got * k} along dynamic dimension {want!r}, "
                    f"but another leaf of this call set {sym}={dims[sym]}"
                    + (f" ({want}={dims[sym] * k})" if k != 1 else "") + "; all must agree"
                )
            dims[sym] = got
        elif got != want:
            raise BindingError(
                f"{group} leaf {spec.name!r} has shape {shape} but the module expects {spec.shape_str()}"
            )
    want = _np_dtype(spec.dtype)
    if want is not None and arr.dtype == want:  # the common case, without np.dtype(...).name
        return arr
    got_dtype = np.dtype(arr.dtype).name
    if got_dtype != spec.dtype:
        raise BindingError(
            f"{group} leaf {spec.name!r} has dtype {got_dtype} but the module expects {spec.dtype} "
            f"(convert with .astype(np.{spec.dtype}))"
        )
    return arr
