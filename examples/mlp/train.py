"""Training loop of the demo: IREE modules and NumPy only (no JAX, no compiler, no frontend).

Trains a 2-64-64-3 MLP on three interleaved spirals (generated here, seeded) with the Adam module
built by build.py, prints the loss every N steps and the time per step, and exits non-zero if the
loss did not drop or the held-out accuracy is poor.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

# Prove the point: this process must not be able to import jax.
sys.modules["jax"] = None  # type: ignore[assignment]

import numpy as np  # noqa: E402

import polaris_runtime as pr  # noqa: E402


def spirals(n_per_class: int, rng: np.random.Generator, noise: float = 0.3):
    xs, ys = [], []
    for c in range(3):
        r = np.linspace(0.05, 1.0, n_per_class)
        t = np.linspace(c * 2 * np.pi / 3, c * 2 * np.pi / 3 + 4.5, n_per_class)
        t = t + rng.normal(0, noise, n_per_class)
        xs.append(np.stack([r * np.cos(t), r * np.sin(t)], axis=1))
        ys.append(np.full(n_per_class, c))
    x = np.concatenate(xs).astype(np.float32)
    y = np.concatenate(ys).astype(np.int32)
    perm = rng.permutation(len(y))
    return x[perm], y[perm]


def init_params(rng: np.random.Generator) -> dict:
    def dense(n_in, n_out):
        return {
            "kernel": (rng.normal(0, 1, (n_in, n_out)) / np.sqrt(n_in)).astype(np.float32),
            "bias": np.zeros(n_out, np.float32),
        }

    return {"layer1": dense(2, 64), "layer2": dense(64, 64), "out": dense(64, 3)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="out/demo")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--every", type=int, default=100)
    ap.add_argument("--device", default=None, help="IREE driver (default: the module's own)")
    ap.add_argument("--learning-rate", type=float, default=None,
                    help="start from this learning rate instead of the compiled one (set in the state: no recompile)")
    args = ap.parse_args()
    out = pathlib.Path(args.out)
    assert "jax" not in {m for m in sys.modules if sys.modules[m] is not None}

    rng = np.random.default_rng(0)
    x, y = spirals(400, rng)
    n_train = 900
    xtr, ytr, xte, yte = x[:n_train], y[:n_train], x[n_train:], y[n_train:]

    t0 = time.perf_counter()
    opt = pr.load(out / "adam.vmfb", device=args.device)
    model = pr.load(out / "mlp.vmfb", device=args.device)
    print(f"loaded {opt} and {model} in {(time.perf_counter() - t0) * 1e3:.0f} ms")
    print(f"learning rate (tunable, from the manifest): {opt.hyperparameters['learning_rate']:g}")

    params = init_params(rng)
    state = opt.init(params)
    if args.learning_rate is not None:
        opt.set_hyperparameter(state, "learning_rate", args.learning_rate)
        print(f"learning rate set to {args.learning_rate:g} (no recompile)")
    batch = model.manifest.group("x")[0].shape[0]  # sizes fixed at compile time, read from the module
    chunk = model.manifest.group("eval_x")[0].shape[0]

    def evaluate(p, xs, ys):
        res = [
            model.evaluate(params=p, eval_x=xs[i : i + chunk], eval_y=ys[i : i + chunk])
            for i in range(0, len(ys), chunk)
        ]
        return (float(np.mean([float(r["loss"].numpy()) for r in res])),
                float(np.mean([float(r["accuracy"].numpy()) for r in res])))

    first, _ = evaluate(params, xtr, ytr)
    print(f"step     0  train loss {first:.4f}")

    t_start = time.perf_counter()
    losses = []
    for step in range(1, args.steps + 1):
        idx = rng.integers(0, n_train, batch)
        out_ = model.loss_and_grad(params=params, x=xtr[idx], y=ytr[idx])
        params, state = opt.step(params, out_["grads"], state)  # params/state stay on the device
        if step == int(args.steps * 0.8):
            opt.set_hyperparameter(state, "learning_rate", opt.get_hyperparameter(state, "learning_rate") / 10)
            print(f"step {step:5d}  learning rate lowered to {opt.get_hyperparameter(state, 'learning_rate'):g} (no recompile)")
        if step % args.every == 0:
            loss = float(out_["loss"].numpy())
            losses.append(loss)
            ms = (time.perf_counter() - t_start) / step * 1e3
            print(f"step {step:5d}  batch loss {loss:.4f}  {ms:.3f} ms/step (loss+grad+adam)")
    elapsed = time.perf_counter() - t_start

    train_loss, train_acc = evaluate(params, xtr, ytr)
    _, test_acc = evaluate(params, xte, yte)
    print(f"done: {args.steps} steps in {elapsed:.2f} s ({elapsed / args.steps * 1e3:.3f} ms/step); "
          f"step count in state = {int(state['0/count'])}")
    print(f"train loss {first:.4f} -> {train_loss:.4f}; train accuracy {train_acc:.3f}; "
          f"held-out accuracy {test_acc:.3f}")
    if not train_loss < 0.5 * first:
        print("FAIL: the loss did not drop", file=sys.stderr)
        return 1
    if test_acc < 0.9:
        print("FAIL: held-out accuracy below 0.9", file=sys.stderr)
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
