"""Checkpoints: an optimizer's state (and optionally the parameters) in one file, written atomically.

Format: a ``.safetensors`` file (the ``safetensors`` package, imported only when used), or, when
the path ends with ``.npz``, a NumPy ``.npz`` archive (NumPy only). Arrays are stored under
``state/<leaf>`` and ``params/<leaf>`` (the module's leaf names). The metadata (safetensors
``__metadata__["polaris.checkpoint"]``, or the ``__polaris_checkpoint__`` member of an ``.npz``,
as UTF-8 JSON bytes) records which module the checkpoint belongs to::

    {"schema": "polaris-iree/checkpoint", "schema_version": 1,
     "module": {"name", "kind", "options", "composition", "layout", "params_layout",
                "manifest_sha256", "target", "versions"},
     "state": [{"name", "shape", "dtype"}, ...],          # concrete shapes, in ABI order
     "params": [...] or null,
     "data_sha256": sha256 of every array's bytes, state then params, in ABI order}

:func:`restore` refuses (with :class:`CheckpointError` naming each difference) a checkpoint whose
optimizer name, options, composition, layout, or leaf names/shapes/dtypes differ from the module's.
A differing manifest digest alone (same optimizer, other target, flags or versions: e.g. a state
saved on a GPU and resumed on a CPU) is accepted unless ``strict=True``.

Writes are atomic: the bytes go to a temporary file in the destination's directory, which is
flushed and fsynced, renamed over the destination with ``os.replace``, and the directory is
fsynced. A crash at any point leaves either the old checkpoint or the new one, never a mix, and
the temporary file is removed when the write fails in-process.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from polaris_runtime import device as dev
from polaris_runtime.errors import CheckpointError, ConsumedError
from polaris_runtime.fileio import atomic_write
from polaris_runtime.manifest import LeafSpec, Manifest

if TYPE_CHECKING:  # pragma: no cover
    from polaris_runtime.module import Optimizer, Tree

CHECKPOINT_SCHEMA = "polaris-iree/checkpoint"
CHECKPOINT_SCHEMA_VERSION = 1
METADATA_KEY = "polaris.checkpoint"
NPZ_METADATA = "__polaris_checkpoint__"


def manifest_digest(manifest: Manifest) -> str:
    """sha256 of the manifest's canonical JSON (sorted keys, no spaces): identifies a module build."""
    text = json.dumps(manifest.raw, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


# -- save ----------------------------------------------------------------------------------------
def save(path, opt: Optimizer, state: Tree | Any, params: Tree | Any | None = None) -> pathlib.Path:
    """Writes ``state`` (and ``params`` when given) of ``opt`` to ``path`` atomically.

    ``state``/``params`` may be device Trees (read back, not consumed) or anything the module's
    calls accept (dict by name, list in ABI order). The format follows the suffix: ``.npz`` is
    NumPy's archive, anything else safetensors.
    """
    p = pathlib.Path(os.fspath(path))
    m = opt.manifest
    state_leaves = _host_leaves(opt, "state", state)
    params_leaves = None if params is None else _host_leaves(opt, "params", params)
    meta = {
        "schema": CHECKPOINT_SCHEMA,
        "schema_version": CHECKPOINT_SCHEMA_VERSION,
        "module": _module_record(m),
        "state": _specs(m.state, state_leaves),
        "params": None if params_leaves is None else _specs(m.params, params_leaves),
        "data_sha256": _data_digest(state_leaves + (params_leaves or [])),
    }
    arrays = {f"state/{s.name}": a for s, a in zip(m.state, state_leaves, strict=True)}
    if params_leaves is not None:
        arrays.update({f"params/{s.name}": a for s, a in zip(m.params, params_leaves, strict=True)})
    meta_json = json.dumps(meta, sort_keys=True)
    if _is_npz(p):
        def write(f):
            np.savez(f, **arrays, **{NPZ_METADATA: np.frombuffer(meta_json.encode(), np.uint8)})
    else:
        st = _safetensors_numpy()
        data = st.save(arrays, metadata={METADATA_KEY: meta_json})

        def write(f):
            f.write(data)
    _atomic_write(p, write)
    return p


def _host_leaves(opt: Optimizer, group: str, value) -> list[np.ndarray]:
    from polaris_runtime.module import Tree, _check_leaf, flatten_names

    specs = opt.manifest.group(group)
    if isinstance(value, Tree):
        try:
            leaves = value.leaves()
        except ConsumedError as e:
            raise CheckpointError(f"cannot save the {group}: {e}") from None
        if value.names != [s.name for s in specs]:
            raise CheckpointError(
                f"cannot save: the {value.group} tree passed as {group} has leaves {value.names} "
                f"but the module's {group} has {[s.name for s in specs]}"
            )
    elif isinstance(value, dict):
        flat = flatten_names(value)
        missing = [s.name for s in specs if s.name not in flat]
        extra = [n for n in flat if n not in {s.name for s in specs}]
        if missing or extra:
            raise CheckpointError(
                f"cannot save the {group}: missing leaves {missing}, unexpected leaves {extra}"
            )
        leaves = [np.asarray(flat[s.name]) for s in specs]
    elif isinstance(value, (list, tuple)):
        leaves = [dev.to_host(v) if not isinstance(v, np.ndarray) and hasattr(v, "to_host") else np.asarray(v) for v in value]
    elif len(specs) == 1:
        leaves = [np.asarray(value)]
    else:
        raise CheckpointError(f"cannot save the {group}: expected a Tree, a dict or a list, got {type(value).__name__}")
    if len(leaves) != len(specs):
        raise CheckpointError(f"cannot save the {group}: {len(leaves)} arrays, the module has {len(specs)}")
    dims: dict[str, int] = {}
    out = []
    for s, a in zip(specs, leaves, strict=True):
        try:
            _check_leaf(group, s, a, dims)
        except ValueError as e:
            raise CheckpointError(f"cannot save: {e}") from None
        out.append(np.array(a, copy=True, order="C"))
    return out


def _module_record(m: Manifest) -> dict:
    return {
        "name": m.name,
        "kind": m.kind,
        "options": m.options,
        "composition": list(m.composition),
        "layout": m.layout,
        "params_layout": [s.to_dict() for s in m.params],
        "manifest_sha256": manifest_digest(m),
        "target": m.target.get("name"),
        "versions": m.versions,
    }


def _specs(specs: Sequence[LeafSpec], leaves: Sequence[np.ndarray]) -> list[dict]:
    return [
        {"name": s.name, "shape": list(a.shape), "dtype": np.dtype(a.dtype).name}
        for s, a in zip(specs, leaves, strict=True)
    ]


def _data_digest(leaves: Sequence[np.ndarray]) -> str:
    h = hashlib.sha256()
    for a in leaves:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _atomic_write(p: pathlib.Path, write) -> None:
    d = p.parent if str(p.parent) else pathlib.Path(".")
    if not d.is_dir():
        raise CheckpointError(f"cannot save checkpoint {str(p)!r}: directory {str(d)!r} does not exist")
    atomic_write(p, write)


def _is_npz(p: pathlib.Path) -> bool:
    return p.suffix.lower() == ".npz"


def _safetensors_numpy():
    try:
        import safetensors.numpy as st
    except ImportError:
        raise CheckpointError(
            "safetensors is not installed: `pip install safetensors`, or save to a path ending "
            "with .npz (NumPy's format, no extra package)"
        ) from None
    return st


# -- restore -------------------------------------------------------------------------------------
def read(path) -> tuple[dict, dict[str, np.ndarray]]:
    """The metadata and arrays of a checkpoint file, checked for integrity but not against a module."""
    p = pathlib.Path(os.fspath(path))
    if not p.is_file():
        raise CheckpointError(f"checkpoint {str(p)!r} does not exist")
    data = p.read_bytes()
    if _is_npz(p):
        meta, arrays = _read_npz(p, data)
    else:
        meta, arrays = _read_safetensors(p, data)
    _check_integrity(p, meta, arrays)
    return meta, arrays


def _read_safetensors(p: pathlib.Path, data: bytes) -> tuple[dict, dict[str, np.ndarray]]:
    bad = f"checkpoint {str(p)!r} is not a readable safetensors file (corrupt or truncated)"
    if len(data) < 8:
        raise CheckpointError(f"{bad}: only {len(data)} bytes")
    n = int.from_bytes(data[:8], "little")
    if n <= 0 or 8 + n > len(data):
        raise CheckpointError(f"{bad}: its header claims {n} bytes but the file has {len(data) - 8}")
    try:
        header = json.loads(data[8 : 8 + n])
        text = header["__metadata__"][METADATA_KEY]
    except (ValueError, KeyError, TypeError):
        raise CheckpointError(
            f"{bad}, or not a polaris-iree checkpoint (no {METADATA_KEY!r} metadata)"
        ) from None
    meta = _parse_meta(p, text)
    st = _safetensors_numpy()
    try:
        arrays = dict(st.load(data))
    except Exception as e:  # safetensors raises its own SafetensorError
        raise CheckpointError(f"{bad}: {e}") from None
    return meta, arrays


def _read_npz(p: pathlib.Path, data: bytes) -> tuple[dict, dict[str, np.ndarray]]:
    import io
    import zipfile

    bad = f"checkpoint {str(p)!r} is not a readable .npz file (corrupt or truncated)"
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError) as e:
        raise CheckpointError(f"{bad}: {e}") from None
    raw = arrays.pop(NPZ_METADATA, None)
    if raw is None:
        raise CheckpointError(f"{bad}, or not a polaris-iree checkpoint (no {NPZ_METADATA!r} member)")
    return _parse_meta(p, raw.tobytes().decode("utf-8", "replace")), arrays


