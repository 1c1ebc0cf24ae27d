"""Every registered optimizer against its Optax equivalent: >= 200 steps on a nested tree."""

from __future__ import annotations

import jax
import numpy as np
import optax
import pytest

import polaris.optimizers as optimizers
from _frontend_helpers import random_tree, run_steps

LR = 1e-2

# name[:variant] -> (polaris options, optax builder). Options that differ in default are passed
# explicitly on the Polaris side (e.g. eps_root=0.0 for adam).
OPTAX_EQUIVALENTS = {
    "adam": (dict(learning_rate=LR, eps_root=0.0), lambda: optax.adam(LR)),
    "adam:b1b2": (
        dict(learning_rate=LR, b1=0.8, b2=0.99, eps=1e-6, eps_root=1e-8),
        lambda: optax.adam(LR, b1=0.8, b2=0.99, eps=1e-6, eps_root=1e-8),
    ),
    "adamw": (
        dict(learning_rate=LR, eps_root=0.0, decay=1e-2),
        lambda: optax.adamw(LR, weight_decay=1e-2),
    ),
    "sgd": (dict(learning_rate=LR), lambda: optax.sgd(LR)),
    "sgd:momentum": (dict(learning_rate=LR, momentum=0.9), lambda: optax.sgd(LR, momentum=0.9)),
    "sgd:nesterov": (
        dict(learning_rate=LR, momentum=0.9, nesterov=True),
        lambda: optax.sgd(LR, momentum=0.9, nesterov=True),
    ),
    "adabelief": (dict(learning_rate=LR, eps=1e-16), lambda: optax.adabelief(LR)),
    "adagrad": (dict(learning_rate=LR), lambda: optax.adagrad(LR)),
    "lamb": (
        dict(learning_rate=LR, eps=1e-6, eps_root=0.0, decay=1e-3),
        lambda: optax.lamb(LR, weight_decay=1e-3),
    ),
    "noisy_sgd": (
        dict(learning_rate=LR, eta=0.01, gamma=0.55, seed=3),
        lambda: optax.noisy_sgd(LR, eta=0.01, gamma=0.55, key=3),
    ),
    "radam": (dict(learning_rate=LR), lambda: optax.radam(LR)),
    "rmsprop": (dict(learning_rate=LR), lambda: optax.rmsprop(LR)),
    "rmsprop:centered_momentum": (
        dict(learning_rate=LR, centered=True, momentum=0.9, nesterov=True, initial_scale=0.1),
        lambda: optax.rmsprop(LR, centered=True, momentum=0.9, nesterov=True, initial_scale=0.1),
    ),
    "yogi": (dict(learning_rate=LR), lambda: optax.yogi(LR)),
    "lion": (
        dict(learning_rate=1e-3, weight_decay=1e-2),
        lambda: optax.lion(1e-3, weight_decay=1e-2),
    ),
    "adamax": (dict(learning_rate=LR), lambda: optax.adamax(LR)),
    "amsgrad": (dict(learning_rate=LR), lambda: optax.amsgrad(LR)),
    "nadam": (dict(learning_rate=LR), lambda: optax.nadam(LR)),
    "nadamw": (dict(learning_rate=LR, weight_decay=1e-2), lambda: optax.nadamw(LR, weight_decay=1e-2)),
    "lars": (
        dict(learning_rate=LR, weight_decay=1e-3, nesterov=True),
        lambda: optax.lars(LR, weight_decay=1e-3, nesterov=True),
    ),
    "fromage": (dict(learning_rate=LR), lambda: optax.fromage(LR)),
    "adafactor": (
        dict(learning_rate=LR, min_dim_size_to_factor=2),
        lambda: optax.adafactor(LR, min_dim_size_to_factor=2),
    ),
    "adafactor:momentum_decay_unfactored": (
        dict(learning_rate=LR, momentum=0.9, weight_decay_rate=1e-3, clipping_threshold=None),
        lambda: optax.adafactor(LR, momentum=0.9, weight_decay_rate=1e-3, clipping_threshold=None),
    ),
    "novograd": (
        dict(learning_rate=LR, weight_decay=1e-3),
        lambda: optax.novograd(LR, weight_decay=1e-3),
    ),
    "sign_sgd": (dict(learning_rate=LR), lambda: optax.sign_sgd(LR)),
    "adadelta": (
        dict(learning_rate=1.0, weight_decay=1e-3),
        lambda: optax.adadelta(1.0, weight_decay=1e-3),
    ),
}

NO_OPTAX_EQUIVALENT: dict[str, str] = {}

STEPS = 200


def test_every_registered_optimizer_is_covered():
    covered = {k.split(":")[0] for k in OPTAX_EQUIVALENTS} | set(NO_OPTAX_EQUIVALENT)
    missing = sorted(set(optimizers.names()) - covered)
    assert not missing, f"add these to OPTAX_EQUIVALENTS or NO_OPTAX_EQUIVALENT: {missing}"
    stale = sorted(covered - set(optimizers.names()))
    assert not stale, f"not registered: {stale}"


@pytest.mark.parametrize("key", sorted(OPTAX_EQUIVALENTS))
def test_matches_optax(key):
    name = key.split(":")[0]
    opts, make_optax = OPTAX_EQUIVALENTS[name if key == name else key]
    params = random_tree(0)
    ours = optimizers.get(name).build(**opts)
    theirs = make_optax()
    p1, _, u1 = run_steps(ours.init, ours.update, params, STEPS)
    p2, _, u2 = run_steps(theirs.init, theirs.update, params, STEPS)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), p1, p2)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), u1, u2)
