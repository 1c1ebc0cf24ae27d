"""Learning-rate schedules (Polaris.Schedules)."""

from polaris._src.schedules import (
    Schedule,
    SCHEDULES,
    constant,
    cosine_decay,
    exponential_decay,
    linear_decay,
    polynomial_decay,
)

__all__ = [
    "Schedule",
    "SCHEDULES",
    "constant",
    "cosine_decay",
    "exponential_decay",
    "linear_decay",
    "polynomial_decay",
]
