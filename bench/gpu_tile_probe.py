"""Experiment: wider CUDA workgroups for the element-wise step (fifteenth pass, docs/performance.md).

IREE 3.13 configures a fixed-length element-wise step for CUDA with 32-thread workgroups of
128 elements (``thread = [4], workgroup = [128]``: one warp, 4-wide vector loads), and no flag or
tuning spec changes that (ninth pass). A 32-thread block caps a streaming kernel's occupancy at
half an SM (at most 32 resident blocks), and at 1e7 the kernel reaches ~2700 GB/s against
~2930 at 1e8 (fourteenth pass). ``--iree-hal-substitute-executable-configurations-from`` replaces
an executable's configuration before codegen: ``build`` compiles each case twice, the second
time with every 1-D ``TileAndFuse`` configuration rewritten to ``workgroup = [W]``,
``thread = [T]`` (``W / T`` threads). ``W`` must divide the length, or IREE falls back to scalar
loads (checked here in the PTX: every case must keep its ``ld.global.nc.v4``).

The same probe times a **split count** (``split_count``): the step's kernel otherwise waits for a
1-thread dispatch that increments the step count, a dependent launch on every step.

``run`` (on the device host) checks each variant's parameters after 5 steps against the 128-wide
module of the same length (the element-wise math is the same: bit-identical expected) and times
steps through the runtime with its defaults (``order="stream"`` on CUDA), beside torch fused Adam
and ``jax.jit(optax)`` of the same length, in one process, ``--rounds`` times each.

Outcome on an H200 (docs/performance.md, fifteenth pass): neither pays; neither is adopted.

    python bench/gpu_tile_probe.py build out/gpu-tiles                    # here (compiler)
    python bench/gpu_tile_probe.py run out/gpu-tiles --out OUT            # there (cuda)
"""

from __future__ import annotations

import contextlib
import json
import pathlib
import re
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402

import _common as C  # noqa: E402

# (length, workgroup elements, elements per thread, split count); (W, T) = (128, 4) is IREE's own
# choice. The fifteenth pass's first H200 run timed 1000064/1000448, 1e7, 10000384 and 1e8 with
# W from 128 to 3200: only ~1e6 moved (0.78-0.88x with 512-1664), within noise or slower above.
CASES = [
    (1000448, 128, 4, False), (1000448, 512, 4, False), (1000448, 1024, 4, False), (1000448, 1024, 8, False),
    (1000448, 128, 4, True), (1000448, 1024, 8, True),
    (10**7, 128, 4, False), (10**7, 640, 4, False), (10**7, 128, 4, True),
    (10**8, 128, 4, False), (10**8, 128, 4, True),
]
_CONFIG = re.compile(r"lowering_config<\{thread = \[4\], workgroup = \[128\]\}>")
_WG = "TileAndFuse> workgroup_size = [32, 1, 1]"


def rewrite(text: str, wg: int, per_thread: int) -> str | None:
    """A configured executable with its 1-D element-wise tile widened, or None when it has none."""
    if not _CONFIG.search(text) or _WG not in text:
        return None
    text = _CONFIG.sub(f"lowering_config<{{thread = [{per_thread}], workgroup = [{wg}]}}>", text)
    return text.replace(_WG, f"TileAndFuse> workgroup_size = [{wg // per_thread}, 1, 1]")


@contextlib.contextmanager
def split_count():
    """Adam traced with its bias corrections computed from the old count inside the kernel.

    ``t = min(count, max - 1) + 1`` equals ``safe_increment(count)`` for every int32 count but is
    written with other ops, so IREE does not merge the two: the element-wise kernel no longer
    depends on the 1-thread dispatch that writes the new count (IREE gives the new count a buffer
    of its own, the old one being read by the kernel, instead of copying it into place).
    """
    import jax.numpy as jnp

    from polaris._src import adam as A
    from polaris._src import tree_utils as tu

    old = {}
    moments, correction = A.adam_moments, tu.bias_correction

    def adam_moments(updates, state, b1, b2):
        old["count"] = state.count
        return moments(updates, state, b1, b2)

    def bias_correction(m, decay, count):
        del count
        c = old["count"]
        return correction(m, decay, (jnp.minimum(c, jnp.iinfo(tu.COUNT_DTYPE).max - 1) + 1).astype(tu.COUNT_DTYPE))

    A.adam_moments, tu.bias_correction = adam_moments, bias_correction
    try:
        yield
    finally:
        A.adam_moments, tu.bias_correction = moments, correction


