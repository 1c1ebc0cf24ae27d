"""Loading a polaris-iree module and calling it with named, checked, device-resident arrays.

Thread safety
-------------
* Several modules (optimizers) may be loaded and used in one process, on one device or several;
  modules loaded for the same driver share one IREE device (``device.config_for``).
* A :class:`Module` may be shared by threads: each call binds its arguments without shared
  mutable state and then invokes IREE under the module's own lock (an IREE VM context is not
  re-entrant), so calls on one module are serialised while calls on different modules run
  concurrently. Sharing one module between threads that each own their state is safe and gives
  the same results as running them one after the other.
* A :class:`Tree` (a params or state group) is not synchronised: use each one from one thread at
  a time. ``step`` donates params and state, so two threads stepping the *same* state would race
  by design; give each thread its own state (``opt.init`` per thread, or a checkpoint restore).
* Checkpoint writes are atomic per file; two threads writing the same path leave one complete
  checkpoint (the last rename wins).
"""

from __future__ import annotations

import atexit
import gc
import json
import operator
import os
import pathlib
import threading
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import iree.runtime as rt
import numpy as np

from polaris_runtime import device as dev
from polaris_runtime.errors import BindingError, ConsumedError, DeviceError, ModuleError
from polaris_runtime.manifest import REFLECTION_KEY, LeafSpec, Manifest


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
    """The dynamic dimensions that ``specs`` use, with their values in ``dims``."""
    return tuple((d, dims[d]) for d in dict.fromkeys(d for s in specs for d in s.shape if isinstance(d, str)) if d in dims)


IREE_ERRORS = (RuntimeError, ValueError, IndexError)  # what IREE's bindings map statuses to


def _failed_inside_iree(fname: str, driver: str, e: BaseException) -> ModuleError:
    return ModuleError(f"{fname}() failed inside IREE on {driver}: {e}")


def _same_arrays(a: Sequence[Any], b: Sequence[Any]) -> bool:
    return len(a) == len(b) and all(map(operator.is_, a, b))


def _is_last(value, last: tuple) -> bool:
    """Whether ``value`` (an array, or a list or tuple of them) holds exactly the arrays ``last``:
    the cheap test for gradients passed again as they were (0.4 -> 0.1 us)."""
    t = type(value)
    if t is list or t is tuple:
        return len(value) == len(last) and (value[0] is last[0] if len(last) == 1 else _same_arrays(value, last))
    return len(last) == 1 and value is last[0]


def _vm_args(parts) -> rt.VmVariantList:
    """An argument list of ``parts`` (lists of ``VmRef``s or buffer views, in call order), with
    room for the two fences an async module appends."""
    args = rt.VmVariantList(sum(map(len, parts)) + 2)
    push = args.push_ref
    for part in parts:
        for r in part:
            push(r)
    return args


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
            if want in dims and dims[want] != got:
                raise BindingError(
                    f"{group} leaf {spec.name!r} has length {got} along dynamic dimension {want!r}, "
                    f"but another leaf of this call set {want}={dims[want]}; all must agree"
                )
            dims[want] = got
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


# Vulkan device families whose drivers allow at most 65535 workgroups per dimension.
VULKAN_65535_FAMILIES = ("llvmpipe", "arm", "qualcomm")
VULKAN_SCATTER_LIMIT = 65535
# IREE 3.13 reduces a dynamic-length vector in chunks of 8 elements, one workgroup each: on those
# devices a whole-vector reduction (global norm, all-finite check) covers the first 65535 * 8
# elements only (measured on lavapipe: a norm of 524288 ones counted 524280).
VULKAN_DYNAMIC_REDUCTION_LIMIT = 65535 * 8


# Every loaded module, for _release_plans_at_exit.
_LIVE_MODULES: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _release_plans_at_exit() -> None:
    """Frees the call plans (IREE refs and argument lists) while their device still exists.

    A plan and its module reference each other, so the plan is freed by the garbage collector;
    left to the interpreter's shutdown, that could happen after the IREE device had gone, and
    releasing the plan's buffer refs then crashed the process on exit (seen: SIGSEGV after any
    loop of two or more steps). atexit runs before the interpreter tears modules down.
    """
    for mod in list(_LIVE_MODULES):
        with mod._lock:
            plans = list(mod._plans.values())
            mod._plans.clear()
            for plan in plans:
                if plan is not None:
                    plan._release()
    gc.collect()


