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
import os
import pathlib
import threading
import weakref
from collections.abc import Mapping
from typing import Any

import iree.runtime as rt
import numpy as np

from polaris_runtime import device as dev
from polaris_runtime.errors import (
    IREE_ERRORS,
    BindingError,
    DeviceError,
    ModuleError,
    failed_inside_iree,
)
from polaris_runtime.manifest import REFLECTION_KEY, Manifest, dim_ref
from polaris_runtime.plan import _CallPlan, _direct_call
from polaris_runtime.tree import (
    Tree,
    _check_leaf,
    _group_dims,
    _merge_dims,
    _same_arrays,
    flatten_names,
    unflatten_names,
)

__all__ = ["Module", "Optimizer", "Tree", "flatten_names", "inspect_module", "load", "read_manifest", "unflatten_names"]


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
            mod._tails = {}  # transient buffers (external_transients), freed while the device exists
            mod._spares = {}  # spare counts (spare_counts), likewise
    gc.collect()


class Module:
    """A loaded ``.vmfb``: its manifest, its device and its exported functions."""

    def __init__(self, vm_module: rt.VmModule, manifest: Manifest, config: rt.Config, driver: str, path: str,
                 order: str | None = None):
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
        self.order = resolve_order(order, self._asynchronous, driver, path)
        # order="stream": no call waits for the one before it; the driver's one queue orders them
        # (load's docstring). Call k signals semaphore k % STREAM_RING of this ring, and is queued
        # only once call k - STREAM_RING (the last to signal that semaphore) has signalled: no two
        # queued calls signal one semaphore, so their completions cannot signal it out of order.
        self._ring = (
            (self._sem, *(config.device.create_semaphore(0) for _ in range(STREAM_RING - 1)))
            if self.order == "stream" else None
        )
        self._ahead = FENCES_AHEAD.get(driver.split("://")[0], FENCES_AHEAD_DEFAULT)  # order="fences"
        # Functions compiled with externalized transients (CompileOptions.external_transients)
        # take their transient storage as a buffer after the arrays (before an async call's
        # fences): one per function, allocated here and passed to every call. Calls of a module
        # never overlap on its device (one lock; async calls chained on one semaphore).
        self._tails: dict[str, tuple] = {}
        for name in manifest.functions:
            buf = _transient_buffer(vm_module, name, config.device, path)
            if buf is not None:
                self._tails[name] = (buf,)
        if any(self._direct.get(name) is None for name in self._tails):
            raise ModuleError(f"{path}: a function taking a transient buffer that this runtime cannot call directly")
        # Step counters kept in two buffers (CompileOptions.spare_counts; manifest
        # functions.<name>.spares): the function writes each counter's new value into a spare
        # passed after the arrays (before the transient buffer) and leaves the old buffer as it
        # was, which becomes the spare of the next call. One set per function, swapped under the
        # lock by every path that calls it (_direct_call, _CallPlan); allocated here.
        self._spares: dict[str, tuple] = {}  # name -> the spares' buffer views, in manifest order
        self._spare_in_state: dict[str, tuple[int, ...]] = {}  # name -> the counters' state leaf indices
        self._spare_at: dict[str, tuple[int, ...]] = {}  # name -> their positions among the arguments
        state_names = [leaf.name for leaf in manifest.groups.get("state", ())]
        for name, f in manifest.functions.items():
            if not f.spares:
                continue
            if self._direct.get(name) is None:
                raise ModuleError(f"{path}: a function taking spare counts that this runtime cannot call directly")
            before = sum(len(manifest.group(g)) for g in f.inputs[: f.inputs.index("state")])
            self._spare_in_state[name] = idx = tuple(state_names.index(leaf) for leaf in f.spares)
            self._spare_at[name] = tuple(before + i for i in idx)
            self._spares[name] = tuple(  # signless, as IREE's results are
                rt.asdevicearray(config.device, np.zeros((), np.int32), element_type=rt.HalElementType.INT_32)._buffer_view
                for _ in idx
            )
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
        t = self._tick
        if self._ring is None:
            done = rt.HalFence.create_at(self._sem, t)
        else:  # the last call on each semaphore of the ring
            n = len(self._ring)
            done = rt.HalFence(n)
            for k in range(max(0, t - n), t):
                done.insert(self._ring[k % n], k // n + 1)
        self._wait_for(done)

    def _wait_for(self, fence) -> None:
        try:
            fence.wait()
        except RuntimeError as e:
            raise ModuleError(f"a call queued on {self.driver} failed on the device: {e}") from None

    def _fences(self) -> tuple | None:
        """(wait, signal) fences for the next call of an async module (call under ``_lock``).
        ``order="fences"``: call k waits for value k of the module's semaphore and signals k + 1.
        With ``limit`` calls unfinished (:data:`FENCES_AHEAD`), the host waits here until no more
        than ``resume - 1`` are before queuing call k: with no bound, the calls queued ahead made
        each later call dearer and held memory (nineteenth pass: an H100 took 64 us a step over
        2000 steps, 123 us over 10000, over 250 us over 100000; local-task 194 us over 2000 and
        336 us over 20000, 20 KB a queued call).
        ``order="stream"``: call k signals value k // n + 1 of semaphore k % n of the ring
        (n = :data:`STREAM_RING`); its wait fence, value k // n of that semaphore (call k - n's
        signal), is waited for here on the host when the device has not reached it yet, so every
        call is queued with its wait already met and the driver issues it at once, in order, and
        the ring's semaphores are each signalled in order."""
        if self._sem is None:
            return None
        t = self._tick
        if self._ring is None:
            fences = rt.HalFence.create_at(self._sem, t), rt.HalFence.create_at(self._sem, t + 1)
            limit, resume = self._ahead
            if t >= limit and not _reached(self._sem, t - limit + 1):  # call t - limit unfinished
                self._wait_for(rt.HalFence.create_at(self._sem, t - resume + 1))
        else:
            n = len(self._ring)
            sem, v = self._ring[t % n], t // n
            fences = rt.HalFence.create_at(sem, v), rt.HalFence.create_at(sem, v + 1)
            if v and not _reached(sem, v):  # n calls are queued: wait for the oldest
                self._wait_for(fences[0])
        self._tick = t + 1
        return fences

    def _invoke(self, fname: str, function, args: rt.VmVariantList, ret: rt.VmVariantList) -> None:
        """Invokes ``function`` with ``args`` (call under ``_lock``): every direct call of an export
        goes through here. For an async module the call's wait and signal fences
        (:meth:`_fences`) are appended."""
        fences = self._fences()
        if fences is not None:
            args.push_ref(fences[0])
            args.push_ref(fences[1])
        try:
            self._context.vm_context.invoke(function, args, ret)
        except IREE_ERRORS as e:
            _unblock(fences)
            raise failed_inside_iree(fname, self.driver, e) from None

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
        refs = (dim_ref(d) for s in self.manifest.params for d in s.shape if isinstance(d, str))
        n = max((k * dims.get(sym, 0) for k, sym in refs), default=0)  # elements of the flat vector
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
        if self._asynchronous or fname in self._tails or fname in self._spares:  # IREE's FunctionInvoker
            # cannot pass fences, a transient buffer or spares: upload host arrays here, so the direct call takes them
            args = [a if isinstance(a, rt.DeviceArray) else dev.upload(self.device, a) for a in args]
        with self._lock:
            if fname in UNCHAINED_EXPORTS and self._sem is not None:
                # IREE drops the wait fence of an async export that reads none of its arguments'
                # values (init: zeros shaped like params); its signal could then come before the
                # earlier calls' and fail the module's timeline, so they are waited for first
                self.wait()
            if direct is not None and all(isinstance(a, rt.DeviceArray) for a in args):
                results = direct(self, args)
            else:
                try:
                    results = self._functions[fname](*args)
                except IREE_ERRORS as e:
                    raise failed_inside_iree(fname, self.driver, e) from None
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


def _transient_buffer(vm_module: rt.VmModule, name: str, device, path: str):
    """The buffer function ``name`` takes for its transients, or None if it takes none."""
    refl = vm_module.lookup_function(name).reflection
    if "iree.abi.transients.size" not in refl:
        return None
    size = refl.get("iree.abi.transients.size.constant")
    if size is None:
        raise ModuleError(
            f"{path}: {name}() takes transient storage whose size depends on its arguments; this "
            f"runtime passes constant sizes only (recompile without external_transients)"
        )
    return device.allocator.allocate_buffer(
        memory_type=rt.MemoryType.DEVICE_LOCAL, allowed_usage=rt.BufferUsage.DEFAULT, allocation_size=max(int(size), 16)
    )


def _reached(sem, value: int) -> bool:
    """Whether ``sem`` has reached ``value`` (False where it failed: waiting says why)."""
    try:
        return sem.query() >= value
    except RuntimeError:
        return False


def _unblock(fences) -> None:
    """After an async call that failed before it was queued: signal its fence, so that the
    module's next call (which waits for it) and :meth:`Module.wait` do not wait forever.

    The calls queued before it on the same semaphore must signal their values first: a timeline
    signalled past a value fails the device's later signal of that value (IREE: "semaphore
    already signaled past"), so this waits for the call's wait fence, then signals. (Under
    ``order="stream"`` that fence is the last call on the same semaphore of the ring, already met.)"""
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


# Exports whose async form does not wait for its wait fence: IREE 3.13 lowers an export that reads
# none of its arguments' values (init only needs params' shapes) without the wait, so the runtime
# waits for the module's earlier calls before calling one. Called while steps were still queued,
# init signalled its value first and the timeline failed ("semaphore already signaled past").
UNCHAINED_EXPORTS = frozenset({"init"})

ORDERS = ("fences", "stream")
# drivers that run a module's submissions in the order they are made, each after the one before:
# IREE's CUDA HAL issues every submission whose waits are met onto its one CUstream at once
# (IREE 3.13; an H100 ran 1000 Adam steps this way bit-identical to fence-chained ones,
# docs/performance.md, fourteenth pass; but see STREAM_CHECKED_IREE); local-sync runs each call to
# the end on the caller's thread. local-task, Vulkan and HIP may finish them out of order.
STREAM_ORDERED_DRIVERS = ("cuda", "local-sync")
# IREE runtime versions whose CUDA HAL was checked to work so (order=None picks "stream" there).
# The seventeenth pass's stream order (one semaphore for every call) failed once on an H200 with
# IREE 3.13.0 after 6427 calls ("timeline already at 6427, cannot signal 6426": two calls'
# completions signalled out of order). The ring (STREAM_RING, eighteenth pass) queues no two calls
# on one semaphore; on an H100 with IREE 3.13.0 (nineteenth pass) it ran 11 trials of 2000 to
# 100000 Adam steps with three gradients in turn without a failure, bit-identical to fence-chained
# ones wherever both ran (8 trials), at 20-25 us a step at 1M parameters against 31-32 us for
# bounded fences (FENCES_AHEAD).
STREAM_CHECKED_IREE: tuple[str, ...] = ("3.13.",)
# Semaphores in a stream-ordered module's ring (Module._fences): at most this many of its calls are
# queued at once, each signalling a semaphore of its own. The seventeenth pass's stream order used
# one semaphore for every call, and two completions signalled it out of order (above).
STREAM_RING = 8
# Under order="fences", (limit, resume) per driver: with `limit` calls of a module unfinished, the
# host waits until `resume - 1` are before queuing the next (Module._fences). Unbounded, the calls
# queued ahead made every later one dearer on CUDA (an H100, 1M Adam: 64 us a step over 2000 steps,
# 123 us over 10000, over 250 us over 100000) and on local-task (194 us over 2000, 336 us over
# 20000, and 20 KB of host memory a queued call). Bounded at 8 with a wait per call, the H100 took
# 31-32 us at 1e4 and 1e5 steps (nineteenth pass). On local-task each wait costs (2 cores: 8, 8
# took 420 us a step, 8, 4 297 us, 64, 32 186 us, unbounded 180-194 us over 3000 steps): there
# the host waits seldom and long. Drivers not named take the default: Vulkan measured only on
# lavapipe (where it cost nothing, and unbounded held 7 KB a queued call), HIP not at all.
FENCES_AHEAD: dict[str, tuple[int, int]] = {"cuda": (STREAM_RING, STREAM_RING)}
FENCES_AHEAD_DEFAULT = (64, 32)


def resolve_order(order: str | None, asynchronous: bool, driver: str, path: str = "this module", iree_version: str | None = None) -> str:
    """The ordering of an async module's calls (:func:`load`'s ``order``): ``None`` picks
    ``"stream"`` for async modules on CUDA with an IREE runtime it was checked on, else ``"fences"``;
    an explicit choice is checked against the module and the driver."""
    base = driver.split("://")[0]
    if order is None:  # (the installed runtime's version is looked up only where it decides)
        checked = asynchronous and base == "cuda" and (iree_version or _iree_version()).startswith(STREAM_CHECKED_IREE)
        return "stream" if checked else "fences"
    if order not in ORDERS:
        raise ValueError(f"order={order!r} is not an ordering polaris knows; use one of: {', '.join(ORDERS)}")
    if order == "stream":
        if not asynchronous:
            raise ModuleError(
                f"{path}: order='stream' is for modules compiled with --async (a synchronous module's "
                f"calls already finish before they return); recompile with --async, or leave order as 'fences'"
            )
        if base not in STREAM_ORDERED_DRIVERS:
            raise ModuleError(
                f"order='stream' needs a driver that runs submissions in the order they are made "
                f"({', '.join(STREAM_ORDERED_DRIVERS)}); {driver!r} may finish them out of order: leave order as 'fences'"
            )
    return order


def _derived_segments(name: str, given: dict[str, np.ndarray], info: dict) -> np.ndarray:
    """A segments leaf the runtime computes: ``segment_bounds`` (a "tree" module), where each
    tensor's run of the non-decreasing ``segment_ids`` starts, ``(max + 1, 1)`` int32."""
    if name != "segment_bounds":
        raise ModuleError(f"the module's manifest names a derived segments leaf {name!r} this runtime does not know; upgrade polaris-iree-runtime")
    ids = given["segment_ids"][:, 0]
    bounds = np.searchsorted(ids, np.arange(int(info["max"]) + 1), side="left")
    return np.ascontiguousarray(bounds.reshape(-1, 1), dtype=np.int32)


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


def _block_ids(fname: str, ids: np.ndarray, blocks: int | None, align: int, packing_align: int | None) -> np.ndarray:
    """An aligned module's segment ids, one per block of ``align`` elements ((blocks, 1)), from
    ids per element (each block holding one id) or per block; ``packing_align``: the align of
    the Packing they came from, if they did. ``blocks`` is ``None`` for a module of any length,
    which takes ids per element only (ids per block would read as those of a smaller model)."""
    fix = f"pack the model with polaris_runtime.pack.pack(params, align={align}) (and its grads with packing.pack)"
    if packing_align is not None and packing_align % align:
        raise BindingError(
            f"{fname}(): this module sums per tensor over blocks of {align} elements (segments.reduction "
            f"= 'aligned'), so every tensor must start at a multiple of {align}, but the Packing given "
            f"has align={packing_align}; {fix}"
        )
    n = ids.shape[0]
    if blocks is None:  # a module of any length: ids per element, of a multiple of `align` elements
        if n % align:
            raise BindingError(
                f"{fname}(): segments leaf 'segment_ids' has {n} ids; this module of any length takes "
                f"one per element of a vector whose length is a multiple of {align}; {fix}"
            )
        blocks = n // align
    elif n == blocks:
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
                f"segments=, the tensor boundaries of the packed model "
                f"({', '.join(x for x in seg.get('leaves', []) if x not in seg.get('derived', ()))}, "
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
        reduction = seg.get("reduction", "scatter")
        if reduction == "aligned":  # of any length: a scatter over the blocks (the tree needs a size)
            return bool(self.manifest.params) and not isinstance(self.manifest.params[0].shape[0], int)
        return reduction == "scatter" or "row_ids" in seg.get("leaves", ())

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
        """The ``segments`` group's leaves as (n, 1) int32 host arrays, range-checked; a derived
        leaf (``segment_bounds``) computed from the others."""
        info = self.manifest.segments or {}
        derived = set(info.get("derived", ()))
        all_specs = self.manifest.group("segments")
        specs = tuple(s for s in all_specs if s.name not in derived)
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
                blocks = s.shape[0] if isinstance(s.shape[0], int) else None  # None: any length
                a = _block_ids(fname, a, blocks, int(info["align"]), getattr(segments, "align", None) if trusted else None)
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
        given = dict(zip((s.name for s in specs), out, strict=True))
        return [given[s.name] if s.name in given else _derived_segments(s.name, given, info) for s in all_specs]

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


def load(path_or_bytes, device: str | None = None, *, order: str | None = None) -> Module:
    """Loads a polaris-iree module.

    Args:
      path_or_bytes: a ``.vmfb`` path or its bytes.
      device: an IREE driver name (``local-task``, ``local-sync``, ``cuda``, ``vulkan``, ...);
        default: the driver for the module's own target.
      order: how the calls of a module compiled with ``--async`` are ordered on the device.
        ``"fences"``: each call waits for the one before it (a fence on one timeline semaphore),
        what IREE promises. ``"stream"``: no call waits for the one before it; the driver's
        queue orders them. Only where the driver runs submissions in the order they are made
        (``cuda``, whose HAL has one CUDA stream, and ``local-sync``): on an H100 an Adam step at
        1e6 takes 23 us instead of 55 us (torch fused 50-88 us; docs/performance.md, fourteenth
        pass); from 1e7 up the kernel hides the difference. It relies on how IREE's CUDA HAL
        works, not on what it promises. On an H200 (IREE 3.13.0) a loop so ordered, every call
        signalling one semaphore, failed once after 6427 calls (two completions signalled out of
        order; the device then refused every allocation: seventeenth pass); since then the calls
        signal a ring of :data:`STREAM_RING` semaphores, at most that many queued, none two on
        one semaphore (docs/runtime.md, "Ordering"); an H100 ran 1e5-step loops so without a
        failure, bit-identical to fences (nineteenth pass). ``None`` (default) picks it for async
        modules on CUDA with an IREE runtime checked to work so (:data:`STREAM_CHECKED_IREE`:
        3.13), ``"fences"`` everywhere else. Under ``"fences"`` the host runs at most
        :data:`FENCES_AHEAD` calls ahead of the device.
        ``Module.order`` says which one a module got.

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
    return cls(vm, manifest, cfg, driver, where, order)
