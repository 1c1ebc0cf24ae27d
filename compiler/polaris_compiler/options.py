"""Compile options and the pure function from options to ``iree-compile`` flags.

``build_flags`` has no side effects and needs no compiler installed, so it is unit-tested alone
(the shape of IREE's own ``iree.compiler.core`` / iree-turbine's ``CompilerOptions``).
"""

from __future__ import annotations

import dataclasses
import enum

from polaris._src.errors import OptionError


class Target(enum.Enum):
    """A compile target: the name users type and IREE's HAL backend."""

    LLVM_CPU = "llvm-cpu"
    CUDA = "cuda"
    VULKAN = "vulkan"
    ROCM = "rocm"
    METAL = "metal"

    @property
    def backend(self) -> str:
        return {
            Target.LLVM_CPU: "llvm-cpu",
            Target.CUDA: "cuda",
            Target.VULKAN: "vulkan-spirv",
            Target.ROCM: "rocm",
            Target.METAL: "metal-spirv",
        }[self]

    @property
    def driver(self) -> str:
        """The IREE runtime driver that runs this target by default."""
        return {
            Target.LLVM_CPU: "local-task",
            Target.CUDA: "cuda",
            Target.VULKAN: "vulkan",
            Target.ROCM: "hip",
            Target.METAL: "metal",
        }[self]

    @classmethod
    def parse(cls, text: str) -> Target:
        aliases = {"cpu": "llvm-cpu", "vulkan-spirv": "vulkan", "hip": "rocm", "metal-spirv": "metal"}
        t = aliases.get(text.strip().lower(), text.strip().lower())
        for member in cls:
            if member.value == t:
                return member
        raise OptionError(
            f"unknown target {text!r}; valid targets: {', '.join(m.value for m in cls)}"
        )


# IREE 3.13 has no Hopper entry in its NVIDIA target table: sm_90/sm_90a fail with "missing GPU
# target in #hal.executable.target" (upstream #22147, #24477). sm_80 PTX is JIT-compiled by the
# driver on Hopper and ran as fast as a hand-declared sm_90 target (docs/targets.md).
CUDA_FALLBACK = {"sm_90": "sm_80", "sm_90a": "sm_80", "hopper": "sm_80", "sm_100": "sm_80"}
CUDA_ARCHS = ("sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_89", "ampere", "ada", "turing", "volta")
VULKAN_TARGETS = ("ampere", "ada", "turing", "rdna3", "rdna2", "valhall", "adreno", "generic")