def _parse_meta(p: pathlib.Path, text: str) -> dict:
    try:
        meta = json.loads(text)
    except ValueError:
        raise CheckpointError(f"checkpoint {str(p)!r}: its metadata is not valid JSON (corrupt)") from None
    if not isinstance(meta, dict) or meta.get("schema") != CHECKPOINT_SCHEMA:
        raise CheckpointError(f"{str(p)!r} is not a polaris-iree checkpoint (schema {meta.get('schema') if isinstance(meta, dict) else None!r})")
    v = meta.get("schema_version")
    if v != CHECKPOINT_SCHEMA_VERSION:
        raise CheckpointError(
            f"checkpoint {str(p)!r} has checkpoint schema version {v}; this runtime reads version "
            f"{CHECKPOINT_SCHEMA_VERSION}"
        )
    for k in ("module", "state", "data_sha256"):
        if k not in meta:
            raise CheckpointError(f"checkpoint {str(p)!r}: its metadata lacks {k!r} (corrupt)")
    return meta


def _check_integrity(p: pathlib.Path, meta: dict, arrays: dict[str, np.ndarray]) -> None:
    leaves = []
    for group in ("state", "params"):
        for s in meta.get(group) or ():
            key = f"{group}/{s['name']}"
            a = arrays.get(key)
            if a is None:
                raise CheckpointError(f"checkpoint {str(p)!r} is missing the array {key!r} (corrupt)")
            if list(a.shape) != list(s["shape"]) or np.dtype(a.dtype).name != s["dtype"]:
                raise CheckpointError(
                    f"checkpoint {str(p)!r}: array {key!r} is {a.shape} {a.dtype} but its metadata "
                    f"says {tuple(s['shape'])} {s['dtype']} (corrupt)"
                )
            leaves.append(a)
    if _data_digest(leaves) != meta["data_sha256"]:
        raise CheckpointError(
            f"checkpoint {str(p)!r}: its arrays do not match the sha256 recorded when it was "
            f"written (corrupt)"
        )


