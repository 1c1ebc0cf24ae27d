"""The compiler: flags as a pure function, errors that carry diagnostics, the manifest."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import pytest

import polaris
from polaris._src import registry
from polaris._src.errors import OptionError
from polaris_compiler import CompileError, CompileOptions, Layout, LayoutError, Target, build_flags, compile_optimizer
from polaris_runtime.manifest import SCHEMA_VERSION, Manifest


def test_build_flags_is_pure_and_names_the_target():
    assert build_flags(CompileOptions()) == [
        "--iree-input-type=stablehlo",
        "--iree-hal-target-backends=llvm-cpu",
        "--iree-llvmcpu-target-cpu=host",
        "--iree-llvmcpu-reassociate-fp-reductions=true",
    ]
    assert "--iree-llvmcpu-target-triple=aarch64-unknown-linux-gnu" in build_flags(
        CompileOptions(cpu="generic", cpu_triple="aarch64-unknown-linux-gnu")
    )
    assert build_flags(CompileOptions(target=Target.CUDA))[1:] == ["--iree-hal-target-backends=cuda", "--iree-cuda-target=sm_80"]
    assert build_flags(CompileOptions(target=Target.CUDA, cuda_arch="sm_90"))[-1] == "--iree-cuda-target=sm_80"
    assert build_flags(CompileOptions(target=Target.VULKAN, vulkan_target="valhall"))[1:] == [
        "--iree-hal-target-backends=vulkan-spirv",
        "--iree-vulkan-target=valhall",
    ]
    assert build_flags(CompileOptions(extra_args=("--x",)))[-1] == "--x"


def test_segment_notes_name_the_faster_forms():
    """A flat module that sums per tensor in a slow form says which forms are faster, and only
    those that can serve its transform (aligned: sums only)."""
    from polaris_compiler.options import segment_notes

    cpu, cuda = CompileOptions(), CompileOptions(target=Target.CUDA)
    (any_len,) = segment_notes(cpu, None, "scatter", "lamb")
    assert any_len.startswith("lamb: a flat module of any length") and "H200" not in any_len
    assert all(f in any_len for f in ("--segment-reduction aligned", "pack(params, align=16)", "--whole-vector", "--layout FILE"))
    assert "one workgroup per element" in segment_notes(cuda, None, "scatter", "lamb")[0]
    (counted,) = segment_notes(cpu, None, "scatter", "adafactor", aligned_ok=False)
    assert "aligned" not in counted and "--size N (a tree of block sums" in counted
    for reduction in ("tree", "scatter"):
        (fixed,) = segment_notes(cpu, 10000, reduction, "lamb")
        assert f"faster than this {reduction} module" in fixed and "pack(params, align=16)" in fixed
        assert segment_notes(cpu, 10000, reduction, "adafactor", aligned_ok=False) == []
    assert segment_notes(cpu, 10000, "aligned", "lamb") == []
    (any_aligned,) = segment_notes(cpu, None, "aligned", "lamb")
    assert "an aligned flat module of any length; --size N" in any_aligned


def test_layout_notes_steer_gpu_flat_modules_to_a_fixed_vectorisable_length():
    from polaris_compiler.options import gpu_vector_multiple, layout_notes

    cuda, cpu = CompileOptions(target=Target.CUDA), CompileOptions()
    (note,) = layout_notes(cuda, "flat", None)
    assert note.startswith("cuda: a flat module of any length") and "--size N" in note
    assert layout_notes(cuda, "flat", 10**8) == []  # a multiple of 128: the vector kernel
    (note,) = layout_notes(cuda, "flat", 10**6)  # 10**6 = 7812.5 x 128: scalar loads
    assert "--size 1000000 is not a multiple of 128" in note and "--size 1000064" in note and "align=128" in note
    assert "multiple of 256" in layout_notes(cuda, "flat", 10**6 + 64, "bfloat16")[0]  # 8 x 32 for 16-bit
    assert layout_notes(cuda, "flat", 10**6 + 64) == []
    assert gpu_vector_multiple(CompileOptions(target=Target.ROCM), Target.ROCM) == 256  # gfx942: 64-wide waves
    assert gpu_vector_multiple(CompileOptions(target=Target.ROCM, rocm_arch="gfx1100"), Target.ROCM) == 128  # RDNA: wave32
    assert layout_notes(CompileOptions(target=Target.VULKAN), "flat", 10**6) == []  # SPIR-V: never vectors
    (note,) = layout_notes(cuda, "tree", None)  # static shapes already, but a kernel per tensor
    assert note.startswith("cuda: a tree module runs one kernel per tensor") and "pack(params, align=128)" in note
    assert layout_notes(CompileOptions(target=Target.VULKAN), "tree", None) == layout_notes(cpu, "tree", None) == []
    assert layout_notes(cpu, "flat", None) == layout_notes(cpu, "flat", 10**6) == []  # the CPU vectorises any length
    both = CompileOptions(target=Target.LLVM_CPU, extra_targets=(Target.CUDA, Target.VULKAN))
    assert layout_notes(both, "flat", None)[0].startswith("cuda/vulkan:")


def test_the_cuda_kernel_loads_vectors_exactly_when_the_notes_say(tmp_path):
    """The rule behind the notes, read from the PTX IREE writes (no GPU needed): Adam's
    element-wise kernel loads 128-bit vectors at 1000064 = 7813 x 128 elements and one float per
    thread at 10**6; the module's notes name the second and not the first."""
    import re

    for size in (10**6, 10**6 + 64):
        dump = tmp_path / str(size)
        opts = CompileOptions(target=Target.CUDA, extra_args=(f"--iree-hal-dump-executable-binaries-to={dump}",))
        art = compile_optimizer(polaris.optimizers.adam(1e-3), Layout.flat(size=size), opts, name="adam")
        ptx = "".join(p.read_text() for p in dump.glob("*.ptx"))
        vector_loads = len(re.findall(r"ld\.global\.nc\.v4\.[bf]32", ptx))
        assert ptx and (vector_loads >= 4) == (size % 128 == 0), (size, vector_loads)
        assert any("not a multiple of 128" in n for n in art.notes) == (size % 128 != 0)


