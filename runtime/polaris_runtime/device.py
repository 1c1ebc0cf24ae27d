"""Devices: choosing an IREE driver for a module, uploading and reading back arrays."""

from __future__ import annotations

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
                cfg = rt.Config(device=rt.get_device(driver))
            except (RuntimeError, ValueError) as e:
                raise DeviceError(f"could not open a device for driver {driver!r}: {e}") from None
            _configs[driver] = cfg
        return cfg


def pick_driver(targets: list[str], requested: str | None) -> str:
    """The driver to use for a module compiled for ``targets``; checks ``requested`` against them."""
    allowed = [d for t in targets for d in DRIVERS_FOR_TARGET.get(t, ())]
    if requested is None:
        if not allowed:
            raise DeviceError(f"no IREE driver is known for the module's target(s) {targets}")
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


def _needs_staging(device) -> bool:
    return id(device) in _STAGING


def _staged_to_host(array) -> np.ndarray:
    device = array._device
    bv = array._buffer_view
    source = bv.get_buffer()
    dtype = rt.HalElementType.map_to_dtype(bv.element_type)
    shape = tuple(bv.shape)
    nbytes = source.byte_length()
    if nbytes == 0:
        return np.empty(shape, dtype)
    staging = device.allocator.allocate_buffer(
        memory_type=int(rt.MemoryType.HOST_LOCAL | rt.MemoryType.DEVICE_VISIBLE),
        allowed_usage=int(rt.BufferUsage.TRANSFER_TARGET | rt.BufferUsage.MAPPING_SCOPED),
        allocation_size=nbytes,
    )
    sem = device.create_semaphore(0)
    device.queue_copy(
        source,
        staging,
        wait_semaphores=rt.HalFence.create_at(sem, 0),
        signal_semaphores=rt.HalFence.create_at(sem, 1),
    )
    rt.HalFence.create_at(sem, 1).wait()
    mapped = staging.map()
    out = np.array(mapped.asarray(shape, dtype), copy=True)
    if array._override_dtype is not None and array._override_dtype != dtype:
        out = out.astype(array._override_dtype)
    return out