def differences(meta: dict, m: Manifest, strict: bool = False) -> list[str]:
    """Why a checkpoint's metadata does not belong to the module ``m`` (empty: it does)."""
    from polaris_runtime.module import _check_leaf

    rec, here = meta["module"], _module_record(m)
    diffs = []
    if rec.get("name") != here["name"]:
        diffs.append(f"optimizer: checkpoint {rec.get('name')!r}, module {here['name']!r}")
    opts_a, opts_b = rec.get("options") or {}, here["options"]
    for k in sorted(set(opts_a) | set(opts_b), key=str):
        if opts_a.get(k, "<unset>") != opts_b.get(k, "<unset>"):
            diffs.append(f"option {k}: checkpoint {opts_a.get(k, '<unset>')!r}, module {opts_b.get(k, '<unset>')!r}")
    if rec.get("composition") != here["composition"]:
        diffs.append(f"composition: checkpoint {rec.get('composition')}, module {here['composition']}")
    if rec.get("layout") != here["layout"]:
        diffs.append(f"layout: checkpoint {rec.get('layout')!r}, module {here['layout']!r}")
    # Flat modules of any length and of a fixed length (``--size``) share checkpoints: the saved
    # arrays' shapes are checked against the module's below, leaf by leaf.
    both_flat = rec.get("layout") == here["layout"] == "flat"
    if not both_flat and rec.get("params_layout") != here["params_layout"]:
        diffs.append("parameter layout: checkpoint "
                     + _describe(rec.get("params_layout") or []) + ", module " + _describe(here["params_layout"]))
    for group, specs in (("state", m.state), ("params", m.params)):
        saved = meta.get(group)
        if saved is None:
            continue
        names = [s["name"] for s in saved]
        if names != [s.name for s in specs]:
            diffs.append(f"{group} leaves: checkpoint {names}, module {[s.name for s in specs]}")
            continue
        dims: dict[str, int] = {}
        for s, rec_leaf in zip(specs, saved, strict=True):
            try:
                _check_leaf(group, s, _Spec(rec_leaf), dims)
            except ValueError as e:
                diffs.append(str(e))
    if strict and rec.get("manifest_sha256") != here["manifest_sha256"]:
        diffs.append(
            f"manifest digest: checkpoint {str(rec.get('manifest_sha256'))[:12]}..., module "
            f"{here['manifest_sha256'][:12]}... (another build: target "
            f"{rec.get('target')!r} vs {here['target']!r}, versions {rec.get('versions')} vs {here['versions']})"
        )
    return diffs