class Module:
    """A loaded ``.vmfb``: its manifest, its device and its exported functions."""

    def __init__(self, vm_module: rt.VmModule, manifest: Manifest, config: rt.Config, driver: str, path: str):
        self.manifest = manifest
        self.driver = driver
        self.path = path
        self._config = config
        self._vm_module = vm_module
        self._lock = threading.Lock()
        self._context = rt.SystemContext(config=config)
        self._context.add_vm_module(vm_module)
        bound = self._context.modules[vm_module.name]
        self._functions = {name: bound[name] for name in manifest.functions}
        self._direct = {
            name: _direct_call(vm_module, name, sum(len(manifest.group(g)) for g in f.outputs))
            for name, f in manifest.functions.items()
        }
        # Compiled with --async (IREE's async-external model, ``iree.abi.model = coarse-fences``):
        # every export takes a wait and a signal fence and returns once its work is queued. The
        # module chains its calls on one timeline semaphore (call k waits for k, signals k + 1),
        # so its own results feed its next call without a host wait; reading them, or passing
        # them to another module, waits first (:meth:`wait`).
        self._asynchronous = any(
            vm_module.lookup_function(name).reflection.get("iree.abi.model") == "coarse-fences"
            for name in manifest.functions
        )
        if self._asynchronous and any(d is None for d in self._direct.values()):
            raise ModuleError(
                f"{path}: an async module (--async) whose exports this runtime cannot call "
                f"directly (unexpected iree.abi reflection); recompile it without --async"
            )
        self._sem = config.device.create_semaphore(0) if self._asynchronous else None
        self._tick = 0  # calls queued on self._sem
        self._verified_lists: dict[str, tuple] = {}
        self._plans: dict[str, _CallPlan | None] = {}  # Optimizer.step/update (see _CallPlan)
        self._zeros_cache: tuple | None = None  # (shapes, device zeros) for update() without params
        reducing = manifest.raw.get("dynamic_reductions") or ()
        self._dynamic_reductions = frozenset(reducing) if self._limited_vulkan() else frozenset()
        _LIVE_MODULES.add(self)

    @property
    def device(self):
        return self._config.device

    @property
    def functions(self) -> list[str]:
        return list(self._functions)

    @property
    def asynchronous(self) -> bool:
        """Whether calls return once their work is queued (a module compiled with ``--async``)."""
        return self._asynchronous

    def wait(self) -> None:
        """Waits until every call made so far has finished on the device (a no-op for
        synchronous modules). Reading a result does this by itself; an error the device hit in
        an earlier call is raised here, as :class:`ModuleError`."""
        if self._sem is None:
            return
        try:
            rt.HalFence.create_at(self._sem, self._tick).wait()
        except RuntimeError as e:
            raise ModuleError(f"a call queued on {self.driver} failed on the device: {e}") from None

    def _fences(self) -> tuple | None:
        """(wait, signal) fences for the next call of an async module (call under ``_lock``)."""
        if self._sem is None:
            return None
        t = self._tick
        self._tick = t + 1
        return rt.HalFence.create_at(self._sem, t), rt.HalFence.create_at(self._sem, t + 1)

    def _invoke(self, fname: str, function, args: rt.VmVariantList, ret: rt.VmVariantList) -> None:
        """Invokes ``function`` with ``args`` (call under ``_lock``): every direct call of an export
        goes through here. For an async module the call's wait and signal fences are appended:
        call k waits for value k of the module's semaphore and signals k + 1."""
        fences = self._fences()
        if fences is not None:
            args.push_ref(fences[0])
            args.push_ref(fences[1])
        try:
            self._context.vm_context.invoke(function, args, ret)
        except IREE_ERRORS as e:
            _unblock(fences)
            raise _failed_inside_iree(fname, self.driver, e) from None

    @property
    def _built_for(self) -> str:
        """The GPU target the module was compiled for (``--vulkan-target``/arch), or ``""``."""
        return self.manifest.target.get("vulkan_target") or self.manifest.target.get("arch") or ""

    def _limited_vulkan(self) -> str | None:
        """The device family, where this module runs on Vulkan with 65535 workgroups per dimension."""
        if not self.driver.startswith("vulkan"):
            return None
        family = dev._family_of_target(self._built_for)
        return family if family in VULKAN_65535_FAMILIES else None

    def _check_reduction_limit(self, fname: str, dims: dict[str, int]) -> None:
        n = max(dims.values(), default=0)
        if n > VULKAN_DYNAMIC_REDUCTION_LIMIT:
            raise BindingError(
                f"{fname}(): this flat module reduces over the whole vector "
                f"({' |> '.join(self.manifest.composition) or self.manifest.name}), and on a Vulkan "
                f"{self._limited_vulkan()} device IREE 3.13 covers at most "
                f"{VULKAN_DYNAMIC_REDUCTION_LIMIT} elements of such a reduction (65535 workgroups of 8); "
                f"got n={n}. Use a tree-layout module (polaris compile ... --layout), whose reductions "
                f"run in two levels, or the llvm-cpu target"
            )

    def _bind(self, group: str, value, dims: dict[str, int], fname: str) -> tuple[list, Tree | None]:
        specs = self.manifest.group(group)
        if isinstance(value, Tree):
            if value._owner.device is not self.device:
                raise DeviceError(
                    f"{fname}(): the {group} tree lives on driver {value._owner.driver!r} but this "
                    f"module runs on {self.driver!r}; read it back with .numpy() and pass that"
                )
            if [s.name for s in value.specs] != [s.name for s in specs]:
                raise BindingError(
                    f"{fname}(): the {value.group} tree passed as {group} has leaves "
                    f"{value.names} but the module expects {[s.name for s in specs]}"
                )
            arrays = value.arrays
            v = value._verified
            if v is not None and v[0] is self and _same_arrays(v[2], arrays) and _merge_dims(dims, v[1]):
                return list(arrays), value  # checked before, or produced by this module
            for s, a in zip(specs, arrays, strict=True):
                _check_leaf(group, s, _ShapeOnly(a), dims)
            value._verified = (self, _group_dims(specs, dims), tuple(arrays))
            return list(arrays), value
        if isinstance(value, Mapping):
            flat = flatten_names(value)
            want = [s.name for s in specs]
            missing = [n for n in want if n not in flat]
            extra = [n for n in flat if n not in want]
            if missing or extra:
                parts = []
                if missing:
                    parts.append(f"missing leaves {missing}")
                if extra:
                    parts.append(f"unexpected leaves {extra}")
                raise BindingError(
                    f"{fname}(): {group} does not match the module's layout: {'; '.join(parts)}. "
                    f"Expected: {', '.join(f'{s.name} {s.shape_str()} {s.dtype}' for s in specs)}"
                )
            leaves = [flat[n] for n in want]
        elif isinstance(value, (list, tuple)):
            if len(value) != len(specs):
                raise BindingError(
                    f"{fname}(): {group} has {len(value)} arrays but the module expects "
                    f"{len(specs)}: {', '.join(s.name for s in specs)}"
                )
            leaves = list(value)
        elif len(specs) == 1:
            leaves = [value]
        else:
            raise BindingError(
                f"{fname}(): {group} must be a dict of arrays, a list in ABI order or a Tree, got "
                f"{type(value).__name__}"
            )
        v = self._verified_lists.get(group)
        if v is not None and _same_arrays(v[0], leaves) and _merge_dims(dims, v[1]):
            return list(leaves), None  # the same device arrays as last time (e.g. grads)
        out = []
        for s, leaf in zip(specs, leaves, strict=True):
            if isinstance(leaf, rt.DeviceArray):
                if leaf._device is not self.device:
                    raise DeviceError(
                        f"{fname}(): {group} leaf {s.name!r} lives on another device; this module "
                        f"runs on {self.driver!r}"
                    )
                _check_leaf(group, s, _ShapeOnly(leaf), dims)
                out.append(leaf)
            else:
                arr = leaf if isinstance(leaf, np.ndarray) else np.asarray(leaf)
                out.append(_check_leaf(group, s, arr, dims))
        if all(isinstance(a, rt.DeviceArray) for a in out):
            self._verified_lists[group] = (tuple(out), _group_dims(specs, dims))
        return out, None

    def call(self, fname: str, **groups) -> dict[str, Tree]:
        """Calls an exported function with its input groups by name; returns its output groups."""
        return self._call(fname, groups)[0]

    def _call(self, fname: str, groups: dict) -> tuple[dict[str, Tree], dict[str, list]]:
        """:meth:`call`, also returning the leaves each input group was bound to."""
        spec = self.manifest.functions.get(fname)
        if spec is None:
            raise ModuleError(
                f"the module exports no function {fname!r}; it exports {', '.join(self.functions)}"
            )
        unknown = set(groups) - set(spec.inputs)
        missing = [g for g in spec.inputs if g not in groups]
        if unknown or missing:
            raise BindingError(
                f"{fname}() takes {', '.join(spec.inputs)}"
                + (f"; missing {missing}" if missing else "")
                + (f"; unexpected {sorted(unknown)}" if unknown else "")
            )
        dims: dict[str, int] = {}
        args: list = []
        donated: list[Tree] = []
        seen: set[int] = set()
        bound: dict[str, list] = {}
        for g in spec.inputs:
            leaves, tree = self._bind(g, groups[g], dims, fname)
            bound[g] = leaves
            args.extend(leaves)
            if tree is not None and g in spec.donates:
                donated.append(tree)
            if g in spec.donates:
                for s, leaf in zip(self.manifest.group(g), leaves, strict=True):
                    if isinstance(leaf, rt.DeviceArray):
                        if id(leaf) in seen:
                            raise BindingError(
                                f"{fname}(): {g} leaf {s.name!r} is the same device array as another "
                                f"donated leaf; {fname}() writes them in place, so each needs its own"
                            )
                        seen.add(id(leaf))
        if fname in self._dynamic_reductions:
            self._check_reduction_limit(fname, dims)
        direct = self._direct.get(fname)
        if self._asynchronous:  # IREE's FunctionInvoker cannot pass fences: upload host arrays here
            args = [a if isinstance(a, rt.DeviceArray) else dev.upload(self.device, a) for a in args]
        with self._lock:
            if direct is not None and all(isinstance(a, rt.DeviceArray) for a in args):
                results = direct(self, args)
            else:
                try:
                    results = self._functions[fname](*args)
                except IREE_ERRORS as e:
                    raise _failed_inside_iree(fname, self.driver, e) from None
        if not isinstance(results, tuple):
            results = (results,) if results is not None else ()
        for t in donated:
            t._consumed_by = fname
        out: dict[str, Tree] = {}
        i = 0
        for g in spec.outputs:
            specs = self.manifest.group(g)
            t = Tree(g, specs, results[i : i + len(specs)], self)
            t._verified = (self, _group_dims(specs, dims), tuple(t._arrays))  # produced here
            out[g] = t
            i += len(specs)
        return out, bound

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        if name in self.manifest.functions:
            return lambda **groups: self.call(name, **groups)
        raise AttributeError(
            f"{type(self).__name__} has no attribute {name!r}; exported functions: {', '.join(self.functions)}"
        )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.manifest.name} ({self.path}) on {self.driver}>"


