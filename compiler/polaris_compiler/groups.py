"""Parameter groups and frozen leaves: masks that are part of the layout.

A layout file may carry, beside its parameters::

    {"params": {...},
     "groups": [
        {"match": ["*/bias", "*/scale"], "optimizer": "adam", "options": {"learning_rate": 1e-3}},
        {"match": ["*"], "optimizer": "adamw", "options": {"learning_rate": 1e-3, "decay": 0.01}}
     ],
     "freeze": ["embed/*"]}

``match`` holds shell-style patterns (``fnmatch``) over leaf names (``dense/kernel``); each leaf
takes the first group that matches it, and every leaf must match one. ``freeze`` lists patterns
whose leaves get zero updates and keep no optimizer state (also ``polaris compile --freeze``).
The result is ``multi_transform`` over the groups (plus a frozen group), and the manifest records
the groups and every leaf's label, so a host can tell which rule applies to which tensor.
"""

from __future__ import annotations

import fnmatch
from typing import Any

import jax

from polaris._src import registry
from polaris._src.base import Transform
from polaris._src.freeze import set_to_zero
from polaris._src.multi_transform import multi_transform
from polaris_compiler.errors import LayoutError
from polaris_compiler.layout import Layout

FROZEN = "frozen"


def _matches(name: str, patterns) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _check_group(i: int, g: Any) -> None:
    if not isinstance(g, dict) or "optimizer" not in g or "match" not in g:
        raise LayoutError(
            f"layout groups[{i}]: expected {{\"match\": [patterns], \"optimizer\": NAME, "
            f"\"options\": {{...}}}}, got {g!r}"
        )
    extra = set(g) - {"match", "optimizer", "options", "label"}
    if extra:
        raise LayoutError(f"layout groups[{i}]: unknown keys {sorted(extra)}; valid: match, optimizer, options, label")
    if isinstance(g["match"], str) or not all(isinstance(p, str) for p in g["match"]):
        raise LayoutError(f"layout groups[{i}]: `match` must be a list of patterns such as [\"*/bias\"]")


def build(layout: Layout, base: Transform | None = None, base_name: str | None = None,
          freeze: tuple[str, ...] = ()) -> tuple[Transform, dict]:
    """The transform for ``layout``'s groups and frozen leaves, and what the manifest records.

    Without groups, ``base`` (the optimizer named on the command line) trains every leaf that
    is not frozen.
    """
    if layout.kind != "tree":
        raise LayoutError(
            "parameter groups and frozen leaves select tensors by name; the flat layout has none "
            "(use a layout file with the model's tensors)"
        )
    freeze = tuple(layout.freeze) + tuple(freeze)
    names = [n for n, _ in layout.leaves()]
    groups = list(layout.groups)
    txs: dict[str, Transform] = {}
    rules: list[tuple[str, tuple[str, ...]]] = []
    record_groups = []
    if groups:
        for i, g in enumerate(groups):
            _check_group(i, g)
            label = str(g.get("label") or f"group{i}")
            spec = registry.get(g["optimizer"])
            options = dict(g.get("options", {}))
            txs[label] = spec.build(**options)
            rules.append((label, tuple(g["match"])))
            record_groups.append(
                {"label": label, "match": list(g["match"]), "optimizer": spec.name,
                 "options": {**spec.defaults(), **options}}
            )
    else:
        if base is None:
            raise LayoutError("no optimizer and no parameter groups to compile")
        txs["train"] = base
        rules.append(("train", ("*",)))
        record_groups.append({"label": "train", "match": ["*"], "optimizer": base_name or "custom"})
    labels: dict[str, str] = {}
    for n in names:
        if freeze and _matches(n, freeze):
            labels[n] = FROZEN
            continue
        for label, patterns in rules:
            if _matches(n, patterns):
                labels[n] = label
                break
        else:
            raise LayoutError(
                f"leaf {n!r} matches no parameter group; groups match "
                + "; ".join(f"{label}: {list(p)}" for label, p in rules)
                + ' (end with a catch-all group {"match": ["*"], ...})'
            )
    unused = [label for label, _ in rules if label not in labels.values()]
    if unused:
        raise LayoutError(f"parameter groups {unused} match no leaf; leaves: {names}")
    if FROZEN in labels.values():
        txs[FROZEN] = set_to_zero()
    label_tree = jax.tree.unflatten(jax.tree.structure(layout.tree), [labels[n] for n in names])
    record = {"param_groups": record_groups, "labels": labels, "frozen": sorted(n for n, lab in labels.items() if lab == FROZEN)}
    return multi_transform(txs, label_tree), record
