#!/usr/bin/env bash
# The GPU session in one command, on the device host (IREE runtime, numpy, torch, jax; no compiler).
# What each result decides: docs/gpu-session.md.
# Here first:   make gpu-modules          (builds out/gpu-check and out/gpu-modules)
#               ../shared/gpu/prepare.sh  (puts the runtime wheel in .whl/, the Vulkan loader in .gl/)
# There:        <the PREAMBLE line> bash bench/gpu_session.sh
#               with carry = [".whl", ".gl", "out/gpu-check", "out/gpu-modules"], timeout_s ~570
# Writes 8 files (the device tool returns at most 8): $OUT/check.log (host facts first),
# $OUT/check/gpu-check.{md,json} (correctness on local-task, cuda, vulkan), $OUT/bench.log,
# $OUT/bench/<date>-<gpu>-gpu.{md,json} (timings vs torch, jax), $OUT/async/async.{md,json}
# (bench/gpu_async.py: the async-external A/B, with and without the step's transient, and the read-back bandwidth);
# bench/gpu_verify.py's catalog table goes to $OUT/check.log.
# Flat LAMB is left out of the timings: its scatter takes ~1 s a step at 1e7 (docs/performance.md).
set -uo pipefail
OUT=${OUT:-out/gpu-results}
mkdir -p "$OUT"
{ nvidia-smi; python3 -c "import iree.runtime, numpy; print('iree', iree.runtime.__file__)"; } > "$OUT/check.log" 2>&1
timeout 210 python3 bench/gpu_check.py run out/gpu-check --out "$OUT/check" --timeout 45 >> "$OUT/check.log" 2>&1
echo "gpu_check exit $?" | tee -a "$OUT/check.log"
timeout 170 python3 bench/gpu.py --modules out/gpu-modules --out "$OUT/bench" --optimizers adam,adamw,sgd_momentum,lion > "$OUT/bench.log" 2>&1
echo "gpu bench exit $?" | tee -a "$OUT/bench.log"
timeout 110 python3 bench/gpu_async.py --modules out/gpu-modules --out "$OUT/async" >> "$OUT/bench.log" 2>&1
echo "gpu async exit $?" | tee -a "$OUT/bench.log"
# the shipped catalog's CUDA modules against its x86_64 ones (bench/gpu_verify.py), into check.log
timeout 60 python3 bench/gpu_verify.py --out /tmp/polaris-verify --device cuda >> "$OUT/check.log" 2>&1
echo "catalog check exit $?" | tee -a "$OUT/check.log"
tail -n 40 "$OUT/check/gpu-check.md" "$OUT"/bench/*.md "$OUT/async/async.md" 2>/dev/null
