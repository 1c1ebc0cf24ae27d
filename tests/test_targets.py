"""Every target runs the same artifact: CPU (several variants), Vulkan (lavapipe in CI), CUDA
where a driver exists; ROCm, Metal and aarch64 compile."""

from __future__ import annotations

import numpy as np
import pytest

import polaris_runtime as pr
from polaris_compiler import CompileOptions, Layout, Target, compile_optimizer
from polaris_compiler import cpu_variants
from _devices import device_or_skip, has, lavapipe_or_skip, vulkan_target


def run_steps(opt, n, steps=10, seed=0):
    rng = np.random.default_rng(seed)
    p = rng.standard_normal(n).astype(np.float32)
    s = opt.init(p)
    # flat modules that reduce per tensor (lamb) take segments: three tensors of n // 3
    seg = opt.upload_segments(np.minimum(np.arange(n) // max(1, n // 3), 2).astype(np.int32)) if opt.takes_segments else None
    for i in range(steps):
        g = rng.standard_normal(n).astype(np.float32)
        p, s = opt.step(p, g, s, segments=seg)
    return p.numpy(), s


def assert_matches_reference(got, ref, what):
    assert not np.isnan(got).any(), what
    rel = np.linalg.norm(got - ref) / np.linalg.norm(ref)
    assert rel <= 1e-6, f"{what}: relative error {rel:.2e}"
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6 * np.abs(ref).max(), err_msg=what)


GPU_CASES = [
    ("adam", dict(learning_rate=1e-2, eps_root=0.0)),
    ("sgd", dict(learning_rate=1e-2, momentum=0.9, nesterov=True)),
    ("adamw", dict(learning_rate=1e-2, decay=1e-2)),
    ("lamb", dict(learning_rate=1e-2)),
]


@pytest.mark.vulkan
@pytest.mark.parametrize("name, options", GPU_CASES, ids=[c[0] for c in GPU_CASES])
def test_vulkan_matches_cpu(modules, name, options):
    device_or_skip("vulkan")
    vk = modules.load(name, options, target="vulkan", vulkan_target=vulkan_target())
    cpu = modules.load(name, options)
    assert vk.driver == "vulkan"
    # lavapipe runs at most 65535 workgroups per dimension: lamb's flat module sums its norms per
    # tensor with a scatter that IREE runs as one workgroup per element, so it serves at most
    # 65535 elements there (larger is refused: tests/test_flat_segments.py); elementwise steps
    # scale (docs/targets.md).
    sizes = (1, 1000, 65_535) if name == "lamb" else (1, 1000, 1_000_003)
    for n in sizes:
        got, s = run_steps(vk, n, steps=5 if n > 10_000 else 10, seed=n)
        ref, _ = run_steps(cpu, n, steps=5 if n > 10_000 else 10, seed=n)
        assert_matches_reference(got, ref, f"{name} vulkan n={n}")
        assert np.all(np.isfinite(s.leaves()[1]))


@pytest.mark.parametrize("driver", [pytest.param("vulkan", marks=pytest.mark.vulkan), pytest.param("cuda", marks=pytest.mark.cuda)])
def test_async_gpu_modules_match_cpu(modules, driver):
    """``--async`` on a GPU queue: the runtime's fence chain orders the steps (docs/runtime.md)."""
    device_or_skip(driver)
    name, options = GPU_CASES[0]
    kw = {"vulkan_target": vulkan_target()} if driver == "vulkan" else {}
    gpu = modules.load(name, options, target=driver, asynchronous=True, **kw)
    assert gpu.asynchronous and gpu.driver == driver
    cpu = modules.load(name, options)
    for n in (1000, 100_003):
        got, s = run_steps(gpu, n, steps=8, seed=n)
        ref, _ = run_steps(cpu, n, steps=8, seed=n)
        assert_matches_reference(got, ref, f"{name} {driver} async n={n}")
        assert gpu.step_count(s) == 8


@pytest.mark.cuda
@pytest.mark.parametrize("name, options", GPU_CASES, ids=[c[0] for c in GPU_CASES])
def test_cuda_matches_cpu(modules, name, options):
    device_or_skip("cuda")
    gpu = modules.load(name, options, target="cuda")
    cpu = modules.load(name, options)
    for n in (1, 1000, 10_000_019):
        got, _ = run_steps(gpu, n, steps=5, seed=n)
        ref, _ = run_steps(cpu, n, steps=5, seed=n)
        assert_matches_reference(got, ref, f"{name} cuda n={n}")


def test_one_module_for_cpu_and_vulkan(modules):
    """`--target llvm-cpu,cuda,vulkan`: the device the runtime opens picks its executables."""
    vt = vulkan_target()
    art = modules.artifact("lamb", dict(learning_rate=1e-2), target="llvm-cpu", extra_targets=(Target.CUDA, Target.VULKAN), vulkan_target=vt)
    assert art.manifest["target"]["targets"] == ["llvm-cpu", "cuda", "vulkan"]
    assert "--iree-hal-target-device=local,cuda,vulkan" in art.flags
    drivers = ["local-task", "local-sync"] + (["vulkan"] if has("vulkan") else [])
    results = []
    for d in drivers:
        opt = pr.load(art.vmfb, device=d)
        assert opt.driver == d
        results.append(run_steps(opt, 40_097, seed=7)[0])
    for r in results[1:]:
        assert_matches_reference(r, results[0], "multi-target")
    with pytest.raises(pr.DeviceError, match="valid drivers for it: local-task, local-sync, cuda, vulkan"):
        pr.load(art.vmfb, device="hip")


@pytest.mark.vulkan
@pytest.mark.vulkan
def test_vulkan_reductions_over_large_static_tensors(modules):
    """IREE 3.13 reduced a static tensor of more than 65535 elements over its first 65535 only
    on lavapipe (sum of 2**18 ones: 65535.0); whole-tensor reductions now run in two levels.
    LAMB's trust ratio (two norms per tensor) on a 2**18 + 2**16 tree equals the CPU's."""
    device_or_skip("vulkan")
    import jax

    shapes = {"w": (512, 512), "b": (65536,)}
    layout = Layout.from_tree({k: jax.ShapeDtypeStruct(v, np.float32) for k, v in shapes.items()}, source="test")
    cpu = pr.load(modules.artifact("lamb", dict(learning_rate=1e-2), layout=layout).vmfb, device="local-sync")
    gpu = pr.load(
        modules.artifact("lamb", dict(learning_rate=1e-2), layout=layout, target="vulkan", vulkan_target=vulkan_target()).vmfb,
        device="vulkan",
    )
    rng = np.random.default_rng(11)
    p0 = {k: rng.standard_normal(v).astype(np.float32) for k, v in shapes.items()}
    grads = [{k: (rng.standard_normal(v) * (1 + np.arange(v[-1]) % 7)).astype(np.float32) for k, v in shapes.items()} for _ in range(4)]
    out = []
    for opt in (cpu, gpu):
        p, s = p0, opt.init(p0)
        for g in grads:
            p, s = opt.step(p, g, s)
        out.append(p.numpy())
    for k in shapes:
        assert_matches_reference(out[1][k], out[0][k], f"lamb {k} on vulkan")


def _clip_then_descend():
    import polaris.updates as U
    from polaris._src.base import chain

    return chain(U.clip_by_global_norm(max_norm=1.0), U.scale(step_size=-1.0))


def test_flat_modules_record_whole_vector_reductions():
    vk = CompileOptions(target=Target.VULKAN, vulkan_target="llvmpipe")
    art = compile_optimizer(_clip_then_descend(), Layout.flat(), vk)
    assert art.manifest["dynamic_reductions"] == ["update", "step"]
    import polaris

    assert "dynamic_reductions" not in compile_optimizer(polaris.optimizers.adam(), Layout.flat(), vk).manifest
    tree = Layout.from_tree({"w": np.zeros((4, 4), np.float32)}, source="test")
    assert "dynamic_reductions" not in compile_optimizer(_clip_then_descend(), tree, vk).manifest


@pytest.mark.vulkan
def test_whole_vector_reduction_limit_on_lavapipe_is_enforced():
    """A dynamic-length reduction covers 65535 * 8 elements on lavapipe: right up to there,
    refused beyond (it would silently use part of the vector)."""
    lavapipe_or_skip("the limit is the 65535-workgroup devices' (lavapipe here)")
    from polaris_runtime.module import VULKAN_DYNAMIC_REDUCTION_LIMIT as limit

    vk = CompileOptions(target=Target.VULKAN, vulkan_target="llvmpipe")
    opt = pr.load(compile_optimizer(_clip_then_descend(), Layout.flat(), vk).vmfb, device="vulkan")
    p, s = opt.step(np.zeros(limit, np.float32), np.ones(limit, np.float32), opt.init(np.zeros(limit, np.float32)))
    np.testing.assert_allclose(p.numpy()[:3], -1 / np.sqrt(limit), rtol=1e-6)
    with pytest.raises(pr.BindingError, match=f"at most {limit} elements of such a reduction.*n={limit + 1}"):
        opt.step(np.zeros(limit + 1, np.float32), np.ones(limit + 1, np.float32), opt.init(np.zeros(limit + 1, np.float32)))


def test_vulkan_module_for_another_device_family_is_refused(modules):
    device_or_skip("vulkan")
    other = "ampere" if vulkan_target() == "llvmpipe" else "llvmpipe"
    path = modules.path("lamb", dict(learning_rate=1e-2), target="vulkan", vulkan_target=other)
    with pytest.raises(pr.DeviceError, match=f"compiled for Vulkan target '{other}'.*Recompile with --vulkan-target"):
        pr.load(path)


def test_portable_cpu_module_carries_variants_and_runs(modules):
    art = modules.artifact("adam", dict(learning_rate=1e-2), cpu="portable")
    assert art.manifest["target"]["cpu_variants"] == ["x86-64-v4", "x86-64-v3", "x86-64-v2"]
    ref = modules.load("adam", dict(learning_rate=1e-2))
    got = pr.load(art.vmfb)
    assert_matches_reference(run_steps(got, 10_001)[0], run_steps(ref, 10_001)[0], "portable")


def test_portable_module_falls_back_when_features_are_missing(monkeypatch):
    """Variants whose features the CPU lacks are skipped; the last variant runs everywhere."""
    import polaris

    monkeypatch.setattr(cpu_variants, "required_features", lambda feats: ["amx-tile"])
    art = compile_optimizer(polaris.optimizers.sgd(learning_rate=0.5), Layout.flat(), CompileOptions(cpu="portable"))
    opt = pr.load(art.vmfb)
    p = np.ones(10, np.float32)
    s = opt.init(p)
    p, s = opt.step(p, np.ones(10, np.float32), s)
    np.testing.assert_allclose(p.numpy(), 0.5)


def _format_counts(vmfb: bytes) -> dict[str, int]:
    return {k: vmfb.count(k.encode()) for k in ("embedded-elf-x86_64", "x86-64-v4", "vulkan-spirv-fb", "cuda-nvptx-fb")}


def test_portable_cpu_variants_and_gpu_targets_in_one_module(modules):
    """`--cpu portable --target llvm-cpu,cuda,vulkan`: the CPU variants are the local device's,
    the GPU devices keep their own executables, and every driver here gives the same numbers."""
    vt = vulkan_target()
    art = modules.artifact(
        "adam", dict(learning_rate=1e-2), cpu="portable", extra_targets=(Target.CUDA, Target.VULKAN), vulkan_target=vt
    )
    t = art.manifest["target"]
    assert t["targets"] == ["llvm-cpu", "cuda", "vulkan"] and t["cpu_variants"] == ["x86-64-v4", "x86-64-v3", "x86-64-v2"]
    single = modules.artifact("adam", dict(learning_rate=1e-2), cpu="portable")
    got, alone = _format_counts(art.vmfb), _format_counts(single.vmfb)
    assert got["embedded-elf-x86_64"] == alone["embedded-elf-x86_64"] and got["x86-64-v4"] == alone["x86-64-v4"] > 0
    assert got["vulkan-spirv-fb"] > 0 and got["cuda-nvptx-fb"] > 0
    ref = run_steps(modules.load("adam", dict(learning_rate=1e-2)), 20_011, seed=3)[0]
    drivers = ["local-sync", "local-task"] + (["vulkan"] if has("vulkan") else [])
    for d in drivers:
        opt = pr.load(art.vmfb, device=d)
        assert opt.driver == d
        assert_matches_reference(run_steps(opt, 20_011, seed=3)[0], ref, f"portable+gpu on {d}")


def test_portable_fallback_inside_a_multi_target_module(monkeypatch):
    """With every conditioned variant unusable, the local device runs the fallback variant."""
    import polaris

    monkeypatch.setattr(cpu_variants, "required_features", lambda feats: ["amx-tile"])
    opts = CompileOptions(cpu="portable", extra_targets=(Target.VULKAN,), vulkan_target="llvmpipe")
    art = compile_optimizer(polaris.optimizers.sgd(learning_rate=0.5), Layout.flat(), opts)
    opt = pr.load(art.vmfb, device="local-sync")
    p = np.ones(10, np.float32)
    s = opt.init(p)
    p, s = opt.step(p, np.ones(10, np.float32), s)
    np.testing.assert_allclose(p.numpy(), 0.5)


def test_conditions_are_added_to_all_but_the_fallback():
    src = "\n".join(
        f'    hal.executable.variant public @v{i} target(<"llvm-cpu", "embedded-elf-x86_64", {{cpu = "{c}", cpu_features = "{f}", x = 1}}>) {{'
        for i, (c, f) in enumerate([("x86-64-v4", "+avx512f,+avx2,+fma"), ("x86-64-v3", "+avx2,+fma,-avx512f"), ("x86-64-v2", "+sse4.2")])
    )
    out = cpu_variants.add_conditions(src, ("x86-64-v4", "x86-64-v3", "x86-64-v2"))
    assert out.count("hal.executable.condition") == 2
    assert 'key("hal.cpu" :: "avx512f")' in out
    v3 = out.split("@v1", 1)[1].split("@v2", 1)[0]
    assert '"avx2"' in v3 and '"avx512f"' not in v3


@pytest.mark.parametrize(
    "kw, marker",
    [
        (dict(target=Target.ROCM), "rocm"),
        (dict(target=Target.METAL), "metal"),
        (dict(cpu="generic", cpu_triple="aarch64-unknown-linux-gnu"), "aarch64"),
    ],
)
def test_other_targets_compile(kw, marker):
    import polaris

    art = compile_optimizer(polaris.optimizers.adam(), Layout.flat(), CompileOptions(**kw))
    assert len(art.vmfb) > 1000
    assert marker in " ".join(art.flags) or art.manifest["target"]["name"] == marker


def test_hopper_cuda_names_fall_back_to_sm80():
    opts = CompileOptions(target=Target.CUDA, cuda_arch="sm_90a")
    assert opts.resolved().cuda_arch == "sm_80" and "no sm_90a target" in opts.notes()[0]