@dataclasses.dataclass(frozen=True)
class CompileOptions:
    """How to compile: target, its architecture choice, extra flags, where to keep temps."""

    target: Target = Target.LLVM_CPU
    extra_targets: tuple[Target, ...] = ()  # more targets in the same module (runtime picks)
    cpu: str = "host"  # host, a CPU name (znver3), a list "a,b,c" (best first) or "portable"
    cpu_triple: str | None = None  # e.g. aarch64-unknown-linux-gnu
    cuda_arch: str = "sm_80"
    vulkan_target: str = "ampere"
    rocm_arch: str = "gfx942"
    extra_args: tuple[str, ...] = ()
    save_temps: str | None = None
    # IREE's async-external model: every export takes a wait and a signal fence and returns once
    # its work is queued (the runtime chains them; docs/runtime.md "Asynchronous modules").
    asynchronous: bool = False
    # Scalars (bias corrections, schedules) in small dispatches of their own (True: 1M Adam 2x
    # faster on a small CPU) or fused into the elementwise kernels (False: Adam's CUDA step 5
    # dispatches -> 2). ``None`` (default): fused where every target is CUDA (H100, Adam 1e6-1e8:
    # 1-12% faster, docs/performance.md thirteenth pass), hoisted elsewhere (``resolved()``).
    hoist_scalars: bool | None = None
    # Experimental (IREE marks the feature so): ``update`` and ``step`` take their transient
    # storage (Adam: 192 bytes of hoisted scalars) from the caller, a ``!hal.buffer`` after the
    # arrays, instead of a queue alloca/dealloca per call; with indirect command buffers so a
    # fixed-size step stays one memoized command buffer. IREE 3.13's CUDA dealloca blocks the host
    # until the step is done, so only such a step can pipeline on CUDA: an async Adam step at 1e7
    # 164 -> 105 us on an H100 (docs/performance.md, thirteenth pass). ``None`` (default): on for
    # async modules whose targets are all CUDA, where a module that IREE refuses it for is
    # compiled without (``compile_optimizer``); off elsewhere. The runtime passes the buffer; C
    # hosts read its size from the function's reflection (``iree.abi.transients.size.constant``;
    # docs/abi.md).
    external_transients: bool | None = None
    # ``step`` writes each step counter's new value (a state leaf that is ``safe_increment`` of
    # itself: Adam's ``count``) into a spare 4-byte buffer the caller passes after the arrays,
    # and its kernels compute the new count from the old one, so that the elementwise kernel waits
    # for nothing and nothing is copied: the caller swaps the two buffers after each call (the
    # runtime does; manifest ``functions.step.spares``, schema version 4, docs/abi.md). H200,
    # Adam ``--size --async``, raw calls: 1e7 74.8 -> 72.6 us, 1000064 16.6 -> 15.2 us
    # (docs/performance.md, seventeenth pass). ``None`` (default): on for async modules whose targets are all CUDA
    # (where it was measured), off elsewhere (no gain on CPUs: one dispatch more).
    spare_counts: bool | None = None

    @property
    def targets(self) -> tuple[Target, ...]:
        return (self.target, *[t for t in self.extra_targets if t is not self.target])

    @property
    def cpu_only(self) -> bool:
        """Every target is a CPU: the frontend may trace the forms measured on CPUs only."""
        return all(t is Target.LLVM_CPU for t in self.targets)

    @property
    def cpu_variants(self) -> tuple[str, ...]:
        """The CPUs to build variants for (one unless ``cpu`` names a list or a preset)."""
        from polaris_compiler.cpu_variants import expand

        return expand(self.cpu)

    @property
    def cuda_only(self) -> bool:
        """Every target is CUDA: the defaults measured on an H100 apply (``resolved``)."""
        return all(t is Target.CUDA for t in self.targets)

    def resolved(self) -> CompileOptions:
        """Options with fallbacks (Hopper CUDA names to sm_80 PTX) and defaults applied: every
        field set, ``hoist_scalars``, ``external_transients`` and ``spare_counts`` included."""
        changes = {}
        if self.target is Target.CUDA and self.cuda_arch in CUDA_FALLBACK:
            changes["cuda_arch"] = CUDA_FALLBACK[self.cuda_arch]
        if self.hoist_scalars is None:
            changes["hoist_scalars"] = not self.cuda_only
        if self.external_transients is None:
            changes["external_transients"] = self.asynchronous and self.cuda_only
        if self.spare_counts is None:
            changes["spare_counts"] = self.asynchronous and self.cuda_only
        return dataclasses.replace(self, **changes) if changes else self

    def notes(self) -> list[str]:
        """Human-readable notes about fallbacks taken."""
        if self.target is Target.CUDA and self.cuda_arch in CUDA_FALLBACK:
            return [
                f"cuda: IREE 3.13 has no {self.cuda_arch} target (upstream #22147); compiled "
                f"{CUDA_FALLBACK[self.cuda_arch]} PTX instead, which the driver JIT-compiles for "
                f"the newer GPU"
            ]
        return []


GPU_TARGETS = (Target.CUDA, Target.VULKAN, Target.ROCM, Target.METAL)


