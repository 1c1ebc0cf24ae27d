"""The core type and the two primitives every update is built on.

A transform is a pair of pure functions, exactly as in Polaris (``{init_fn, apply_fn}``) and
Optax (``GradientTransformation``)::

    init(params) -> state
    update(updates, state, params=None) -> (updates, state)

Every transform in this package is built from two primitives, :func:`stateless` and
:func:`stateful`, and composed with :func:`compose` (two) or :func:`chain` (any number).

State layout (this is the ABI of compiled modules; see ``docs/abi.md``)
------------------------------------------------------------------------
* A single transform's state is a ``NamedTuple`` (``ScaleByAdamState(count, mu, nu)``) whose
  per-parameter fields mirror the parameter tree (``{"mu": {"kernel": ...}}``), or
  :class:`EmptyState` for a stateless transform.
* A composition's state is a plain ``tuple`` with one slot per member **in application order**
  (Optax's order, the reverse of Polaris's tuple): ``chain(scale_by_adam(), scale_by_learning_rate(1e-3))``
  inits to ``(ScaleByAdamState(...), ScaleByLearningRateState(...))``. Stateless members keep a slot
  holding ``EmptyState()``, which flattens to zero leaves, so the compiled signature only carries
  real arrays. Nested compositions are flattened: ``compose(compose(a, b), c)`` has the state
  ``(sa, sb, sc)``.
* Step counters are ``int32`` scalars (as in Optax), moments are ``float32`` whatever the
  parameter dtype (as in Polaris), and a numeric learning rate lives in the state as a ``float32``
  scalar so a compiled module can change it without recompiling.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol

import jax

PyTree = Any
Params = PyTree
Updates = PyTree
State = Any


class InitFn(Protocol):
    def __call__(self, params: Params) -> State: ...


class UpdateFn(Protocol):
    def __call__(
        self, updates: Updates, state: State, params: Params | None = None
    ) -> tuple[Updates, State]: ...


class Transform(NamedTuple):
    """A gradient transformation: ``init(params) -> state`` and
    ``update(updates, state, params=None) -> (updates, state)``.

    It unpacks like Polaris's tuple (``init, update = polaris.optimizers.adam()``) and its
    functions can be handed to ``jax.jit`` or ``jax.export`` unchanged.
    """

    init: InitFn
    update: UpdateFn


class EmptyState(NamedTuple):
    """The state of a stateless transform: no leaves."""


def is_transform(x: Any) -> bool:
    """True for a :class:`Transform` (or any ``(init, update)`` pair of callables)."""
    return (
        isinstance(x, tuple)
        and len(x) == 2
        and callable(x[0])
        and callable(x[1])
        and not isinstance(x, EmptyState)
    )


def identity() -> Transform:
    """The transform that leaves updates unchanged and holds no state.

    .. math:: u' = u
    """

    def init(params):
        del params
        return EmptyState()

    def update(updates, state, params=None):
        del params
        return updates, state

    return Transform(init, update)


def stateless(
    parent: Transform | Callable | None = None, apply_fn: Callable | None = None
) -> Transform:
    """Builds a transform without state from ``apply_fn(updates, params) -> updates``.

    Polaris's shape is kept: ``stateless(apply_fn)`` or ``stateless(parent, apply_fn)``; with a
    parent the result is ``compose(parent, stateless(apply_fn))``.
    """
    if apply_fn is None:
        parent, apply_fn = None, parent
    if not callable(apply_fn):
        raise TypeError(
            f"stateless: `apply_fn` must be a function (updates, params) -> updates, got "
            f"{type(apply_fn).__name__}"
        )

    def init(params):
        del params
        return EmptyState()

    def update(updates, state, params=None):
        return apply_fn(updates, params), state

    tx = Transform(init, update)
    return tx if parent is None else compose(_as_transform(parent, "parent"), tx)


def stateful(
    parent: Transform | Callable | None = None,
    init_fn: Callable | None = None,
    apply_fn: Callable | None = None,
) -> Transform:
    """Builds a transform with state from ``init_fn(params) -> state`` and
    ``apply_fn(updates, state, params) -> (updates, state)``.

    Polaris's shape is kept: ``stateful(init_fn, apply_fn)`` or ``stateful(parent, init_fn,
    apply_fn)``; with a parent the result is ``compose(parent, stateful(init_fn, apply_fn))``.
    """
    if apply_fn is None:
        parent, init_fn, apply_fn = None, parent, init_fn
    if not (callable(init_fn) and callable(apply_fn)):
        raise TypeError(
            "stateful: expected `init_fn(params) -> state` and `apply_fn(updates, state, params) "
            "-> (updates, state)`, both functions"
        )

    def update(updates, state, params=None):
        return apply_fn(updates, state, params)

    tx = Transform(init_fn, update)
    return tx if parent is None else compose(_as_transform(parent, "parent"), tx)


class _ChainInit:
    """The ``init`` of a composition; remembers its members so compositions flatten."""

    def __init__(self, members: tuple[Transform, ...]):
        self.members = members

    def __call__(self, params):
        return tuple(tx.init(params) for tx in self.members)


class _ChainUpdate:
    def __init__(self, members: tuple[Transform, ...]):
        self.members = members

    def __call__(self, updates, state, params=None):
        if not isinstance(state, tuple) or len(state) != len(self.members):
            got = len(state) if isinstance(state, tuple) else type(state).__name__
            raise ValueError(
                f"chain: `state` must be a tuple of {len(self.members)} member states (one per "
                f"transform, in application order), got {got}; pass the state returned by this "
                f"transform's own init()"
            )
        new_state = []
        for tx, s in zip(self.members, state, strict=True):
            updates, s = tx.update(updates, s, params)
            new_state.append(s)
        return updates, tuple(new_state)


def _members(tx: Transform) -> tuple[Transform, ...]:
    if isinstance(tx.init, _ChainInit):
        return tx.init.members
    return (tx,)


def _as_transform(x: Any, what: str) -> Transform:
    if isinstance(x, Transform):
        return x
    if is_transform(x):
        return Transform(*x)
    raise TypeError(
        f"{what}: expected a Transform (an (init, update) pair, e.g. polaris.updates.scale_by_adam()), "
        f"got {type(x).__name__}"
    )


def chain(*transforms: Transform) -> Transform:
    """Applies ``transforms`` one after the other (n-ary :func:`compose`).

    The state is a tuple with one slot per member, in application order; nested chains are
    flattened.

    .. math:: u' = f_n(\\dots f_2(f_1(u)))
    """
    members: list[Transform] = []
    for i, tx in enumerate(transforms):
        members.extend(_members(_as_transform(tx, f"chain: argument {i}")))
    if not members:
        return identity()
    if len(members) == 1:
        return members[0]
    ms = tuple(members)
    return Transform(_ChainInit(ms), _ChainUpdate(ms))


def compose(first: Transform, second: Transform) -> Transform:
    """Polaris's ``compose/2``: apply ``first`` then ``second``. Same as ``chain(first, second)``."""
    return chain(first, second)