def test_target_parse_lists_valid_targets():
    assert Target.parse("CPU") is Target.LLVM_CPU
    assert Target.parse("vulkan-spirv") is Target.VULKAN
    with pytest.raises(OptionError, match="valid targets: llvm-cpu, cuda, vulkan, rocm, metal"):
        Target.parse("tpu")


def test_compile_error_carries_flags_diagnostics_and_a_way_to_keep_temps(tmp_path):
    with pytest.raises(CompileError) as e:
        compile_optimizer(polaris.optimizers.sgd(), Layout.flat(), CompileOptions(extra_args=("--iree-no-such-flag",)))
    text = str(e.value)
    assert "iree-compile failed for target llvm-cpu" in text
    assert "--iree-no-such-flag" in text and e.value.flags[-1] == "--iree-no-such-flag"
    assert "POLARIS_SAVE_TEMPS" in text
    temps = tmp_path / "temps"
    with pytest.raises(CompileError) as e:
        compile_optimizer(polaris.optimizers.sgd(), Layout.flat(), CompileOptions(extra_args=("--iree-no-such-flag",), save_temps=str(temps)))
    assert f"intermediate files kept in {temps}" in str(e.value)
    assert {p.name for p in temps.iterdir()} >= {"module.mlir", "flags.txt", "manifest.json", "step.stablehlo.mlir"}