def gpu_vector_multiple(opts: CompileOptions, target: Target, dtype: str = "float32") -> int | None:
    """The lengths IREE 3.13 vectorises an element-wise GPU kernel for: a multiple of the
    subgroup size times one 128-bit load (32 x 4 = 128 float32 elements on CUDA, 256 on CDNA's
    64-wide waves; twice that for 16-bit types), read from ``KernelConfig``'s tile-and-fuse choice
    and checked in the PTX (docs/performance.md, ninth pass). ``None`` for targets whose
    element-wise kernels never load vectors in IREE 3.13 (Vulkan, Metal: SPIR-V's
    BaseDistribute, one element per thread at every length) and for the CPU."""
    if target is Target.CUDA:
        lanes = 32
    elif target is Target.ROCM:
        lanes = 64 if opts.rocm_arch.startswith("gfx9") else 32
    else:
        return None
    return lanes * (4 if dtype == "float32" else 8)


def layout_notes(opts: CompileOptions, layout_kind: str, size: int | None, dtype: str = "float32") -> list[str]:
    """Notes on a layout that compiles but runs slowly on ``opts``'s targets.

    * A flat module of any length gives IREE 3.13's GPU code generator an unknown length: one
      element per thread, scalar loads, 32-thread workgroups, and a command buffer recorded on
      every call. Measured on an H100 (CUDA, 1e8 parameters, docs/performance.md thirteenth
      pass): 2.11 ms per Adam step against 1.05 ms for the same step compiled for exactly that
      length (H200, fourth pass: 2.2 vs 0.82 ms).
    * A fixed length gets the vector loads only when it is a multiple of
      :func:`gpu_vector_multiple` (128 float32 elements on CUDA): 1e8 does, 1e6 does not.
    * A tree module on CUDA runs a kernel per tensor: for element-wise optimizers the packed
      model's ``--size`` module is faster (H100, GPT-2 Adam: 1.32 vs 2.29 ms, thirteenth pass).
    """
    gpus = [t for t in opts.targets if t in GPU_TARGETS]
    if layout_kind == "tree" and Target.CUDA in gpus:
        return [
            "cuda: a tree module runs one kernel per tensor; for element-wise optimizers (adam, adamw, sgd, "
            "lion, ...) one flat module of the packed model is faster on a GPU: pack(params, align=128) and "
            "compile --size with that packing's size (H100, GPT-2's 148 tensors, Adam: 1.32 ms against 2.29 ms "
            "for the tree module, torch fused 1.38 ms). Optimizers that reduce per tensor (lamb, lars, fromage, "
            "adafactor) keep the tree module (docs/flat-modules.md)"
        ]
    if layout_kind != "flat" or not gpus:
        return []
    if size is None:
        return [
            f"{'/'.join(t.value for t in gpus)}: a flat module of any length runs 2-3x slower on a GPU "
            f"than one compiled for its exact length (IREE 3.13 cannot vectorise an unknown length "
            f"and records the step on every call; H100, 1e8 params: 2.11 ms vs 1.05 ms per Adam step); "
            f"pass --size N (Layout.flat(size=N)) for the fast kernel"
        ]
    notes = []
    for t in gpus:
        k = gpu_vector_multiple(opts, t, dtype)
        if k and size % k:
            padded = -(-size // k) * k
            notes.append(
                f"{t.value}: --size {size} is not a multiple of {k}, so IREE 3.13's {t.value} kernel loads "
                f"one element per thread instead of a 128-bit vector (about 2.5x slower when memory-bound); "
                f"pad the vector with zeros to {padded} elements (pack(params, align={k}) does it per "
                f"tensor) and compile --size {padded}"
            )
    return notes


# Below this many parameters an async module is slower than a synchronous one on a CPU whose
# synchronous modules run on local-sync (2 cores or fewer: polaris_runtime.device.default_cpu_driver):
# its calls go to local-task's worker threads, and the hand-off costs more than the overlap gains.
# 2-core EPYC, Adam --size, through the runtime (docs/performance.md, eighteenth pass): sync on
# local-sync / async on local-task 12.8 / 27.2 us at 1e4, 39.6 / 73.9 us at 1e5, 137 / 136 us at
# 3e5, 927 / 499 us at 1e6.
CPU_ASYNC_PAYS_FROM = 300_000


def execution_notes(opts: CompileOptions, parameters: int | None = None) -> list[str]:
    """Notes on how calls run. An async module of fewer than :data:`CPU_ASYNC_PAYS_FROM`
    parameters for a CPU: slower than a synchronous one on small machines. A synchronous CUDA
    module waits for the GPU at the end of every call, so the host's issue time and the GPU's
    step add up; an async one (with its transient
    storage passed in, the default there) queues steps back to back. Measured on an H100
    through the runtime, Adam ``--size``, sync vs async (docs/performance.md, thirteenth and
    fourteenth passes; async calls ordered by the CUDA stream): 1000064 56-67 -> 22-23 us, 1e7
    156 -> 105 us, 1e8 1.05 -> 0.96 ms (jax.jit(optax) 48-88 us, 104 us, 0.95 ms; torch fused
    Adam 49-88 us, 113-115 us, 1.08 ms). On an H200 with the runtime's default since the
    seventeenth pass (fence-chained calls) and spare counts: 1000064 61 -> 43 us, 1e7 124 -> 73
    us (torch fused 55 us, 81 us)."""
    if opts.asynchronous and Target.LLVM_CPU in opts.targets and parameters is not None and parameters < CPU_ASYNC_PAYS_FROM:
        return [
            f"llvm-cpu: this async module steps {parameters} parameters; on a CPU --async pays from about "
            f"{CPU_ASYNC_PAYS_FROM:,}: its calls go to local-task's worker threads, which costs more than the "
            f"overlap gains where a synchronous module runs on local-sync (2 cores or fewer; 2-core EPYC, Adam "
            f"--size: 1e4 12.8 us sync, 27.2 us async; 1e5 39.6 / 73.9 us; 1e6 927 / 499 us). On such a "
            f"machine compile without --async (docs/runtime.md)"
        ]
    if opts.asynchronous or not opts.cuda_only:
        return []
    return [
        "cuda: every call of this module waits for the GPU to finish the step before it returns; compile "
        "with --async (CompileOptions(asynchronous=True)) and the runtime queues steps back to back "
        "(H200, Adam --size 1000064: 61 -> 43 us a step, --size 10000000: 124 -> 73 us; torch fused 55 us "
        "and 81 us; reads of results wait as before, docs/runtime.md)"
    ]


def segment_notes(opts: CompileOptions, size: int | None, reduction: str, name: str = "this optimizer", aligned_ok: bool = True) -> list[str]:
    """Notes on a flat module that sums per tensor (``segment_ids``) in a slower form than it
    could, naming the faster forms that can serve its transform (docs/flat-modules.md; flat LAMB
    measured on the 2-core EPYC, ``bench/results/2026-11-26-cpu-amd-epyc-2c-lamb-lanes.md``).

    * Any length, scatter: one element at a time in IREE 3.13 (flat LAMB 0.95-3.1x
      ``jax.jit(optax)`` from 1e4 to 1e7; 1.1 s a step at 1e7 on an H200). ``aligned`` of any
      length is 1.6-2.6x faster, and with ``--size`` up to 1.5x faster again.
    * Any length, aligned: ``--size N`` is 1.03-1.5x faster (static shapes, the tree of block sums).
    * A fixed length summed per element (tree or scatter): ``aligned`` is 2.1-3.4x faster.

    ``aligned_ok``: the transform only sums (no per-tensor means, no row ids), so the
    ``"aligned"`` reduction can serve it.
    """
    how = "--size N (static shapes, the tree of block sums) runs it 1.03-1.5x faster"
    if reduction == "aligned":
        if size is not None:
            return []
        return [f"{name}: an aligned flat module of any length; {how} (flat LAMB on a 2-core CPU; docs/flat-modules.md)"]
    if size is None:
        gpu = "; a GPU runs one workgroup per element (flat LAMB took 1.1 s a step at 1e7 on an H200)" if any(
            t in GPU_TARGETS for t in opts.targets
        ) else ""
        faster = (
            ["--segment-reduction aligned for a model packed with pack(params, align=16): 1.6-2.6x faster at any "
             "length (0.43-0.46x jax.jit(optax) from 7.8M elements), and with --size N up to 1.5x faster again"]
            if aligned_ok else ["--size N (a tree of block sums; flat LAMB 1.0x jax.jit(optax) at 1e7)"]
        )
        faster += ["--whole-vector when the model is one tensor", "--layout FILE for a tree module of the model (LAMB on GPT-2/4: 0.37x)"]
        return [
            f"{name}: a flat module of any length sums per tensor with a scatter over every element, which IREE 3.13 "
            f"runs one element at a time (flat LAMB: 0.95-3.1x jax.jit(optax) from 1e4 to 1e7 on a 2-core CPU){gpu}; "
            f"faster: {'; '.join(faster)} (docs/flat-modules.md)"
        ]
    if not aligned_ok:
        return []
    return [
        f"{name}: --segment-reduction aligned sums blocks of 16 elements instead of single elements (flat LAMB "
        f"2.1-3.4x faster than this {reduction} module from 1e4 to 1e7 on a 2-core CPU): pack the model with "
        f"pack(params, align=16) and compile --size with that packing's size (docs/flat-modules.md)"
    ]


DEVICE_FOR_TARGET = {
    Target.LLVM_CPU: "local",
    Target.CUDA: "cuda",
    Target.VULKAN: "vulkan",
    Target.ROCM: "hip",
    Target.METAL: "metal",
}


def build_flags(opts: CompileOptions) -> list[str]:
    """``iree-compile`` flags for ``opts`` (input type and target selection included).

    * one target: ``--iree-hal-target-backends=`` plus that target's architecture flag;
    * several targets (``llvm-cpu,cuda,vulkan``): one device that selects among them at run time
      (``--iree-hal-target-device=cuda,vulkan,local``), with executable linking off, which
      IREE 3.13 needs for a multi-target module to load (docs/targets.md);
    * several CPU variants (``cpu="portable"``): no CPU flag here; the variants go into the
      module's ``hal.device.targets`` (see :mod:`polaris_compiler.cpu_variants`), alone or as
      the ``local`` device among several targets.
    """
    o = opts.resolved()
    targets = o.targets
    multi_cpu = Target.LLVM_CPU in targets and len(o.cpu_variants) > 1
    flags = ["--iree-input-type=stablehlo"]
    if len(targets) == 1 and not multi_cpu:
        flags.append(f"--iree-hal-target-backends={o.target.backend}")
    elif len(targets) > 1:
        flags.append("--iree-hal-target-device=" + ",".join(DEVICE_FOR_TARGET[t] for t in targets))
        if Target.LLVM_CPU in targets:
            flags.append("--iree-hal-local-target-device-backends=llvm-cpu")
        flags.append("--iree-hal-link-executables=false")
    else:
        flags.append("--iree-hal-link-executables=false")
    for t in targets:
        if t is Target.LLVM_CPU:
            if not multi_cpu:
                flags.append(f"--iree-llvmcpu-target-cpu={o.cpu}")
            # IREE 3.13 otherwise sums a reduction in order with scalar FMAs: a 1M-element
            # sum of squares took 834 us (XLA: 73 us) and was the least accurate of the
            # orders tried (rel. error 3.6e-4 vs 5.5e-6 reassociated); LAMB/LARS norms
            # halve in time (docs/performance.md).
            flags.append("--iree-llvmcpu-reassociate-fp-reductions=true")
            if o.cpu_triple:
                flags.append(f"--iree-llvmcpu-target-triple={o.cpu_triple}")
        elif t is Target.CUDA:
            flags.append(f"--iree-cuda-target={o.cuda_arch}")
        elif t is Target.VULKAN:
            flags.append(f"--iree-vulkan-target={o.vulkan_target}")
        elif t is Target.ROCM:
            flags.append(f"--iree-rocm-target={o.rocm_arch}")
    if o.asynchronous:
        flags.append("--iree-execution-model=async-external")
    if o.external_transients:
        flags.append("--iree-hal-force-indirect-command-buffers")
    flags.extend(o.extra_args)
    return flags