def _describe(specs: list[dict]) -> str:
    text = ", ".join(f"{s['name']} {tuple(s['shape'])} {s['dtype']}" for s in specs[:6])
    return "[" + text + (f", ... {len(specs) - 6} more" if len(specs) > 6 else "") + "]"


class _Spec:
    def __init__(self, d: dict):
        self.shape = tuple(d["shape"])
        self.dtype = np.dtype(d["dtype"])


def restore(path, opt: Optimizer, *, strict: bool = False) -> tuple[Tree, Tree | None]:
    """Reads a checkpoint written by :func:`save` for ``opt``: ``(state, params_or_None)`` as
    device Trees (each leaf in its own buffer, ready for ``opt.step``).

    Raises :class:`CheckpointError` when the file is missing, corrupt or truncated, or belongs to
    another optimizer, option set, composition or layout (the message lists every difference);
    with ``strict=True`` also when it was written by another build of the module (manifest digest).
    """
    from polaris_runtime.module import Tree

    meta, arrays = read(path)
    diffs = differences(meta, opt.manifest, strict)
    if diffs:
        raise CheckpointError(
            f"checkpoint {os.fspath(path)!r} does not belong to this module "
            f"({opt.manifest.name}, {opt.path}): " + "; ".join(diffs)
        )
    # A flat state and flat params must agree on their dynamic lengths.
    if meta.get("params") is not None:
        from polaris_runtime.module import _check_leaf

        dims: dict[str, int] = {}
        for group, specs in (("state", opt.manifest.state), ("params", opt.manifest.params)):
            for s in specs:
                try:
                    _check_leaf(group, s, arrays[f"{group}/{s.name}"], dims)
                except ValueError as e:
                    raise CheckpointError(f"checkpoint {os.fspath(path)!r}: {e}") from None

    def tree(group: str) -> Tree:
        specs = opt.manifest.group(group)
        return Tree(group, specs, [dev.upload(opt.device, arrays[f"{group}/{s.name}"]) for s in specs], opt)

    return tree("state"), (tree("params") if meta.get("params") is not None else None)