def test_manifest_records_what_the_design_asks_for(modules):
    layout = Layout.from_tree({"a": jax.ShapeDtypeStruct((2, 3), jnp.float32), "b": {"c": jax.ShapeDtypeStruct((4,), jnp.float32)}})
    art = modules.artifact("adamw", dict(learning_rate=0.01, decay=0.1), layout)
    m = art.manifest
    assert m["schema_version"] == SCHEMA_VERSION and m["kind"] == "optimizer"
    assert m["name"] == "adamw" and m["options"]["decay"] == 0.1 and m["options"]["b2"] == 0.999
    assert m["composition"] == ["scale_by_adam", "add_decayed_weights", "scale_by_learning_rate"]
    assert [p["name"] for p in m["groups"]["params"]] == ["a", "b/c"]
    assert [s["name"] for s in m["groups"]["state"]] == ["0/count", "0/mu/a", "0/mu/b/c", "0/nu/a", "0/nu/b/c", "2/learning_rate"]
    assert m["groups"]["state"][0] == {"name": "0/count", "shape": [], "dtype": "int32"}
    assert m["hyperparameters"] == [{"name": "learning_rate", "leaf": "2/learning_rate", "default": pytest.approx(0.01), "dtype": "float32"}]
    assert m["functions"]["step"]["donates"] == ["params", "state"]
    assert set(m["versions"]) >= {"polaris_iree", "jax", "iree_compiler", "iree_runtime"}
    assert m["target"]["flags"] == art.flags
    parsed = Manifest.from_dict(json.loads(json.dumps(m)))
    assert parsed.state[1].shape == (2, 3)


def _vm_function(art, name: str) -> str:
    """The VM code IREE generates for exported function ``name`` of ``art``."""
    import iree.compiler as ic

    flags = [f for f in art.flags if not f.startswith("--iree-input-type=")]
    vm = ic.compile_str(art.mlir, input_type="stablehlo", extra_args=[*flags, "--compile-to=vm"]).decode()
    body = vm.split(f"vm.func private @{name}(", 1)[1]
    return body.split("vm.export", 1)[0]


# The cases that once waited more than once (RAdam's and NovoGrad's scalar selects), a trust
# ratio, factored moments and a random key; the other optimizers run in the slow suite.
_WAITS_ONCE_FAST = ("adam", "radam", "novograd", "lamb", "adafactor", "noisy_sgd")


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=() if n in _WAITS_ONCE_FAST else pytest.mark.slow) for n in registry.names()]
)
def test_step_waits_for_the_device_once(modules, name):
    """One queue submission and one fence wait per step: scalar work (bias corrections, step
    counts, schedules, scalar predicates) stays on the device. ``jax.lax.optimization_barrier``
    (the old way to hoist Adam's bias corrections) made IREE 3.13 wait for the device around it,
    and a select on a scalar predicate is read back to the host (RAdam, NovoGrad): three waits
    per Adam step; on lavapipe's Vulkan queue a 64-parameter step took 490-580 us instead of
    360-400 us (docs/performance.md)."""
    art = modules.artifact(name, dict(registry.get(name).example))  # as the parity tests compile it
    step = _vm_function(art, "step")
    assert step.count("@hal.fence.await") == 1
    assert step.count("@hal.device.queue.execute") == 1 or name == "noisy_sgd"  # RNG: no wait


def test_scalars_fused_into_the_kernel_mean_fewer_dispatches_and_the_same_numbers(modules):
    """``CompileOptions(hoist_scalars=False)``: Adam's bias corrections are computed inside the
    elementwise kernel, not in dispatches of their own: the CUDA step records 2 dispatches
    instead of 5, with the same results. CUDA modules do so by default (H100, thirteenth pass of
    docs/performance.md); CPU modules hoist."""
    import numpy as np

    from polaris_runtime import device as dev

    opts = dict(learning_rate=0.05)
    hoisted = _vm_function(modules.artifact("adam", opts, target="cuda", hoist_scalars=True), "step")
    inline_art = modules.artifact("adam", opts, target="cuda", hoist_scalars=False)
    inline = _vm_function(inline_art, "step")
    assert inline.count("@hal.command_buffer.dispatch") == 2
    assert hoisted.count("@hal.command_buffer.dispatch") > 2
    assert inline_art.manifest["target"]["hoist_scalars"] is False
    default = modules.artifact("adam", opts, target="cuda")
    assert default.manifest["target"]["hoist_scalars"] is False and default.vmfb == inline_art.vmfb
    assert "hoist_scalars" not in modules.artifact("adam", opts).manifest["target"]  # the CPU hoists
    a, b = modules.load("adam", opts), modules.load("adam", opts, hoist_scalars=False)
    p0 = np.linspace(-1, 1, 1000, dtype=np.float32)
    pa, sa, pb, sb = p0, a.init(p0), p0, b.init(p0)
    g = [dev.upload(a.device, np.cos(np.arange(1000, dtype=np.float32)))]
    for _ in range(20):
        pa, sa = a.step(pa, g, sa)
        pb, sb = b.step(pb, g, sb)
    np.testing.assert_allclose(pb.numpy(), pa.numpy(), rtol=1e-6, atol=1e-7)