def _label(n: int, wg: int, t: int, split: bool = False) -> str:
    return f"adam-{n}-w{wg}-t{t}{'-split' if split else ''}"


def parse_cases(text: str) -> list[tuple[int, int, int, bool]]:
    """``"N:W:T[:split],..."`` (``N`` may be written ``1e7``)."""
    cases = []
    for c in filter(None, text.split(",")):
        n, wg, t, *split = c.split(":")
        cases.append((int(float(n)), int(wg), int(t), split == ["split"]))
    return cases


def build(folder: pathlib.Path, target: str, cases=None) -> None:
    import dataclasses

    from polaris_compiler import CompileOptions, Target

    folder.mkdir(parents=True, exist_ok=True)
    base = CompileOptions(target=Target.parse(target), asynchronous=True)
    index = {"target": target, "versions": C.versions("iree-base-compiler", "jax", "polaris-iree"), "cases": []}

    def compile_(n, extra, split):
        with split_count() if split else contextlib.nullcontext():
            return C.compile_bench_optimizer("adam", n, dataclasses.replace(base, extra_args=tuple(extra)))

    for n, wg, t, split in cases or CASES:
        if n % wg:
            raise SystemExit(f"{wg} does not divide {n}")
        with tempfile.TemporaryDirectory() as tmp:
            conf, subs, ptx = (pathlib.Path(tmp, d) for d in ("conf", "subs", "ptx"))
            subs.mkdir()
            changed = 0
            if (wg, t) != (128, 4) and target == "cuda":
                compile_(n, [f"--iree-hal-dump-executable-configurations-to={conf}"], split)
                for f in conf.glob("configured_*.mlir"):
                    new = rewrite(f.read_text(), wg, t)
                    if new is not None:  # named as the executable: configured_<module>_<executable>.mlir
                        exe = f.stem.split("_", 2)[2]
                        (subs / f"{exe}.mlir").write_text(new)
                        changed += 1
                if not changed:
                    raise SystemExit(f"no 1-D element-wise configuration found at {n}")
            extra = [f"--iree-hal-substitute-executable-configurations-from={subs}"] if changed else []
            if target == "cuda":
                extra.append(f"--iree-hal-dump-executable-binaries-to={ptx}")
            art = compile_(n, extra, split)
            vec = scalar = 0
            for p in ptx.glob("*.ptx"):
                text = p.read_text()
                vec += text.count("ld.global.nc.v4")
                scalar += len(re.findall(r"ld\.global\.nc\.(?:b|f)32", text))
        fname = _label(n, wg, t, split) + ".vmfb"
        art.save(folder / fname)
        index["cases"].append({"n": n, "wg": wg, "t": t, "split": split, "file": fname, "rewritten": changed,
                               "ptx_v4_loads": vec, "ptx_scalar_loads": scalar})
        C.say(f"  {fname}: {changed} executables rewritten, PTX v4 loads {vec}, scalar {scalar}")
        if target == "cuda" and not vec:
            raise SystemExit(f"{fname}: no vector loads in the PTX")
    (folder / "index.json").write_text(json.dumps(index, indent=1) + "\n")


def _case_label(case: dict) -> str:
    split = ", split count" if case.get("split") else ""
    return f"polaris w{case['wg']} t{case['t']} ({case['wg'] // case['t']} threads{split})"


