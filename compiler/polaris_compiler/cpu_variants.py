"""Several CPU variants in one module, chosen at load time by the CPU's features.

An artifact that travels must be fast where it lands: a module built for generic x86-64 ran Adam
8-14x slower than one built for AVX2/AVX-512 (docs/targets.md). IREE 3.13 can hold several
``llvm-cpu`` executable targets for one device, but selects among same-format variants only by
``hal.executable.condition`` regions, which no backend emits yet. So the compiler:

1. reads each CPU's ``#hal.executable.target`` attribute from a tiny probe compile,
2. puts them (best first) in the module's ``hal.device.targets`` attribute,
3. compiles to ``executable-sources``, adds to every variant but the last a condition that asks
   the device for the CPU features it needs (``hal.device.query key("hal.cpu" :: "avx512f")``,
   answered by IREE's local drivers from the CPU it runs on),
4. finishes compiling with executable linking off (linking drops the conditions in 3.13).

The last variant has no condition: it is the fallback every CPU of the architecture can run.
"""

from __future__ import annotations

import functools
import re

PRESETS = {
    # name: CPUs best first; the last one must run everywhere on its architecture.
    "portable": ("x86-64-v4", "x86-64-v3", "x86-64-v2"),
    "x86-64-portable": ("x86-64-v4", "x86-64-v3", "x86-64-v2"),
    "aarch64-portable": ("neoverse-v1", "cortex-a76", "generic"),
}

# Feature keys IREE's CPU query understands (LLVM names; iree/schemas/cpu_feature_bits.inl).
QUERY_FEATURES = (
    "avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512cd", "avx2", "fma", "f16c", "avx",
    "dotprod", "i8mm", "sve", "sve2", "fp16fml",
)

_TARGET_RE = re.compile(r'#hal\.executable\.target<"llvm-cpu", "[\w-]+", \{.*?\}>')
_VARIANT_RE = re.compile(
    r'^\s*hal\.executable\.variant public @\w+ target\(<"llvm-cpu", "[\w-]+", \{cpu = "([^"]+)", cpu_features = "([^"]*)"'
)

_PROBE = """
func.func @probe(%a: tensor<4xf32>) -> tensor<4xf32> {
  %0 = stablehlo.add %a, %a : tensor<4xf32>
  return %0 : tensor<4xf32>
}
"""


def expand(cpu: str) -> tuple[str, ...]:
    """``"portable"`` or ``"a,b,c"`` -> the CPUs, best first; a single CPU -> one entry."""
    if cpu in PRESETS:
        return PRESETS[cpu]
    return tuple(c.strip() for c in cpu.split(",") if c.strip())


@functools.lru_cache(maxsize=64)
def executable_target(cpu: str, triple: str | None) -> str:
    """The ``#hal.executable.target`` attribute IREE builds for ``cpu`` (and ``triple``)."""
    import iree.compiler as ic

    args = [f"--iree-llvmcpu-target-cpu={cpu}", "--compile-to=executable-sources"]
    if triple:
        args.append(f"--iree-llvmcpu-target-triple={triple}")
    text = ic.compile_str(_PROBE, target_backends=["llvm-cpu"], input_type="stablehlo", extra_args=args)
    text = text.decode() if isinstance(text, bytes) else text
    m = _TARGET_RE.search(text)
    if not m:  # pragma: no cover - IREE changed its text form
        raise RuntimeError(f"could not read IREE's executable target for cpu {cpu!r}")
    return m.group(0)


def _closing(text: str, start: int) -> int:
    """The index just past the ``>`` that closes the ``<`` at ``text[start]`` (quotes and
    ``->`` arrows skipped)."""
    depth, i, quoted = 0, start, False
    while i < len(text):
        c = text[i]
        if quoted:
            if c == "\\":
                i += 1
            elif c == '"':
                quoted = False
        elif c == '"':
            quoted = True
        elif c == "<":
            depth += 1
        elif c == ">" and text[i - 1] != "-":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    raise RuntimeError("unbalanced attribute text from iree-compile")  # pragma: no cover


def _local_device(cpus: tuple[str, ...], triple: str | None) -> str:
    targets = ", ".join(executable_target(c, triple) for c in cpus)
    return f'#hal.device.target<"local", [{targets}]>'


@functools.lru_cache(maxsize=16)
def _device_select(device_flags: tuple[str, ...]) -> str:
    """The ``#hal.device.select<[...]>`` IREE builds for several target devices (a probe compile
    with ``device_flags``: ``--iree-hal-target-device=local,cuda,...`` and the GPU arch flags)."""
    import iree.compiler as ic

    text = ic.compile_str(_PROBE, input_type="stablehlo", extra_args=[*device_flags, "--compile-to=executable-sources"])
    text = text.decode() if isinstance(text, bytes) else text
    key = "#hal.device.select<"
    i = text.find(key)
    if i < 0:  # pragma: no cover - IREE changed its text form
        raise RuntimeError("could not read IREE's device selection for several targets")
    return text[i : _closing(text, i + len(key) - 1)]


