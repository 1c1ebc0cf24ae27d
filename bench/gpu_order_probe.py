"""Probe: the runtime's default ``order`` on a GPU host, and what a scalar read costs there.

Loads the 1000064 Adam ``--async`` module of ``out/gpu-modules`` on CUDA with ``order=None`` (the
default) and ``order="fences"``; prints which order the default resolved to, the time of one step
followed by ``wait()`` / a scalar leaf read / ``step_count``, a scalar read with nothing in flight,
2000 steps back to back, a scalar read through IREE's ``DeviceArray.to_host`` and through
``polaris_runtime.device.to_host`` (its staging buffer for small reads), and the largest difference of the parameters between the two orders
after the same 2200 steps (0 expected). Fourteenth pass of docs/performance.md.

    python3 bench/gpu_order_probe.py      # on the GPU host, from the repository root
"""
import time, statistics, numpy as np, sys
sys.path.insert(0, "runtime")  # polaris_runtime from this checkout
import polaris_runtime as pr
from polaris_runtime import device as dev
from polaris_runtime.module import _iree_version
print("iree runtime", _iree_version())
path = "out/gpu-modules/adam-flat1000064-async-cuda.vmfb"
n = 1000064
p = np.random.default_rng(0).standard_normal(n).astype(np.float32); g = p * 1e-3
res = {}
for order in (None, "fences"):
    opt = pr.load(path, device="cuda", order=order)
    print("order", order, "->", opt.order)
    s = opt.init(p); q = p; gd = [dev.upload(opt.device, g)]
    for _ in range(20): q, s = opt.step(q, gd, s)
    opt.wait()
    leaf = opt.count_leaf
    for name, after in (("wait", lambda: opt.wait()), ("count read", lambda: s[leaf]), ("step_count", lambda: opt.step_count(s))):
        ts = []
        for _ in range(60):
            t0 = time.perf_counter(); q, s = opt.step(q, gd, s); after(); ts.append(time.perf_counter() - t0)
        print(f"  step + {name}: {statistics.median(ts)*1e6:.1f} us")
    ts = []
    for _ in range(60):
        t0 = time.perf_counter(); s[leaf]; ts.append(time.perf_counter() - t0)
    print(f"  scalar read alone (nothing in flight): {statistics.median(ts)*1e6:.1f} us")
    arr = s.arrays[s.names.index(leaf)]
    for name, read in (("IREE's DeviceArray.to_host", lambda: np.array(arr.to_host(), copy=True)),
                       ("polaris_runtime.device.to_host", lambda: dev.to_host(arr))):
        ts = []
        for _ in range(60):
            t0 = time.perf_counter(); read(); ts.append(time.perf_counter() - t0)
        print(f"  scalar read, {name}: {statistics.median(ts)*1e6:.1f} us")
    t0 = time.perf_counter()
    for _ in range(2000): q, s = opt.step(q, gd, s)
    opt.wait(); print(f"  2000 steps: {(time.perf_counter()-t0)/2000*1e6:.1f} us/step")
    res[order] = q.numpy()
print("max diff default vs fences after 2200 steps:", float(np.abs(res[None] - res["fences"]).max()))