def _unblock(fences) -> None:
    """After an async call that failed before it was queued: signal its fence, so that the
    module's next call (which waits for it) and :meth:`Module.wait` do not wait forever.

    The calls queued before it must signal their values first: a timeline signalled past a value
    fails the device's later signal of that value (IREE: "semaphore already signaled past"), so
    this waits for the call's wait fence, then signals."""
    if fences is None:
        return
    try:
        fences[0].wait()
    except Exception:  # an earlier call failed on the device: the next wait() reports it
        pass
    try:
        fences[1].signal()
    except Exception:  # already signalled (or failed): nothing is left waiting on it
        pass


def _direct_call(vm_module: rt.VmModule, name: str, n_out: int):
    """A caller of exported function ``name`` that skips IREE's FunctionInvoker.

    Arguments are pushed as the device arrays' buffer views and the ``n_out`` results (every
    output of a polaris module is an array; the manifest says how many) wrapped as
    ``DeviceArray``s, as FunctionInvoker does for functions without ``iree.abi`` reflection
    (IREE 3.13 writes only ``iree.abi.declaration``), without its per-argument packing and
    per-result conversion. Where ``iree.abi`` reflection exists, its result dtypes are applied.
    """
    fn = vm_module.lookup_function(name)
    dtypes: list = [None] * n_out
    abi = fn.reflection.get("iree.abi")
    if abi is not None:
        from iree.runtime.dtypes import map_abi_type_to_dtype_info

        try:
            descs = json.loads(abi)["r"]
            if len(descs) != n_out or not all(isinstance(d, list) and d and d[0] == "ndarray" for d in descs):
                return None
            dtypes = [map_abi_type_to_dtype_info(d[1]).dtype for d in descs]
        except Exception:  # unexpected reflection: use FunctionInvoker
            return None
    bv_type, device_array = rt.HalBufferView, rt.DeviceArray

    def call(mod: Module, args):
        arg_list = rt.VmVariantList(len(args) + 2)  # + an async export's two fences
        for a in args:
            arg_list.push_ref(a._buffer_view)
        ret = rt.VmVariantList(n_out)
        mod._invoke(name, fn, arg_list, ret)
        device = mod.device
        return tuple(
            device_array(device, ret.get_as_object(i, bv_type), implicit_host_transfer=True, override_dtype=dtypes[i])
            for i in range(n_out)
        )

    call.function, call.n_out, call.dtypes = fn, n_out, dtypes
    return call


