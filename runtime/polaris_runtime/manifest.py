"""The manifest: how a polaris-iree module describes itself (schema version 1).

The compiler embeds this JSON in the module as the ``polaris.manifest`` reflection attribute of
every exported function, so a ``.vmfb`` alone is enough to use it. This module is the one
definition of the format: the compiler writes dicts that :meth:`Manifest.from_dict` must accept.

Leaf order (the ABI): parameters are flattened in JAX's order (dict keys sorted, depth first) and
named by their path joined with ``/``; the optimizer state likewise (``0/mu/w``: member 0 of the
chain, field ``mu``, parameter ``w``). Signatures::

    init(params...)                      -> (state...)
    update(grads..., state..., params...) -> (updates..., state...)   # state donated
    step(params..., grads..., state...)   -> (params..., state...)    # params and state donated

A dimension given as a string (``"n"``) is dynamic; every leaf naming the same symbol must have
the same length at run time. ``"16*b"`` is a dynamic length of 16 times the symbol ``b`` (an
aligned flat module of any length: its vectors are ``16*b`` long, its segment ids ``b``).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from polaris_runtime.errors import ModuleError, SchemaVersionError

SCHEMA = "polaris-iree/manifest"
SCHEMA_VERSION = 1
# 2: ``update``/``step`` also take their transient storage, a buffer after the arrays (modules
# compiled with ``CompileOptions(external_transients=True)``; ``target.external_transients``).
# 3: the ``segments`` group holds leaves the runtime computes from the others
# (``segments.derived``: a "tree" module's ``segment_bounds``).
# 4: ``step`` writes its step counters' new values into spare buffers the caller passes after the
# arrays (``functions.step.spares``: the state leaves so stored; ``CompileOptions.spare_counts``).
# A module gets the highest version whose feature it uses.
SUPPORTED_SCHEMA_VERSIONS = (1, 2, 3, 4)
REFLECTION_KEY = "polaris.manifest"

DTYPES = ("float32", "float16", "bfloat16", "int32", "uint32", "int8", "bool")


@dataclasses.dataclass(frozen=True)
class LeafSpec:
    """One array of a signature: its name, shape (ints, or strings for dynamic dims) and dtype."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str

    @classmethod
    def from_dict(cls, d: dict) -> LeafSpec:
        return cls(str(d["name"]), tuple(d["shape"]), str(d["dtype"]))

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @property
    def is_dynamic(self) -> bool:
        return any(isinstance(d, str) for d in self.shape)

    def shape_str(self) -> str:
        return "(" + ", ".join(str(d) for d in self.shape) + ("," if len(self.shape) == 1 else "") + ")"


@dataclasses.dataclass(frozen=True)
class Hyperparameter:
    """A tunable hyperparameter: a scalar state leaf a host may change between steps."""

    name: str
    leaf: str
    default: float
    dtype: str = "float32"


@dataclasses.dataclass(frozen=True)
class FunctionSpec:
    """An exported function: the groups of leaves it takes and returns, and what it donates."""

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    donates: tuple[str, ...] = ()
    # state leaves whose new value the function writes into a spare buffer the caller passes
    # after the input groups' arrays (one 4-byte int32 each, in this order); the leaf's own buffer
    # is left as it was and becomes the next call's spare (schema version 4; docs/abi.md)
    spares: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Manifest:
    """The parsed manifest of a module."""

    schema_version: int
    kind: str  # "optimizer" or "function"
    name: str
    options: dict[str, Any]
    composition: tuple[str, ...]
    layout: str  # "tree" or "flat" (optimizers); "function" otherwise
    groups: dict[str, tuple[LeafSpec, ...]]  # "params", "state", or a function's own groups
    functions: dict[str, FunctionSpec]
    hyperparameters: tuple[Hyperparameter, ...]
    target: dict[str, Any]
    versions: dict[str, str]
    raw: dict[str, Any]

    @property
    def params(self) -> tuple[LeafSpec, ...]:
        return self.groups.get("params", ())

    @property
    def state(self) -> tuple[LeafSpec, ...]:
        return self.groups.get("state", ())

    @property
    def segments(self) -> dict[str, Any] | None:
        """A flat module's tensor boundaries input, or ``None`` when it takes none:
        ``{"leaves": ["segment_ids", ...], "max": K, "max_rows": R}`` (``max`` when it takes
        ``segment_ids``, ``max_rows`` when it takes ``row_ids``; see docs/flat-modules.md)."""
        seg = self.raw.get("segments")
        return dict(seg) if isinstance(seg, dict) else None

    def group(self, name: str) -> tuple[LeafSpec, ...]:
        """Leaves of a group; ``grads`` and ``updates`` mirror ``params``."""
        if name in ("grads", "updates"):
            return self.groups.get(name, self.params)
        return self.groups[name]

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        try:
            d = json.loads(text)
        except (json.JSONDecodeError, TypeError) as e:
            raise ModuleError(f"the module's manifest is not valid JSON ({e})") from None
        return cls.from_dict(d)

    @classmethod
    def from_dict(cls, d: dict) -> Manifest:
        if not isinstance(d, dict) or d.get("schema") != SCHEMA:
            raise ModuleError(
                f"not a polaris-iree manifest (expected schema {SCHEMA!r}, got {d.get('schema') if isinstance(d, dict) else d!r})"
            )
        version = d.get("schema_version")
        if version not in SUPPORTED_SCHEMA_VERSIONS:
            raise SchemaVersionError(
                f"the module was written with manifest schema version {version}, but this runtime "
                f"(polaris-iree-runtime {_runtime_version()}) reads schema version(s) "
                f"{', '.join(map(str, SUPPORTED_SCHEMA_VERSIONS))}; rebuild the module with a "
                f"matching polaris-iree compiler, or install a runtime that supports version {version}"
            )
        try:
            groups = {
                g: tuple(LeafSpec.from_dict(x) for x in leaves) for g, leaves in d["groups"].items()
            }
            functions = {
                name: FunctionSpec(
                    tuple(f["inputs"]), tuple(f["outputs"]), tuple(f.get("donates", ())), tuple(f.get("spares", ()))
                )
                for name, f in d["functions"].items()
            }
            _check_spares(functions, groups)
            hps = tuple(
                Hyperparameter(h["name"], h["leaf"], float(h["default"]), h.get("dtype", "float32"))
                for h in d.get("hyperparameters", ())
            )
            _check_segments(d, groups)
            return cls(
                schema_version=version,
                kind=d["kind"],
                name=d["name"],
                options=dict(d.get("options", {})),
                composition=tuple(d.get("composition", ())),
                layout=d.get("layout", "tree"),
                groups=groups,
                functions=functions,
                hyperparameters=hps,
                target=dict(d.get("target", {})),
                versions=dict(d.get("versions", {})),
                raw=d,
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ModuleError(f"the module's manifest is malformed: missing or bad field {e}") from None

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.raw, indent=indent, sort_keys=False)


