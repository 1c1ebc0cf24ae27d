"""Learning-rate schedules: pure ``jnp`` functions of the step count (Polaris.Schedules).

Each builder returns ``schedule(step) -> scalar``; compiled into a module, its options are
constants and the step comes from the optimizer's int32 counter.
"""

from __future__ import annotations

import functools
import math

import jax.numpy as jnp

_F = jnp.float32


class Schedule:
    """A schedule: callable on the step count, and printable as the expression that built it."""

    def __init__(self, fn, name: str, args: tuple, kwargs: dict):
        self._fn, self.name, self.args, self.kwargs = fn, name, args, kwargs

    def __call__(self, step):
        return self._fn(step)

    def __repr__(self) -> str:
        parts = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        return f"{self.name}({', '.join(parts)})"


def _schedule(builder):
    @functools.wraps(builder)
    def wrapper(*args, **kwargs):
        return Schedule(builder(*args, **kwargs), builder.__name__, args, kwargs)

    return wrapper


def _step(step):
    return jnp.asarray(step).astype(_F)


@_schedule
def constant(init_value: float):
    """``init_value`` at every step."""

    def schedule(step):
        return jnp.full([], init_value, _F) + 0 * _step(step)

    return schedule


@_schedule
def exponential_decay(
    init_value: float,
    *,
    decay_rate: float = 0.95,
    transition_steps: int = 10,
    transition_begin: int = 0,
    staircase: bool = False,
):
    """Exponential decay.

    .. math:: \\eta(t) = \\eta_0 \\cdot r^{(t - t_0)/k} \\;(\\lfloor\\cdot\\rfloor \\text{ if staircase}),
       \\quad \\eta_0 \\text{ while } t \\le t_0
    """
    if transition_steps <= 0:
        raise ValueError(
            f"exponential_decay: `transition_steps` must be > 0, got {transition_steps}"
        )

    def schedule(step):
        t = _step(step) - transition_begin
        p = t / transition_steps
        if staircase:
            p = jnp.floor(p)
        value = init_value * jnp.power(jnp.asarray(decay_rate, _F), p)
        return jnp.where(t <= 0, jnp.asarray(init_value, _F), value).astype(_F)

    return schedule


@_schedule
def cosine_decay(init_value: float, *, decay_steps: int = 10, alpha: float = 0.0):
    """Cosine decay to ``alpha * init_value`` over ``decay_steps``.

    .. math:: \\eta(t) = \\eta_0\\left(\\tfrac{1+\\cos(\\pi\\min(t,k)/k)}{2}(1-\\alpha)+\\alpha\\right)

    References: Loshchilov & Hutter, "SGDR: Stochastic Gradient Descent with Warm Restarts", 2017.
    """
    if decay_steps <= 0:
        raise ValueError(f"cosine_decay: `decay_steps` must be > 0, got {decay_steps}")

    def schedule(step):
        theta = jnp.minimum(_step(step), decay_steps) / decay_steps * math.pi
        return (init_value * ((jnp.cos(theta) + 1) / 2 * (1 - alpha) + alpha)).astype(_F)

    return schedule


@_schedule
def polynomial_decay(
    init_value: float,
    *,
    end_value: float = 1.0e-3,
    power: float = 2,
    transition_steps: int = 10,
    transition_begin: int = 0,
):
    """Polynomial decay from ``init_value`` to ``end_value``.

    .. math:: \\eta(t) = (\\eta_0 - \\eta_e)(1 - \\mathrm{clip}(t - t_0, 0, k)/k)^{p} + \\eta_e
    """
    if transition_steps <= 0:
        raise ValueError(
            f"polynomial_decay: `transition_steps` must be > 0, got {transition_steps}"
        )

    def schedule(step):
        t = jnp.clip(_step(step) - transition_begin, 0, transition_steps)
        return ((init_value - end_value) * (1 - t / transition_steps) ** power + end_value).astype(_F)

    return schedule


@_schedule
def linear_decay(init_value: float, *, warmup: int = 0, steps: int = 1000):
    """Linear warm-up for ``warmup`` steps, then linear decay to 0 at ``steps``.

    .. math:: \\eta(t) = \\eta_0 \\cdot \\begin{cases} t/\\max(1,w) & t < w \\\\
       \\max(0, (T - t)/\\max(1, T - w)) & t \\ge w \\end{cases}
    """

    def schedule(step):
        t = _step(step)
        up = t / max(1, warmup)
        down = jnp.maximum(0.0, (steps - t) / max(1, steps - warmup))
        return (jnp.where(t < warmup, up, down) * init_value).astype(_F)

    return schedule


SCHEDULES = {
    "constant": constant,
    "exponential_decay": exponential_decay,
    "cosine_decay": cosine_decay,
    "polynomial_decay": polynomial_decay,
    "linear_decay": linear_decay,
}
