"""Devices: choosing an IREE driver for a module, uploading and reading back arrays."""

from __future__ import annotations

import atexit
import gc
import os
import threading

import iree.runtime as rt
import numpy as np

from polaris_runtime.errors import DeviceError

# Which drivers run which compile target.
DRIVERS_FOR_TARGET = {
    "llvm-cpu": ("local-task", "local-sync"),
    "cuda": ("cuda",),
    "vulkan": ("vulkan",),
    "rocm": ("hip",),
    "metal": ("metal",),
}

_lock = threading.Lock()
_configs: dict[str, rt.Config] = {}


def config_for(driver: str) -> rt.Config:
    """One IREE ``Config`` (instance + device) per driver name, created on first use."""
    with _lock:
        cfg = _configs.get(driver)
        if cfg is None:
            available = rt.query_available_drivers()
            base = driver.split("://")[0]
            if base not in available:
                raise DeviceError(
                    f"IREE driver {driver!r} is not available in this runtime; available drivers: "
                    f"{', '.join(sorted(available))}"
                )
            try:
                device = rt.get_driver(driver).create_device_by_uri(driver, allocators=device_allocators(driver))
                cfg = rt.Config(device=device)
            except (RuntimeError, ValueError) as e:
                raise DeviceError(f"could not open a device for driver {driver!r}: {e}") from None
            _configs[driver] = cfg
            if driver.split("://")[0] not in DRIVERS_FOR_TARGET["llvm-cpu"]:
                _SMALL_READS[id(device)] = _SmallReads(device)
        return cfg


ALLOCATORS = ("caching", "default")


def device_allocators(driver: str) -> list[str] | None:
    """The HAL allocator chain a new device of ``driver`` gets: IREE's caching allocator on the
    CPU drivers, the driver's own elsewhere. ``POLARIS_DEVICE_ALLOCATOR=default`` (or
    ``caching``) overrides.

    Measured (docs/performance.md, fifth pass): a step's transient buffers are allocated and
    freed every call; on the CPU, buffers past glibc's mmap threshold come back as fresh pages
    that fault on first touch, which made a 10M-parameter flat LAMB step 142 ms instead of 61 ms.
    The caching allocator keeps freed blocks for the next call (memory stays at the peak).
    """
    choice = os.environ.get("POLARIS_DEVICE_ALLOCATOR", "").strip().lower()
    if choice and choice not in ALLOCATORS:
        raise DeviceError(
            f"POLARIS_DEVICE_ALLOCATOR={choice!r} is not an allocator polaris knows; use one of "
            f"{', '.join(ALLOCATORS)} (or unset it: caching on CPU drivers)"
        )
    if not choice:
        choice = "caching" if driver.split("://")[0] in DRIVERS_FOR_TARGET["llvm-cpu"] else "default"
    return ["caching"] if choice == "caching" else None


def default_cpu_driver() -> str:
    """``local-sync`` on machines with 2 cores or fewer, else ``local-task``.

    Measured (docs/performance.md): on 2 cores one thread already saturates memory, and
    local-task's hand-off to worker threads costs 30-50 us a call (local-sync: ~6 us): the demo's
    training step went from 0.47 to 0.23 ms, and a 10M-parameter Adam step is no slower. With more
    cores local-task's parallel dispatches win at large sizes. ``POLARIS_CPU_DRIVER`` overrides.
    """
    env = os.environ.get("POLARIS_CPU_DRIVER")
    if env:
        return env
    return "local-sync" if (os.cpu_count() or 1) <= 2 else "local-task"


def pick_driver(targets: list[str], requested: str | None, asynchronous: bool = False) -> str:
    """The driver to use for a module compiled for ``targets``; checks ``requested`` against them.

    An async module (``polaris compile --async``) on the CPU gets ``local-task`` unless
    ``POLARIS_CPU_DRIVER`` says otherwise: its calls overlap the host only where worker threads
    run the work (``local-sync`` runs it inside the call)."""
    allowed = [d for t in targets for d in DRIVERS_FOR_TARGET.get(t, ())]
    if requested is None:
        if not allowed:
            raise DeviceError(f"no IREE driver is known for the module's target(s) {targets}")
        if allowed[0] in DRIVERS_FOR_TARGET["llvm-cpu"]:
            if asynchronous and not os.environ.get("POLARIS_CPU_DRIVER"):
                return "local-task"
            return default_cpu_driver()
        return allowed[0]
    base = requested.split("://")[0]
    if base not in allowed:
        raise DeviceError(
            f"the module was compiled for {', '.join(targets)} and cannot run on driver "
            f"{requested!r}; valid drivers for it: {', '.join(allowed)} (recompile with "
            f"`polaris compile ... --target` for another device)"
        )
    return requested


