"""``polaris``: compile optimizers to IREE modules, list them, inspect modules.

Each command lives in its own module; the heavy imports (jax, the compiler) happen inside the
commands that need them, so ``polaris inspect`` and ``polaris list`` start fast.
"""

from __future__ import annotations

import sys

import click

from polaris.cli.compile_cmd import compile_cmd
from polaris.cli.inspect_cmd import inspect_cmd
from polaris.cli.list_cmd import list_cmd


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="polaris-iree", prog_name="polaris")
def cli() -> None:
    """Composable optimizers compiled ahead of time to IREE modules (.vmfb).

    \b
    Examples:
      polaris list
      polaris compile adam                      # flat module: any model size, CPU
      polaris compile adam --target cuda -o adam.vmfb
      polaris compile sgd momentum=0.9 nesterov=true --layout params.npz
      polaris compile adam learning_rate='cosine_decay(1e-3, decay_steps=1000)'
      polaris inspect adam-flat-f32-llvm-cpu.vmfb --json
    """


cli.add_command(compile_cmd)
cli.add_command(list_cmd)
cli.add_command(inspect_cmd)


def main() -> None:
    cli(prog_name="polaris")


if __name__ == "__main__":
    sys.exit(main())
