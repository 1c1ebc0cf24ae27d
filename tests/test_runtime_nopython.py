"""No Python at run time: iree-run-module runs a step, and a C header describes the ABI."""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

import polaris_runtime as pr
from polaris_compiler import Layout
from polaris_runtime.cheader import _args, c_header

PARAMS = {"enc": {"w": np.ones((3, 2), np.float32), "b": np.zeros(2, np.float32)}, "head": np.ones(4, np.float32)}
IREE_RUN_MODULE = pathlib.Path(sys.executable).parent / "iree-run-module"
CC = shutil.which("cc") or shutil.which("gcc")


def _tree(seed: float):
    return {
        "enc": {"w": np.arange(6, dtype=np.float32).reshape(3, 2) * seed, "b": np.array([seed, -seed], np.float32)},
        "head": np.linspace(-1, 1, 4, dtype=np.float32) + seed,
    }


def run_module(vmfb: pathlib.Path, fname: str, inputs: list[np.ndarray], n_out: int, d: pathlib.Path) -> list[np.ndarray]:
    cmd = [str(IREE_RUN_MODULE), f"--module={vmfb}", "--device=local-task", f"--function={fname}"]
    for i, a in enumerate(inputs):
        np.save(d / f"in{i}.npy", a)
        cmd.append(f"--input=@{d / f'in{i}.npy'}")
    cmd += [f"--output=@{d / f'out{i}.npy'}" for i in range(n_out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return [np.load(d / f"out{i}.npy") for i in range(n_out)]


@pytest.mark.skipif(not IREE_RUN_MODULE.exists(), reason="iree-run-module is not installed next to python")
@pytest.mark.parametrize("kind", ["flat", "tree"])
def test_iree_run_module_step_matches_the_python_runtime(modules, tmp_path, kind):
    lay = Layout.from_tree(PARAMS) if kind == "tree" else None
    path = modules.path("adam", dict(learning_rate=0.1), lay)
    opt = pr.load(path, device="local-task")
    p0 = _tree(0.5) if kind == "tree" else np.linspace(-1, 1, 37, dtype=np.float32)
    g = _tree(-0.25) if kind == "tree" else np.cos(np.arange(37, dtype=np.float32))
    s = opt.init(p0)
    p1, s1 = opt.step(p0, g, s)  # one step first, so the count and moments are not trivial
    state_in = s1.leaves()
    params_in = p1.leaves()
    p2, s2 = opt.step(p1, g, s1)
    want = p2.leaves() + s2.leaves()

    # Arguments in the order the C header lists: params..., grads..., state...
    m = opt.manifest
    order = [q for _, q, _ in _args(m, m.functions["step"].inputs)]
    g_leaves = [g] if kind == "flat" else [pr.flatten_names(g)[s.name] for s in m.params]
    by_name = {**{("params" if kind == "flat" else f"params/{s.name}"): a for s, a in zip(m.params, params_in, strict=True)},
               **{("grads" if kind == "flat" else f"grads/{s.name}"): a for s, a in zip(m.params, g_leaves, strict=True)},
               **{f"state/{s.name}": a for s, a in zip(m.state, state_in, strict=True)}}
    got = run_module(path, "step", [by_name[q] for q in order], len(want), tmp_path)
    assert len(got) == len(m.params) + len(m.state)
    for a, b in zip(got, want, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)


# -- the C header -----------------------------------------------------------------------------------
def _syntax_check(tmp_path: pathlib.Path, headers: dict[str, str], body: str, define_tables: list[str]) -> None:
    for name, text in headers.items():
        (tmp_path / name).write_text(text)
    src = "".join(f"#define {d}\n" for d in define_tables)
    src += "".join(f'#include "{n}"\n' for n in headers) + "#include <stdio.h>\n" + body
    (tmp_path / "main.c").write_text(src)
    r = subprocess.run([CC, "-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-fsyntax-only", str(tmp_path / "main.c")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr + "\n" + src


@pytest.mark.skipif(CC is None, reason="no C compiler")
def test_c_header_compiles_and_lists_every_leaf(modules, tmp_path):
    tree = pr.inspect_module(modules.path("adam", dict(learning_rate=0.1), Layout.from_tree(PARAMS)))
    flat = pr.inspect_module(modules.path("sgd", dict(learning_rate=0.1, momentum=0.9)))
    h_tree = c_header(tree, prefix="adam_tree", source="adam.vmfb")
    h_flat = c_header(flat, prefix="sgd_flat")
    for m, h, P in ((tree, h_tree, "ADAM_TREE"), (flat, h_flat, "SGD_FLAT")):
        for fname, f in m.functions.items():
            args = _args(m, f.inputs)
            assert f"#define {P}_{fname.upper()}_NUM_INPUTS {len(args)}" in h
            for i, (_, qual, spec) in enumerate(args):  # every leaf, in call order
                assert f'#define {P}_{fname.upper()}_IN{i}_NAME "{qual}"' in h
                assert f'#define {P}_{fname.upper()}_IN{i}_DTYPE "{spec.dtype}"' in h
    assert '#define ADAM_TREE_STEP_IN1_NAME "params/enc/w"' in h_tree
    assert "#define ADAM_TREE_STEP_IN1_SHAPE {3, 2}" in h_tree
    assert '#define ADAM_TREE_STEP_IN1_IREE_TYPE "3x2xf32"' in h_tree
    assert "ADAM_TREE_STEP_IN_STATE_0_MU_ENC_W = " in h_tree
    assert '#define ADAM_TREE_HP_LEARNING_RATE_LEAF "state/1/learning_rate"' in h_tree
    assert "#define SGD_FLAT_STEP_IN0_SHAPE {-1}  /* dynamic: n */" in h_flat
    assert '#define SGD_FLAT_STEP_IN1_NAME "grads"' in h_flat
    assert "#define SGD_FLAT_DIM_N -1" in h_flat
    headers = {"adam_tree.h": h_tree, "sgd_flat.h": h_flat}
    body = """
int main(void) {
  int64_t shape[] = ADAM_TREE_STEP_IN1_SHAPE;
  printf("%s %s %d %d %lld\\n", ADAM_TREE_MODULE_NAME, ADAM_TREE_STEP_IN1_NAME, ADAM_TREE_STEP_NUM_INPUTS,
         (int)ADAM_TREE_STEP_IN_STATE_0_COUNT, (long long)shape[0]);
  printf("%s %d\\n", SGD_FLAT_STEP_IN0_IREE_TYPE, SGD_FLAT_DIM_N);
  #ifdef ADAM_TREE_DEFINE_TABLES
  printf("%s %d\\n", ADAM_TREE_STEP_INPUTS[2].name, ADAM_TREE_INIT_OUTPUTS[0].rank);
  printf("%s\\n", SGD_FLAT_UPDATE_OUTPUTS[0].iree_type);
  #endif
  return 0;
}
"""
    _syntax_check(tmp_path, headers, body, [])  # two modules in one translation unit, no tables
    _syntax_check(tmp_path, headers, body, ["ADAM_TREE_DEFINE_TABLES", "SGD_FLAT_DEFINE_TABLES"])


def test_c_header_of_a_schedule_module_lists_the_learning_rate_export():
    from polaris_runtime.manifest import Manifest

    raw = {
        "schema": "polaris-iree/manifest", "schema_version": 1, "kind": "optimizer", "name": "sgd",
        "options": {"learning_rate": "cosine_decay(0.1, decay_steps=100)"}, "layout": "flat",
        "groups": {"params": [{"name": "params", "shape": ["n"], "dtype": "float32"}],
                   "state": [{"name": "count", "shape": [], "dtype": "int32"}],
                   "learning_rate": [{"name": "learning_rate", "shape": [], "dtype": "float32"}]},
        "functions": {"step": {"inputs": ["params", "grads", "state"], "outputs": ["params", "state"], "donates": ["params", "state"]},
                      "learning_rate": {"inputs": ["state"], "outputs": ["learning_rate"]}},
        "target": {"name": "llvm-cpu"},
    }
    h = c_header(Manifest.from_dict(raw), prefix="p")
    assert '#define P_LEARNING_RATE_IN0_NAME "state/count"' in h
    assert '#define P_LEARNING_RATE_OUT0_NAME "learning_rate"' in h
    assert '#define P_LEARNING_RATE_OUT0_IREE_TYPE "f32"' in h
    assert "cosine_decay(0.1, decay_steps=100)" in h


def test_cli_inspect_writes_the_c_header(modules):
    from click.testing import CliRunner

    from polaris.cli.__main__ import cli

    path = modules.path("adam", dict(learning_rate=0.1))
    r = CliRunner().invoke(cli, ["inspect", str(path), "--c-header", "--prefix", "my_adam"])
    assert r.exit_code == 0, r.output
    assert r.output == c_header(pr.inspect_module(path), prefix="my_adam", source=path.name)
    r = CliRunner().invoke(cli, ["inspect", str(path), "--c-header"])
    assert f"#ifndef POLARIS_{path.stem.upper().replace('-', '_')}_MODULE_H_" in r.output
    r = CliRunner().invoke(cli, ["inspect", str(path), "--c-header", "--json"])
    assert r.exit_code == 2 and "exclusive" in r.output
