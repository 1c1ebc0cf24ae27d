"""From an optimizer and a layout to a self-describing ``.vmfb``.

``compile_optimizer`` traces ``init``, ``update`` and ``step`` with ``jax.export``, merges them
into one module, embeds the manifest as reflection metadata and runs ``iree-compile``.
``compile_functions`` does the same for arbitrary functions of named input groups (the demo's
loss-and-gradient module).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import pathlib
import re
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from polaris_runtime.fileio import atomic_write
from polaris_runtime.manifest import SCHEMA, SCHEMA_VERSION, Manifest

from polaris._src.apply import apply_updates
from polaris._src.base import (
    Transform,
    hyperparameter_leaves,
    transform_names,
    tree_leaves_with_names,
)
from polaris._src.errors import OptionError
from polaris._src.segments import DEFAULT_MAX_ROWS, DEFAULT_MAX_SEGMENTS, SEGMENT_ALIGN, SEGMENT_REDUCTIONS, flat_segments
from polaris._src.tree_utils import dot_reductions, recording_increments, scalar_hoisting, split_increment
from polaris_compiler import versions
from polaris_compiler.errors import CompileError, LayoutError
from polaris_compiler.export import export_text, manifest_reflection, merge_modules
from polaris_compiler.hazards import anchored
from polaris_compiler.layout import Layout
from polaris_compiler.options import GPU_TARGETS, CompileOptions, Target, build_flags, execution_notes, layout_notes, segment_notes


@dataclasses.dataclass
class Artifact:
    """A compiled module: the ``.vmfb`` bytes, its manifest and the MLIR it came from."""

    vmfb: bytes
    manifest: dict[str, Any]
    mlir: str
    flags: list[str]
    seconds: float = 0.0
    notes: list[str] = dataclasses.field(default_factory=list)

    def save(self, path: str | os.PathLike) -> pathlib.Path:
        """Writes the ``.vmfb`` atomically (temporary file, fsync, rename)."""
        p = pathlib.Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        return atomic_write(p, self.vmfb)


def _spec(name: str, s: jax.ShapeDtypeStruct) -> dict:
    shape = [d if isinstance(d, int) else str(d) for d in s.shape]
    return {"name": name, "shape": shape, "dtype": jnp.dtype(s.dtype).name}


def _json_safe(v: Any) -> Any:
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, float):
        return v
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    if callable(v):
        return repr(v)
    return repr(v)


@contextlib.contextmanager
def _tracing(options: CompileOptions):
    """How the frontend traces for these targets: scalars hoisted or not (``hoist_scalars``);
    sums of squares as dot products only where every target is a CPU (measured 3-4x faster
    there; on CUDA 1.3-4.5x slower, H100, thirteenth pass; Vulkan needs the split reduction)."""
    with scalar_hoisting(options.resolved().hoist_scalars), dot_reductions(options.cpu_only):
        yield


def compile_optimizer(
    tx: Transform,
    layout: Layout,
    options: CompileOptions = CompileOptions(),
    *,
    name: str = "custom",
    optimizer_options: dict[str, Any] | None = None,
    segments: bool | None = None,
    max_segments: int = DEFAULT_MAX_SEGMENTS,
    max_rows: int = DEFAULT_MAX_ROWS,
    segment_reduction: str = "auto",
    record: dict[str, Any] | None = None,
) -> Artifact:
    """Compiles ``tx`` for ``layout`` into a module exporting ``init``, ``update`` and ``step``.

    Args:
      tx: the transform (``polaris.optimizers.adam(...)`` or any composition).
      layout: parameter names, shapes and dtypes (:class:`Layout`).
      options: target and flags (:class:`CompileOptions`).
      name: recorded in the manifest as the optimizer's name.
      optimizer_options: recorded in the manifest (the full option set, defaults included).
      segments: flat layouts only. ``None`` (default): ``update`` and ``step`` take a
        ``segments`` input group (the tensor boundaries of the packed model) exactly when the
        transform reduces per tensor (trust ratio, block RMS, centralize); ``True``: always;
        ``False``: never (the whole vector is then one tensor). See ``docs/flat-modules.md``.
      max_segments: the most tensors a flat module with segments serves (static; 4096).
      max_rows: the most rows (of rank >= 2 tensors) a flat module serves when ``centralize``
        needs ``row_ids`` (static; 2**20).
      segment_reduction: how a flat module sums per tensor (``polaris._src.segments``):
        ``"scatter"`` (any ids, any length), ``"tree"`` (fixed-size flat layouts only; the
        runtime then requires non-decreasing ``segment_ids``, as ``pack`` makes them),
        ``"aligned"`` (flat layouts packed with ``pack(tree, align=16)``: every tensor starts a
        block of 16, so the length is a multiple of 16, fixed or any; the fastest for LAMB,
        LARS and Fromage, not for per-tensor means or ``centralize``) or ``"auto"`` (default): the
        tree for fixed-size layouts on GPU targets, or on the CPU once the vector has at least
        ``TREE_MIN_ELEMENTS_PER_SEGMENT * max_segments`` elements; the scatter otherwise
        (:func:`choose_segment_reduction`; never "aligned", which needs its own packing).
      record: more top-level manifest fields (e.g. parameter groups: ``polaris_compiler.groups``).
    """
    kw = dict(name=name, optimizer_options=optimizer_options, segments=segments, max_segments=max_segments,
              max_rows=max_rows, segment_reduction=segment_reduction, record=record)
    if options.external_transients is None and options.resolved().external_transients:
        # the default for async CUDA modules; IREE refuses it for some (a transient size that
        # depends on the arguments: segment modules of any length, Adadelta; noisy_sgd's
        # emplacement), which then get a queue allocation per call as before
        try:
            return _compile_optimizer(tx, layout, dataclasses.replace(options, external_transients=True), **kw)
        except CompileError as e:
            art = _compile_optimizer(tx, layout, dataclasses.replace(options, external_transients=False), **kw)
            reason = str(e).splitlines()[0]
            art.notes.append(
                f"external transients (the default for async CUDA modules, so that steps overlap) are not "
                f"possible here ({reason}); compiled with a queue allocation per call, whose CUDA "
                f"deallocation makes the host wait for each step"
            )
            return art
    return _compile_optimizer(tx, layout, options, **kw)


def _compile_optimizer(
    tx: Transform,
    layout: Layout,
    options: CompileOptions,
    *,
    name: str,
    optimizer_options: dict[str, Any] | None,
    segments: bool | None,
    max_segments: int,
    max_rows: int,
    segment_reduction: str,
    record: dict[str, Any] | None,
) -> Artifact:
    p_leaves, p_def, state_shape, s_leaves, s_def = _abstract(tx, layout)
    n_p, n_s = len(p_leaves), len(s_leaves)

    def unflat_p(xs):
        return jax.tree.unflatten(p_def, list(xs))

    def unflat_s(xs):
        return jax.tree.unflatten(s_def, list(xs))

    seg_names, counted = _segment_inputs(tx, layout, p_leaves, s_leaves, unflat_p, unflat_s, segments, max_segments, max_rows)
    n_seg = len(seg_names)
    reduction = choose_segment_reduction(segment_reduction, layout, max_segments, options)
    aligned = bool(seg_names) and reduction == "aligned"
    aligned_ok = not counted and "row_ids" not in seg_names  # sums only: what "aligned" can serve
    if aligned and not aligned_ok:
        why = (
            "need row_ids (one per element, for centralize), which an aligned flat module does not take"
            if "row_ids" in seg_names else "divide by each tensor's element count (a per-tensor mean), which an "
            "aligned packing does not carry (its zero padding would count)"
        )
        raise LayoutError(
            f"compile_optimizer: segment_reduction='aligned' sums blocks of {SEGMENT_ALIGN} elements, but "
            f"{name}'s transforms {why}; compile this optimizer's flat module with segment_reduction 'tree' "
            f"or 'scatter' (--segment-reduction), or for its tree layout"
        )
    if aligned and layout.size is None:
        # any length that is a multiple of 16 (16*b elements: b blocks), so that the module can
        # see its vectors as (b, 16) blocks; the same leaves and state in that symbol
        layout = layout.in_blocks(SEGMENT_ALIGN)
        p_leaves, _, state_shape, s_leaves, _ = _abstract(tx, layout)
    block_sums = _aligned_block_sums(layout, max_segments, options) if aligned else "tree"
    seg_leaves = [_segment_struct(layout, aligned)] * n_seg if seg_names else []
    if reduction == "tree" and "segment_ids" in seg_names:
        # where each tensor's run starts, computed by the runtime once, at upload: the module
        # reads the runs instead of searching the ids in every step (21 of 56 barrier-separated
        # stages of LAMB's CUDA step at 1e6; docs/performance.md, fourteenth pass)
        seg_names = [*seg_names, "segment_bounds"]
        seg_leaves = [*seg_leaves, jax.ShapeDtypeStruct((max_segments + 1, 1), jnp.int32)]
        n_seg = len(seg_names)
    # "aligned": the transforms see every flat vector as (n / 16, 16) blocks (segments.py)
    blocks = functools.partial(_as_blocks, n=layout.tree.shape[0]) if aligned else list

    def in_segments(seg):
        if not seg_names:
            return contextlib.nullcontext()
        ids = dict(zip(seg_names, seg, strict=True))
        return flat_segments(
            ids.get("segment_ids"), max_segments, row_ids=ids.get("row_ids"), num_rows=max_rows, reduction=reduction,
            segment_bounds=ids.get("segment_bounds"),
            # several sums in one scatter, 4 accumulators a segment: measured on CPUs only
            block_sums=block_sums, shared_scatter=options.cpu_only, scatter_lanes=SCATTER_LANES if options.cpu_only else 1,
        )

    def init_fn(*p):
        return _abi_shapes(jax.tree.leaves(tx.init(unflat_p(blocks(p)))), s_leaves)

    def update_fn(*args):
        args, seg = args[: len(args) - n_seg], args[len(args) - n_seg :]
        g, s, p = blocks(args[:n_p]), blocks(args[n_p : n_p + n_s]), blocks(args[n_p + n_s :])
        with in_segments(seg):
            u, s2 = tx.update(unflat_p(g), unflat_s(s), unflat_p(p))
        return (*_abi_shapes(jax.tree.leaves(u), p_leaves), *_abi_shapes(_check_state(s_def, s_leaves, s2), s_leaves))

    # Spare counts (CompileOptions.spare_counts): the state leaves that count steps, found by a
    # first trace (None until then); step takes one more int32 argument each, after the others,
    # the storage of that leaf's new value.
    counters: tuple[int, ...] | None = None

    def step_fn(*args):
        args = args[: len(args) - len(counters or ())]  # the spares: written, never read
        args, seg = args[: len(args) - n_seg], args[len(args) - n_seg :]
        p, g, s = blocks(args[:n_p]), blocks(args[n_p : 2 * n_p]), blocks(args[2 * n_p :])
        params = unflat_p(p)
        with in_segments(seg), recording_increments() as increments:
            u, s2 = tx.update(unflat_p(g), unflat_s(s), params)
        new_s = _check_state(s_def, s_leaves, s2)
        if counters is None:
            found.extend(j for j, (new, old) in enumerate(zip(new_s, s, strict=True)) if increments.of(new, old))
        for j in counters or ():
            if not increments.of(new_s[j], s[j]):  # the first trace said it was; a traced program is fixed
                raise CompileError(f"compile_optimizer: state leaf {j} counted steps in one trace and not in the next")
            # stored with other ops than the kernels' safe_increment, so that IREE keeps them
            # apart: the kernel reads the old count, a 1-thread dispatch beside it writes the new
            # one into the spare (docs/performance.md, seventeenth pass)
            new_s[j] = split_increment(s[j])
        return (
            *_abi_shapes(jax.tree.leaves(apply_updates(params, u)), p_leaves),
            *_abi_shapes(new_s, s_leaves),
        )

    t0 = time.perf_counter()
    # In-place outputs, pinned leaf to leaf: update's state i -> its state output i; step's
    # params i -> params output i and state j -> state output j; each kept only where no
    # dispatch can still read the old value after the new one is written, after anchoring the
    # ones that can be made safe (hazards.py).
    update_args = [*p_leaves, *s_leaves, *p_leaves, *seg_leaves]
    step_args = [*p_leaves, *p_leaves, *s_leaves, *seg_leaves]
    found: list[int] = []
    with _tracing(options):
        if options.resolved().spare_counts:
            jax.eval_shape(step_fn, *step_args)  # fills `found`
        counters = tuple(found)
    # With spare counts, each counter's new value goes to its spare (the argument after the
    # others), the old value's buffer being left as it was.
    step_args += [jax.ShapeDtypeStruct((), jnp.int32)] * len(counters)
    step_alias_request = {
        **{i: i for i in range(n_p)},
        **{2 * n_p + j: n_p + j for j in range(n_s) if j not in counters},
        **{len(step_args) - len(counters) + k: n_p + j for k, j in enumerate(counters)},
    }
    with _tracing(options):  # the traced graphs, hazards included
        update_fn, update_aliases = anchored(update_fn, update_args, {n_p + j: n_p + j for j in range(n_s)})
        step_fn, step_aliases = anchored(step_fn, step_args, step_alias_request)
        parts = {
            "init": export_text(init_fn, p_leaves),
            "update": export_text(update_fn, update_args),
            "step": export_text(step_fn, step_args),
        }
    aliases = {"update": update_aliases, "step": step_aliases}
    param_names = [n for n, _ in layout.leaves()]
    state_names = [n for n, _ in tree_leaves_with_names(state_shape)]
    hps = _hyperparameters(tx, layout, state_shape, state_names)
    flags = build_flags(options)
    manifest = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "kind": "optimizer",
        "name": name,
        "options": {k: _json_safe(v) for k, v in (optimizer_options or {}).items()},
        "composition": transform_names(tx),
        "layout": layout.kind,
        "layout_source": layout.source,
        "groups": {
            "params": [_spec(n, s) for n, s in zip(param_names, p_leaves, strict=True)],
            "state": [_spec(n, s) for n, s in zip(state_names, s_leaves, strict=True)],
        },
        "functions": {
            "init": {"inputs": ["params"], "outputs": ["state"]},
            "update": {"inputs": ["grads", "state", "params"], "outputs": ["updates", "state"], "donates": ["state"]},
            "step": {"inputs": ["params", "grads", "state"], "outputs": ["params", "state"], "donates": ["params", "state"]},
        },
        "hyperparameters": hps,
        "target": _target_record(options, flags),
        "versions": versions.all_versions(),
    }
    if counters:  # the caller passes a spare buffer per counter and swaps it with the leaf's after the call
        manifest["functions"]["step"]["spares"] = [state_names[j] for j in counters]
    if seg_names:
        manifest["groups"]["segments"] = [_spec(n, st) for n, st in zip(seg_names, seg_leaves, strict=True)]
        for fname in ("update", "step"):
            manifest["functions"][fname]["inputs"].append("segments")
        manifest["segments"] = {"leaves": list(seg_names)}
        if "segment_bounds" in seg_names:  # not the caller's: the runtime computes it from segment_ids
            manifest["segments"]["derived"] = ["segment_bounds"]
        if "segment_ids" in seg_names:
            manifest["segments"]["max"] = max_segments
            manifest["segments"]["reduction"] = reduction  # "tree": segment_ids must be non-decreasing
            if aligned:  # one id per block of `align` elements; tensors start at block boundaries
                manifest["segments"]["align"] = SEGMENT_ALIGN
            # how to sum faster, where a faster form exists (polaris inspect repeats them)
            seg_notes = segment_notes(options, layout.size, reduction, name, aligned_ok=aligned_ok)
            if seg_notes:
                manifest["segments"]["notes"] = seg_notes
        if "row_ids" in seg_names:
            manifest["segments"]["max_rows"] = max_rows
    reducing = [f for f, fn, a in (("update", update_fn, update_args), ("step", step_fn, step_args)) if _reduces_dynamic_length(fn, a)]
    if reducing:
        # whole-vector reductions over the dynamic length: limited on some Vulkan devices
        # (polaris_runtime.module.VULKAN_DYNAMIC_REDUCTION_LIMIT)
        manifest["dynamic_reductions"] = reducing
    for key, value in (record or {}).items():
        if key in manifest:
            raise ValueError(f"compile_optimizer: record may not replace the manifest field {key!r}")
        manifest[key] = value
    with _tracing(options):
        _add_learning_rate_export(tx, s_def, s_leaves, hps, parts, manifest)
    external = options.resolved().external_transients
    if external:
        manifest["schema_version"] = EXTERNAL_TRANSIENTS_SCHEMA_VERSION  # older runtimes cannot call it
    if manifest.get("segments", {}).get("derived"):  # older runtimes would ask the caller for them
        manifest["schema_version"] = DERIVED_SEGMENTS_SCHEMA_VERSION
    if counters:  # older runtimes would not pass the spares
        manifest["schema_version"] = SPARE_COUNTS_SCHEMA_VERSION
    transients = ("update", "step") if external else ()
    art = _finish(parts, manifest, options, flags, t0, aliases, transients)
    art.notes.extend(layout_notes(options, layout.kind, layout.size, layout.flat_dtype))
    art.notes.extend(execution_notes(options, layout.parameters))
    art.notes.extend(manifest.get("segments", {}).get("notes", []))
    return art


def _abstract(tx, layout: Layout) -> tuple:
    """``(param leaves, param treedef, state shape, state leaves, state treedef)`` of ``tx`` on
    ``layout``, as ``jax.ShapeDtypeStruct``."""
    p_leaves, p_def = jax.tree.flatten(layout.tree)
    state_shape = jax.eval_shape(tx.init, layout.tree)
    s_leaves, s_def = jax.tree.flatten(state_shape)
    return p_leaves, p_def, state_shape, s_leaves, s_def


# A module whose update/step take their transient storage from the caller needs a runtime that
# passes it (polaris_runtime reads schema version 2 since it does).
EXTERNAL_TRANSIENTS_SCHEMA_VERSION = 2
# A module whose segments group has leaves the runtime computes (segment_bounds) needs a runtime
# that computes them (polaris_runtime reads schema version 3 since it does).
DERIVED_SEGMENTS_SCHEMA_VERSION = 3
# A module whose step stores its counters in spare buffers needs a runtime that passes and swaps
# them (polaris_runtime reads schema version 4 since it does).
SPARE_COUNTS_SCHEMA_VERSION = 4


def _check_transient_sizes(vm: str, transients, flags, temps) -> None:
    """Every function compiled with externalized transients must need a constant number of bytes
    (the runtime allocates them once); IREE says so in the function's reflection, read here from
    the VM-stage text (the compiler does not import the IREE runtime)."""
    for fname in transients:
        m = re.search(rf"vm\.func [^\n]*@{fname}\([^\n]*", vm)
        line = m.group(0) if m else ""
        if "iree.abi.transients.size" in line and "iree.abi.transients.size.constant" not in line:
            raise CompileError(
                f"external_transients: IREE 3.13 gives {fname}'s transient storage no constant size "
                f"(it depends on the arguments); compile without external_transients",
                flags=flags,
                diagnostics=line[-2000:],
                temps=temps,
            )


# -- segments: the tensor boundaries of a packed model, for flat layouts ----------------------
# A flat module sees one vector; transforms that reduce per tensor (polaris/_src/segments.py)
# need to know where the tensors are. The index vectors are (n, 1) int32 columns: IREE 3.13
# cannot reshape a dynamic-length vector into a column inside the module.
SEGMENT_INPUTS = ("segment_ids", "row_ids")


# The CPU break-even of the tree against the scatter (docs/performance.md, fifth pass): the
# LAMB step with the scatter costs ~8.5 ns an element, with the tree ~3.5 ns an element plus ~180 ns per
# possible segment (2 sums and the search): even at ~37 elements per segment. Since the CPU
# scatter's shared columns and lanes (twelfth pass) the scatter is faster at these sizes too (1M
# 3.6 vs 5.1 ms, 10M 38.5 vs 42-45 ms), but its sums are running sums (about 2e-3 relative at 10M
# elements in one tensor, against ~1e-8 for the tree's pairwise sums), so the bound stays.
TREE_MIN_ELEMENTS_PER_SEGMENT = 40

# Accumulators per segment of a CPU module's scatters (polaris._src.segments._scatter_sum): LAMB's
# flat step at 1M, any length, 6.3 / 4.4 / 3.7 / 3.7 / 3.6 ms with 1 / 2 / 4 / 8 / 16 lanes, at
# 10k 66 / 59 / 56 / 61 / 94 us (segment-major lanes; lane-major since, 10k 52 us with 4;
# docs/performance.md, twelfth pass). GPU targets keep one.
SCATTER_LANES = 4


def choose_segment_reduction(requested: str, layout: Layout, max_segments: int, options: CompileOptions) -> str:
    """``"tree"`` or ``"scatter"``: how a flat module of ``layout`` sums per tensor (a pure
    function of the request, the layout's static size, ``max_segments`` and the targets)."""
    if requested not in ("auto", *SEGMENT_REDUCTIONS):
        raise LayoutError(
            f"compile_optimizer: `segment_reduction` must be one of 'auto', "
            f"{', '.join(map(repr, SEGMENT_REDUCTIONS))}; got {requested!r}"
        )
    size = layout.size if layout.kind == "flat" else None
    if requested == "tree" and size is None:
        raise LayoutError(
            f"compile_optimizer: segment_reduction={requested!r} needs a fixed-size flat layout "
            "(Layout.flat(size=N), polaris compile ... --size N): the tree's levels have static "
            "lengths; use 'scatter', 'aligned' or 'auto' for a flat module of any length"
        )
    if requested == "aligned" and size is not None and size % SEGMENT_ALIGN:
        raise LayoutError(
            f"compile_optimizer: segment_reduction='aligned' needs a size that is a multiple of "
            f"{SEGMENT_ALIGN} (every tensor starts a block of {SEGMENT_ALIGN}), got {size}; use the "
            f"size of polaris_runtime.pack.Packing.of(params, align={SEGMENT_ALIGN})"
        )
    if requested != "auto":
        return requested
    if size is None:
        return "scatter"
    if any(t in GPU_TARGETS for t in options.targets):
        return "tree"  # a GPU scatter runs one workgroup per element (1.1 s at 1e7 on an H200)
    return "tree" if size >= TREE_MIN_ELEMENTS_PER_SEGMENT * max_segments else "scatter"


def _aligned_block_sums(layout: Layout, max_segments: int, options: CompileOptions) -> str:
    """How an "aligned" module sums its blocks per tensor: the tree on GPU targets and from
    ``TREE_MIN_ELEMENTS_PER_SEGMENT`` blocks per possible segment, else a scatter over the blocks
    (the same break-even as for elements: a 10k LAMB step 540 us with the tree of 4096 possible
    segments, docs/performance.md eighth pass)."""
    if layout.size is None:
        return "scatter"  # any length: the tree's levels need static lengths
    if any(t in GPU_TARGETS for t in options.targets):
        return "tree"
    blocks = layout.size // SEGMENT_ALIGN
    return "tree" if blocks >= TREE_MIN_ELEMENTS_PER_SEGMENT * max_segments else "scatter"


def _segment_struct(layout: Layout, aligned: bool = False) -> jax.ShapeDtypeStruct:
    n = layout.tree.shape[0]
    return jax.ShapeDtypeStruct((n // SEGMENT_ALIGN if aligned else n, 1), jnp.int32)


def _as_blocks(xs, n: int) -> list:
    """The "aligned" reduction's view: every vector of the flat length ``n`` as (n / 16, 16)
    blocks (a free reshape in IREE); other leaves (scalars) as they are."""
    return [jnp.reshape(x, (n // SEGMENT_ALIGN, SEGMENT_ALIGN)) if jnp.shape(x) == (n,) else x for x in xs]


def _abi_shapes(xs, structs) -> list:
    """``xs`` back in the module's shapes (``structs``): undoes :func:`_as_blocks`."""
    return [jnp.reshape(x, st.shape) if jnp.shape(x) != st.shape else x for x, st in zip(xs, structs, strict=True)]


def _segment_inputs(tx, layout, p_leaves, s_leaves, unflat_p, unflat_s, segments, max_segments, max_rows) -> tuple[list[str], bool]:
    """Which index vectors ``update``/``step`` take, and whether the transform divides by
    element counts (a per-tensor mean, which the "aligned" reduction cannot serve): traces
    ``update`` once with both offered and keeps those the transform read (none for element-wise
    optimizers such as adam)."""
    for what, v in (("max_segments", max_segments), ("max_rows", max_rows)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise LayoutError(f"compile_optimizer: `{what}` must be a positive int, got {v!r}")
    if layout.kind != "flat":
        if segments:
            raise LayoutError(
                "compile_optimizer: segments=True needs the flat layout (Layout.flat()); a tree "
                "layout already knows its tensors, so its transforms reduce per leaf"
            )
        return [], False
    if segments is False:
        return [], False
    ids = _segment_struct(layout)
    used: set[str] = set()
    counted = []

    def probe(g, s, p, seg, rows):
        with flat_segments(seg, max_segments, row_ids=rows, num_rows=max_rows) as ctx:
            out = tx.update(unflat_p(g), unflat_s(s), unflat_p(p))
        used.update(ctx.used)
        counted.append(ctx.counted)
        return out

    jax.eval_shape(probe, list(p_leaves), list(s_leaves), list(p_leaves), ids, ids)
    names = [n for n in SEGMENT_INPUTS if n in used]
    if segments and not names:
        names = ["segment_ids"]
    return names, any(counted)


# -- optional 4th export: learning_rate(state...) -> (lr,) ------------------------------------
# Only for a learning-rate *schedule* (a numeric rate is the tunable hyperparameter
# ``learning_rate``, read from the state by the runtime). Lets a JAX-free host ask which rate the
# next step will use (``Optimizer.current_learning_rate``).
def _add_learning_rate_export(tx, s_def, s_leaves, hps, parts, manifest) -> None:
    from polaris._src.scale import learning_rate_fn

    lr_fn = learning_rate_fn(tx)
    if lr_fn is None or any(h["name"] == "learning_rate" for h in hps) or not s_leaves:
        return

    def lr_export(*s):
        return (lr_fn(jax.tree.unflatten(s_def, list(s))),)

    parts["learning_rate"] = export_text(lr_export, s_leaves)
    manifest["groups"]["learning_rate"] = [{"name": "learning_rate", "shape": [], "dtype": "float32"}]
    manifest["functions"]["learning_rate"] = {"inputs": ["state"], "outputs": ["learning_rate"]}


_REDUCTIONS = ("reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "reduce_and", "reduce_or", "reduce_xor", "argmax", "argmin")


def _reduces_dynamic_length(fn: Callable, args: list) -> bool:
    """Whether ``fn`` reduces over a dimension of dynamic length (a flat module's ``n``)."""

    def walk(jaxpr) -> bool:
        for eqn in jaxpr.eqns:
            if eqn.primitive.name in _REDUCTIONS:
                shape = eqn.invars[0].aval.shape
                if any(not isinstance(shape[a], int) for a in eqn.params.get("axes", ())):
                    return True
            for v in eqn.params.values():
                for sub in v if isinstance(v, (tuple, list)) else (v,):
                    inner = getattr(sub, "jaxpr", sub)
                    if hasattr(inner, "eqns") and walk(inner):
                        return True
        return False

    if all(isinstance(d, int) for a in args for d in a.shape):
        return False
    return walk(jax.make_jaxpr(fn)(*args).jaxpr)


def _check_state(s_def, s_leaves, new_state):
    leaves, new_def = jax.tree.flatten(new_state)
    if new_def != s_def:
        raise TypeError(
            f"the transform's update returned a state of another structure than its init:\n"
            f"  init:   {s_def}\n  update: {new_def}"
        )
    out = []
    for ref, x in zip(s_leaves, leaves, strict=True):
        if jnp.dtype(x.dtype) != jnp.dtype(ref.dtype):
            raise TypeError(
                f"the transform's update changed a state leaf's dtype from {ref.dtype} to {x.dtype}; "
                f"state dtypes must be stable (cast with .astype in the transform)"
            )
        out.append(x)
    return out


def _hyperparameters(tx, layout: Layout, state_shape, state_names) -> list[dict]:
    found = hyperparameter_leaves(state_shape)
    if not found:
        return []
    index = {n: i for i, n in enumerate(state_names)}
    wanted = [index[leaf] for _, leaf in found]
    if layout.kind == "flat":
        shapes = jax.ShapeDtypeStruct((1,), layout.tree.dtype)
    else:
        shapes = layout.tree

    def values():
        example = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
        leaves = jax.tree.leaves(tx.init(example))
        return [leaves[i] for i in wanted]

    vals = jax.jit(values)()
    names = [f for f, _ in found]
    short = {leaf: _short_hp_name(leaf) for _, leaf in found}
    out = []
    for (field, leaf), v in zip(found, vals, strict=True):
        if names.count(field) == 1:
            label = field
        elif list(short.values()).count(short[leaf]) == 1:
            label = short[leaf]  # e.g. a parameter group's "decay/learning_rate"
        else:
            label = leaf
        out.append({"name": label, "leaf": leaf, "default": float(v), "dtype": jnp.dtype(v.dtype).name})
    return out


def _short_hp_name(leaf: str) -> str:
    """``inner_states/decay/inner_state/2/learning_rate`` -> ``decay/learning_rate``."""
    skip = {"inner_states", "inner_state"}
    return "/".join(p for p in leaf.split("/") if not p.isdigit() and p not in skip)


def _target_record(options: CompileOptions, flags: list[str]) -> dict:
    o = options.resolved()
    rec = {"name": ",".join(t.value for t in o.targets), "backend": o.target.backend, "driver": o.target.driver, "flags": flags}
    if len(o.targets) > 1:
        rec["targets"] = [t.value for t in o.targets]
    for t in o.targets:
        if t.value == "llvm-cpu":
            rec["cpu"] = o.cpu
            if len(o.cpu_variants) > 1:
                rec["cpu_variants"] = list(o.cpu_variants)
            if o.cpu_triple:
                rec["triple"] = o.cpu_triple
        elif t.value == "cuda":
            rec["cuda_arch"] = o.cuda_arch
        elif t.value == "vulkan":
            rec["vulkan_target"] = o.vulkan_target
        elif t.value == "rocm":
            rec["rocm_arch"] = o.rocm_arch
    if len(o.targets) == 1 and o.target.value in ("cuda", "vulkan", "rocm"):
        rec["arch"] = {"cuda": o.cuda_arch, "vulkan": o.vulkan_target, "rocm": o.rocm_arch}[o.target.value]
    if not o.hoist_scalars:
        rec["hoist_scalars"] = False  # scalars fused into the elementwise kernels
    if o.asynchronous:
        rec["execution"] = "async"  # every export takes (wait fence, signal fence) last
    if o.external_transients:
        rec["external_transients"] = True  # update/step take a !hal.buffer after their arrays
    notes = options.notes()
    if notes:
        rec["notes"] = notes
    return rec


@dataclasses.dataclass(frozen=True)
class FunctionEntry:
    """A function of named input groups returning a dict of named output groups."""

    fn: Callable[..., dict[str, Any]]
    inputs: dict[str, Any]  # group name -> pytree of ShapeDtypeStruct
    donate: tuple[str, ...] = ()


def compile_functions(
    entries: dict[str, FunctionEntry],
    options: CompileOptions = CompileOptions(),
    *,
    name: str = "functions",
) -> Artifact:
    """Compiles plain functions (e.g. a model's loss and gradient) into one self-describing module.

    Each function takes its input groups as keyword arguments (pytrees) and returns a dict of
    output groups; leaves are flattened group by group, in the order the dicts list them. A group
    name used by several functions must have the same leaves in each. Scalars are hoisted or fused
    as ``options.resolved()`` says (polaris transforms inside ``fn`` follow it); external
    transients are for ``compile_optimizer``'s ``update`` and ``step`` only.
    """
    if options.external_transients:
        raise OptionError(
            "compile_functions: external_transients applies to compile_optimizer's update and step only; "
            "leave it unset (None) or False here"
        )
    options = dataclasses.replace(options, external_transients=False)
    groups: dict[str, list[dict]] = {}
    functions: dict[str, dict] = {}
    parts: dict[str, str] = {}
    t0 = time.perf_counter()

    def add_group(g: str, tree) -> None:
        specs = [_spec(n or g, s) for n, s in tree_leaves_with_names(tree)]
        if g in groups and groups[g] != specs:
            raise ValueError(f"compile_functions: group {g!r} has different leaves in two functions")
        groups[g] = specs

    for fname, e in entries.items():
        in_names = list(e.inputs)
        in_defs, in_leaves = [], []
        for g in in_names:
            leaves, tdef = jax.tree.flatten(e.inputs[g])
            in_defs.append((g, tdef, len(leaves)))
            in_leaves.extend(leaves)
            add_group(g, e.inputs[g])
        out_shape = jax.eval_shape(lambda **kw: e.fn(**kw), **e.inputs)
        if not isinstance(out_shape, dict):
            raise TypeError(f"compile_functions: {fname} must return a dict of output groups")
        out_names = list(out_shape)
        for g in out_names:
            add_group(g, out_shape[g])

        def flat_fn(*args, _e=e, _defs=in_defs, _outs=out_names):
            kw, i = {}, 0
            for g, tdef, n in _defs:
                kw[g] = jax.tree.unflatten(tdef, list(args[i : i + n]))
                i += n
            res = _e.fn(**kw)
            return tuple(leaf for g in _outs for leaf in jax.tree.leaves(res[g]))

        donate_idx, i = [], 0
        for g, _, n in in_defs:
            if g in e.donate:
                donate_idx.extend(range(i, i + n))
            i += n
        with scalar_hoisting(options.resolved().hoist_scalars):
            parts[fname] = export_text(flat_fn, in_leaves, donate=donate_idx)
        functions[fname] = {"inputs": in_names, "outputs": out_names, "donates": list(e.donate)}

    flags = build_flags(options)
    manifest = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "kind": "function",
        "name": name,
        "layout": "function",
        "groups": groups,
        "functions": functions,
        "hyperparameters": [],
        "target": _target_record(options, flags),
        "versions": versions.all_versions(),
    }
    return _finish(parts, manifest, options, flags, t0)


def _finish(parts, manifest, options: CompileOptions, flags, t0, aliases=None, transients=()) -> Artifact:
    Manifest.from_dict(manifest)  # the runtime's parser is the definition of the format
    refl = manifest_reflection(manifest)
    mlir = merge_modules(parts, {entry: refl for entry in parts}, aliases=aliases, transients=transients)
    temps = options.save_temps or os.environ.get("POLARIS_SAVE_TEMPS") or None
    if temps:
        _save_temps(temps, parts, mlir, flags, manifest)
    vmfb = _iree_compile(mlir, options, flags, temps, transients)
    return Artifact(vmfb, manifest, mlir, flags, time.perf_counter() - t0, options.notes())


def _save_temps(d: str, parts, mlir, flags, manifest) -> None:
    p = pathlib.Path(d)
    p.mkdir(parents=True, exist_ok=True)
    for entry, text in parts.items():
        (p / f"{entry}.stablehlo.mlir").write_text(text)
    (p / "module.mlir").write_text(mlir)
    (p / "flags.txt").write_text("\n".join(flags) + "\n")
    (p / "manifest.json").write_text(json.dumps(manifest, indent=2))


def _iree_compile(mlir: str, options: CompileOptions, flags: list[str], temps: str | None, transients=()) -> bytes:
    """``mlir`` compiled to a ``.vmfb``. With ``transients`` (external_transients), in two stages
    that together cost one compile: to the VM dialect, where their sizes are checked, then on to
    the module (the same bytes as in one go)."""
    import iree.compiler as ic

    from polaris_compiler import cpu_variants

    o = options.resolved()
    stage_flags = [f for f in flags if not f.startswith("--iree-input-type=")]
    try:
        if Target.LLVM_CPU in o.targets and len(o.cpu_variants) > 1:
            # (compiled per variant: a size that is not constant is refused by the runtime at load)
            rest = [f for f in stage_flags if f != "--iree-hal-link-executables=false"]
            return cpu_variants.compile_variants(mlir, o.cpu_variants, o.cpu_triple, rest)
        if not transients:
            return ic.compile_str(mlir, input_type="stablehlo", extra_args=stage_flags)
        vm = ic.compile_str(mlir, input_type="stablehlo", extra_args=[*stage_flags, "--compile-to=vm"])
        _check_transient_sizes(vm.decode(), transients, flags, temps)
        return ic.compile_str(vm, extra_args=[*stage_flags, "--compile-from=vm"])
    except ic.CompilerToolError as e:
        diag = getattr(e, "stderr_text", None) or str(e)
        experimental = " with external_transients (an experimental IREE feature): compile without it" if transients else ""
        raise CompileError(
            f"iree-compile failed for target {','.join(t.value for t in o.targets)}{experimental}",
            flags=flags,
            diagnostics=diag,
            temps=temps,
        ) from None


def options_digest(optimizer_options: dict[str, Any]) -> str:
    """A short, stable digest of an option set (used in default file names)."""
    text = json.dumps({k: _json_safe(v) for k, v in sorted(optimizer_options.items())}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:8]
