"""Which devices this machine has, for tests that run where a driver exists and skip elsewhere."""

from __future__ import annotations

import pytest

import polaris_runtime as pr
from polaris_runtime import device as dev


def has(driver: str) -> bool:
    """Whether IREE can open a device for ``driver`` here."""
    try:
        dev.config_for(driver)
        return True
    except pr.DeviceError:
        return False


def device_or_skip(driver: str):
    """The device config for ``driver``, or a skip that says why there is none."""
    try:
        return dev.config_for(driver)
    except pr.DeviceError as e:
        pytest.skip(f"no {driver} device here: {e}")


def vulkan_target() -> str:
    """The Vulkan target family of this machine's device (llvmpipe in CI; ampere where there is
    no Vulkan device, for modules that are only compiled)."""
    if not has("vulkan"):
        return "ampere"
    name = dev.vulkan_device_name("vulkan") or ""
    return "llvmpipe" if "llvmpipe" in name.lower() else "ampere"


def lavapipe_or_skip(why: str) -> None:
    """Skips unless the Vulkan device here is Mesa's lavapipe (llvmpipe)."""
    device_or_skip("vulkan")
    if vulkan_target() != "llvmpipe":
        pytest.skip(why)
