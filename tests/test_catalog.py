"""artifacts/: the committed catalog matches a rebuild byte for byte, and every artifact works."""

from __future__ import annotations

import hashlib
import json
import pathlib

import numpy as np
import pytest

import polaris_runtime as pr
from polaris._src import registry
from polaris_compiler import catalog

from _devices import lavapipe_or_skip

ROOT = pathlib.Path(__file__).resolve().parents[1]
ART = ROOT / "artifacts"
INDEX = catalog.load_index(ART)
ENTRIES = {e["file"]: e for e in INDEX["entries"]}


def test_index_covers_every_optimizer_and_platform():
    want = {catalog.entry_file(o, p) for o in catalog.OPTIMIZERS for p in catalog.PLATFORMS}
    assert set(ENTRIES) == want
    assert INDEX["catalog_version"] == catalog.CATALOG_VERSION


@pytest.mark.parametrize("name", sorted(ENTRIES))
def test_entry_file_hash_and_embedded_manifest_agree_with_the_index(name):
    e = ENTRIES[name]
    data = (ART / name).read_bytes()
    assert hashlib.sha256(data).hexdigest() == e["sha256"]
    m = pr.inspect_module(data)
    assert m.name == e["optimizer"] and m.options == e["options"]
    assert m.schema_version == e["schema_version"] == pr.SCHEMA_VERSION
    assert m.versions == e["versions"] and m.target == e["target"]
    assert m.layout == "flat"


def _assert_rebuilds(only):
    problems = catalog.check(ART, log=lambda *_: None, only=only)
    assert not problems, "catalog differs from a rebuild (run `make artifacts` and commit):\n" + "\n".join(problems)


def test_rebuild_is_byte_identical():
    """`make artifacts` output is committed; a rebuild must reproduce it exactly. `make test`
    rebuilds every optimizer for x86_64 and adam for every platform; the slow test all 35."""
    quick = catalog.quick_entries()
    assert set(quick) < set(ENTRIES) and len(quick) == len(catalog.OPTIMIZERS) + len(catalog.PLATFORMS) - 1
    _assert_rebuilds(quick)


@pytest.mark.slow
def test_every_entry_rebuilds_byte_identical():
    _assert_rebuilds(None)


def test_check_reports_an_entry_that_differs_and_refuses_unknown_names(tmp_path):
    name, other = catalog.entry_file("sgd", "x86_64"), catalog.entry_file("lion", "x86_64")
    entry = dict(ENTRIES[name])
    (tmp_path / name).write_bytes((ART / other).read_bytes())  # another optimizer's code
    entry["sha256"] = ENTRIES[other]["sha256"]
    (tmp_path / "index.json").write_text(json.dumps({**INDEX, "entries": [entry]}))
    problems = catalog.check(tmp_path, log=lambda *_: None, only=[name])
    assert len(problems) == 1 and problems[0].startswith(f"{name}: rebuild differs (")
    entry["sha256"] = "0" * 64  # the file no longer matches its index
    (tmp_path / "index.json").write_text(json.dumps({**INDEX, "entries": [entry]}))
    assert catalog.check(tmp_path, log=lambda *_: None, only=[name]) == [
        f"{name}: the committed file does not match its index sha256"]
    with pytest.raises(ValueError, match=r"only: \['adam-flat-f32-riscv.vmfb'\] are not catalog entries"):
        catalog.check(tmp_path, only=["adam-flat-f32-riscv.vmfb"])


def test_explain_names_what_changed():
    old = {"options": {"b1": 0.9}, "target": {}, "schema_version": 1, "versions": {"iree_compiler": "3.13.0"}}
    new = {"options": {"b1": 0.95}, "target": {}, "schema_version": 1, "versions": {"iree_compiler": "3.14.0"}}
    text = catalog.explain(old, new)
    assert "b1 0.9 -> 0.95" in text and "iree_compiler '3.13.0' -> '3.14.0'" in text
    assert "different code" in catalog.explain(old, old)
    notes = {"segments": {"reduction": "scatter", "notes": ["2-4.7x"]}, "layout": "flat"}
    reworded = {"segments": {"reduction": "scatter", "notes": ["3-5x"]}, "layout": "flat"}
    assert catalog.explain(old, old, notes, reworded) == "the embedded manifest differs in 'segments'"
    assert "different code" in catalog.explain(old, old, notes, dict(notes))


X86 = sorted(n for n, e in ENTRIES.items() if e["platform"] == "x86_64")


@pytest.mark.parametrize("name", X86)
def test_cpu_artifact_matches_the_jax_reference(name):
    import jax

    import polaris

    e = ENTRIES[name]
    spec = registry.get(e["optimizer"])
    options = {k: v for k, v in e["options"].items() if k in spec.defaults()}
    tx = spec.build(**options)
    opt = pr.load(ART / name)
    rng = np.random.default_rng(0)
    p0 = rng.standard_normal(1001).astype(np.float32)
    grads = [rng.standard_normal(1001).astype(np.float32) for _ in range(10)]
    seg = {"segments": np.zeros(1001, np.int32)} if opt.takes_segments else {}  # one tensor
    s = opt.init(p0)
    p = p0
    for g in grads:
        p, s = opt.step(p, g, s, **seg)
    ref_p, ref_s = p0, tx.init(p0)
    step = jax.jit(lambda p, g, s: (lambda u, s2: (polaris.apply_updates(p, u), s2))(*tx.update(g, s, p)))
    for g in grads:
        ref_p, ref_s = step(ref_p, g, ref_s)
    np.testing.assert_allclose(p.numpy(), np.asarray(ref_p), rtol=2e-5, atol=2e-6)


def test_llvmpipe_vulkan_artifacts_run_where_lavapipe_is_installed():
    lavapipe_or_skip("the Vulkan device is not llvmpipe")
    cpu = pr.load(ART / "adam-flat-f32-x86_64.vmfb")
    vk = pr.load(ART / "adam-flat-f32-vulkan-llvmpipe.vmfb")
    p = np.linspace(-1, 1, 4099, dtype=np.float32)
    g = np.cos(np.arange(4099, dtype=np.float32))
    a, sa = cpu.step(p, g, cpu.init(p))
    b, sb = vk.step(p, g, vk.init(p))
    np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-6, atol=1e-7)


def test_index_is_valid_json_with_sorted_keys():
    text = (ART / "index.json").read_text()
    assert json.loads(text) == INDEX
    assert text == json.dumps(INDEX, indent=2, sort_keys=True) + "\n"
