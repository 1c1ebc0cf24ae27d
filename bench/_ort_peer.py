"""ONNX Runtime's on-device training as a peer: the AdamW step of ``onnxruntime.training.api``.

On-device training (``onnxruntime-training``) is what users of this project compare against on
edge devices: an ONNX training graph, an optimizer graph, and a C/C++/Python API that runs them.
This peer times its ``Optimizer.step()`` alone: the AdamW update of every trainable tensor from
the gradients the training graph left in its buffers (computed once, before the timing), on
ONNX Runtime's CPU execution provider with its default threads. The optimizer graph is
onnxblock's ``AdamW`` with the benchmark's hyperparameters (``adam``: weight decay 0).

The model is only there to own the parameters: each tensor ``W_i`` of the layout (one vector for
the flat rows, GPT-2/4's 148 tensors for the tree rows), ``y = ReduceSum(W_0) + ReduceSum(W_1) + ...`` and an MSE
loss, so the gradients are ones times a constant; the step's time does not depend on their values.

Optional: ``pip install onnxruntime-training==1.19.2 onnx==1.16.2`` (about 300 MB; the newest
``onnx`` writes IR version 11+, which ONNX Runtime 1.19 cannot read). ``onnxruntime.training``
imports torch in its ``__init__`` for ORTModule; the on-device API does not need torch, so where
torch is missing the package is loaded without that file (:func:`_training_modules`).
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import types

import numpy as np

import _common as C

VERSIONS = ("onnxruntime-training", "onnx")
OPTIMIZERS = {"adam": 0.0, "adamw": 0.01}  # bench optimizer -> AdamW weight decay (C.optax_twin)


def available() -> str | None:
    """None when the peer can run here, else why not (a line for the report)."""
    try:
        _training_modules()
    except Exception as e:  # noqa: BLE001 - any import failure means "not here"
        return f"ort: not installed ({type(e).__name__}: {e}); pip install onnxruntime-training==1.19.2 onnx==1.16.2"
    return None


def _training_modules():
    """``(artifacts, onnxblock, api)`` of ``onnxruntime.training``, torch or not."""
    try:
        from onnxruntime.training import api, artifacts, onnxblock

        return artifacts, onnxblock, api
    except ModuleNotFoundError as e:
        if e.name != "torch":
            raise
    import onnxruntime

    for name in [k for k in sys.modules if k.startswith("onnxruntime.training")]:
        del sys.modules[name]
    pkg = types.ModuleType("onnxruntime.training")
    pkg.__path__ = [os.path.join(os.path.dirname(onnxruntime.__file__), "training")]
    sys.modules["onnxruntime.training"] = pkg
    from onnxruntime.training import api, artifacts, onnxblock

    return artifacts, onnxblock, api


def _model(params: list[np.ndarray]):
    from onnx import TensorProto, helper, numpy_helper

    names = [f"W{i}" for i in range(len(params))]
    inits = [numpy_helper.from_array(np.ascontiguousarray(p, np.float32), nm) for p, nm in zip(params, names, strict=True)]
    nodes = [helper.make_node("ReduceSum", [nm], [f"s{i}"], keepdims=0) for i, nm in enumerate(names)]
    total = "s0"
    for i in range(1, len(names)):  # a chain of Adds (ONNX Runtime has no gradient for Sum)
        nodes.append(helper.make_node("Add", [total, f"s{i}"], [f"t{i}"]))
        total = f"t{i}"
    axes = numpy_helper.from_array(np.zeros(1, np.int64), "axes")
    nodes.append(helper.make_node("Unsqueeze", [total, "axes"], ["y"]))  # (1,): the loss's shape
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])  # unused: a graph needs an input
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    nodes.append(helper.make_node("Identity", ["x"], ["x_unused"]))
    graph = helper.make_graph(nodes, "params", [x], [y], [*inits, axes])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), names


def ort_peer(opt: str, params: list[np.ndarray]) -> C.Timer:
    """ONNX Runtime's AdamW step over ``params`` (a list of tensors), as a :class:`C.Timer`."""
    artifacts, onnxblock, api = _training_modules()
    import logging

    import onnxruntime

    logging.getLogger().setLevel(logging.WARNING)  # generate_artifacts logs every graph pass at INFO
    onnxruntime.set_default_logger_severity(3)
    model, names = _model(params)
    adamw = onnxblock.optim.AdamW(betas=(0.9, 0.999), eps=1e-8, weight_decay=OPTIMIZERS[opt])
    with tempfile.TemporaryDirectory(prefix="ort-peer-") as folder:  # read whole by the session
        with _quiet_native_stderr():  # its graph builder logs every transformer at INFO, whatever the severity set
            artifacts.generate_artifacts(
                model, requires_grad=names, frozen_params=[], loss=artifacts.LossType.MSELoss,
                optimizer=adamw, artifact_directory=folder,
            )
        session = _Session(api, folder)
    return C.Timer(session.step, lambda: None)  # the CPU provider returns when the step is done


@contextlib.contextmanager
def _quiet_native_stderr():
    """File descriptor 2 on /dev/null for the block (native code's logging; Python's exceptions
    still carry their messages), restored after it."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class _Session:
    """The checkpoint state, training module and optimizer of one model, kept together and
    released in reverse order: ONNX Runtime's module and optimizer use the state without owning
    it (a state collected first corrupted the heap at exit)."""

    def __init__(self, api, folder: str):
        self.state = api.CheckpointState.load_checkpoint(os.path.join(folder, "checkpoint"))
        self.module = api.Module(os.path.join(folder, "training_model.onnx"), self.state, os.path.join(folder, "eval_model.onnx"), device="cpu")
        self.optimizer = api.Optimizer(os.path.join(folder, "optimizer_model.onnx"), self.module)
        self.optimizer.set_learning_rate(1e-3)
        self.module.train()
        self.module(np.zeros(1, np.float32), np.zeros(1, np.float32))  # the gradients, once; the steps reuse them

    def step(self) -> None:  # a method of the session, so that the timer keeps all three alive
        self.optimizer.step()

    def __del__(self):
        self.optimizer = None
        self.module = None
        self.state = None