class _CallPlan:
    """The checks of a ``step`` (or ``update``) call, done once, for the loop that repeats it.

    A training loop calls ``params, state = opt.step(params, grads, state)`` with the Trees the
    previous call returned (their shapes are the module's own, nothing to check again) and
    gradients of the same layout every time. After a fully checked call the plan remembers the
    Trees it returned for the donated groups (``params`` and ``state`` for ``step``, ``state``
    for ``update``), the buffer shapes and element types of the other array groups (``grads``;
    ``params`` for ``update``) and the segments. A later call that passes exactly those Trees
    (live, their arrays unchanged), device arrays on this device with the same shapes and
    element types (or the very same arrays) and the same segments goes straight to
    ``VmContext.invoke``, and the results' ``DeviceArray``s are made only when someone asks for
    them. Anything else (a dict, host arrays, a Tree changed with ``set``, another shape) takes
    the checked path, which makes a new plan.

    Where the module writes the donated groups in place (IREE's tied outputs; the plan checks
    the result buffers once, on its first call), their results are the argument views
    themselves: nothing is read back from the result list.
    Measured (docs/performance.md): 33 us -> 17.5 us -> 16 us a 10k-parameter Adam step on
    local-sync, then 8.6-9 us in the steady state (:meth:`_make_lean`, :meth:`_make_fast_step`
    and the kept argument list; IREE's own call: 7.3 us).
    """

    __slots__ = (
        "mod", "fname", "call", "inputs", "trusted", "checked", "last", "sig", "segments", "seg_views",
        "outputs", "aliased", "lean", "lean_refs", "templates", "fresh", "ret", "invoke", "fast", "kept",
    )

    def __init__(self, mod: Module, fname: str, out: dict[str, Tree], bound: dict[str, list], segments):
        spec = mod.manifest.functions[fname]
        self.mod, self.fname, self.call = mod, fname, mod._direct[fname]
        self.inputs = tuple(spec.inputs)
        self.trusted = {g: out[g] for g in spec.inputs if g in spec.donates and g in out}
        self.checked = tuple(g for g in spec.inputs if g not in self.trusted and g != "segments")
        self.last = {g: tuple(bound[g]) for g in self.checked}
        self.sig = {g: tuple((a._buffer_view.shape, a._buffer_view.element_type) for a in bound[g]) for g in self.checked}
        self.segments = segments
        self.seg_views = tuple(a._buffer_view for a in bound.get("segments", ()))
        # per output group: specs, dynamic dims of the checked call, result slice, dtypes
        outputs, i = [], 0
        for g in spec.outputs:
            k = len(out[g].specs)
            outputs.append((g, out[g].specs, out[g]._verified[1], i, i + k, tuple(self.call.dtypes[i : i + k])))
            i += k
        self.outputs = tuple(outputs)
        # Whether every donated group comes back in its own buffers (IREE's in-place outputs);
        # learnt from the first planned call. Then its results need not be read at all: they are
        # the argument buffer views.
        self.aliased: bool | None = None
        self.lean: tuple | None = None  # set by _make_lean once aliased is known
        self.fast = None  # step's steady state (_make_fast_step)
        # _run_lean's argument list of a synchronous module, with the checked groups' refs it holds
        self.kept: tuple | None = None

    def _release(self) -> None:
        """Drops the IREE refs and lists this plan holds (at exit, see _release_plans_at_exit),
        also where something outside the module still holds the plan."""
        self.fast = self.lean = self.lean_refs = self.kept = self.ret = None

    @classmethod
    def after(cls, mod: Module, fname: str, out: dict[str, Tree], bound: dict[str, list], segments) -> _CallPlan | None:
        """A plan from the checked call that bound ``bound`` and returned ``out``, if one fits."""
        if mod._direct.get(fname) is None:
            return None
        spec = mod.manifest.functions[fname]
        # the groups matched by layout next time (the donated ones come back as Trees)
        kept = [g for g in spec.inputs if not (g in spec.donates and g in out)]
        if not all(isinstance(a, rt.DeviceArray) for g in kept for a in bound[g]):
            return None  # host arrays are uploaded per call: the checked path does that
        if segments is not None and not isinstance(segments, Tree):
            return None
        return cls(mod, fname, out, bound, segments)

    def _arrays(self, group: str, value) -> tuple | None:
        if isinstance(value, Tree):
            if value._consumed_by is not None or value._owner.device is not self.mod.device:
                return None
            if value._owner is not self.mod:
                value._owner.wait()  # another module's results: finished before this call reads them
            got = value._arrays
        elif isinstance(value, (list, tuple)):
            got = value
        elif isinstance(value, rt.DeviceArray):
            got = (value,)
        else:
            return None
        last, sig = self.last[group], self.sig[group]
        if _same_arrays(got, last):
            return last
        if len(got) != len(sig):
            return None
        device = self.mod.device
        for a, (shape, et) in zip(got, sig, strict=True):
            if type(a) is not rt.DeviceArray or a._device is not device:
                return None
            bv = a._buffer_view
            if bv.element_type != et or bv.shape != shape:
                return None
        return tuple(got)

    def run(self, groups: dict[str, Any], segments) -> dict[str, Tree] | None:
        """The call's output Trees, or None where the checked path must run."""
        if segments is not self.segments:
            return None
        if self.lean is not None:
            return self._run_lean(groups)
        trusted, given = self.trusted, []  # per input group: its buffer views (donated) or arrays
        for g in self.inputs:
            if g in trusted:
                value = groups[g]
                if value is not trusted[g] or value._consumed_by is not None:
                    return None
                views = value._pristine_views()
                if views is None:
                    return None
                given.append(views)
            elif g == "segments":
                given.append(self.seg_views)
            else:
                a = self._arrays(g, groups[g])
                if a is None:
                    return None
                given.append(a)
        call, mod = self.call, self.mod
        args = _vm_args([
            items if g in trusted or g == "segments" else [a._buffer_view for a in items]
            for g, items in zip(self.inputs, given, strict=True)
        ])
        ret = rt.VmVariantList(call.n_out)
        with mod._lock:
            for g in trusted:
                if groups[g]._consumed_by is not None:
                    return None  # another thread donated it meanwhile: the checked path says so
            mod._invoke(self.fname, call.function, args, ret)
            for g in trusted:
                groups[g]._consumed_by = self.fname
        aliased, out, at = self.aliased, {}, self.inputs.index
        for g, specs, dims, lo, hi, dtypes in self.outputs:
            if aliased and g in trusted:
                views = given[at(g)]  # written in place: the results are the argument views
            else:
                get, bv_type = ret.get_as_object, rt.HalBufferView
                views = tuple([get(j, bv_type) for j in range(lo, hi)])
            out[g] = t = Tree._of_views(g, specs, views, dtypes, mod, dims)
            if g in trusted:
                trusted[g] = t
        if aliased is None:
            self.aliased = all(_in_place(given[at(g)], out[g]._views) for g in trusted)
            if self.aliased:
                self._make_lean(given)
        for g, items in zip(self.inputs, given, strict=True):
            if g in self.last:
                self.last[g] = items
        return out

    def _make_lean(self, given: list) -> None:
        """The steady state of a loop over a module that writes its donated groups in place:
        their buffer views (and segments') are the same every call, so their argument
        references, and the attributes of the Trees that come back, are made once; only the
        other groups (the gradients) are looked at per call. ``step`` gets a closure of its own
        (:meth:`_make_fast_step`)."""
        pieces = []
        for g, items in zip(self.inputs, given, strict=True):
            if g in self.trusted or g == "segments":
                pieces.append((g, g in self.trusted, [bv.ref for bv in items]))
            else:
                pieces.append((g, None, None))
        self.lean = tuple(pieces)
        self.lean_refs = {g: (self.last[g], [a._buffer_view.ref for a in self.last[g]]) for g in self.checked}
        self.templates = {}
        for g, specs, dims, _, _, dtypes in self.outputs:
            if g in self.trusted:
                t = Tree._of_views(g, specs, given[self.inputs.index(g)], dtypes, self.mod, dims)
                self.templates[g] = dict(vars(t))
        self.fresh = tuple((lo, hi) for g, _, _, lo, hi, _ in self.outputs if g not in self.trusted)
        self.ret = rt.VmVariantList(self.call.n_out)  # IREE empties a result list before filling it
        self.invoke = self.mod._context.vm_context.invoke if self.mod._sem is None else None
        self.fast = self._make_fast_step()

    def _checked_refs(self, g: str, value) -> list | None:
        """The argument refs of a group checked per call (the gradients), or None where the
        checked path must run. The very same device array as last time needs no look."""
        last, refs = self.lean_refs[g]
        if _is_last(value, last):
            return refs
        got = self._arrays(g, value)
        if got is None:
            return None
        if got is not last:  # (one pair, replaced whole: another thread may read it)
            refs = [a._buffer_view.ref for a in got]
            self.lean_refs[g] = (got, refs)
            self.last[g] = got
        return refs

    def _call_donating(self, donated: tuple, args: rt.VmVariantList) -> list | None:
        """Invokes the function under the module's lock, unless one of ``donated`` was donated
        meanwhile (then None: the checked path says so); marks them donated. Returns the views of
        the results that are not written in place (update's updates), read under the lock
        because the result list is the plan's."""
        mod, ret = self.mod, self.ret
        lock = mod._lock
        lock.acquire()
        try:
            for value in donated:
                if value._consumed_by is not None:
                    return None
            if self.invoke is not None:  # synchronous: no fences to add
                try:
                    self.invoke(self.call.function, args, ret)
                except IREE_ERRORS as e:
                    raise _failed_inside_iree(self.fname, mod.driver, e) from None
            else:
                mod._invoke(self.fname, self.call.function, args, ret)
            for value in donated:
                value._consumed_by = self.fname
            get, bv_type = ret.get_as_object, rt.HalBufferView
            return [tuple([get(j, bv_type) for j in range(lo, hi)]) for lo, hi in self.fresh]
        finally:
            lock.release()

    def _run_lean(self, groups: dict[str, Any]) -> dict[str, Tree] | None:
        """:meth:`run` once the donated groups are known to be written in place: the same checks
        in fewer steps (docs/performance.md, sixth pass)."""
        trusted, parts, donated, checked_refs = self.trusted, [], [], []
        for g, is_donated, const in self.lean:
            if is_donated is None:  # gradients (or update's params): their layout checked per call
                checked = self._checked_refs(g, groups[g])
                if checked is None:
                    return None
                parts.append(checked)
                checked_refs.append(checked)
                continue
            if is_donated:
                value = groups[g]
                if value is not trusted[g] or value._consumed_by is not None:
                    return None
                if value._arr is not None and value._pristine_views() is None:
                    return None
                donated.append(value)
            parts.append(const)
        kept = self.kept
        if kept is not None and _same_arrays(kept[0], checked_refs):
            args = kept[1]
        else:
            args = _vm_args(parts)
            if self.invoke is not None:  # synchronous: kept while the checked groups are unchanged
                self.kept = (tuple(checked_refs), args)  # (an async module appends fences to it)
        fresh = self._call_donating(tuple(donated), args)
        if fresh is None:
            return None
        out, templates, new, mod = {}, self.templates, Tree.__new__, self.mod
        for g, specs, dims, _, _, dtypes in self.outputs:
            if g in trusted:
                out[g] = trusted[g] = t = new(Tree)
                t.__dict__ = templates[g].copy()
            else:  # update's updates: new buffers
                out[g] = Tree._of_views(g, specs, fresh.pop(0), dtypes, mod, dims)
        return out

    def _make_fast_step(self):
        """``step(params, grads, state, segments)`` in the steady state as one closure: what
        :meth:`_run_lean` does, without its loops over groups and dicts (a 10k-parameter Adam
        step 11.3 -> 10.1 us, against 9.5 us for ``jax.jit(optax)``; docs/performance.md sixth pass).
        Returns ``(params, state)``, or None where the checked path must run."""
        if (self.fname != "step" or self.inputs[:3] != ("params", "grads", "state")
                or set(self.trusted) != {"params", "state"} or self.fresh):
            return None
        plan, trusted, seg = self, self.trusted, self.segments
        p_refs, suffix = self.lean[0][2], [r for _, is_donated, const in self.lean[2:] if is_donated is not None for r in const]
        p_tmpl, s_tmpl = self.templates["params"], self.templates["state"]
        new, lean_refs = Tree.__new__, self.lean_refs
        lock, invoke, function, ret, fname = self.mod._lock, self.invoke, self.call.function, self.ret, self.fname
        # A synchronous module's argument list is kept (plan.kept, as _run_lean keeps it) while the
        # gradients are the same arrays: IREE reads the list and leaves it as it was, and every
        # other entry is a buffer written in place, the same each call. Building it anew costs
        # 1.5 us of a 10 us step (a 10k Adam; docs/performance.md, seventh pass). Keyed by the
        # gradients' ref list, which _checked_refs replaces whole when the gradients change; one
        # tuple, swapped whole, so threads sharing the module read a matching pair.
        def fast(params, grads, state, segments):
            if params is not trusted["params"] or state is not trusted["state"] or segments is not seg:
                return None
            if (params._arr is not None and params._pristine_views() is None) or (
                state._arr is not None and state._pristine_views() is None
            ):
                return None
            last, g_refs = lean_refs["grads"]
            if not _is_last(grads, last):
                g_refs = plan._checked_refs("grads", grads)
                if g_refs is None:
                    return None
            if invoke is None:  # an async module: the module appends this call's fences to the list
                if plan._call_donating((params, state), _vm_args((p_refs, g_refs, suffix))) is None:
                    return None
            else:  # _call_donating, inlined
                kept = plan.kept
                if kept is not None and kept[0][0] is g_refs:
                    args = kept[1]
                else:
                    args = _vm_args((p_refs, g_refs, suffix))
                    plan.kept = ((g_refs,), args)
                lock.acquire()
                try:
                    if params._consumed_by is not None or state._consumed_by is not None:
                        return None
                    try:
                        invoke(function, args, ret)
                    except IREE_ERRORS as e:
                        raise _failed_inside_iree(fname, plan.mod.driver, e) from None
                    params._consumed_by = state._consumed_by = fname
                finally:
                    lock.release()
            p, s = new(Tree), new(Tree)
            p.__dict__, s.__dict__ = p_tmpl.copy(), s_tmpl.copy()
            trusted["params"], trusted["state"] = p, s
            return p, s

        return fast


