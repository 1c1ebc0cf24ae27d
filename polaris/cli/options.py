"""Options shared by several commands."""

from __future__ import annotations

import click

TARGETS = ("llvm-cpu", "cuda", "vulkan", "rocm", "metal")


def target_option(f):
    return click.option(
        "--target",
        "-t",
        default="llvm-cpu",
        show_default=True,
        help=f"Where the module runs: {', '.join(TARGETS)}; several comma-separated go into one module (the runtime's device picks).",
    )(f)


def json_option(f):
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")(f)
