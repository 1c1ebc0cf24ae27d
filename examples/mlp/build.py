"""Build step of the demo (needs jax and the compiler; a deploy host never runs this).

Compiles
* the optimizer: ``polaris compile adam`` for the MLP's layout (examples/mlp/layout.json), and
* the model: its loss-and-gradient and its evaluation, as one more .vmfb,
so the training loop (train.py) runs on IREE modules alone.
"""

from __future__ import annotations

import argparse
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp

from polaris_compiler import CompileOptions, FunctionEntry, Layout, compile_functions

HERE = pathlib.Path(__file__).parent
LAYOUT = HERE / "layout.json"
BATCH = 128  # rows per training step
EVAL = 300  # rows per evaluation call


def forward(params, x):
    h = jnp.tanh(x @ params["layer1"]["kernel"] + params["layer1"]["bias"])
    h = jnp.tanh(h @ params["layer2"]["kernel"] + params["layer2"]["bias"])
    return h @ params["out"]["kernel"] + params["out"]["bias"]


def loss_fn(params, x, y):
    logits = forward(params, x)
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))


def loss_and_grad(params, x, y):
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
    return {"loss": loss, "grads": grads}


def evaluate(params, eval_x, eval_y):
    x, y = eval_x, eval_y
    logits = forward(params, x)
    logp = jax.nn.log_softmax(logits)
    loss = -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))
    acc = jnp.mean((jnp.argmax(logits, axis=1) == y).astype(jnp.float32))
    return {"loss": loss, "accuracy": acc}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="out/demo")
    ap.add_argument("--learning-rate", default="0.01")
    args = ap.parse_args()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    # 1. The optimizer, through the CLI users type.
    cmd = [sys.executable, "-m", "polaris.cli", "compile", "adam", f"learning_rate={args.learning_rate}",
           "--layout", str(LAYOUT), "-o", str(out / "adam.vmfb")]
    print("$ polaris " + " ".join(cmd[3:]), flush=True)
    subprocess.run(cmd, check=True)

    # 2. The model's loss/gradient (on a batch) and evaluation (on a chunk of EVAL rows).
    params = Layout.from_file(LAYOUT).tree

    def xy(n):
        return jax.ShapeDtypeStruct((n, 2), jnp.float32), jax.ShapeDtypeStruct((n,), jnp.int32)

    xb, yb = xy(BATCH)
    xe, ye = xy(EVAL)
    art = compile_functions(
        {
            "loss_and_grad": FunctionEntry(loss_and_grad, {"params": params, "x": xb, "y": yb}),
            "evaluate": FunctionEntry(evaluate, {"params": params, "eval_x": xe, "eval_y": ye}),
        },
        CompileOptions(),
        name="mlp",
    )
    path = art.save(out / "mlp.vmfb")
    print(f"wrote {path} ({len(art.vmfb) / 1024:.1f} KiB) in {art.seconds:.1f} s", flush=True)


if __name__ == "__main__":
    main()