def run(folder: pathlib.Path, out: pathlib.Path, device: str, repeats: int, target_s: float, rounds: int = 2) -> int:
    """Every case and peer, ``rounds`` times through (the order reversed every other round)."""
    import gpu as G
    from gpu_percall import _measure

    index, info, on_gpu = C.probe_start(folder, out, device, rounds, G.gpu_name)
    rows, ok = [], True
    rng = np.random.default_rng(11)
    for n in sorted({c["n"] for c in index["cases"]}):
        p = rng.standard_normal(n, dtype=np.float32)
        g = rng.standard_normal(n, dtype=np.float32) * np.float32(1e-3)
        cases = [c for c in index["cases"] if c["n"] == n]
        group, ref = {}, None
        for case in cases:  # correctness: 5 steps each, against the first (IREE's own tile)
            row = group[case["file"]] = {k: case[k] for k in ("n", "wg", "t", "ptx_v4_loads", "ptx_scalar_loads")}
            row.update(case=_case_label(case), split=bool(case.get("split")), steps=[])
            try:
                got, _ = G.run_steps(folder / case["file"], device, p, g, 5)
                ref = got if ref is None else ref
                row["max_abs_diff"] = float(np.max(np.abs(got - ref)))
                ok = ok and row["max_abs_diff"] == 0.0
            except Exception as e:  # a failing case is a result
                row["error"] = f"{type(e).__name__}: {e}"[:300]
                ok = False
            G._free()
        make = {key: (lambda key=key: G.polaris_peer(folder / key, device, p, g)) for key in group}
        peers = {"jax.jit(optax)": lambda: G.jax_peer("adam", "gpu" if on_gpu else "cpu", p, g)}
        if on_gpu:
            peers["torch fused"] = lambda: G.torch_peer("adam", "fused", p, g)
        for label in peers:
            group[label] = {"n": n, "case": label, "steps": []}
        ok = C.time_in_rounds(group, {**make, **peers}, rounds, lambda t: _measure(t, repeats, target_s)["step"],
                              G._free, may_fail=tuple(peers)) and ok
        for row in group.values():
            rows.append(row)
            C.say(f"  {C.fmt_size(n)} {row['case']}: " + (row.get("error") or ", ".join(C.fmt_time(s) for s in row["steps"])))
        C.write_json(out / "tiles.json", {"info": info, "rows": rows})
    lines = [f"# Wider CUDA workgroups and a split count for Adam's step: {info['date']}, {info['gpu']} ({device})", "",
             f"- runtime side: {info['versions']}; modules built with {info['built_with']}",
             "- Adam `--size N --async`, the runtime's default order; step: (N steps + one sync) / N, median of "
             f"{repeats} repeats; each case timed {rounds} times, the cases' order reversed every other round",
             "- GB/s: 28 bytes a parameter / the median step; diff: max |params - the first module's| after 5 steps", "",
             "| params | case | step (median) | each round | GB/s | x IREE's tile | x torch fused | x jax | diff |",
             "|---|---|---|---|---|---|---|---|---|"]
    for n in sorted({r["n"] for r in rows}):
        group = [r for r in rows if r["n"] == n]
        at = {r["case"]: r.get("step") for r in group}
        base = next((r.get("step") for r in group if r.get("wg") == 128 and not r.get("split")), None)
        for r in group:
            diff = "" if "max_abs_diff" not in r else format(r["max_abs_diff"], ".1e")
            lines.append(C.step_row(n, r, 28, [base if "wg" in r else None, at.get("torch fused"), at.get("jax.jit(optax)")], diff))
    (out / "tiles.md").write_text("\n".join(lines) + "\n")
    print((out / "tiles.md").read_text())
    return 0 if ok else 1


def main(argv=None) -> int:
    ap, b, _ = C.build_run_parser(__doc__, "compile the variants (here)", "time them (on the device host)", rounds=2)
    b.add_argument("--target", default="cuda", help="cuda, or llvm-cpu for a dry run (no rewriting)")
    b.add_argument("--cases", type=parse_cases, default=None, help="N:W:T[:split],... instead of CASES")
    return C.probe_main(ap, argv, lambda a: build(a.folder, a.target, a.cases), run)


if __name__ == "__main__":
    raise SystemExit(main())
