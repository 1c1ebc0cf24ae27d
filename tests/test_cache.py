"""The content-addressed compile cache behind `polaris compile`."""

from __future__ import annotations

import hashlib

from click.testing import CliRunner

from polaris.cli.__main__ import cli
from polaris_compiler import cache


def test_second_identical_compile_comes_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("POLARIS_CACHE_DIR", str(tmp_path / "cache"))
    runner = CliRunner()
    first = runner.invoke(cli, ["compile", "sgd", "momentum=0.9", "-o", str(tmp_path / "a.vmfb")])
    assert first.exit_code == 0, first.output
    assert "[3/3] wrote" in first.stderr and "cache" not in first.stderr.lower()
    second = runner.invoke(cli, ["compile", "sgd", "momentum=0.9", "-o", str(tmp_path / "b.vmfb")])
    assert second.exit_code == 0
    assert "came from the compile cache" in second.stderr
    assert (tmp_path / "a.vmfb").read_bytes() == (tmp_path / "b.vmfb").read_bytes()
    # another option, another key
    third = runner.invoke(cli, ["compile", "sgd", "momentum=0.5", "-o", str(tmp_path / "c.vmfb")])
    assert "[3/3] wrote" in third.stderr
    # --no-cache compiles again
    fourth = runner.invoke(cli, ["compile", "sgd", "momentum=0.9", "--no-cache", "-o", str(tmp_path / "d.vmfb")])
    assert "[3/3] wrote" in fourth.stderr


def test_a_cache_hit_repeats_the_notes_of_the_compile(tmp_path, monkeypatch):
    """A module served from the cache is the same module: the notes on its speed (here the flat
    LAMB module's per-tensor scatter) are said again, not only the first time."""
    monkeypatch.setenv("POLARIS_CACHE_DIR", str(tmp_path / "cache"))
    runner = CliRunner()
    args = ["compile", "lamb", "--max-segments", "8", "-o", str(tmp_path / "l.vmfb")]
    first, second = runner.invoke(cli, args), runner.invoke(cli, args)
    assert first.exit_code == 0 and second.exit_code == 0, first.output + second.output
    notes = [line for line in first.stderr.splitlines() if line.startswith("note: ")]
    assert notes and "sums per tensor with a scatter" in notes[-1]
    assert "came from the compile cache" in second.stderr
    assert [line for line in second.stderr.splitlines() if line.startswith("note: ")] == notes


def test_layout_file_contents_are_part_of_the_key(tmp_path, monkeypatch):
    monkeypatch.setenv("POLARIS_CACHE_DIR", str(tmp_path / "cache"))
    layout = tmp_path / "l.json"
    layout.write_text('{"w": [3]}')
    runner = CliRunner()
    assert runner.invoke(cli, ["compile", "adam", "--layout", str(layout), "-o", str(tmp_path / "1.vmfb")]).exit_code == 0
    layout.write_text('{"w": [4]}')
    r = runner.invoke(cli, ["compile", "adam", "--layout", str(layout), "-o", str(tmp_path / "2.vmfb")])
    assert "[3/3] wrote" in r.stderr


def test_damaged_entries_are_misses(tmp_path, monkeypatch):
    monkeypatch.setenv("POLARIS_CACHE_DIR", str(tmp_path))
    key = cache.request_key({"x": 1})
    cache.put(key, b"module-bytes", {"output": "m.vmfb"})
    data, info = cache.get(key)
    assert data == b"module-bytes" and info["sha256"] == hashlib.sha256(data).hexdigest()
    (tmp_path / key[:2] / f"{key}.vmfb").write_bytes(b"module-bytez")
    assert cache.get(key) is None
    monkeypatch.setenv("POLARIS_NO_CACHE", "1")
    cache.put(key, b"x")
    assert cache.get(key) is None


def test_keys_cover_versions_and_sources(tmp_path):
    k1 = cache.request_key({"optimizer": "adam"})
    assert k1 == cache.request_key({"optimizer": "adam"})
    assert k1 != cache.request_key({"optimizer": "adamw"})
    assert len(cache.source_digest()) == 64


def test_a_cache_hit_imports_neither_jax_nor_iree_nor_numpy(tmp_path):
    """The cache-hit budget (0.3 s, issue 6) leaves no room for heavy imports: the cache writes
    through ``polaris_runtime.fileio``, whose package loads its names lazily for that reason."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "POLARIS_CACHE_DIR": str(tmp_path / "cache")}
    args = ["compile", "sgd", "-o", str(tmp_path / "a.vmfb")]
    subprocess.run([sys.executable, "-m", "polaris.cli", *args], env=env, check=True, capture_output=True, timeout=300)
    script = (
        "import runpy, sys\n"
        f"sys.argv = ['polaris', *{args!r}]\n"
        "try:\n"
        "    runpy.run_module('polaris.cli', run_name='__main__')\n"
        "except SystemExit as e:\n"
        "    assert not e.code, e.code\n"
        "names = {m if m.startswith('iree.') else m.split('.')[0] for m in sys.modules}\n"
        "print(sorted(names & {'jax', 'numpy', 'iree.runtime', 'iree.compiler'}))\n"
    )
    r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "came from the compile cache" in r.stderr
    assert r.stdout.splitlines()[-1] == "[]", r.stdout