def upload(device, array: np.ndarray) -> rt.DeviceArray:
    """Copies a host array to ``device`` once; the result can be passed to calls by reference."""
    a = np.asarray(array)
    if not a.flags.c_contiguous:
        a = a.copy(order="C")  # np.ascontiguousarray would turn a 0-d array into 1-d
    return rt.asdevicearray(device, a)


def to_host(array) -> np.ndarray:
    """Reads a device array back into a fresh numpy array.

    iree.runtime's own read-back imports a fresh numpy array as host memory; Vulkan wants
    imported host pointers 4096-byte aligned (lavapipe refuses: "minImportedHostPointerAlignment
    4096"), and may refuse to map device-local memory. There the copy goes through a host-visible
    staging buffer (a queue copy, then a map), the path IREE's C code takes when import is not
    offered.
    """
    if isinstance(array, np.ndarray):
        return array.copy()
    small = _SMALL_READS.get(id(array._device))
    if small is not None:
        out = small.read(array)
        if out is not None:
            return out
    if _needs_staging(array._device):
        return _staged_to_host(array)
    try:
        return np.array(array.to_host(), copy=True)
    except ValueError as e:
        if "import" not in str(e) and "map" not in str(e):
            raise
        _STAGING.add(id(array._device))
        return _staged_to_host(array)


_STAGING: set[int] = set()

# Reads of at most SMALL_READ_BYTES from a GPU (a step count, a hyperparameter, a loss) go through
# one host-visible buffer per device, allocated once: IREE's own read-back registers a fresh numpy
# array with the driver on every call (CUDA: 120-127 us for one scalar on an H100, fourteenth pass).
SMALL_READ_BYTES = 4096


class _SmallReads:
    """One device's staging buffer for small reads: a queue copy into it, a wait, a copy out."""

    def __init__(self, device):
        self.device = device
        self.lock = threading.Lock()
        self.buffer = None  # allocated on first use; False where the device cannot give one
        self.sem = None
        self.tick = 0

    def read(self, array) -> np.ndarray | None:
        """The array's contents, or None where this path does not serve it (too big, no buffer)."""
        source = array._buffer_view.get_buffer()
        nbytes = source.byte_length()
        if nbytes == 0 or nbytes > SMALL_READ_BYTES or self.buffer is False:
            return None
        with self.lock:
            if self.buffer is None:
                try:
                    self.buffer = _staging_buffer(self.device, SMALL_READ_BYTES)
                    self.sem = self.device.create_semaphore(0)
                except (RuntimeError, ValueError):  # no host-visible memory: the general path serves
                    self.buffer = False
                    return None
            t = self.tick
            try:
                _queue_copy(self.device, source, self.buffer, self.sem, t)
            except (RuntimeError, ValueError):  # refused before it was queued: the general path serves
                self.buffer = False
                return None
            self.tick = t + 1
            return _copied_out(array, self.buffer, self.sem, t + 1)


_SMALL_READS: dict[int, _SmallReads] = {}


@atexit.register
def _release_small_reads_at_exit() -> None:
    """Frees the staging buffers while their devices exist: left to the interpreter's shutdown,
    a buffer released after its device crashed the process on exit (SIGSEGV, lavapipe)."""
    for reads in list(_SMALL_READS.values()):
        with reads.lock:
            reads.buffer, reads.sem = False, None  # a read after this takes IREE's own path
    gc.collect()


def _needs_staging(device) -> bool:
    return id(device) in _STAGING


