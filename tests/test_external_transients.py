"""``CompileOptions(external_transients=True)``: ``update`` and ``step`` take their transient
storage from the caller (IREE's externalized transients, experimental in IREE 3.13). The step
then has no queue alloca/dealloca, whose CUDA implementation blocks the host until the step is
done (docs/performance.md, ninth pass; docs/gpu-session.md). The runtime allocates the buffer once
and passes it; results must be the plain module's, bit for bit, on every call path."""

from __future__ import annotations

import numpy as np
import pytest

import polaris_runtime as pr
from polaris._src import registry
from polaris_compiler import CompileError, CompileOptions, Layout, compile_optimizer
from polaris_runtime import device as dev
from polaris_runtime.cheader import c_header

N = 1000


def _steps(opt, p0, grads):
    """Host arrays first (the checked path), then device gradients (the plan, its steady state
    and its kept argument list), then ``update`` both ways; returns every result on the host."""
    s = opt.init(p0)
    p, s = opt.step(p0, grads[0], s)
    gd = [dev.upload(opt.device, g) for g in grads]
    for g in gd:
        p, s = opt.step(p, [g], s)
    for _ in range(4):
        p, s = opt.step(p, [gd[0]], s)
    u1, s = opt.update(grads[1], s, p)
    u2, s = opt.update([gd[2]], s, p)
    return [np.asarray(x.numpy()) for x in (p, u1, u2)] + [s.leaves()]