def combinator(fn: Callable[..., Transform]) -> Callable[..., Transform]:
    """Gives an update builder Polaris's optional preceding combinator.

    ``f(opts)`` builds the transform; ``f(parent, opts)`` builds ``compose(parent, f(opts))``,
    so updates pipe as in Polaris (``scale_by_adam() |> scale(-lr)`` is
    ``scale(scale_by_adam(), -lr)``).
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if args and is_transform(args[0]):
            parent = _as_transform(args[0], fn.__name__)
            return compose(parent, fn(*args[1:], **kwargs))
        return fn(*args, **kwargs)

    wrapper.__polaris_combinator__ = True  # type: ignore[attr-defined]
    return wrapper


def tree_leaves_with_names(tree: PyTree, prefix: str = "") -> list[tuple[str, Any]]:
    """Flattens ``tree`` in JAX's order and names each leaf by its path joined with ``/``.

    Dict keys are sorted (JAX's rule), tuples give their index, NamedTuples their field name:
    ``{"mu": {"kernel": x}}`` gives ``"mu/kernel"``.
    """
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    out = []
    for path, leaf in leaves:
        parts = [prefix] if prefix else []
        parts.extend(_key_name(k) for k in path)
        out.append(("/".join(parts), leaf))
    return out


def _key_name(k: Any) -> str:
    if isinstance(k, jax.tree_util.DictKey):
        return str(k.key)
    if isinstance(k, jax.tree_util.SequenceKey):
        return str(k.idx)
    if isinstance(k, jax.tree_util.GetAttrKey):
        return k.name
    return str(k)


def members(tx: Transform) -> Sequence[Transform]:
    """The transforms a composition applies, in order (a single transform for a non-chain)."""
    return _members(tx)


def hyperparameter_leaves(state: State, prefix: str = "") -> list[tuple[str, str]]:
    """Finds the state leaves that are tunable hyperparameters.

    A state ``NamedTuple`` marks its hyperparameter fields with a class attribute
    ``hyperparameters = ("learning_rate",)``. Returns ``[(field_name, leaf_name), ...]`` in leaf
    order, where ``leaf_name`` is the name :func:`tree_leaves_with_names` gives that leaf.
    """
    found: list[tuple[str, str]] = []

    def walk(node, path):
        fields = getattr(type(node), "hyperparameters", None)
        if isinstance(node, tuple) and hasattr(node, "_fields"):
            for f in node._fields:
                p = path + [f]
                if fields and f in fields:
                    found.append((f, "/".join(([prefix] if prefix else []) + p)))
                else:
                    walk(getattr(node, f), p)
        elif isinstance(node, (tuple, list)):
            for i, v in enumerate(node):
                walk(v, path + [str(i)])
        elif isinstance(node, dict):
            for k in sorted(node):
                walk(node[k], path + [str(k)])

    walk(state, [])
    return found


def transform_names(tx: Transform) -> list[str]:
    """Best-effort names of a composition's members (``["scale_by_adam", "scale_by_learning_rate"]``).

    Read from the builder that created each member's functions; ``"custom"`` where unknown.
    """
    return [_member_name(m) for m in _members(tx)]


def _member_name(tx: Transform) -> str:
    skip = {"stateless", "stateful", "identity", "combinator", "wrapper"}
    candidates = [tx.init, tx.update]
    for fn in list(candidates):
        for cell in getattr(fn, "__closure__", None) or ():
            try:
                v = cell.cell_contents
            except ValueError:
                continue
            if callable(v):
                candidates.append(v)
    for fn in candidates:
        qual = getattr(fn, "__qualname__", "")
        head = qual.split(".<locals>.")[0] if ".<locals>." in qual else ""
        if head and head not in skip:
            return head
    if tx.init.__qualname__.startswith("identity."):
        return "identity"
    return "custom"
