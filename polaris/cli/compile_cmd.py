"""``polaris compile NAME [KEY=VALUE ...]``: an optimizer to a self-describing .vmfb."""

from __future__ import annotations

import pathlib
import time

import click

from polaris.cli.errors import UsageFailure
from polaris.cli.options import TARGETS, target_option


def _parse_options(spec, pairs: tuple[str, ...]) -> dict:
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise UsageFailure(
                f"option {pair!r} must be KEY=VALUE; options of {spec.name}: "
                f"{', '.join(o.name for o in spec.options)}"
            )
        key, value = pair.split("=", 1)
        key = key.strip().replace("-", "_")
        opt = spec.option(key)
        out[key] = opt.parse(spec.name, value)
    return out


def default_output(name: str, options: dict, defaults: dict, layout, dtype: str, target: str, size: int | None = None) -> str:
    from polaris_compiler import options_digest

    parts = [name]
    changed = {k: v for k, v in options.items() if repr(defaults.get(k)) != repr(v)}
    if changed:
        parts.append(options_digest(changed))
    if layout is None:
        parts.append(f"flat{size or ''}-{_short(dtype)}")
    else:
        parts.append(pathlib.Path(layout).stem)
    parts.append(target)
    return "-".join(parts) + ".vmfb"


def _cache_key(
    name, options, *, target, layout, dtype, cpu, cpu_triple, cuda_arch, vulkan_target, extra, max_segments=None,
    max_rows=None, size=None, asynchronous=False, segment_reduction="auto", whole_vector=False, external_transients=None,
    spare_counts=None,
) -> str | None:
    """The compile cache's key of one `polaris compile` request (options that change the module;
    ones left at their defaults are left out, so older keys stay valid), or ``None`` when the
    layout file cannot be read (the normal path then reports it)."""
    from polaris_compiler import cache

    try:
        layout_id = None if layout is None else cache.file_digest(layout)
    except OSError:
        return None  # an unreadable layout: let the normal path report it
    return cache.request_key(
        {
            "optimizer": name,
            "options": sorted(o.strip() for o in options),
            "target": target.lower(),
            "layout": layout_id,
            "dtype": dtype,
            "size": size,
            "cpu": cache.host_cpu() if cpu == "host" else cpu,
            "cpu_triple": cpu_triple,
            "cuda_arch": cuda_arch,
            "vulkan_target": vulkan_target,
            "extra": list(extra),
            # only when set, so default requests keep their keys
            **({"max_segments": max_segments} if max_segments is not None else {}),
            **({"max_rows": max_rows} if max_rows is not None else {}),
            **({"async": True} if asynchronous else {}),
            **({"segment_reduction": segment_reduction} if segment_reduction != "auto" else {}),
            **({"whole_vector": True} if whole_vector else {}),
            **({"external_transients": external_transients} if external_transients is not None else {}),
            **({"spare_counts": spare_counts} if spare_counts is not None else {}),
        }
    )


def _write(path: str, data: bytes) -> pathlib.Path:
    from polaris_runtime.fileio import atomic_write

    p = pathlib.Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(p, data)


def _short(dtype: str) -> str:
    return {"float32": "f32", "float16": "f16", "bfloat16": "bf16"}.get(dtype, dtype)


def _say(msg: str) -> None:
    click.echo(msg, err=True)