@pytest.mark.parametrize(("asynchronous", "size"), [(False, None), (True, N)], ids=["sync-any-length", "async-fixed"])
def test_a_step_with_external_transients_matches_the_plain_module(modules, asynchronous, size):
    lay = Layout.flat(size=size)
    plain = modules.load("adam", dict(learning_rate=0.01), lay, asynchronous=asynchronous)
    ext = modules.load("adam", dict(learning_rate=0.01), lay, asynchronous=asynchronous, external_transients=True)
    m = ext.manifest
    assert m.schema_version == 2 and m.target["external_transients"] is True
    assert set(ext._tails) == {"update", "step"} and not plain._tails
    rng = np.random.default_rng(3)
    p0 = rng.standard_normal(N).astype(np.float32)
    grads = [rng.standard_normal(N).astype(np.float32) for _ in range(5)]
    want, got = _steps(plain, p0, grads), _steps(ext, p0, grads)
    for a, b in zip(want[:3], got[:3], strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(want[3], got[3], strict=True):
        np.testing.assert_array_equal(a, b)


def test_the_step_has_no_queue_alloca_and_stays_memoized(modules):
    """Read from the VM code: the fixed-size async step without its alloca/dealloca, one
    indirect submission of a memoized command buffer, no fence of its own."""
    import iree.compiler as ic

    art = modules.artifact("adam", dict(learning_rate=0.01), Layout.flat(size=N), asynchronous=True, external_transients=True)
    assert "--iree-hal-force-indirect-command-buffers" in art.flags
    flags = [f for f in art.flags if not f.startswith("--iree-input-type=")]
    vm = ic.compile_str(art.mlir, input_type="stablehlo", extra_args=[*flags, "--compile-to=vm"]).decode()
    step = vm.split("vm.func private @step(", 1)[1].split("vm.export", 1)[0]
    assert "@hal.device.queue.alloca" not in step and "@hal.device.queue.dealloca" not in step
    assert step.count("@hal.device.queue.execute.indirect") == 1 and "@hal.command_buffer.create" not in step
    assert "@hal.fence.create" not in step and "@hal.fence.await" not in step


@pytest.mark.parametrize(("name", "message"), [
    ("noisy_sgd", "with external_transients (an experimental IREE feature): compile without it"),
    ("adadelta", "gives update's transient storage no constant size"),
])
def test_where_iree_cannot_the_compiler_says_so(name, message):
    with pytest.raises(CompileError, match=message.replace("(", r"\(").replace(")", r"\)")):
        compile_optimizer(registry.get(name).build(), Layout.flat(), CompileOptions(external_transients=True), name=name)


def test_the_c_header_and_inspect_name_the_extra_argument(modules):
    m = modules.load("adam", dict(learning_rate=0.01), Layout.flat(size=N), asynchronous=True, external_transients=True).manifest
    h = c_header(m, prefix="adam_ext")
    assert "#define ADAM_EXT_EXTERNAL_TRANSIENTS 1" in h and "iree.abi.transients.size.constant" in h
    plain = modules.load("adam", dict(learning_rate=0.01), Layout.flat(size=N)).manifest
    assert "#define ADAM_EXTERNAL_TRANSIENTS 0" in c_header(plain, prefix="adam")
    from click.testing import CliRunner

    from polaris.cli.__main__ import cli

    path = modules.path("adam", dict(learning_rate=0.01), Layout.flat(size=N), asynchronous=True, external_transients=True)
    res = CliRunner().invoke(cli, ["inspect", str(path)])
    assert res.exit_code == 0 and "transients: update and step take their transient storage" in res.output


def test_an_older_runtime_refuses_such_a_module_by_its_schema_version(monkeypatch, modules):
    from polaris_runtime import manifest

    art = modules.artifact("adam", dict(learning_rate=0.01), Layout.flat(size=N), asynchronous=True, external_transients=True)
    monkeypatch.setattr(manifest, "SUPPORTED_SCHEMA_VERSIONS", (1,))
    with pytest.raises(pr.SchemaVersionError, match="schema version 2"):
        pr.load(art.vmfb)


def test_a_process_that_stepped_with_transient_buffers_exits_cleanly(modules):
    """The buffers are IREE objects held by the module: released at exit while the device exists
    (the call plans' refs once crashed the interpreter's shutdown: tests/test_runtime_fastpath.py)."""
    import subprocess
    import sys
    import textwrap

    paths = [modules.path("adam", dict(learning_rate=0.01), Layout.flat(size=N), asynchronous=a, external_transients=True) for a in (False, True)]
    script = textwrap.dedent(f"""
        import numpy as np
        import polaris_runtime as pr
        from polaris_runtime import device as dev
        kept = []
        for path, driver in zip({[str(p) for p in paths]!r}, ("local-sync", "local-task")):
            opt = pr.load(path, device=driver)
            p = np.linspace(-1, 1, {N}, dtype=np.float32)
            s = opt.init(p)
            g = [dev.upload(opt.device, np.full({N}, 0.1, np.float32))]
            for _ in range(5):
                p, s = opt.step(p, g, s)
            kept.append((opt, p, s))
        print("stepped", kept[1][0].step_count(kept[1][2]))
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"exit status {r.returncode}\n{r.stdout}\n{r.stderr[-2000:]}"
    assert r.stdout.strip() == "stepped 5"


def test_the_cli_compiles_it_and_refuses_where_iree_cannot(tmp_path):
    from click.testing import CliRunner

    from polaris.cli.__main__ import cli

    runner = CliRunner()
    res = runner.invoke(cli, ["compile", "sgd", "momentum=0.9", "--size", "64", "--external-transients", "-o", str(tmp_path / "s.vmfb")])
    assert res.exit_code == 0, res.output
    m = pr.inspect_module(tmp_path / "s.vmfb")
    assert m.schema_version == 2 and m.target["external_transients"] is True
    res = runner.invoke(cli, ["compile", "adadelta", "--external-transients", "-o", str(tmp_path / "a.vmfb")])
    assert res.exit_code == 2 and "no constant size" in res.output and "compile without external_transients" in res.output


def test_vulkan_takes_the_buffer_too():
    """The same async fixed-length step on lavapipe (a real Vulkan HAL, on the CPU) and on the CPU
    from one multi-target module: the buffer comes from whichever device runs it."""
    from _devices import lavapipe_or_skip

    from polaris_compiler import Target

    lavapipe_or_skip("a Vulkan device to run on")
    opts = CompileOptions(target=Target.VULKAN, vulkan_target="llvmpipe", extra_targets=(Target.LLVM_CPU,),
                          asynchronous=True, external_transients=True)
    art = compile_optimizer(registry.get("adam").build(learning_rate=0.01), Layout.flat(size=N), opts, name="adam")
    rng = np.random.default_rng(4)
    p0 = rng.standard_normal(N).astype(np.float32)
    grads = [rng.standard_normal(N).astype(np.float32) for _ in range(5)]
    out = [_steps(pr.load(art.vmfb, device=d), p0, grads) for d in ("vulkan", "local-task")]
    for a, b in zip(out[0][:3], out[1][:3], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


# -- the default: on for async CUDA modules (H100: an async Adam step at 1e7 164 -> 105 us) ------
def test_async_cuda_modules_take_their_transients_by_default_and_nothing_else_does():
    from polaris_compiler import Target, build_flags

    cuda, cpu, vulkan = Target.CUDA, Target.LLVM_CPU, Target.VULKAN
    on = CompileOptions(target=cuda, asynchronous=True)
    assert on.external_transients is None and on.resolved().external_transients is True
    assert "--iree-hal-force-indirect-command-buffers" in build_flags(on)
    for off in (CompileOptions(target=cuda), CompileOptions(asynchronous=True), CompileOptions(target=vulkan, asynchronous=True),
                CompileOptions(target=cuda, extra_targets=(cpu,), asynchronous=True),
                CompileOptions(target=cuda, asynchronous=True, external_transients=False)):
        assert off.resolved().external_transients is False
        assert "--iree-hal-force-indirect-command-buffers" not in build_flags(off)


def test_an_async_cuda_module_takes_them_and_falls_back_where_iree_refuses(modules):
    """Compiled without a GPU: Adam's async CUDA module has them (schema version 2); Adadelta's,
    whose transient size IREE cannot make constant, is compiled without and says why; asked
    explicitly, the refusal is still an error (test_where_iree_cannot_the_compiler_says_so)."""
    from polaris_compiler import Target

    art = modules.artifact("adam", dict(learning_rate=0.01), Layout.flat(size=N), target="cuda", asynchronous=True)
    # (schema version 4: the default spare counts too, the newest feature the module uses)
    assert art.manifest["target"]["external_transients"] is True and art.manifest["schema_version"] == 4
    alone = modules.artifact("adam", dict(learning_rate=0.01), Layout.flat(size=N), target="cuda", asynchronous=True, spare_counts=False)
    assert alone.manifest["target"]["external_transients"] is True and alone.manifest["schema_version"] == 2
    off = modules.artifact("adam", dict(learning_rate=0.01), Layout.flat(size=N), target="cuda", asynchronous=True,
                           external_transients=False, spare_counts=False)
    assert "external_transients" not in off.manifest["target"] and off.manifest["schema_version"] == 1
    refused = compile_optimizer(registry.get("adadelta").build(), Layout.flat(), CompileOptions(target=Target.CUDA, asynchronous=True), name="adadelta")
    assert "external_transients" not in refused.manifest["target"] and refused.manifest["target"]["execution"] == "async"
    assert any("external transients (the default for async CUDA modules" in n and "no constant size" in n for n in refused.notes)


def test_compile_functions_never_takes_them():
    """They are for the optimizer's update and step: an async CUDA function module records none,
    and asking for them names the rule."""
    import jax
    import jax.numpy as jnp

    from polaris._src.errors import OptionError
    from polaris_compiler import FunctionEntry, Target, compile_functions

    entry = {"double": FunctionEntry(lambda x: {"y": 2 * x}, {"x": jax.ShapeDtypeStruct((8,), jnp.float32)})}
    art = compile_functions(entry, CompileOptions(target=Target.CUDA, asynchronous=True))
    assert "external_transients" not in art.manifest["target"] and "--iree-hal-force-indirect-command-buffers" not in art.flags
    with pytest.raises(OptionError, match="compile_optimizer's update and step only"):
        compile_functions(entry, CompileOptions(external_transients=True))
