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
    end_value: float | None = None,
):
    """Exponential decay.

    .. math:: \\eta(t) = \\eta_0 \\cdot r^{(t - t_0)/k} \\;(\\lfloor\\cdot\\rfloor \\text{ if staircase}),
       \\quad \\eta_0 \\text{ while } t \\le t_0

    ``end_value`` (Optax's option; Polaris has none) bounds the value: a floor when
    ``decay_rate < 1``, a ceiling otherwise.
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
        value = jnp.where(t <= 0, jnp.asarray(init_value, _F), value).astype(_F)
        if end_value is not None:
            clip = jnp.maximum if decay_rate < 1.0 else jnp.minimum
            value = clip(value, jnp.asarray(end_value, _F))
        return value

    return schedule


@_schedule
def cosine_decay(
    init_value: float, *, decay_steps: int = 10, alpha: float = 0.0, exponent: float = 1.0
):
    """Cosine decay to ``alpha * init_value`` over ``decay_steps``.

    .. math:: \\eta(t) = \\eta_0\\left(\\left(\\tfrac{1+\\cos(\\pi\\min(t,k)/k)}{2}\\right)^{e}(1-\\alpha)+\\alpha\\right)

    ``exponent`` is Optax's option (1.0; Polaris has none).

    References: Loshchilov & Hutter, "SGDR: Stochastic Gradient Descent with Warm Restarts", 2017.
    """
    if decay_steps <= 0:
        raise ValueError(f"cosine_decay: `decay_steps` must be > 0, got {decay_steps}")

    def schedule(step):
        theta = jnp.minimum(_step(step), decay_steps) / decay_steps * math.pi
        cos = (jnp.cos(theta) + 1) / 2
        if exponent != 1.0:
            cos = cos**exponent
        return (init_value * (cos * (1 - alpha) + alpha)).astype(_F)

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


def _linear(start, end, pct):
    return (end - start) * pct + start


def _cosine(start, end, pct):
    return end + (start - end) / 2.0 * (jnp.cos(math.pi * pct) + 1)


@_schedule
def linear_schedule(
    init_value: float, end_value: float, transition_steps: int, transition_begin: int = 0
):
    """Linear interpolation from ``init_value`` to ``end_value`` (Optax's ``linear_schedule``).

    .. math:: \\eta(t) = \\eta_0 + (\\eta_e - \\eta_0)\\,\\mathrm{clip}(t - t_0, 0, k)/k

    A non-positive ``transition_steps`` gives the constant ``init_value`` (as Optax).
    """
    transition_begin = max(0, transition_begin)

    def schedule(step):
        if transition_steps <= 0:
            return jnp.full([], init_value, _F) + 0 * _step(step)
        t = jnp.clip(_step(step) - transition_begin, 0, transition_steps)
        return _linear(init_value, end_value, t / transition_steps).astype(_F)

    return schedule


@_schedule
def piecewise_constant(init_value: float, boundaries_and_scales: dict | None = None):
    """Multiplies the value by ``scale`` once the step reaches each ``boundary``
    (Optax's ``piecewise_constant_schedule``).

    .. math:: \\eta(t) = \\eta_0 \\prod_{b_i \\le t} s_i
    """
    items = sorted((boundaries_and_scales or {}).items())
    if any(sc < 0 for _, sc in items):
        raise ValueError(
            "piecewise_constant: every scale in `boundaries_and_scales` must be >= 0, got "
            f"{dict(items)}"
        )

    def schedule(step):
        t = _step(step)
        v = jnp.full([], init_value, _F)
        for boundary, sc in items:
            v = jnp.where(t < boundary, v, v * sc)
        return v.astype(_F)

    return schedule


@_schedule
def join_schedules(schedules, boundaries):
    """Runs ``schedules[i]`` from ``boundaries[i-1]`` on, each restarted at 0 (Optax's
    ``join_schedules``); ``len(boundaries) == len(schedules) - 1``.

    .. math:: \\eta(t) = \\eta_i(t - b_{i-1}) \\text{ for } b_{i-1} \\le t < b_i
    """
    schedules, boundaries = list(schedules), list(boundaries)
    if len(boundaries) != len(schedules) - 1:
        raise ValueError(
            f"join_schedules: needs len(boundaries) == len(schedules) - 1, got "
            f"{len(boundaries)} boundaries for {len(schedules)} schedules"
        )

    def schedule(step):
        t = jnp.asarray(step)
        out = jnp.asarray(schedules[0](t)).astype(_F)
        for boundary, sched in zip(boundaries, schedules[1:], strict=True):
            out = jnp.where(t < boundary, out, jnp.asarray(sched(t - boundary)).astype(_F))
        return out

    return schedule


@_schedule
def warmup_cosine_decay(
    init_value: float,
    peak_value: float,
    warmup_steps: int,
    decay_steps: int,
    end_value: float = 0.0,
    exponent: float = 1.0,
):
    """Linear warm-up from ``init_value`` to ``peak_value`` over ``warmup_steps``, then cosine
    decay to ``end_value`` at ``decay_steps`` (total, warm-up included; Optax's
    ``warmup_cosine_decay_schedule``).

    .. math:: \\eta(t) = \\begin{cases} \\eta_0 + (\\eta_p - \\eta_0) t / w & t < w \\\\
       \\eta_e + (\\eta_p - \\eta_e)\\left(\\tfrac{1 + \\cos(\\pi \\min(t-w, T-w)/(T-w))}{2}\\right)^{e}
       & t \\ge w \\end{cases}

    References: Loshchilov & Hutter, "SGDR: Stochastic Gradient Descent with Warm Restarts",
    ICLR 2017. https://arxiv.org/abs/1608.03983
    """
    alpha = 0.0 if peak_value == 0.0 else end_value / peak_value
    return join_schedules(
        [
            linear_schedule(init_value, peak_value, warmup_steps),
            cosine_decay(
                peak_value, decay_steps=decay_steps - warmup_steps, alpha=alpha, exponent=exponent
            ),
        ],
        [warmup_steps],
    )


@_schedule
def warmup_exponential_decay(
    init_value: float,
    peak_value: float,
    warmup_steps: int,
    transition_steps: int,
    decay_rate: float,
    transition_begin: int = 0,
    staircase: bool = False,
    end_value: float | None = None,
):
    """Linear warm-up to ``peak_value``, then :func:`exponential_decay` (Optax's
    ``warmup_exponential_decay_schedule``).

    .. math:: \\eta(t) = \\begin{cases} \\eta_0 + (\\eta_p - \\eta_0) t / w & t < w \\\\
       \\eta_p r^{(t - w - t_0)/k} & t \\ge w \\end{cases}
    """
    return join_schedules(
        [
            linear_schedule(init_value, peak_value, warmup_steps),
            exponential_decay(
                peak_value,
                decay_rate=decay_rate,
                transition_steps=transition_steps,
                transition_begin=transition_begin,
                staircase=staircase,
                end_value=end_value,
            ),
        ],
        [warmup_steps],
    )


def _piecewise_interpolate(interp, init_value, boundaries_and_scales):
    items = sorted(boundaries_and_scales.items())
    bounds = [0] + [b for b, _ in items]
    values = [float(init_value)]
    for _, sc in items:
        values.append(values[-1] * sc)

    def schedule(step):
        t = _step(step)
        out = jnp.zeros([], _F)
        for i in range(len(items)):
            lo, hi = bounds[i], bounds[i + 1]
            pct = (t - lo) / max(hi - lo, 1)
            inside = jnp.logical_and(lo <= t, t < hi)
            out = out + jnp.where(inside, interp(values[i], values[i + 1], pct), 0.0)
        return (out + jnp.where(bounds[-1] <= t, values[-1], 0.0)).astype(_F)

    return schedule


@_schedule
def linear_onecycle(
    transition_steps: int,
    peak_value: float,
    pct_start: float = 0.3,
    pct_final: float = 0.85,
    div_factor: float = 25.0,
    final_div_factor: float = 1.0e4,
):
    """One-cycle schedule with linear pieces (Optax's ``linear_onecycle_schedule``): from
    ``peak/div_factor`` up to ``peak`` at ``pct_start``, back down at ``pct_final``, then to
    ``peak/(div_factor*final_div_factor)`` at ``transition_steps``.

    .. math:: \\eta \\text{ linear between } (0, \\eta_p/d), (p_s T, \\eta_p), (p_f T, \\eta_p/d),
       (T, \\eta_p/(d f))

    References: Smith & Topin, "Super-Convergence", 2017. https://arxiv.org/abs/1708.07120
    """
    if transition_steps <= 0:
        raise ValueError(
            f"linear_onecycle: `transition_steps` must be > 0, got {transition_steps}"
        )
    return _piecewise_interpolate(
        _linear,
        peak_value / div_factor,
        {
            int(pct_start * transition_steps): div_factor,
            int(pct_final * transition_steps): 1.0 / div_factor,
            transition_steps: 1.0 / final_div_factor,
        },
    )


@_schedule
def cosine_onecycle(
    transition_steps: int,
    peak_value: float,
    pct_start: float = 0.3,
    div_factor: float = 25.0,
    final_div_factor: float = 1.0e4,
):
    """One-cycle schedule with cosine pieces (Optax's ``cosine_onecycle_schedule``): from
    ``peak/div_factor`` up to ``peak`` at ``pct_start``, then down to
    ``peak/(div_factor*final_div_factor)`` at ``transition_steps``.

    .. math:: \\eta \\text{ cosine-interpolated between } (0, \\eta_p/d), (p_s T, \\eta_p),
       (T, \\eta_p/(d f))

    References: Smith & Topin, "Super-Convergence", 2017. https://arxiv.org/abs/1708.07120
    """
    if transition_steps <= 0:
        raise ValueError(
            f"cosine_onecycle: `transition_steps` must be > 0, got {transition_steps}"
        )
    return _piecewise_interpolate(
        _cosine,
        peak_value / div_factor,
        {
            int(pct_start * transition_steps): div_factor,
            int(transition_steps): 1.0 / (div_factor * final_div_factor),
        },
    )


@_schedule
def sgdr(cosine_kwargs):
    """Stochastic gradient descent with warm restarts: one :func:`warmup_cosine_decay` per
    dict of ``cosine_kwargs``, joined end to end (Optax's ``sgdr_schedule``).

    .. math:: \\eta(t) = \\text{warmup\\_cosine\\_decay}_i(t - B_i), \\quad B_i = \\textstyle\\sum_{j<i} T_j

    References: Loshchilov & Hutter, "SGDR: Stochastic Gradient Descent with Warm Restarts",
    ICLR 2017. https://arxiv.org/abs/1608.03983
    """
    boundaries, schedules, step = [], [], 0
    for kwargs in cosine_kwargs:
        schedules.append(warmup_cosine_decay(**kwargs))
        step += kwargs["decay_steps"]
        boundaries.append(step)
    return join_schedules(schedules, boundaries[:-1])


SCHEDULES = {
    "constant": constant,
    "exponential_decay": exponential_decay,
    "cosine_decay": cosine_decay,
    "polynomial_decay": polynomial_decay,
    "linear_decay": linear_decay,
    "linear_schedule": linear_schedule,
    "piecewise_constant": piecewise_constant,
    "warmup_cosine_decay": warmup_cosine_decay,
    "warmup_exponential_decay": warmup_exponential_decay,
    "linear_onecycle": linear_onecycle,
    "cosine_onecycle": cosine_onecycle,
    "sgdr": sgdr,
}
"""Schedules the CLI's ``name(literal, key=literal)`` parser can build. :func:`join_schedules`
is left out: its arguments are schedules, not literals."""