_DIM_REFS: dict[str, tuple[int, str]] = {}


def dim_ref(want: str) -> tuple[int, str]:
    """A dynamic dimension of the manifest as (multiple, symbol): ``"n"`` is ``(1, "n")``, and
    ``"16*b"`` (a length of any multiple of 16: b blocks; "aligned" flat modules of any length)
    is ``(16, "b")``. ``dims`` binds symbols."""
    ref = _DIM_REFS.get(want)
    if ref is None:
        k, star, sym = want.partition("*")
        ref = _DIM_REFS[want] = (int(k), sym) if star and k.isdigit() and int(k) >= 1 and sym else (1, want)
    return ref


def _check_spares(functions: dict, groups: dict) -> None:
    state = {s.name: s for s in groups.get("state", ())}
    for name, f in functions.items():
        for leaf in f.spares:
            spec = state.get(leaf)
            if spec is None or "state" not in f.inputs or "state" not in f.outputs or "state" not in f.donates:
                raise ValueError(f"functions.{name}.spares: {leaf!r} is not a state leaf that {name} takes, returns and donates")
            if spec.shape != () or spec.dtype != "int32":
                raise ValueError(f"functions.{name}.spares: {leaf!r} is {spec.dtype}{spec.shape_str()}, not an int32 scalar")


def _check_segments(d: dict, groups: dict) -> None:
    seg, group = d.get("segments"), groups.get("segments")
    if seg is None and group is None:
        return
    if not isinstance(seg, dict) or group is None or list(seg.get("leaves", ())) != [s.name for s in group]:
        raise ModuleError(
            "the module's manifest is malformed: its 'segments' record and 'segments' group disagree"
        )
    for leaf, key in (("segment_ids", "max"), ("row_ids", "max_rows")):
        if leaf in seg["leaves"] and not (isinstance(seg.get(key), int) and seg[key] >= 1):
            raise ModuleError(f"the module's manifest is malformed: segments.{key} must be a positive int")
    reduction = seg.get("reduction", "scatter")  # absent in modules compiled before it existed
    if reduction not in SEGMENT_REDUCTIONS:
        raise ModuleError(
            f"the module's manifest names segments.reduction {reduction!r}, which this runtime does "
            f"not know (it knows {', '.join(map(repr, SEGMENT_REDUCTIONS))}); upgrade polaris-iree-runtime"
        )
    if reduction == "aligned" and not (isinstance(seg.get("align"), int) and seg["align"] >= 1):
        raise ModuleError("the module's manifest is malformed: segments.align must be a positive int for 'aligned'")


# How a flat module sums per tensor (polaris._src.segments): "tree" needs non-decreasing ids,
# "aligned" one non-decreasing id per block of segments.align elements.
SEGMENT_REDUCTIONS = ("scatter", "tree", "aligned")


def _runtime_version() -> str:
    try:
        from importlib.metadata import version

        return version("polaris-iree-runtime")
    except Exception:  # pragma: no cover
        return "unknown"
