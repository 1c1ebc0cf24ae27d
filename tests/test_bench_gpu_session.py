"""bench/gpu_session.sh, the one command a GPU session runs: it fits the device tool's 600 s, every
script and module it names exists or is built by `make gpu-modules`, and the shell parses."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
SESSION = (ROOT / "bench/gpu_session.sh").read_text()
RUNS = re.findall(r"^timeout (\d+) python3 (bench/\S+\.py) (.*)$", SESSION, flags=re.M)


def test_the_runs_fit_one_device_command():
    assert len(RUNS) == 4
    # a session has 900 s of device time, the machine's start (30 s to minutes) and a second
    # command included: the runs and the packing after each leave room for both
    assert sum(int(t) for t, _, _ in RUNS) <= 500
    assert RUNS[0][1] == "bench/gpu_stream_stress.py"  # the open question first
    for _, script, _ in RUNS:
        assert (ROOT / script).is_file(), script
    assert subprocess.run(["bash", "-n", str(ROOT / "bench/gpu_session.sh")]).returncode == 0


def test_the_modules_it_runs_are_built_by_make_gpu_modules():
    sys.path.insert(0, str(ROOT / "bench"))
    import gpu_count_probe as P
    import gpu_stream_stress as S

    makefile = (ROOT / "Makefile").read_text()
    for folder in ("out/gpu-check", "out/gpu-modules", "out/gpu-count"):
        assert folder in makefile and folder in SESSION
    (stress,) = [args for _, s, args in RUNS if s == "bench/gpu_stream_stress.py"]
    module = re.search(r"out/gpu-count/(\S+\.vmfb)", stress).group(1)
    assert module in {f"adam-{n}-{kind.replace(' ', '-')}.vmfb" for n in P.SIZES for kind in P.KINDS}
    assert "spare-counts" in module  # the product's step
    assert "--orders" not in stress and S.ORDERS == ("stream", "fences", "stream-1sem")  # all three
