"""The ONNX Runtime peer of the benchmark (``bench/_ort_peer.py``) times a real AdamW step.

Optional: it needs ``onnxruntime-training`` and ``onnx`` 1.16, which ``make`` does not install
(about 300 MB); slow, it runs with ``make bench`` where they are installed."""

from __future__ import annotations

import pathlib
import sys

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
BENCH = pathlib.Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))


@pytest.mark.slow
@pytest.mark.parametrize("opt", ["adam", "adamw"])
def test_the_ort_peer_steps_like_optax_adamw_over_its_tensors(opt):
    import optax

    import _ort_peer as O

    if O.available() is not None:
        pytest.skip(O.available())
    rng = np.random.default_rng(3)
    params = [rng.standard_normal((40, 5)).astype(np.float32), rng.standard_normal(33).astype(np.float32)]
    timer = O.ort_peer(opt, params)
    for _ in range(4):
        timer.step()
    session = timer.step.__self__
    got = [np.asarray(session.state.parameters[f"W{i}"].data) for i in range(len(params))]
    # the model is y = sum of all elements, an MSE loss against 0: every gradient is 2 * y,
    # computed once before the steps (the peer reuses it)
    g = np.float32(2.0) * np.float32(sum(float(p.sum(dtype=np.float64)) for p in params))
    tx = optax.adamw(1e-3, b1=0.9, b2=0.999, eps=1e-8, weight_decay=O.OPTIMIZERS[opt])
    want, state = [p.copy() for p in params], None
    state = tx.init(want)
    grads = [np.full_like(p, g) for p in params]
    for _ in range(4):
        u, state = tx.update(grads, state, want)
        want = optax.apply_updates(want, u)
    for w, x in zip(want, got, strict=True):
        np.testing.assert_allclose(x, np.asarray(w), rtol=1e-5, atol=1e-6)
    assert not np.allclose(got[0], params[0])  # it moved
