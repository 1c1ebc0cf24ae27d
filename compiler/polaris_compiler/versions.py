"""Versions recorded in every manifest (a .vmfb only loads in the IREE runtime it was built for)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def _v(pkg: str) -> str:
    try:
        return version(pkg)
    except PackageNotFoundError:
        return "unknown"


def all_versions() -> dict[str, str]:
    return {
        "polaris_iree": _v("polaris-iree"),
        "jax": _v("jax"),
        "jaxlib": _v("jaxlib"),
        "iree_compiler": _v("iree-base-compiler"),
        "iree_runtime": _v("iree-base-runtime"),
    }
