"""The optimizer registry: one decorator that the CLI, the compiler, the tests and the docs read.

Adding an optimizer is one file in ``polaris/optimizers/`` whose builder is decorated with
:func:`register`; its keyword arguments (with type annotations and defaults) become its options.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import typing
from collections.abc import Callable
from typing import Any, Union

from polaris._src.base import Transform
from polaris._src.errors import OptionError
from polaris._src.schedules import SCHEDULES

Schedule = Callable[[Any], Any]
LearningRate = Union[float, Schedule]  # noqa: UP007 (kept for get_type_hints)

KINDS = ("float", "int", "bool", "optional_float", "learning_rate")


@dataclasses.dataclass(frozen=True)
class Option:
    """One option of an optimizer: its name, default and kind (how a string parses into it)."""

    name: str
    default: Any
    kind: str

    def parse(self, optimizer: str, text: str) -> Any:
        """Parses ``text`` (from the command line or a layout file) into this option's type."""
        return _parse_value(optimizer, self, text)


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
    """A registered optimizer."""

    name: str
    builder: Callable[..., Transform]
    options: tuple[Option, ...]
    summary: str
    example: dict

    def option(self, name: str) -> Option:
        for o in self.options:
            if o.name == name:
                return o
        raise OptionError(
            f"{self.name}: unknown option {name!r}; valid options: "
            f"{', '.join(o.name for o in self.options)}"
        )

    def defaults(self) -> dict[str, Any]:
        return {o.name: o.default for o in self.options}

    def build(self, **options: Any) -> Transform:
        """Builds the transform, checking every option name and value first."""
        for k, v in options.items():
            _check_value(self.name, self.option(k), v)
        return self.builder(**options)


_REGISTRY: dict[str, OptimizerSpec] = {}


def register(name: str | None = None, *, example: dict | None = None):
    """Registers an optimizer builder under ``name`` (default: the function's name)."""

    def deco(fn: Callable[..., Transform]) -> Callable[..., Transform]:
        key = name or fn.__name__
        if key in _REGISTRY and _REGISTRY[key].builder is not fn:
            raise ValueError(f"register: an optimizer named {key!r} is already registered")
        hints = typing.get_type_hints(fn)
        opts = []
        for p in inspect.signature(fn).parameters.values():
            if p.default is inspect.Parameter.empty:
                raise TypeError(f"register({key}): option {p.name!r} needs a default")
            opts.append(Option(p.name, p.default, _kind(key, p.name, hints.get(p.name))))
        doc = inspect.getdoc(fn) or ""
        _REGISTRY[key] = OptimizerSpec(
            name=key,
            builder=fn,
            options=tuple(opts),
            summary=doc.splitlines()[0] if doc else "",
            example=dict(example or {}),
        )
        fn.__polaris_registered__ = key  # type: ignore[attr-defined]
        return fn

    return deco


def _kind(opt: str, arg: str, hint) -> str:
    if hint is bool:
        return "bool"
    if hint is int:
        return "int"
    if hint is float:
        return "float"
    if hint == LearningRate:
        return "learning_rate"
    if hint == (float | None) or hint == typing.Optional[float]:  # noqa: UP045
        return "optional_float"
    raise TypeError(f"register({opt}): option {arg!r} has an unsupported annotation {hint!r}")


def names() -> list[str]:
    """The registered optimizer names, sorted."""
    _load_all()
    return sorted(_REGISTRY)


def get(name: str) -> OptimizerSpec:
    """The registered optimizer ``name``; the error lists the valid names."""
    _load_all()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise OptionError(
            f"unknown optimizer {name!r}; valid optimizers: {', '.join(sorted(_REGISTRY))}"
        ) from None


def specs() -> list[OptimizerSpec]:
    _load_all()
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def _load_all() -> None:
    import polaris.optimizers  # noqa: F401  (importing registers every optimizer module)


def _check_value(optimizer: str, opt: Option, v: Any) -> None:
    ok = {
        "bool": lambda x: isinstance(x, bool),
        "int": lambda x: isinstance(x, int) and not isinstance(x, bool),
        "float": lambda x: isinstance(x, (int, float)) and not isinstance(x, bool),
        "optional_float": lambda x: x is None
        or (isinstance(x, (int, float)) and not isinstance(x, bool)),
        "learning_rate": lambda x: callable(x)
        or (isinstance(x, (int, float)) and not isinstance(x, bool)),
    }[opt.kind]
    if not ok(v):
        raise OptionError(
            f"{optimizer}: option {opt.name!r} expects {_describe(opt.kind)}, got {v!r}"
        )


def _describe(kind: str) -> str:
    return {
        "bool": "true or false",
        "int": "an integer",
        "float": "a number",
        "optional_float": "a number or none",
        "learning_rate": "a number or a schedule such as cosine_decay(1e-3, decay_steps=1000) "
        f"(schedules: {', '.join(SCHEDULES)})",
    }[kind]


def _parse_value(optimizer: str, opt: Option, text: str) -> Any:
    t = text.strip()
    low = t.lower()
    try:
        if opt.kind == "bool":
            if low in ("true", "1", "yes", "on"):
                return True
            if low in ("false", "0", "no", "off"):
                return False
            raise ValueError
        if opt.kind == "int":
            return int(t)
        if opt.kind == "optional_float" and low in ("none", "null", ""):
            return None
        if opt.kind in ("float", "optional_float"):
            return float(t)
        if opt.kind == "learning_rate":
            try:
                return float(t)
            except ValueError:
                return parse_schedule(t)
    except OptionError:
        raise
    except (ValueError, SyntaxError):
        pass
    raise OptionError(
        f"{optimizer}: option {opt.name!r} expects {_describe(opt.kind)}, got {text!r}"
    )


def parse_schedule(text: str):
    """Parses ``name(init_value, key=value, ...)`` into a schedule; only literals are allowed."""
    sched, _ = schedule_from_expr(text)
    return sched


def schedule_from_expr(text: str):
    """Returns ``(schedule, {"name":..., "args":[...], "kwargs":{...}})`` for a schedule expression."""
    try:
        node = ast.parse(text.strip(), mode="eval").body
    except SyntaxError:
        raise ValueError(text) from None
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
        raise ValueError(text)
    name = node.func.id
    if name not in SCHEDULES:
        raise OptionError(
            f"unknown schedule {name!r}; valid schedules: {', '.join(SCHEDULES)}"
        )
    try:
        args = [ast.literal_eval(a) for a in node.args]
        kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
    except ValueError:
        raise OptionError(f"schedule {text!r}: arguments must be literal numbers") from None
    try:
        sched = SCHEDULES[name](*args, **kwargs)
    except TypeError as e:
        sig = inspect.signature(SCHEDULES[name])
        raise OptionError(f"schedule {name}{sig}: {e}") from None
    return sched, {"name": name, "args": args, "kwargs": kwargs}
