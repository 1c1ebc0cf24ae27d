"""The `polaris` CLI through click's CliRunner and as a subprocess."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from polaris._src import registry
from polaris.cli.__main__ import cli

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture
def runner():
    return CliRunner()


def run(runner, *args):
    return runner.invoke(cli, list(args), catch_exceptions=False)


def test_list_shows_every_registered_optimizer_with_defaults(runner):
    r = run(runner, "list")
    assert r.exit_code == 0
    for name in registry.names():
        assert name in r.output
    assert "learning_rate=0.001" in r.output
    data = json.loads(run(runner, "list", "--json").output)
    assert {o["name"] for o in data["optimizers"]} == set(registry.names())
    assert any(u["name"] == "scale_by_adam" for u in data["updates"])
    assert any(s["name"] == "cosine_decay" for s in data["schedules"])


def test_compile_default_flat_then_inspect(runner, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = runner.invoke(cli, ["compile", "adam"])
    assert r.exit_code == 0, r.output
    out = pathlib.Path("adam-flat-f32-llvm-cpu.vmfb")
    assert out.is_file() and out.stat().st_size > 1000
    assert "[3/3] wrote" in r.stderr
    r = run(runner, "inspect", str(out), "--json")
    m = json.loads(r.output)
    assert m["name"] == "adam" and m["layout"] == "flat"
    assert m["options"]["learning_rate"] == 1e-3 and m["options"]["eps_root"] == 1e-15
    assert [g["name"] for g in m["groups"]["state"]] == ["0/count", "0/mu", "0/nu", "1/learning_rate"]
    assert m["groups"]["params"][0]["shape"] == ["n"]
    assert m["target"]["name"] == "llvm-cpu" and "--iree-llvmcpu-target-cpu=host" in m["target"]["flags"]
    assert m["versions"]["iree_compiler"] == m["versions"]["iree_runtime"]
    assert set(m["functions"]) == {"init", "update", "step"}
    text = run(runner, "inspect", str(out)).output
    assert "learning_rate = 0.001" in text and "step(params, grads, state)" in text


def test_compile_with_options_layout_and_schedule(runner, tmp_path):
    layout = tmp_path / "layout.json"
    layout.write_text(json.dumps({"dense": {"kernel": {"shape": [4, 3], "dtype": "float32"}, "bias": [3]}}))
    out = tmp_path / "sgd.vmfb"
    r = runner.invoke(cli, ["compile", "sgd", "momentum=0.9", "nesterov=true", "learning_rate=cosine_decay(0.1, decay_steps=100)", "--layout", str(layout), "-o", str(out)])
    assert r.exit_code == 0, r.output
    m = json.loads(run(runner, "inspect", str(out), "--json").output)
    assert m["options"]["momentum"] == 0.9 and m["options"]["nesterov"] is True
    assert m["options"]["learning_rate"] == "cosine_decay(0.1, decay_steps=100)"
    assert [p["name"] for p in m["groups"]["params"]] == ["dense/bias", "dense/kernel"]
    assert m["hyperparameters"] == []  # a schedule is compiled in; no tunable rate


def test_compile_from_npz_and_safetensors_layouts(runner, tmp_path):
    from safetensors.numpy import save_file

    arrays = {"enc/w": np.zeros((5, 2), np.float32), "enc/b": np.zeros(2, np.float32)}
    np.savez(tmp_path / "p.npz", **arrays)
    save_file(arrays, str(tmp_path / "p.safetensors"))
    for f in ("p.npz", "p.safetensors"):
        out = tmp_path / f"{f}.vmfb"
        r = runner.invoke(cli, ["compile", "adamw", "--layout", str(tmp_path / f), "-o", str(out)])
        assert r.exit_code == 0, r.output
        m = json.loads(run(runner, "inspect", str(out), "--json").output)
        assert {p["name"]: p["shape"] for p in m["groups"]["params"]} == {"enc/b": [2], "enc/w": [5, 2]}


def test_compile_a_fixed_size_flat_module(runner, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = runner.invoke(cli, ["compile", "sgd", "momentum=0.9", "--size", "1000", "--no-cache"])
    assert r.exit_code == 0, r.output
    out = pathlib.Path(r.output.strip().splitlines()[-1])
    assert out.name.startswith("sgd-") and "-flat1000-f32-llvm-cpu" in out.name
    m = json.loads(run(runner, "inspect", str(out), "--json").output)
    assert m["layout"] == "flat" and m["groups"]["params"][0]["shape"] == [1000]
    assert "layout flat, exactly 1000 elements" in run(runner, "inspect", str(out)).output


def test_whole_vector_lamb_takes_no_segments_and_uses_one_global_trust_ratio(runner, tmp_path):
    """``--whole-vector``: a flat LAMB without segment ids, whose trust ratio is the whole
    vector's, as Optax's LAMB over one array computes it."""
    import optax

    import polaris_runtime as pr

    out = tmp_path / "lamb.vmfb"
    r = runner.invoke(cli, ["compile", "lamb", "learning_rate=0.01", "--size", "300", "--whole-vector", "--no-cache", "-o", str(out)])
    assert r.exit_code == 0, r.output
    opt = pr.load(str(out))
    assert not opt.takes_segments and "segments" not in opt.manifest.functions["step"].inputs
    rng = np.random.default_rng(0)
    p = rng.standard_normal(300).astype(np.float32)
    tx = optax.lamb(0.01)
    ref, ref_s = p, tx.init(p)
    s = opt.init(p)
    for i in range(5):
        g = rng.standard_normal(300).astype(np.float32)
        p, s = opt.step(p, g, s)
        u, ref_s = tx.update(g, ref_s, ref)
        ref = optax.apply_updates(ref, u)
    np.testing.assert_allclose(p.numpy(), ref, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize(
    "args, message",
    [
        (["compile", "adamm"], "unknown optimizer 'adamm'; valid optimizers: "),
        (["compile", "adam", "lr=0.1"], "adam: unknown option 'lr'; valid options: learning_rate, b1"),
        (["compile", "adam", "b1=fast"], "adam: option 'b1' expects a number, got 'fast'"),
        (["compile", "sgd", "nesterov=maybe"], "option 'nesterov' expects true or false"),
        (["compile", "adam", "learning_rate=warp(1)"], "unknown schedule 'warp'; valid schedules: "),
        (["compile", "adam", "learning_rate"], "must be KEY=VALUE"),
        (["compile", "sgd", "nesterov=true"], "nesterov=True` needs `momentum`"),
        (["compile", "adam", "--target", "tpu"], "unknown target 'tpu'; valid targets: llvm-cpu, cuda, vulkan"),
        (["compile", "adam", "--layout", "missing.json"], "layout file 'missing.json' does not exist"),
        (["compile", "adam", "--size", "10", "--layout", "m.json"], "--size fixes the length of the flat layout"),
        (["compile", "adam", "--size", "0"], "0 is not in the range x>=1"),
        (["compile", "lamb", "--whole-vector", "--layout", "m.json"], "--whole-vector makes the flat layout's vector one tensor"),
        (["inspect", "missing.vmfb"], "module file 'missing.vmfb' does not exist"),
    ],
)
def test_bad_input_exits_2_with_a_message(runner, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    r = runner.invoke(cli, args)
    assert r.exit_code == 2, r.output
    assert message in r.stderr, r.stderr


@pytest.mark.parametrize(
    "content, suffix, message",
    [
        ("{not json", ".json", "is not valid JSON"),
        ('{"w": {"shape": [3], "dtype": "float64"}}', ".json", "dtype 'float64' is not supported; valid: float32, bfloat16, float16"),
        ('{"w": {"shape": [-1]}}', ".json", "shape must be a list of non-negative integers"),
        ('{"w": "big"}', ".json", 'expected {"shape": [...], "dtype": "float32"}'),
        ("[1, 2]", ".json", "expected a JSON object of parameters"),
        ("x", ".yaml", "unknown kind '.yaml'; valid: .json, .npz, .safetensors"),
        ("garbage", ".npz", "is not a readable .npz"),
    ],
)
def test_unreadable_layouts_exit_2(runner, tmp_path, content, suffix, message):
    f = tmp_path / f"layout{suffix}"
    f.write_text(content)
    r = runner.invoke(cli, ["compile", "adam", "--layout", str(f), "-o", str(tmp_path / "x.vmfb")])
    assert r.exit_code == 2, r.output
    assert message in r.stderr, r.stderr


def test_inspect_corrupt_module_exits_2(runner, tmp_path):
    f = tmp_path / "bad.vmfb"
    f.write_bytes(b"\x00" * 4096)
    r = runner.invoke(cli, ["inspect", str(f)])
    assert r.exit_code == 2
    assert "is not a valid IREE module" in r.stderr


@pytest.mark.parametrize("target, arch_flag", [("cuda", "--iree-cuda-target=sm_80"), ("vulkan", "--iree-vulkan-target=ampere")])
def test_compile_gpu_targets(runner, tmp_path, target, arch_flag):
    out = tmp_path / f"adam-{target}.vmfb"
    r = runner.invoke(cli, ["compile", "adam", "--target", target, "-o", str(out)])
    assert r.exit_code == 0, r.output
    m = json.loads(run(runner, "inspect", str(out), "--json").output)
    assert m["target"]["name"] == target and arch_flag in m["target"]["flags"]
    assert f"note: {target}: a flat module of any length runs 2-3x slower" in r.stderr and "--size N" in r.stderr


def test_cuda_hopper_name_falls_back_with_a_note(runner, tmp_path):
    out = tmp_path / "a.vmfb"
    r = runner.invoke(cli, ["compile", "sgd", "--target", "cuda", "--cuda-arch", "sm_90", "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert "no sm_90 target" in r.stderr
    m = json.loads(run(runner, "inspect", str(out), "--json").output)
    assert m["target"]["arch"] == "sm_80" and m["target"]["notes"]


def test_cli_as_a_subprocess(tmp_path):
    exe = pathlib.Path(sys.executable).with_name("polaris")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "polaris.cli"]
    r = subprocess.run([*cmd, "compile", "sgd", "momentum=0.9", "-o", str(tmp_path / "s.vmfb")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith("s.vmfb")
    r = subprocess.run([*cmd, "inspect", str(tmp_path / "s.vmfb")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "0/trace" in r.stdout
    r = subprocess.run([*cmd, "compile", "nope"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "unknown optimizer 'nope'" in r.stderr


def test_portable_cpu_with_a_gpu_target_compiles_and_inspects(runner, tmp_path):
    out = tmp_path / "combo.vmfb"
    r = runner.invoke(cli, ["compile", "sgd", "--cpu", "portable", "--target", "llvm-cpu,vulkan", "--vulkan-target", "llvmpipe", "-o", str(out)])
    assert r.exit_code == 0, r.output
    text = run(runner, "inspect", str(out)).output
    assert "target: llvm-cpu,vulkan" in text
    assert "cpu variants (best first, picked at load): x86-64-v4, x86-64-v3, x86-64-v2" in text


def test_inspect_repeats_the_gpu_layout_notes(runner, tmp_path):
    """`polaris inspect` of a GPU flat module says what `polaris compile` said about its length:
    any length (the catalog's CUDA module), or a fixed length IREE does not vectorise."""
    art = ROOT / "artifacts"
    res = runner.invoke(cli, ["inspect", str(art / "adam-flat-f32-cuda.vmfb")])
    assert res.exit_code == 0 and "note: cuda: a flat module of any length" in res.output
    res = runner.invoke(cli, ["inspect", str(art / "adam-flat-f32-x86_64.vmfb")])
    assert res.exit_code == 0 and "note:" not in res.output
    out = tmp_path / "adam-1e6-cuda.vmfb"
    res = runner.invoke(cli, ["compile", "adam", "--target", "cuda", "--size", "1000000", "-o", str(out)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli, ["inspect", str(out)])
    assert res.exit_code == 0 and "--size 1000000 is not a multiple of 128" in res.output and "--size 1000064" in res.output


def test_cuda_modules_say_what_async_gains_and_take_its_defaults(runner, tmp_path):
    """A synchronous CUDA module's compile and inspect note `--async` (H100: 156 -> 105 us at
    1e7); an async one takes external transients by default (`-ext` only when asked for by
    name) and `--no-external-transients` turns them off."""
    from polaris_runtime.module import inspect_module

    sync = tmp_path / "sync.vmfb"
    res = runner.invoke(cli, ["compile", "adam", "--target", "cuda", "--size", "1024", "-o", str(sync)])
    assert res.exit_code == 0 and "note: cuda: every call of this module waits for the GPU" in res.output, res.output
    res = runner.invoke(cli, ["inspect", str(sync)])
    assert "note: cuda: every call of this module waits for the GPU" in res.output
    assert "scalars: fused into the elementwise kernels" in res.output
    res = runner.invoke(cli, ["compile", "adam", "--target", "cuda", "--size", "1024", "--async", "-o", str(tmp_path / "a.vmfb")])
    assert res.exit_code == 0 and "waits for the GPU" not in res.output, res.output
    assert inspect_module(tmp_path / "a.vmfb").target["external_transients"] is True
    res = runner.invoke(cli, ["compile", "adam", "--target", "cuda", "--size", "1024", "--async", "--no-external-transients", "-o", str(tmp_path / "b.vmfb")])
    assert res.exit_code == 0, res.output
    assert "external_transients" not in inspect_module(tmp_path / "b.vmfb").target


def test_a_small_async_cpu_module_says_a_synchronous_one_is_faster(runner, tmp_path):
    """On a CPU --async pays from about 3e5 parameters where synchronous modules run on
    local-sync (2-core EPYC, Adam --size 1e4: 12.8 us sync, 27.2 us async); compile says so for
    a module of fixed size below that, and not for larger, any-length or synchronous ones."""
    from polaris_compiler.options import CPU_ASYNC_PAYS_FROM

    def notes(*args):
        res = runner.invoke(cli, ["compile", "adam", *args, "-o", str(tmp_path / "m.vmfb")])
        assert res.exit_code == 0, res.output
        return res.output

    want = "note: llvm-cpu: this async module steps 1024 parameters; on a CPU --async pays from about 300,000"
    assert want in notes("--size", "1024", "--async")
    assert CPU_ASYNC_PAYS_FROM == 300_000
    assert "--async pays" not in notes("--size", str(CPU_ASYNC_PAYS_FROM), "--async")
    assert "--async pays" not in notes("--async")  # any length: the size is the caller's
    assert "--async pays" not in notes("--size", "1024")
    layout = tmp_path / "small.json"
    layout.write_text(json.dumps({"w": {"shape": [64, 16], "dtype": "float32"}, "b": {"shape": [16], "dtype": "float32"}}))
    assert "this async module steps 1040 parameters" in notes("--layout", str(layout), "--async")


def test_inspect_of_a_cuda_tree_module_notes_packing_and_reads_scalar_leaves(runner, tmp_path):
    """A tree module's first leaf may be a scalar; inspect names the packed --size module that
    runs element-wise optimizers faster on CUDA (H100, GPT-2 Adam 1.32 vs 2.29 ms)."""
    import jax
    import jax.numpy as jnp

    from polaris_compiler import CompileOptions, Layout, Target, compile_optimizer

    tree = {"a": jax.ShapeDtypeStruct((), jnp.float32), "b": jax.ShapeDtypeStruct((4,), jnp.float32)}
    art = compile_optimizer(registry.get("sgd").build(), Layout.from_tree(tree), CompileOptions(target=Target.CUDA), name="sgd")
    assert any(n.startswith("cuda: a tree module runs one kernel per tensor") for n in art.notes)
    path = art.save(tmp_path / "sgd-tree-cuda.vmfb")
    res = runner.invoke(cli, ["inspect", str(path)])
    assert res.exit_code == 0, res.output
    assert "note: cuda: a tree module runs one kernel per tensor" in res.output and "note: cuda: every call" in res.output