def _check_non_decreasing(fname: str, ids: np.ndarray, reduction: str = "tree", unit: str = "element") -> None:
    """segment_ids of a module whose segments.reduction is "tree" or "aligned": each tensor one
    run, in order."""
    drops = np.flatnonzero(ids[1:] < ids[:-1])
    if drops.size:
        i = int(drops[0]) + 1
        raise BindingError(
            f"{fname}(): segments leaf 'segment_ids' must be non-decreasing for this module (it sums "
            f"each tensor over one contiguous run: segments.reduction = {reduction!r}), but id {int(ids[i])} "
            f"at {unit} {i} follows {int(ids[i - 1])}; polaris_runtime.pack.pack makes such ids (keep "
            f"each tensor's elements together and in order), or recompile with "
            f"--segment-reduction scatter"
        )


def _block_ids(fname: str, ids: np.ndarray, blocks: int, align: int, packing_align: int | None) -> np.ndarray:
    """An aligned module's segment ids, one per block of ``align`` elements ((blocks, 1)), from
    ids per element (each block holding one id) or per block; ``packing_align``: the align of
    the Packing they came from, if they did."""
    fix = f"pack the model with polaris_runtime.pack.pack(params, align={align}) (and its grads with packing.pack)"
    if packing_align is not None and packing_align % align:
        raise BindingError(
            f"{fname}(): this module sums per tensor over blocks of {align} elements (segments.reduction "
            f"= 'aligned'), so every tensor must start at a multiple of {align}, but the Packing given "
            f"has align={packing_align}; {fix}"
        )
    n = ids.shape[0]
    if n == blocks:
        return ids
    if n != blocks * align:
        raise BindingError(
            f"{fname}(): segments leaf 'segment_ids' has {n} ids; this module takes one per element "
            f"({blocks * align}) or one per block of {align} ({blocks})"
        )
    per_block = ids.reshape(blocks, align)
    mixed = np.flatnonzero((per_block != per_block[:, :1]).any(axis=1))
    if mixed.size:
        b = int(mixed[0])
        raise BindingError(
            f"{fname}(): this module sums per tensor over blocks of {align} elements (segments.reduction "
            f"= 'aligned'), but block {b} (elements {b * align}..{b * align + align - 1}) holds the ids "
            f"{sorted(set(per_block[b].tolist()))}: a tensor starts inside it; {fix}"
        )
    return np.ascontiguousarray(per_block[:, :1])


