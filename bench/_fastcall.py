"""Prototype of a faster ``Optimizer.step`` (bench scratch code; the runtime is not changed here).

Two changes, measured by ``bench/overhead.py``:

1. Trust the Trees this module returned. ``step`` returns params and state whose shapes and
   dtypes the module itself produced, so checking every leaf again on the next call (the runtime
   does: about 4.6 us a leaf, most of it ``np.dtype(...).name``) is wasted. Gradients passed as
   the same device arrays as last time are checked once.
2. Call the VM function directly: one ``VmVariantList`` of the arguments' buffer views, one
   ``VmContext.invoke``, the results wrapped as ``DeviceArray``s, instead of IREE's
   ``FunctionInvoker`` (which re-packs through its ABI descriptors and converts every result in
   Python).

The first call of a given set of Trees goes through the normal, fully checked path.
"""

from __future__ import annotations

import iree.runtime as rt


class FastStep:
    def __init__(self, opt):
        self.opt = opt
        self._vf = opt._vm_module.lookup_function("step")
        self._ctx = opt._context.vm_context
        self._device = opt.device
        self._specs_p = opt.manifest.group("params")
        self._specs_s = opt.manifest.group("state")
        self._n_out = len(self._specs_p) + len(self._specs_s)
        self._grads_ok: list | None = None

    def _trusted(self, t) -> bool:
        return getattr(t, "_fast_owner", None) is self and t._consumed_by is None

    def step(self, params, grads, state):
        import polaris_runtime as pr

        if not (self._trusted(params) and self._trusted(state)):
            p, s = self.opt.step(params, grads, state)  # checked path
            p._fast_owner = s._fast_owner = self
            self._grads_ok = list(grads.arrays if isinstance(grads, pr.Tree) else grads)
            return p, s
        g = grads.arrays if isinstance(grads, pr.Tree) else grads
        ok = self._grads_ok
        if ok is None or len(ok) != len(g) or any(a is not b for a, b in zip(ok, g, strict=False)):
            p, s = self.opt.step(params, grads, state)
            p._fast_owner = s._fast_owner = self
            self._grads_ok = list(g)
            return p, s
        args = rt.VmVariantList(len(params._arrays) + len(g) + len(state._arrays))
        for a in params._arrays:
            args.push_ref(a._buffer_view)
        for a in g:
            args.push_ref(a._buffer_view)
        for a in state._arrays:
            args.push_ref(a._buffer_view)
        rets = rt.VmVariantList(self._n_out)
        with self.opt._lock:
            self._ctx.invoke(self._vf, args, rets)
        params._consumed_by = state._consumed_by = "step"
        dev, bv = self._device, rt.HalBufferView
        out = [rt.DeviceArray(dev, rets.get_as_object(i, bv)) for i in range(self._n_out)]
        k = len(self._specs_p)
        p = pr.Tree("params", self._specs_p, out[:k], self.opt)
        s = pr.Tree("state", self._specs_s, out[k:], self.opt)
        p._fast_owner = s._fast_owner = self
        return p, s
