"""Learning-rate schedules (Polaris.Schedules, plus Optax's schedules under their Optax
math; ``*_schedule`` aliases carry Optax's names)."""

from polaris._src.schedules import (
    SCHEDULES,
    Schedule,
    constant,
    cosine_decay,
    cosine_onecycle,
    exponential_decay,
    join_schedules,
    linear_decay,
    linear_onecycle,
    linear_schedule,
    piecewise_constant,
    polynomial_decay,
    sgdr,
    warmup_cosine_decay,
    warmup_exponential_decay,
)

# Optax's names.
piecewise_constant_schedule = piecewise_constant
warmup_cosine_decay_schedule = warmup_cosine_decay
warmup_exponential_decay_schedule = warmup_exponential_decay
linear_onecycle_schedule = linear_onecycle
cosine_onecycle_schedule = cosine_onecycle
sgdr_schedule = sgdr

__all__ = [
    "Schedule",
    "SCHEDULES",
    "constant",
    "cosine_decay",
    "cosine_onecycle",
    "cosine_onecycle_schedule",
    "exponential_decay",
    "join_schedules",
    "linear_decay",
    "linear_onecycle",
    "linear_onecycle_schedule",
    "linear_schedule",
    "piecewise_constant",
    "piecewise_constant_schedule",
    "polynomial_decay",
    "sgdr",
    "sgdr_schedule",
    "warmup_cosine_decay",
    "warmup_cosine_decay_schedule",
    "warmup_exponential_decay",
    "warmup_exponential_decay_schedule",
]