def _in_place(before: tuple, after: tuple) -> bool:
    """Whether each result view is the argument view's buffer, shape and element type."""
    return len(before) == len(after) and all(
        a.get_buffer().ref == b.get_buffer().ref
        and a.shape == b.shape
        and a.element_type == b.element_type
        and a.byte_length == b.byte_length
        for a, b in zip(before, after, strict=True)
    )


class _ShapeOnly:
    """Adapter so device arrays are checked like host arrays without a read-back."""

    def __init__(self, a):
        self.shape = tuple(a.shape)
        self.dtype = a.dtype


class Optimizer(Module):
    """A compiled optimizer: ``init``, ``update`` and ``step`` with arrays by name or position.

    Example::

        opt = polaris_runtime.load("adam.vmfb")
        state = opt.init(params)                       # params: dict of numpy arrays
        params, state = opt.step(params, grads, state) # device-resident Trees from now on
        opt.set_hyperparameter(state, "learning_rate", 1e-4)
        host = params.numpy()
    """

    def init(self, params) -> Tree:
        """The initial optimizer state for ``params``.

        IREE may hand back one buffer for several equal results (``mu`` and ``nu`` both start
        at zero), and ``step`` writes its state in place, so each leaf is given its own buffer
        here (one host round trip, once).
        """
        state = self.call("init", params=params)["state"]
        state._arrays = [dev.upload(self.device, dev.to_host(a)) for a in state.arrays]
        return state

    def update(self, grads, state: Tree | Any, params=None, segments=None) -> tuple[Tree, Tree]:
        """Polaris's update: returns ``(updates, new_state)``; ``state`` is donated.

        ``segments``: for a flat module that reduces per tensor (``manifest.segments``), the
        tensor boundaries of the packed model: a :class:`~polaris_runtime.pack.Packing`, the
        Tree from :meth:`upload_segments` (fastest: uploaded and checked once), or the ids.
        """
        if params is None:
            params = self._zeros_like_params(grads)
        out = self._planned("update", {"grads": grads, "state": state, "params": params}, segments)
        return out["updates"], out["state"]

    def step(self, params, grads, state, segments=None) -> tuple[Tree, Tree]:
        """Update and apply fused: returns ``(new_params, new_state)``; params and state donated.

        ``segments``: as for :meth:`update` (flat modules that reduce per tensor only)."""
        plan = self._plans.get("step")
        if plan is not None and plan.fast is not None:
            out = plan.fast(params, grads, state, segments)
            if out is not None:
                return out
        out = self._planned("step", {"params": params, "grads": grads, "state": state}, segments)
        return out["params"], out["state"]

    def _planned(self, fname: str, groups: dict[str, Any], segments) -> dict[str, Tree]:
        """``fname`` through its plan where the plan vouches for ``groups``; otherwise the
        checked call, which leaves a plan for the next one (:class:`_CallPlan`)."""
        plan = self._plans.get(fname)
        if plan is not None:
            out = plan.run(groups, segments)
            if out is not None:
                return out
        out, bound = self._call(fname, {**groups, **self._segments_input(fname, segments)})
        self._plans[fname] = _CallPlan.after(self, fname, out, bound, segments)
        return out

    # -- segments: tensor boundaries for flat modules (docs/flat-modules.md) ------------------
    @property
    def takes_segments(self) -> bool:
        """Whether ``update``/``step`` need ``segments=`` (a flat module reducing per tensor)."""
        return any("segments" in f.inputs for f in self.manifest.functions.values())

    def upload_segments(self, segments) -> Tree:
        """Checks ``segments`` once and puts them on the device: pass the returned Tree as
        ``segments=`` to every ``step``/``update`` (it is never donated, so it stays valid)."""
        if not self.takes_segments:
            raise BindingError(self._no_segments_message("upload_segments"))
        arrays = self._segment_arrays("upload_segments", segments)
        specs = self.manifest.group("segments")
        return Tree("segments", specs, [dev.upload(self.device, a) for a in arrays], self)

    def _segments_input(self, fname: str, segments) -> dict:
        if not self.takes_segments:
            if segments is not None:
                raise BindingError(self._no_segments_message(fname))
            return {}
        if segments is None:
            seg = self.manifest.segments or {}
            raise BindingError(
                f"{fname}(): this flat module ({self.manifest.name}: "
                f"{' |> '.join(self.manifest.composition) or '?'}) reduces per tensor and needs "
                f"segments=, the tensor boundaries of the packed model ({', '.join(seg.get('leaves', []))}, "
                f"int32[n]): flat, packing = polaris_runtime.pack.pack(params_tree), then pass "
                f"segments=packing (or opt.upload_segments(packing), once); see docs/flat-modules.md"
            )
        if isinstance(segments, Tree):
            return {"segments": segments}
        return {"segments": self._segment_arrays(fname, segments)}

    @property
    def _scatters(self) -> bool:
        """Whether a per-tensor sum of this flat module is a scatter (segments.reduction
        "scatter", or centralize's row sums, which always are)."""
        seg = self.manifest.segments or {}
        return seg.get("reduction", "scatter") == "scatter" or "row_ids" in seg.get("leaves", ())

    def _check_workgroup_limit(self, fname: str, n: int) -> None:
        """IREE 3.13 runs a segment sum (a scatter) as one workgroup per element; Vulkan devices
        limited to 65535 workgroups per dimension (measured: Mesa llvmpipe; Mali and Adreno
        report the same limit) silently sum only part of a longer vector. Refuse instead.
        (The tree reduction of fixed-size modules has no scatter and no such limit.)"""
        family = self._limited_vulkan()
        if family is not None and self._scatters and n > VULKAN_SCATTER_LIMIT:
            raise BindingError(
                f"{fname}(): this module's per-tensor reductions cannot cover {n} elements on a "
                f"Vulkan {family} device ({self._built_for}): it runs at most {VULKAN_SCATTER_LIMIT} "
                f"workgroups per dimension and IREE 3.13 spends one per element on a segment sum. "
                f"Use at most {VULKAN_SCATTER_LIMIT} elements per module here, a tree-layout module "
                f"compiled for the model (polaris compile ... --layout), or the llvm-cpu target"
            )

    def _no_segments_message(self, fname: str) -> str:
        why = (
            "a tree layout knows its tensors"
            if self.manifest.layout != "flat"
            else "its transforms do not reduce per tensor (or it was compiled with segments=False)"
        )
        return (
            f"{fname}(): {self.manifest.name} ({self.manifest.layout} layout) takes no segments: "
            f"{why}; drop segments="
        )

    def _segment_arrays(self, fname: str, segments) -> list[np.ndarray]:
        """The ``segments`` group's leaves as (n, 1) int32 host arrays, range-checked."""
        specs = self.manifest.group("segments")
        info = self.manifest.segments or {}
        bounds = {"segment_ids": (0, info.get("max")), "row_ids": (-1, info.get("max_rows"))}
        counts = {"segment_ids": "num_segments", "row_ids": "num_rows"}
        trusted = False
        if isinstance(segments, Mapping):
            got = dict(segments)
        elif all(hasattr(segments, s.name) for s in specs):  # a Packing (or alike)
            got = {s.name: getattr(segments, s.name) for s in specs}
            trusted = all(hasattr(segments, counts[s.name]) for s in specs)
            for s in specs:
                n_have = getattr(segments, counts[s.name], None)
                lo, hi = bounds[s.name]
                if n_have is not None and hi is not None and n_have > hi:
                    raise BindingError(self._too_many(fname, s.name, n_have, hi))
        elif len(specs) == 1 and not isinstance(segments, (str, bytes)):
            got = {specs[0].name: segments}
        else:
            raise BindingError(
                f"{fname}(): segments must be a Packing (polaris_runtime.pack.pack), the Tree from "
                f"upload_segments(), or a dict of {', '.join(s.name for s in specs)}; got "
                f"{type(segments).__name__}"
            )
        missing = [s.name for s in specs if s.name not in got]
        if missing:
            raise BindingError(
                f"{fname}(): segments lack {missing}; this module takes {[s.name for s in specs]} "
                f"(a Packing from polaris_runtime.pack.pack has them all)"
            )
        out = []
        for s in specs:
            a = np.asarray(got[s.name])
            if a.ndim == 1:
                a = a.reshape(-1, 1)
            if a.ndim != 2 or a.shape[1] != 1:
                raise BindingError(
                    f"{fname}(): segments leaf {s.name!r} has shape {a.shape}; expected int32[n] "
                    f"(one id per element of the packed vector)"
                )
            if not np.issubdtype(a.dtype, np.integer):
                raise BindingError(
                    f"{fname}(): segments leaf {s.name!r} has dtype {a.dtype}; expected integer ids (int32)"
                )
            lo, hi = bounds[s.name]
            if s.name == "segment_ids" and info.get("reduction") == "aligned":
                a = _block_ids(fname, a, int(s.shape[0]), int(info["align"]), getattr(segments, "align", None) if trusted else None)
                if not trusted:
                    _check_non_decreasing(fname, a[:, 0], "aligned", "block")
            if s.name == "segment_ids" and info.get("reduction") == "tree" and not trusted:
                _check_non_decreasing(fname, a[:, 0])  # a Packing's are, by construction
            if not trusted and a.size:
                a_min, a_max = int(a.min()), int(a.max())
                if a_min < lo:
                    raise BindingError(
                        f"{fname}(): segments leaf {s.name!r} holds {a_min}; ids start at {lo}"
                    )
                if hi is not None and a_max >= hi:
                    raise BindingError(self._too_many(fname, s.name, a_max + 1, hi))
            out.append(np.ascontiguousarray(a, dtype=np.int32))
        self._check_workgroup_limit(fname, out[0].shape[0])
        return out

    def _too_many(self, fname: str, leaf: str, have: int, limit: int) -> str:
        what, opt = ("tensors", "max_segments") if leaf == "segment_ids" else ("rows", "max_rows")
        return (
            f"{fname}(): the packed model has {have} {what} but this module was compiled for at "
            f"most {limit} ({leaf} < {limit}); recompile with a larger bound "
            f"(polaris compile ... --{opt.replace('_', '-')} N, or compile_optimizer(..., {opt}=N))"
        )

    def _zeros_like_params(self, grads):
        """Zero params for ``update`` without params (transforms that do not read them).

        Device gradients are never read back for this: zeros of their shapes are made on the
        device once and reused while the shapes stay (``update`` does not donate params)."""
        if isinstance(grads, Tree) or (isinstance(grads, (list, tuple)) and grads and all(isinstance(g, rt.DeviceArray) for g in grads)):
            arrays = grads.arrays if isinstance(grads, Tree) else grads
            key = tuple((tuple(a._buffer_view.shape), s.dtype) for s, a in zip(self.manifest.params, arrays, strict=False))
            cached = self._zeros_cache
            if cached is None or cached[0] != key:
                zeros = [dev.upload(self.device, np.zeros(shape, np.dtype(dt))) for shape, dt in key]
                cached = self._zeros_cache = (key, zeros)
            return cached[1]
        if isinstance(grads, Mapping):
            return {k: (self._zeros_like_params(v) if isinstance(v, Mapping) else np.zeros_like(np.asarray(v))) for k, v in grads.items()}
        if isinstance(grads, (list, tuple)):
            return [np.zeros_like(np.asarray(g)) for g in grads]
        return np.zeros_like(np.asarray(grads))

    # -- hyperparameters --------------------------------------------------------------------
    @property
    def hyperparameters(self) -> dict[str, float]:
        """Tunable hyperparameters and their compiled-in defaults."""
        return {h.name: h.default for h in self.manifest.hyperparameters}

    def _hp(self, name: str):
        for h in self.manifest.hyperparameters:
            if h.name == name:
                return h
        raise KeyError(
            f"{self.manifest.name} has no tunable hyperparameter {name!r}; tunable: "
            f"{', '.join(self.hyperparameters) or '(none)'}"
        )

    def get_hyperparameter(self, state: Tree, name: str) -> float:
        return float(state[self._hp(name).leaf])

    def set_hyperparameter(self, state: Tree, name: str, value: float) -> Tree:
        """Sets a hyperparameter in ``state`` (in place, on the device) and returns ``state``."""
        state.set(self._hp(name).leaf, value)
        return state

    # -- progress: step count and learning rate ---------------------------------------------
    @property
    def count_leaf(self) -> str | None:
        """The state leaf :meth:`step_count` reads: the first whose last path component is
        ``count`` (``0/count`` for adam), or ``None`` when the state has no step counter."""
        for s in self.manifest.state:
            if s.name.rsplit("/", 1)[-1] == "count" and s.shape == () and s.dtype == "int32":
                return s.name
        return None

    def step_count(self, state: Tree) -> int:
        """The number of updates ``state`` has seen, read from its int32 ``count`` leaf.

        That is the first state leaf (ABI order) named ``count``: the step counter of the first
        member that keeps one (``0/count`` for adam). Inside ``apply_if_finite`` it counts the
        applied steps only (skipped ones are in ``notfinite_count``/``total_notfinite``).
        Raises :class:`ModuleError` when the state has no counter (e.g. plain ``sgd``).
        """
        leaf = self.count_leaf
        if leaf is None:
            raise ModuleError(
                f"{self.manifest.name}'s state has no step counter (no int32 leaf named 'count'; "
                f"its leaves: {', '.join(s.name for s in self.manifest.state) or '(none)'}); count "
                f"the steps in the host loop instead"
            )
        return int(state[leaf])

    def current_learning_rate(self, state: Tree) -> float:
        """The learning rate the *next* step will use.

        A numeric rate is the tunable hyperparameter ``learning_rate`` (as set by
        :meth:`set_hyperparameter`). A schedule is evaluated by the module's own
        ``learning_rate(state...)`` export, which the compiler adds when the rate is a schedule
        (``schedule(count)`` at the scale member's count, so no JAX is needed here). Raises
        :class:`ModuleError` when the module has neither (no learning rate member, or one nested
        inside a combinator such as ``apply_if_finite``, or a module compiled before the export
        existed).
        """
        if any(h.name == "learning_rate" for h in self.manifest.hyperparameters):
            return self.get_hyperparameter(state, "learning_rate")
        if "learning_rate" in self.manifest.functions:
            out = self.call("learning_rate", state=state)["learning_rate"]
            return float(out.leaves()[0])
        raise ModuleError(
            f"{self.manifest.name} has no readable learning rate: no tunable 'learning_rate' "
            f"hyperparameter and no 'learning_rate' export (composition "
            f"{' |> '.join(self.manifest.composition) or '?'}; the export is compiled only for a "
            f"top-level scale_by_learning_rate with a schedule)"
        )

    # -- checkpoints --------------------------------------------------------------------------
    def save_checkpoint(self, path, state, params=None):
        """``polaris_runtime.checkpoint.save(path, self, state, params)``: atomic, and
        ``state``/``params`` stay usable (they are read back, not donated)."""
        from polaris_runtime import checkpoint

        return checkpoint.save(path, self, state, params)

    def restore_checkpoint(self, path, *, strict: bool = False):
        """``polaris_runtime.checkpoint.restore(path, self)``: ``(state, params_or_None)`` Trees."""
        from polaris_runtime import checkpoint

        return checkpoint.restore(path, self, strict=strict)