def device_targets_attr(cpus: tuple[str, ...], triple: str | None, device_flags: tuple[str, ...] = ()) -> str:
    """The module's ``hal.device.targets``: the CPU variants as the ``local`` device, alone or,
    where ``device_flags`` name several target devices, in IREE's selection among them."""
    local = _local_device(cpus, triple)
    if not any(f.startswith("--iree-hal-target-device=") for f in device_flags):
        return f"hal.device.targets = [{local} : !hal.device]"
    select = _device_select(device_flags)
    key = '#hal.device.target<"local", ['
    j = select.find(key)
    if j < 0:  # pragma: no cover - the flags always name local with several CPU variants
        raise RuntimeError("the device selection has no local device to put the CPU variants in")
    k = _closing(select, j + len("#hal.device.target"))
    return f"hal.device.targets = [{select[:j]}{local}{select[k:]} : !hal.device]"


def with_device_targets(mlir: str, cpus: tuple[str, ...], triple: str | None, device_flags: tuple[str, ...] = ()) -> str:
    """``mlir`` (a ``module @name {``) with the CPU variants as its (local) device targets."""
    head, sep, rest = mlir.partition(" {\n")
    if not head.startswith("module @") or "attributes" in head:
        raise ValueError("with_device_targets expects a module without attributes")
    return f"{head} attributes {{{device_targets_attr(cpus, triple, device_flags)}}}{sep}{rest}"


def condition_region(features: list[str]) -> str:
    lines = ["      hal.executable.condition(%device: !hal.device) -> i1 {"]
    if not features:
        lines += ["        %true = arith.constant true", "        hal.return %true : i1", "      }"]
        return "\n".join(lines) + "\n"
    acc = None
    for i, f in enumerate(features):
        lines.append(
            f'        %ok{i}, %has{i} = hal.device.query<%device : !hal.device> key("hal.cpu" :: "{f}") : i1, i1 = false'
        )
        if acc is None:
            acc = f"%has{i}"
        else:
            lines.append(f"        %all{i} = arith.andi {acc}, %has{i} : i1")
            acc = f"%all{i}"
    lines += [f"        hal.return {acc} : i1", "      }"]
    return "\n".join(lines) + "\n"


def required_features(cpu_features: str) -> list[str]:
    """The queryable features a variant was compiled to use (``+avx512f,...`` -> ``[avx512f]``)."""
    on = {f[1:] for f in cpu_features.split(",") if f.startswith("+")}
    return [f for f in QUERY_FEATURES if f in on]


def add_conditions(sources: str, cpus: tuple[str, ...]) -> str:
    """Adds a feature condition to every llvm-cpu variant except the fallback (the last CPU)."""
    fallback = cpus[-1]
    out = []
    for line in sources.splitlines(keepends=True):
        out.append(line)
        m = _VARIANT_RE.match(line)
        if m and m.group(1) != fallback:
            if not line.rstrip().endswith("{"):  # pragma: no cover - IREE changed its text form
                raise RuntimeError("unexpected hal.executable.variant form; cannot add a condition")
            out.append(condition_region(required_features(m.group(2))))
    return "".join(out)


# Flags that choose devices and their GPU architectures: they shape the device selection the
# CPU variants go into, and are then carried by the module attribute, not passed again.
_DEVICE_FLAG_PREFIXES = (
    "--iree-hal-target-device=",
    "--iree-hal-local-target-device-backends=",
    "--iree-cuda-target=",
    "--iree-vulkan-target=",
    "--iree-rocm-target=",
    "--iree-hip-target=",
    "--iree-metal-",
)


def compile_variants(mlir: str, cpus: tuple[str, ...], triple: str | None, extra: list[str]) -> bytes:
    """Compiles ``mlir`` with one executable variant per CPU in ``cpus`` (best first); where
    ``extra`` names several target devices (``--iree-hal-target-device=local,cuda,vulkan``),
    the variants are the ``local`` one's and the GPU devices keep IREE's own targets."""
    import iree.compiler as ic

    device_flags = tuple(f for f in extra if f.startswith(_DEVICE_FLAG_PREFIXES))
    extra = [f for f in extra if f not in device_flags]
    staged = with_device_targets(mlir, cpus, triple, device_flags)
    sources = ic.compile_str(staged, input_type="stablehlo", extra_args=["--compile-to=executable-sources", *extra])
    sources = sources.decode() if isinstance(sources, bytes) else sources
    conditioned = add_conditions(sources, cpus)
    return ic.compile_str(
        conditioned,
        extra_args=["--compile-from=executable-sources", "--iree-hal-link-executables=false", *extra],
    )
