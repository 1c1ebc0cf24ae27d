"""The steady state of a training loop: a call planned once, then invoked without the checks.

:class:`_CallPlan` remembers what the checked call of ``step`` (or ``update``) bound and
returned; a later call with the same Trees and gradients of the same layout goes straight to
IREE (docs/performance.md, second, sixth and seventh passes). :func:`_direct_call` calls an
export without IREE's FunctionInvoker.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import iree.runtime as rt

from polaris_runtime.errors import IREE_ERRORS, failed_inside_iree
from polaris_runtime.tree import Tree, _same_arrays

if TYPE_CHECKING:
    from polaris_runtime.module import Module


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
    args = rt.VmVariantList(sum(map(len, parts)) + 2)  # parts end with the transient buffer, if any
    push = args.push_ref
    for part in parts:
        for r in part:
            push(r)
    return args


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
        """(Under the module's lock.)"""
        arg_list = rt.VmVariantList(len(args) + 3)  # + a transient buffer, an async export's two fences
        for a in args:
            arg_list.push_ref(a._buffer_view)
        spares = mod._spares.get(name)
        for bv in spares or ():
            arg_list.push_ref(bv)
        for r in mod._tails.get(name, ()):
            arg_list.push_ref(r)
        ret = rt.VmVariantList(n_out)
        mod._invoke(name, fn, arg_list, ret)
        if spares is not None:  # the counters' new values are in the spares; their old buffers are the next spares
            mod._spares[name] = tuple(args[i]._buffer_view for i in mod._spare_at[name])
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
        "outputs", "aliased", "lean", "lean_refs", "templates", "fresh", "ret", "invoke", "fast", "kept", "tail",
    )

    def __init__(self, mod: Module, fname: str, out: dict[str, Tree], bound: dict[str, list], segments):
        spec = mod.manifest.functions[fname]
        self.mod, self.fname, self.call = mod, fname, mod._direct[fname]
        self.tail = mod._tails.get(fname, ())  # the transient buffer, passed after the arrays
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
        self.tail = ()

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
        parts = [
            items if g in trusted or g == "segments" else [a._buffer_view for a in items]
            for g, items in zip(self.inputs, given, strict=True)
        ]
        ret = rt.VmVariantList(call.n_out)
        spare_in = mod._spare_in_state.get(self.fname)
        with mod._lock:
            for g in trusted:
                if groups[g]._consumed_by is not None:
                    return None  # another thread donated it meanwhile: the checked path says so
            spares = mod._spares[self.fname] if spare_in else None  # read and swapped under the lock
            mod._invoke(self.fname, call.function, _vm_args([*parts, spares or (), self.tail]), ret)
            if spares is not None:  # the counters' old buffers are the next call's spares
                state = parts[self.inputs.index("state")]
                mod._spares[self.fname] = after = tuple(state[i] for i in spare_in)
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
        if aliased is None and spare_in:
            # the step stores its counters in the spares: in place but for them, it alternates
            # between two sets of buffers (_make_pingpong_step); results are read from the list
            self.aliased = False
            self.fast = self._make_pingpong_step(given, spares, after, out)
        elif aliased is None:
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
        self._prepare_steady()
        self.templates = {}
        for g, specs, dims, _, _, dtypes in self.outputs:
            if g in self.trusted:
                t = Tree._of_views(g, specs, given[self.inputs.index(g)], dtypes, self.mod, dims)
                self.templates[g] = dict(vars(t))
        self.fresh = tuple((lo, hi) for g, _, _, lo, hi, _ in self.outputs if g not in self.trusted)
        self.fast = self._make_fast_step()

    def _prepare_steady(self) -> None:
        """What every steady state uses (:meth:`_make_lean`, :meth:`_make_pingpong_step`): the
        checked groups' argument refs, the plan's result list and, for a synchronous module, the
        VM context's invoke."""
        self.lean_refs = {g: (self.last[g], [a._buffer_view.ref for a in self.last[g]]) for g in self.checked}
        self.ret = rt.VmVariantList(self.call.n_out)  # IREE empties a result list before filling it
        self.invoke = self.mod._context.vm_context.invoke if self.mod._sem is None else None

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

    def _call_donating(self, donated: tuple, args: rt.VmVariantList, spares: tuple | None = None) -> list | None:
        """Invokes the function under the module's lock, unless one of ``donated`` was donated
        meanwhile (then None: the checked path says so); marks them donated. Returns the views of
        the results that are not written in place (update's updates), read under the lock
        because the result list is the plan's. ``spares``: ``(expected, after)``, the module's
        spare counts this call's ``args`` pass (None, and no call, if they are not the module's
        now) and those it leaves."""
        mod, ret = self.mod, self.ret
        lock = mod._lock
        lock.acquire()
        try:
            for value in donated:
                if value._consumed_by is not None:
                    return None
            if spares is not None and mod._spares.get(self.fname) is not spares[0]:
                return None  # another state's call swapped them: the checked path passes the module's
            if self.invoke is not None:  # synchronous: no fences to add
                try:
                    self.invoke(self.call.function, args, ret)
                except IREE_ERRORS as e:
                    raise failed_inside_iree(self.fname, mod.driver, e) from None
            else:
                mod._invoke(self.fname, self.call.function, args, ret)
            if spares is not None:
                mod._spares[self.fname] = spares[1]
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
            parts.append(self.tail)
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

    def _steady_grads(self, params, grads, state, segments) -> list | None:
        """The steady-state step's checks (:meth:`_make_fast_step`, :meth:`_make_pingpong_step`):
        ``params`` and ``state`` are the Trees the last call returned, unchanged, with the same
        segments; then the gradients' argument refs, or None where the checked path must run."""
        trusted = self.trusted
        if params is not trusted["params"] or state is not trusted["state"] or segments is not self.segments:
            return None
        if (params._arr is not None and params._pristine_views() is None) or (
            state._arr is not None and state._pristine_views() is None
        ):
            return None
        last, g_refs = self.lean_refs["grads"]
        if not _is_last(grads, last):
            return self._checked_refs("grads", grads)
        return g_refs

    def _make_fast_step(self):
        """``step(params, grads, state, segments)`` in the steady state as one closure: what
        :meth:`_run_lean` does, without its loops over groups and dicts (a 10k-parameter Adam
        step 11.3 -> 10.1 us, against 9.5 us for ``jax.jit(optax)``; docs/performance.md sixth pass).
        Returns ``(params, state)``, or None where the checked path must run."""
        if (self.fname != "step" or self.inputs[:3] != ("params", "grads", "state")
                or set(self.trusted) != {"params", "state"} or self.fresh):
            return None
        plan, trusted, steady = self, self.trusted, self._steady_grads
        p_refs = self.lean[0][2]
        suffix = [*(r for _, is_donated, const in self.lean[2:] if is_donated is not None for r in const), *self.tail]
        p_tmpl, s_tmpl = self.templates["params"], self.templates["state"]
        new = Tree.__new__
        lock, invoke, function, ret, fname = self.mod._lock, self.invoke, self.call.function, self.ret, self.fname
        # A synchronous module's argument list is kept (plan.kept, as _run_lean keeps it) while the
        # gradients are the same arrays: IREE reads the list and leaves it as it was, and every
        # other entry is a buffer written in place, the same each call. Building it anew costs
        # 1.5 us of a 10 us step (a 10k Adam; docs/performance.md, seventh pass). Keyed by the
        # gradients' ref list, which _checked_refs replaces whole when the gradients change; one
        # tuple, swapped whole, so threads sharing the module read a matching pair.
        def fast(params, grads, state, segments):
            g_refs = steady(params, grads, state, segments)
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
                        raise failed_inside_iree(fname, plan.mod.driver, e) from None
                    params._consumed_by = state._consumed_by = fname
                finally:
                    lock.release()
            p, s = new(Tree), new(Tree)
            p.__dict__, s.__dict__ = p_tmpl.copy(), s_tmpl.copy()
            trusted["params"], trusted["state"] = p, s
            return p, s

        return fast

    def _make_pingpong_step(self, given: list, used: tuple, after: tuple, out: dict[str, Tree]):
        """``step``'s steady state for a module that stores its counters in spare buffers
        (manifest ``functions.step.spares``): what :meth:`_make_fast_step` is for in-place modules,
        with two sets of state buffers used in turn. The call just made took state buffers ``S0``
        and spares ``used`` and returned ``S1`` (``S0`` with its counters in ``used``), leaving the
        counters' old buffers (``after``) as spares; the next call takes ``S1`` with ``after`` and
        returns ``S0``, and so on. Each phase's argument suffix and result templates are made here,
        once. Returns None (no fast path) unless the call wrote everything else in place."""
        if (self.fname != "step" or self.inputs[:3] != ("params", "grads", "state")
                or set(self.trusted) != {"params", "state"}):
            return None
        spare_in = self.mod._spare_in_state[self.fname]
        p0, s0, s1 = given[0], tuple(given[2]), tuple(out["state"]._views)
        others = [i for i in range(len(s0)) if i not in spare_in]
        if not (
            _in_place(p0, out["params"]._views)
            and _in_place(tuple(s0[i] for i in others), tuple(s1[i] for i in others))
            and all(s1[i].get_buffer().ref == used[k].get_buffer().ref for k, i in enumerate(spare_in))
        ):
            return None
        (_, p_specs, p_dims, _, _, p_dt), (_, s_specs, s_dims, _, _, s_dt) = self.outputs
        mod, rest = self.mod, [bv.ref for bv in self.seg_views]  # inputs after the state: segments
        tail = [*self.tail]

        def template(views):
            return dict(vars(Tree._of_views("state", s_specs, views, s_dt, mod, s_dims)))

        # phase k: (argument suffix, the state template it returns, the spares it expects, leaves)
        phases = (
            ([*(bv.ref for bv in s0), *rest, *(bv.ref for bv in used), *tail], template(s1), used, after),
            ([*(bv.ref for bv in s1), *rest, *(bv.ref for bv in after), *tail], template(s0), after, used),
        )
        phase = [1]  # the state just returned is S1
        p_refs = [bv.ref for bv in p0]
        p_tmpl = dict(vars(Tree._of_views("params", p_specs, p0, p_dt, mod, p_dims)))
        self._prepare_steady()
        self.fresh = ()
        plan, trusted, steady, new = self, self.trusted, self._steady_grads, Tree.__new__

        def fast(params, grads, state, segments):
            g_refs = steady(params, grads, state, segments)
            if g_refs is None:
                return None
            k = phase[0]
            suffix, s_tmpl, expected, leaves = phases[k]
            if plan._call_donating((params, state), _vm_args((p_refs, g_refs, suffix)), (expected, leaves)) is None:
                return None
            phase[0] = 1 - k
            p, s = new(Tree), new(Tree)
            p.__dict__, s.__dict__ = p_tmpl.copy(), s_tmpl.copy()
            trusted["params"], trusted["state"] = p, s
            return p, s

        return fast


def _in_place(before: tuple, after: tuple) -> bool:
    """Whether each result view is the argument view's buffer, shape and element type."""
    return len(before) == len(after) and all(
        a.get_buffer().ref == b.get_buffer().ref
        and a.shape == b.shape
        and a.element_type == b.element_type
        and a.byte_length == b.byte_length
        for a, b in zip(before, after, strict=True)
    )