def read_manifest(vm_module: rt.VmModule) -> Manifest:
    for fname in vm_module.function_names:
        try:
            refl = vm_module.lookup_function(fname).reflection
        except Exception:  # pragma: no cover
            continue
        if REFLECTION_KEY in refl:
            return Manifest.from_json(refl[REFLECTION_KEY])
    raise ModuleError(
        "the module carries no polaris-iree manifest (no exported function has the "
        f"{REFLECTION_KEY!r} reflection attribute); was it built by `polaris compile`?"
    )


def _read_bytes(path_or_bytes) -> tuple[bytes, str]:
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        return bytes(path_or_bytes), "<bytes>"
    p = pathlib.Path(os.fspath(path_or_bytes))
    if not p.is_file():
        raise ModuleError(f"module file {str(p)!r} does not exist")
    return p.read_bytes(), str(p)


def inspect_module(path_or_bytes) -> Manifest:
    """The manifest of a module, read from the module alone (no device needed)."""
    data, where = _read_bytes(path_or_bytes)
    vm = _vm_module(rt.VmInstance(), data, where)
    return read_manifest(vm)


def _vm_module(instance, data: bytes, where: str) -> rt.VmModule:
    if len(data) < 16:
        raise ModuleError(f"{where} is not an IREE module: only {len(data)} bytes")
    try:
        return rt.VmModule.copy_buffer(instance, data)
    except (ValueError, RuntimeError) as e:
        raise ModuleError(
            f"{where} is not a valid IREE module (corrupt or truncated, or built by an IREE "
            f"other than the runtime's {_iree_version()}): {e}"
        ) from None


def _iree_version() -> str:
    try:
        from importlib.metadata import version

        return version("iree-base-runtime")
    except Exception:  # pragma: no cover
        return "unknown"


def load(path_or_bytes, device: str | None = None) -> Module:
    """Loads a polaris-iree module.

    Args:
      path_or_bytes: a ``.vmfb`` path or its bytes.
      device: an IREE driver name (``local-task``, ``local-sync``, ``cuda``, ``vulkan``, ...);
        default: the driver for the module's own target.

    Returns:
      An :class:`Optimizer` for optimizer modules, a :class:`Module` for function modules.
    """
    data, where = _read_bytes(path_or_bytes)
    probe = _vm_module(rt.VmInstance(), data, where)
    manifest = read_manifest(probe)
    targets = manifest.target.get("targets") or [manifest.target.get("name", "llvm-cpu")]
    driver = dev.pick_driver(list(targets), device, manifest.target.get("execution") == "async")
    dev.check_vulkan_family(manifest.target, driver)
    cfg = dev.config_for(driver)
    vm = _vm_module(cfg.vm_instance, data, where)
    cls = Optimizer if manifest.kind == "optimizer" else Module
    return cls(vm, manifest, cfg, driver, where)