@click.command("compile")
@click.argument("name")
@click.argument("options", nargs=-1)
@target_option
@click.option("--layout", "-l", type=click.Path(), help="Parameter layout: .json, .npz or .safetensors. Default: one flat f32 vector of any length.")
@click.option("--dtype", default="float32", show_default=True, type=click.Choice(["float32", "float16", "bfloat16"]), help="Element type of the flat layout.")
@click.option("--size", type=click.IntRange(min=1), default=None, help="Flat layout: exactly this many elements (static shapes: IREE records the step once and replays it each call; other sizes are refused). Default: any length.")
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="Output .vmfb (default: NAME[-OPTIONSHASH]-LAYOUT-TARGET.vmfb).")
@click.option("--cpu", default="host", show_default=True, help="llvm-cpu: CPU to build for: host, a name (znver3, x86-64-v3, generic), a list best-first (x86-64-v4,x86-64-v3,x86-64-v2) or 'portable' (that list: the best variant is picked where the module loads).")
@click.option("--cpu-triple", default=None, help="llvm-cpu: target triple for cross compiling, e.g. aarch64-unknown-linux-gnu.")
@click.option("--cuda-arch", default="sm_80", show_default=True, help="cuda: GPU architecture (PTX runs on newer GPUs).")
@click.option("--vulkan-target", default="ampere", show_default=True, help="vulkan: target GPU family (ampere, rdna3, valhall, adreno, ...).")
@click.option("--save-temps", type=click.Path(file_okay=False), default=None, help="Keep the .mlir, flags and manifest in this folder (also POLARIS_SAVE_TEMPS).")
@click.option("--async", "asynchronous", is_flag=True, help="IREE's async-external model: calls return once their work is queued and the runtime chains them (faster on multi-core CPUs from ~1e5 parameters; docs/runtime.md). Default output NAME-...-TARGET-async.vmfb.")
@click.option("--external-transients/--no-external-transients", default=None, help="Experimental: update and step take their transient storage as a buffer the caller passes (the runtime does) instead of a queue allocation per call; on CUDA the only way --async steps overlap (H100, Adam 1e7: 164 -> 105 us). Default: on for --async modules whose targets are all CUDA (without it where IREE refuses it), off elsewhere (docs/abi.md). --external-transients names the output NAME-...-TARGET[-async]-ext.vmfb.")
@click.option("--spare-counts/--no-spare-counts", default=None, help="step writes its step counter's new value (Adam's count) into a spare buffer the caller passes, and the runtime swaps the two, so that the step's kernel waits for nothing and nothing is copied (H200, Adam 1e7 --size --async: 74.8 -> 72.6 us). Default: on for --async modules whose targets are all CUDA, off elsewhere (no gain on CPUs). Manifest schema version 4; docs/abi.md.")
@click.option("--iree-flag", "extra", multiple=True, help="Extra flag passed to iree-compile (repeatable).")
@click.option("--no-cache", is_flag=True, help="Compile even if the compile cache holds this module (also POLARIS_NO_CACHE=1).")
@click.option("--max-segments", type=click.IntRange(min=1), default=None, help="Flat layout: the most tensors the module serves when its transforms reduce per tensor (lamb, lars, fromage, adafactor). Default 4096. See docs/flat-modules.md.")
@click.option("--segment-reduction", type=click.Choice(["auto", "tree", "scatter", "aligned"]), default="auto", show_default=True, help="Flat layout, transforms that reduce per tensor: 'tree' (needs --size; segment ids must be non-decreasing, as pack() makes them; no scatter: fast on GPUs and on large CPU vectors), 'aligned' (pack(params, align=16): every tensor starts a block of 16, so any length that is a multiple of 16, or --size N, the fastest; for LAMB, LARS and Fromage, not Adafactor or centralize), 'scatter' (any ids, any length) or 'auto' (tree for --size modules on GPU targets, or on the CPU from 40 x --max-segments elements). See docs/flat-modules.md.")
@click.option("--whole-vector", is_flag=True, help="Flat layout: the whole vector is one tensor (no segment ids; per-tensor reductions such as LAMB's trust ratio run over all of it). For a model that is one tensor, or where one global norm is wanted: no segments to pass, and LAMB at 1e4 to 1e6 parameters 5-7x faster than with segments. See docs/flat-modules.md.")
@click.option("--max-rows", type=click.IntRange(min=1), default=None, help="Flat layout: the most rows (of rank >= 2 tensors) for centralize. Default 1048576.")
@click.option("--freeze", "freeze", multiple=True, metavar="PATTERN", help="Leaves whose names match get zero updates and no optimizer state (repeatable; e.g. 'embed/*'). Needs a layout file.")
def compile_cmd(name, options, target, layout, dtype, size, output, cpu, cpu_triple, cuda_arch, vulkan_target, save_temps, asynchronous, external_transients, spare_counts, extra, no_cache, max_segments, segment_reduction, whole_vector, max_rows, freeze):
    """Compile optimizer NAME to an IREE module exporting init, update and step.

    OPTIONS are KEY=VALUE pairs (see `polaris list`); a learning rate may be a schedule,
    e.g. learning_rate='cosine_decay(1e-3, decay_steps=1000)'. An identical request is served
    from the compile cache (no JAX, no compiler): see docs/cache.md.

    NAME `groups` compiles the parameter groups of a layout file (an optimizer per group of
    tensors, chosen by name patterns); see docs/parameter-groups.md.
    """
    t0 = time.perf_counter()
    from polaris_compiler import cache

    if size is not None and layout is not None:
        raise UsageFailure("--size fixes the length of the flat layout; a --layout file already fixes every shape: pass one or the other")
    if whole_vector and layout is not None:
        raise UsageFailure("--whole-vector makes the flat layout's vector one tensor; a --layout file's module knows its tensors: pass one or the other")
    key = None
    if not (no_cache or save_temps) and cache.enabled():
        key = _cache_key(
            name, options, target=target, layout=layout, dtype=dtype, cpu=cpu, cpu_triple=cpu_triple,
            cuda_arch=cuda_arch, vulkan_target=vulkan_target, extra=(*extra, *(f"freeze={f}" for f in freeze)),
            max_segments=max_segments, max_rows=max_rows, size=size, asynchronous=asynchronous,
            segment_reduction=segment_reduction, whole_vector=whole_vector, external_transients=external_transients,
            spare_counts=spare_counts,
        )
        hit = cache.get(key) if key else None
        if hit is not None:
            data, info = hit
            out = output or info.get("output") or f"{name}.vmfb"
            path = _write(out, data)
            for note in info.get("notes", []):  # what the compile that made it said
                _say(f"note: {note}")
            _say(f"[cache] {path} ({len(data) / 1024:.1f} KiB) came from the compile cache "
                 f"(key {key[:12]}, {cache.cache_dir()}) in {time.perf_counter() - t0:.2f} s; --no-cache rebuilds")
            click.echo(str(path))
            return

    from polaris._src import registry
    from polaris._src.errors import PolarisError

    grouped = name == "groups"
    try:
        if grouped:
            if options:
                raise UsageFailure("`polaris compile groups` takes its options from the layout file's groups, not KEY=VALUE")
            if layout is None:
                raise UsageFailure("`polaris compile groups` needs --layout FILE.json with a \"groups\" list (docs/parameter-groups.md)")
            spec, opts = None, {}
        else:
            spec = registry.get(name)
            opts = _parse_options(spec, options)
        from polaris_compiler.options import CompileOptions, Target

        tgts = [Target.parse(t) for t in target.split(",") if t.strip()]
        if not tgts:
            raise UsageFailure(f"--target is empty; valid targets: {', '.join(TARGETS)}")
        tgt = tgts[0]
    except PolarisError as e:
        raise UsageFailure(str(e)) from None

    _say(f"[1/3] building {name} and reading the layout ...")
    from polaris_compiler import CompileError, Layout, compile_optimizer

    record = None
    try:
        tx = None if grouped else spec.build(**opts)
        lay = Layout.flat(dtype, size) if layout is None else Layout.from_file(layout)
        if grouped and not lay.groups:
            raise UsageFailure(f"layout file {layout!r} has no \"groups\" list (docs/parameter-groups.md)")
        if grouped or freeze or lay.freeze or lay.groups:
            from polaris_compiler import groups as param_groups

            tx, record = param_groups.build(lay, tx, None if grouped else name, tuple(freeze))
    except PolarisError as e:
        raise UsageFailure(str(e)) from None
    copts = CompileOptions(
        target=tgt,
        extra_targets=tuple(tgts[1:]),
        cpu=cpu,
        cpu_triple=cpu_triple,
        cuda_arch=cuda_arch,
        vulkan_target=vulkan_target,
        extra_args=tuple(extra),
        save_temps=save_temps,
        asynchronous=asynchronous,
        external_transients=external_transients,
        spare_counts=spare_counts,
    )
    from polaris_compiler.options import execution_notes, layout_notes

    notes = [*copts.notes(), *layout_notes(copts, lay.kind, lay.size, lay.flat_dtype), *execution_notes(copts, lay.parameters)]
    for note in notes:
        _say(f"note: {note}")
    full = {} if grouped else {**spec.defaults(), **opts}
    where = ",".join(t.value for t in copts.targets)
    _say(f"[2/3] tracing init/update/step with jax.export and compiling for {where} ...")
    try:
        bounds = {k: v for k, v in (("max_segments", max_segments), ("max_rows", max_rows)) if v is not None}
        if whole_vector:
            bounds["segments"] = False
        art = compile_optimizer(tx, lay, copts, name=name, optimizer_options=full, record=record, segment_reduction=segment_reduction, **bounds)
    except CompileError as e:
        raise UsageFailure(str(e)) from None
    except PolarisError as e:
        raise UsageFailure(str(e)) from None
    default = default_output(name, opts, {} if grouped else spec.defaults(), layout, dtype, "+".join(t.value for t in copts.targets) + ("-async" if asynchronous else "") + ("-ext" if external_transients else "") + ("-whole" if whole_vector else "") + ("-aligned" if segment_reduction == "aligned" else ""), size)
    for note in art.notes:  # the ones known once the module is traced (segments, defaults refused)
        if note not in notes:
            _say(f"note: {note}")
            notes.append(note)
    path = art.save(output or default)
    if key:
        cache.put(key, art.vmfb, {"output": default, "optimizer": name, "seconds": art.seconds, "notes": notes})
    _say(f"[3/3] wrote {path} ({len(art.vmfb) / 1024:.1f} KiB) in {time.perf_counter() - t0:.1f} s")
    click.echo(str(path))
