"""``polaris inspect FILE.vmfb``: the manifest, read from the module alone."""

from __future__ import annotations

import json

import click

from polaris.cli.errors import UsageFailure
from polaris.cli.options import json_option


@click.command("inspect")
@click.argument("module", type=click.Path(dir_okay=False))
@json_option
def inspect_cmd(module: str, as_json: bool) -> None:
    """Show what a compiled module is: optimizer, options, layout, signature, target, versions."""
    import polaris_runtime as pr

    try:
        m = pr.inspect_module(module)
    except pr.PolarisRuntimeError as e:
        raise UsageFailure(str(e)) from None
    if as_json:
        click.echo(m.to_json(indent=2))
        return
    click.secho(f"{module}", bold=True)
    click.echo(f"  {m.kind}: {m.name}  (schema v{m.schema_version}, layout {m.layout})")
    if m.options:
        click.echo("  options: " + ", ".join(f"{k}={v}" for k, v in m.options.items()))
    if m.composition:
        click.echo("  composition: " + " |> ".join(m.composition))
    t = m.target
    click.echo(f"  target: {t.get('name')} ({t.get('backend')}; driver {t.get('driver')})")
    click.echo(f"  flags: {' '.join(t.get('flags', []))}")
    for note in t.get("notes", []):
        click.echo(f"  note: {note}")
    click.echo("  versions: " + ", ".join(f"{k} {v}" for k, v in m.versions.items()))
    for fname, f in m.functions.items():
        donates = f" (donates {', '.join(f.donates)})" if f.donates else ""
        click.echo(f"  {fname}({', '.join(f.inputs)}) -> ({', '.join(f.outputs)}){donates}")
    for g, leaves in m.groups.items():
        click.echo(f"  {g}: {len(leaves)} leaves")
        for s in leaves[:50]:
            click.echo(f"    {s.name:<32} {s.shape_str():<16} {s.dtype}")
        if len(leaves) > 50:
            click.echo(f"    ... {len(leaves) - 50} more (--json shows all)")
    if m.hyperparameters:
        click.echo("  tunable hyperparameters:")
        for h in m.hyperparameters:
            click.echo(f"    {h.name} = {h.default:g}  (state leaf {h.leaf})")
