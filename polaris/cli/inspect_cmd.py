"""``polaris inspect FILE.vmfb``: the manifest, read from the module alone."""

from __future__ import annotations

import json

import click

from polaris.cli.errors import UsageFailure
from polaris.cli.options import json_option


@click.command("inspect")
@click.argument("module", type=click.Path(dir_okay=False))
@json_option
@click.option(
    "--c-header",
    "c_header",
    is_flag=True,
    help="Print a C header listing the exported functions and their arguments in order "
    "(names, shapes, dtypes, IREE types; dynamic dims as -1 and macros).",
)
@click.option(
    "--prefix",
    default=None,
    metavar="NAME",
    help="Prefix of the C header's identifiers (default: polaris_<file stem>).",
)
def inspect_cmd(module: str, as_json: bool, c_header: bool, prefix: str | None) -> None:
    """Show what a compiled module is: optimizer, options, layout, signature, target, versions.

    \b
    Examples:
      polaris inspect adam.vmfb
      polaris inspect adam.vmfb --json
      polaris inspect adam.vmfb --c-header > adam_module.h
    """
    import polaris_runtime as pr
    from polaris_runtime.manifest import dim_ref

    if as_json and c_header:
        raise UsageFailure("--json and --c-header are exclusive; pick one")
    try:
        m = pr.inspect_module(module)
    except pr.PolarisRuntimeError as e:
        raise UsageFailure(str(e)) from None
    if c_header:
        import pathlib

        from polaris_runtime.cheader import c_header as make_header

        stem = pathlib.Path(module).stem
        click.echo(make_header(m, prefix=prefix or f"polaris_{stem}", source=pathlib.Path(module).name), nl=False)
        return
    if as_json:
        click.echo(m.to_json(indent=2))
        return
    click.secho(f"{module}", bold=True)
    layout = m.layout
    if layout == "flat" and m.params and all(isinstance(d, int) for d in m.params[0].shape):
        layout = f"flat, exactly {m.params[0].shape[0]} elements"
    elif layout == "flat" and m.params and isinstance(m.params[0].shape[0], str):
        multiple = dim_ref(m.params[0].shape[0])[0]  # "16*b": an aligned module of any length
        layout = f"flat, any multiple of {multiple} elements" if multiple > 1 else layout
    click.echo(f"  {m.kind}: {m.name}  (schema v{m.schema_version}, layout {layout})")
    if m.options:
        click.echo("  options: " + ", ".join(f"{k}={v}" for k, v in m.options.items()))
    if m.composition:
        click.echo("  composition: " + " |> ".join(m.composition))
    t = m.target
    click.echo(f"  target: {t.get('name')} ({t.get('backend')}; driver {t.get('driver')})")
    if t.get("execution") == "async":
        click.echo("  execution: async (every export takes a wait fence and a signal fence last; the runtime chains calls)")
    if t.get("hoist_scalars") is False:
        click.echo("  scalars: fused into the elementwise kernels (CompileOptions.hoist_scalars=False; the CUDA default)")
    if t.get("external_transients"):
        click.echo("  transients: update and step take their transient storage as a buffer after the arrays "
                   "(CompileOptions.external_transients, experimental; docs/abi.md)")
    for fname, f in m.functions.items():
        if f.spares:
            click.echo(f"  spare counts: {fname} writes {', '.join(f.spares)} into spare int32 buffers passed after "
                       f"its arrays; the caller swaps them (CompileOptions.spare_counts; docs/abi.md)")
    if t.get("cpu_variants"):
        click.echo("  cpu variants (best first, picked at load): " + ", ".join(t["cpu_variants"]))
    click.echo(f"  flags: {' '.join(t.get('flags', []))}")
    for note in [*t.get("notes", []), *_gpu_notes(m), *(m.segments or {}).get("notes", [])]:
        click.echo(f"  note: {note}")
    click.echo("  versions: " + ", ".join(f"{k} {v}" for k, v in m.versions.items()))
    seg = m.segments
    if seg:
        bounds = []
        if "max" in seg:
            bounds.append(f"{seg['max']} tensors")
        if "max_rows" in seg:
            bounds.append(f"{seg['max_rows']} rows")
        click.echo(f"  takes segments: {', '.join(seg['leaves'])} (at most {', '.join(bounds)}; docs/flat-modules.md)")
        if seg.get("reduction") == "tree":
            click.echo("  per-tensor sums: tree (segment_ids must be non-decreasing: each tensor one run, in order)")
        elif seg.get("reduction") == "aligned":
            a = seg.get("align")
            click.echo(
                f"  per-tensor sums: aligned (every tensor starts at a multiple of {a} elements: "
                f"polaris_runtime.pack.pack(params, align={a}); one segment id per block of {a})"
            )
    for fname, f in m.functions.items():
        donates = f" (donates {', '.join(f.donates)})" if f.donates else ""
        click.echo(f"  {fname}({', '.join(f.inputs)}) -> ({', '.join(f.outputs)}){donates}")
    for g, leaves in m.groups.items():
        click.echo(f"  {g}: {len(leaves)} leaves")
        for s in leaves[:50]:
            click.echo(f"    {s.name:<32} {s.shape_str():<16} {s.dtype}")
        if len(leaves) > 50:
            click.echo(f"    ... {len(leaves) - 50} more (--json shows all)")
    if m.raw.get("param_groups"):
        click.echo("  parameter groups:")
        labels = m.raw.get("labels", {})
        for g in m.raw["param_groups"]:
            members = [n for n, lab in labels.items() if lab == g["label"]]
            click.echo(f"    {g['label']}: {g['optimizer']} {g.get('options', {})} <- {', '.join(members)}")
        if m.raw.get("frozen"):
            click.echo(f"    frozen (no updates, no state): {', '.join(m.raw['frozen'])}")
    if m.hyperparameters:
        click.echo("  tunable hyperparameters:")
        for h in m.hyperparameters:
            click.echo(f"    {h.name} = {h.default:g}  (state leaf {h.leaf})")


def _gpu_notes(m) -> list[str]:
    """The compiler's notes on a module that runs slowly on its GPU targets (a flat layout of
    unknown length or of a length IREE does not vectorise; a tree module on CUDA; a synchronous
    CUDA module), from the manifest alone."""
    if m.kind != "optimizer" or not m.params:
        return []
    try:
        from polaris_compiler.options import CompileOptions, Target, execution_notes, layout_notes
    except ImportError:  # the runtime installed alone: no compiler to ask
        return []
    t = m.target
    try:
        targets = [Target.parse(x) for x in (t.get("targets") or [t.get("name", "")])]
        opts = CompileOptions(target=targets[0], extra_targets=tuple(targets[1:]), asynchronous=t.get("execution") == "async",
                              **({"rocm_arch": t["rocm_arch"]} if "rocm_arch" in t else {}))
    except Exception:  # a target this compiler does not know
        return []
    if m.layout == "flat":
        n = m.params[0].shape[0]
        layout = layout_notes(opts, "flat", n if isinstance(n, int) else None, m.params[0].dtype)
    else:
        layout = layout_notes(opts, m.layout, None)
    return [*layout, *execution_notes(opts)]
