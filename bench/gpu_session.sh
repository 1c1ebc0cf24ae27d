#!/usr/bin/env bash
# The GPU session in one command, on the device host (IREE runtime, numpy, torch, jax; no compiler).
# Here first:   make gpu-modules          (builds out/gpu-check and out/gpu-modules)
#               ../shared/gpu/prepare.sh  (puts the runtime wheel in .whl/, the Vulkan loader in .gl/)
# There:        <the PREAMBLE line> bash bench/gpu_session.sh
#               with carry = [".whl", ".gl", "out/gpu-check", "out/gpu-modules"]
# Writes $OUT/check (correctness on local-task, cuda, vulkan) and $OUT/bench (timings vs torch, jax).
set -uo pipefail
OUT=${OUT:-out/gpu-results}
mkdir -p "$OUT"
{ nvidia-smi; python3 -c "import iree.runtime, numpy; print('iree', iree.runtime.__file__)"; } > "$OUT/host.txt" 2>&1
timeout 280 python3 bench/gpu_check.py run out/gpu-check --out "$OUT/check" --timeout 45 > "$OUT/check.log" 2>&1
echo "gpu_check exit $?" | tee -a "$OUT/check.log"
timeout 250 python3 bench/gpu.py --modules out/gpu-modules --out "$OUT/bench" > "$OUT/bench.log" 2>&1
echo "gpu bench exit $?" | tee -a "$OUT/bench.log"
tail -n 40 "$OUT/check/gpu-check.md" "$OUT"/bench/*.md 2>/dev/null