def test_a_fixed_size_flat_step_is_recorded_once(modules):
    """Static shapes let IREE record the step's command buffer once and replay it (a flat module
    of any length records it on every call: its workgroup count depends on n)."""
    any_length = _vm_function(modules.artifact("adam", dict(learning_rate=0.1)), "step")
    fixed = modules.artifact("adam", dict(learning_rate=0.1), Layout.flat(size=96))
    assert fixed.manifest["layout"] == "flat"
    assert fixed.manifest["groups"]["params"] == [{"name": "params", "shape": [96], "dtype": "float32"}]
    step = _vm_function(fixed, "step")
    assert "@hal.command_buffer.create" in any_length
    assert "@hal.command_buffer.create" not in step and "__step_memoize" in step
    assert step.count("@hal.fence.await") == 1


@pytest.mark.parametrize("target", ["cuda", "vulkan"])
def test_gpu_steps_submit_once_and_replay_when_fixed(modules, target):
    """The same on the GPU targets (compiled here, no device needed): one submission and one
    wait per step, and a fixed-size flat module replays its recorded command buffer."""
    any_length = _vm_function(modules.artifact("adam", dict(learning_rate=0.1), target=target), "step")
    fixed = _vm_function(modules.artifact("adam", dict(learning_rate=0.1), Layout.flat(size=1000), target=target), "step")
    for step in (any_length, fixed):
        assert step.count("@hal.fence.await") == 1
        assert step.count("@hal.device.queue.execute") == 1
    assert "@hal.command_buffer.create" in any_length and "@hal.command_buffer.create" not in fixed


@pytest.mark.parametrize("size", [0, -3, 2.5, True, "10"])
def test_a_flat_size_must_be_a_positive_integer(size):
    with pytest.raises(LayoutError, match="size must be a positive integer"):
        Layout.flat(size=size)


def test_step_aliases_its_outputs_onto_donated_inputs(modules):
    """Donation survives the merge: IREE writes params and state in place."""
    art = modules.artifact("adam", dict(learning_rate=0.1))
    step = art.mlir.split("func.func public @step", 1)[1].split("func.func", 1)[0]
    assert step.count("tf.aliasing_output") == 1 + 4  # params + count, mu, nu, learning_rate


def test_sums_of_squares_are_dot_products_only_for_cpu_only_targets():
    """The compiler traces ``sum_of_squares`` as a dot product where every target is a CPU
    (measured 3-4x faster there) and as a reduction for GPU and Vulkan targets (unmeasured;
    Vulkan needs the split reduction); the same module with both gets the reduction."""
    import jax

    from polaris._src import tree_utils as tu
    from polaris_compiler import CompileOptions, Target
    from polaris_compiler.compile import _tracing

    x = jax.numpy.ones((300, 7), jax.numpy.float32)
    for options, dot in (
        (CompileOptions(), True),
        (CompileOptions(target=Target.CUDA), False),
        (CompileOptions(target=Target.VULKAN), False),
        (CompileOptions(extra_targets=(Target.VULKAN,)), False),
    ):
        with _tracing(options):
            text = str(jax.make_jaxpr(lambda v: tu.sum_of_squares(v))(x))  # a new function: no cached trace
            assert ("dot_general" in text) is dot, options.targets
