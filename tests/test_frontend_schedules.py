"""Schedule goldens: Polaris's (reference §5.2) and Optax's schedule tests (§5.4)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from polaris import schedules as S
from polaris._src.registry import parse_schedule


def values(sched, steps):
    return np.asarray([float(sched(jnp.asarray(s, jnp.int32))) for s in steps])


POLARIS_GOLDENS = [
    (S.exponential_decay(1e-2, decay_rate=0.9, transition_steps=15),
     {0: 1e-2, 25: 0.008389527, 50: 0.007038417, 1000: 8.902254e-06, 100000: 0.0}),
    (S.exponential_decay(1e-3, decay_rate=0.99, transition_steps=100),
     {25: 0.0009974906, 50: 0.0009949874, 1000: 0.0009043822, 100000: 4.3171664e-08}),
    (S.exponential_decay(1e-1, decay_rate=0.99, transition_begin=100, transition_steps=25),
     {0: 0.1, 25: 0.1, 50: 0.1, 1000: 0.069641344, 100000: 3.6162157e-19}),
    (S.cosine_decay(1e-3, decay_steps=10, alpha=0.0), {0: 0.001, 25: 0.0, 50: 0.0}),
    (S.cosine_decay(1e-2, decay_steps=1000, alpha=0.5),
     {25: 0.009992293, 50: 0.0099692205, 1000: 0.005, 100000: 0.005}),
    (S.cosine_decay(1e-1, decay_steps=1), {0: 0.1, 1: 0.0, 25: 0.0}),
    (S.constant(0.25), {0: 0.25, 25: 0.25, 100000: 0.25}),
    (S.polynomial_decay(1e-2, end_value=1e-3, power=3, transition_steps=1000),
     {25: 0.009341734, 50: 0.008716375, 1000: 0.001, 5000: 0.001}),
    (S.polynomial_decay(1e-3, end_value=1e-4, transition_begin=100, power=2),
     {0: 0.001, 25: 0.001, 50: 0.001, 1000: 0.0001}),
    (S.polynomial_decay(1e-1, end_value=1e-3, transition_steps=10000, power=1.5),
     {25: 0.099628985, 50: 0.09925843, 1000: 0.08552768, 100000: 0.001}),
]


@pytest.mark.parametrize("sched,expected", POLARIS_GOLDENS, ids=lambda x: repr(x)[:40])
def test_polaris_schedule_goldens(sched, expected):
    got = values(sched, list(expected))
    np.testing.assert_allclose(got, list(expected.values()), rtol=1e-5, atol=1e-12)


def test_linear_decay():
    sched = S.linear_decay(1e-2, warmup=10, steps=110)
    np.testing.assert_allclose(values(sched, [0, 5, 10, 60, 110, 200]),
                               [0.0, 5e-3, 1e-2, 5e-3, 0.0, 0.0], rtol=1e-6, atol=1e-9)


def test_optax_polynomial_cases():
    np.testing.assert_allclose(
        values(S.polynomial_decay(10.0, end_value=20.0, power=1, transition_steps=10), range(15)),
        list(range(10, 20)) + [20] * 5, rtol=1e-6)
    n = np.arange(15)
    np.testing.assert_allclose(
        values(S.polynomial_decay(25.0, end_value=10.0, power=2, transition_steps=10), n),
        10 + 15 * (1 - np.minimum(n, 10) / 10) ** 2, rtol=1e-6)
    got = values(S.polynomial_decay(30.0, end_value=10.0, power=2, transition_steps=10,
                                    transition_begin=4), range(20))
    m = np.arange(10)
    np.testing.assert_allclose(got, [30] * 4 + list(10 + 20 * (1 - m / 10) ** 2) + [10] * 6, rtol=1e-6)


def test_optax_cosine_cases():
    n = np.arange(10)
    np.testing.assert_allclose(values(S.cosine_decay(0.1, decay_steps=10), n),
                               0.1 * (0.5 + 0.5 * np.cos(np.pi * n / 10)), rtol=1e-5, atol=1e-7)
    n = np.arange(8)
    np.testing.assert_allclose(values(S.cosine_decay(0.1, decay_steps=5), n),
                               0.1 * (0.5 + 0.5 * np.cos(np.pi * np.minimum(n, 5) / 5)), atol=1e-3)


def _against_optax(ours, theirs, steps=range(0, 130)):
    np.testing.assert_allclose(values(ours, steps),
                               np.asarray([theirs(s) for s in steps], np.float32),
                               rtol=1e-5, atol=1e-7)


OPTAX_SCHEDULES = {
    "exponential_staircase_end": (
        lambda: S.exponential_decay(1.0, decay_rate=0.5, transition_steps=7, transition_begin=3,
                                    staircase=True, end_value=0.05),
        lambda: optax.exponential_decay(1.0, 7, 0.5, 3, True, 0.05)),
    "exponential_growth_end": (
        lambda: S.exponential_decay(0.1, decay_rate=1.1, transition_steps=5, end_value=1.0),
        lambda: optax.exponential_decay(0.1, 5, 1.1, end_value=1.0)),
    "cosine_exponent": (
        lambda: S.cosine_decay(0.5, decay_steps=100, alpha=0.1, exponent=2.0),
        lambda: optax.cosine_decay_schedule(0.5, 100, 0.1, exponent=2.0)),
    "linear_schedule": (lambda: S.linear_schedule(1.0, 0.1, 50, 10),
                        lambda: optax.linear_schedule(1.0, 0.1, 50, 10)),
    "piecewise_constant": (lambda: S.piecewise_constant(1.0, {10: 0.5, 30: 0.1, 31: 2.0}),
                           lambda: optax.piecewise_constant_schedule(1.0, {10: 0.5, 30: 0.1, 31: 2.0})),
    "join_schedules": (
        lambda: S.join_schedules([S.constant(1.0), S.linear_schedule(1.0, 0.0, 20)], [10]),
        lambda: optax.join_schedules([optax.constant_schedule(1.0),
                                      optax.linear_schedule(1.0, 0.0, 20)], [10])),
    "warmup_cosine_decay": (lambda: S.warmup_cosine_decay(0.0, 1.0, 10, 100, 0.1),
                            lambda: optax.warmup_cosine_decay_schedule(0.0, 1.0, 10, 100, 0.1)),
    "warmup_exponential_decay": (
        lambda: S.warmup_exponential_decay(0.0, 1.0, 10, 20, 0.5, 5, True, 0.05),
        lambda: optax.warmup_exponential_decay_schedule(0.0, 1.0, 10, 20, 0.5, 5, True, 0.05)),
    "linear_onecycle": (lambda: S.linear_onecycle(100, 1.0),
                        lambda: optax.linear_onecycle_schedule(100, 1.0)),
    "cosine_onecycle": (lambda: S.cosine_onecycle(100, 1.0, pct_start=0.2),
                        lambda: optax.cosine_onecycle_schedule(100, 1.0, pct_start=0.2)),
    "sgdr": (
        lambda: S.sgdr([dict(init_value=0.0, peak_value=1.0, warmup_steps=5, decay_steps=30),
                        dict(init_value=0.0, peak_value=0.5, warmup_steps=5, decay_steps=40)]),
        lambda: optax.sgdr_schedule([
            dict(init_value=0.0, peak_value=1.0, warmup_steps=5, decay_steps=30),
            dict(init_value=0.0, peak_value=0.5, warmup_steps=5, decay_steps=40)])),
}


@pytest.mark.parametrize("name", sorted(OPTAX_SCHEDULES))
def test_matches_optax_schedule(name):
    ours, theirs = OPTAX_SCHEDULES[name]
    _against_optax(ours(), theirs())


def test_warmup_cosine_limits():
    sched = S.warmup_cosine_decay(0.0, 2.0, 10, 110, end_value=0.2)
    np.testing.assert_allclose(values(sched, [0, 10, 110, 1000]), [0.0, 2.0, 0.2, 0.2], rtol=1e-6)


@pytest.mark.parametrize("name", sorted(S.SCHEDULES))
def test_every_parseable_schedule_is_jittable_and_float32(name):
    examples = {
        "constant": "constant(0.1)",
        "exponential_decay": "exponential_decay(0.1, decay_rate=0.5)",
        "cosine_decay": "cosine_decay(0.1, decay_steps=100)",
        "polynomial_decay": "polynomial_decay(0.1)",
        "linear_decay": "linear_decay(0.1, warmup=5, steps=100)",
        "linear_schedule": "linear_schedule(0.1, 0.0, 100)",
        "piecewise_constant": "piecewise_constant(0.1, {10: 0.5})",
        "warmup_cosine_decay": "warmup_cosine_decay(0.0, 0.1, 10, 100)",
        "warmup_exponential_decay": "warmup_exponential_decay(0.0, 0.1, 10, 20, 0.5)",
        "linear_onecycle": "linear_onecycle(100, 0.1)",
        "cosine_onecycle": "cosine_onecycle(100, 0.1)",
        "sgdr": "sgdr([{'init_value': 0.0, 'peak_value': 0.1, 'warmup_steps': 2, 'decay_steps': 10}])",
    }
    sched = parse_schedule(examples[name])
    out = jax.jit(sched)(jnp.asarray(7, jnp.int32))
    assert out.dtype == jnp.float32 and out.shape == ()
    assert repr(sched).startswith(name + "(")