def _staged_to_host(array) -> np.ndarray:
    bv = array._buffer_view
    source = bv.get_buffer()
    nbytes = source.byte_length()
    if nbytes == 0:
        return np.empty(tuple(bv.shape), rt.HalElementType.map_to_dtype(bv.element_type))
    device = array._device
    staging, sem = _staging_buffer(device, nbytes), device.create_semaphore(0)
    _queue_copy(device, source, staging, sem, 0)
    return _copied_out(array, staging, sem, 1)


def _staging_buffer(device, nbytes: int):
    """A host-visible buffer ``device`` can copy into and the host can map."""
    return device.allocator.allocate_buffer(
        memory_type=int(rt.MemoryType.HOST_LOCAL | rt.MemoryType.DEVICE_VISIBLE),
        allowed_usage=int(rt.BufferUsage.TRANSFER_TARGET | rt.BufferUsage.MAPPING_SCOPED),
        allocation_size=nbytes,
    )


def _queue_copy(device, source, staging, sem, t: int) -> None:
    """Queues the copy of ``source`` into ``staging`` after value ``t`` of ``sem``; it signals ``t + 1``."""
    device.queue_copy(
        source, staging, wait_semaphores=rt.HalFence.create_at(sem, t), signal_semaphores=rt.HalFence.create_at(sem, t + 1)
    )


def _copied_out(array, staging, sem, value: int) -> np.ndarray:
    """``array``'s contents from ``staging`` once ``sem`` reaches ``value`` (its copy is done)."""
    bv = array._buffer_view
    dtype = rt.HalElementType.map_to_dtype(bv.element_type)
    rt.HalFence.create_at(sem, value).wait()
    out = np.array(staging.map().asarray(tuple(bv.shape), dtype), copy=True)
    if array._override_dtype is not None and array._override_dtype != dtype:
        out = out.astype(array._override_dtype)
    return out


# Vulkan modules are built for a device family: its subgroup size and dispatch limits are baked
# in. A module for `ampere` (subgroup 32, 2^31-1 workgroups in x) computes wrong reductions on
# Mesa's llvmpipe (subgroup 8, 65535 workgroups), silently. Refuse the known mismatches.
VULKAN_FAMILIES = {
    "nvidia": ("ampere", "ada", "turing", "volta", "pascal", "hopper", "blackwell", "sm_"),
    "amd": ("rdna", "cdna", "gfx", "rx", "mi"),
    "arm": ("valhall", "mali"),
    "qualcomm": ("adreno",),
    "llvmpipe": ("llvmpipe",),
}
_DEVICE_WORDS = {
    "llvmpipe": "llvmpipe",
    "nvidia": "nvidia",
    "geforce": "nvidia",
    "quadro": "nvidia",
    "tesla": "nvidia",
    "h100": "nvidia",
    "h200": "nvidia",
    "radeon": "amd",
    "amd": "amd",
    "mali": "arm",
    "adreno": "qualcomm",
}


def _family_of_target(name: str) -> str | None:
    n = name.lower()
    for fam, prefixes in VULKAN_FAMILIES.items():
        if any(n.startswith(p) for p in prefixes):
            return fam
    return None


def vulkan_device_name(driver: str) -> str | None:
    try:
        devices = rt.get_driver(driver.split("://")[0]).query_available_devices()
    except Exception:
        return None
    return devices[0].get("name") if devices else None


def check_vulkan_family(target: dict, driver: str) -> None:
    """Raises :class:`DeviceError` when a Vulkan module was built for another device family."""
    built_for = target.get("vulkan_target") or target.get("arch")
    if not built_for or not driver.startswith("vulkan"):
        return
    name = vulkan_device_name(driver)
    if not name:
        return
    low = name.lower()
    device_family = next((fam for word, fam in _DEVICE_WORDS.items() if word in low), None)
    module_family = _family_of_target(built_for)
    if device_family and module_family and device_family != module_family:
        suggestion = {"llvmpipe": "llvmpipe", "nvidia": "ampere", "amd": "rdna3", "arm": "valhall", "qualcomm": "adreno"}[device_family]
        raise DeviceError(
            f"the module was compiled for Vulkan target {built_for!r} ({module_family}) but the "
            f"Vulkan device here is {name!r} ({device_family}); its subgroup size and dispatch "
            f"limits differ and results would be wrong. Recompile with --vulkan-target {suggestion}"
        )
