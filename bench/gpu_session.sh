#!/usr/bin/env bash
# The GPU session in one command, on the device host (IREE runtime, numpy, torch, jax; no compiler).
# What each result decides: docs/gpu-session.md.
# Here first:   make gpu-modules          (builds out/gpu-check, out/gpu-modules, out/gpu-profile, out/gpu-count, out/gpu-percall)
#               ../shared/gpu/prepare.sh  (puts the runtime wheel in .whl/, the Vulkan loader in .gl/)
# There:        <the PREAMBLE line> bash bench/gpu_session.sh
#               with carry = [".whl", ".gl", "out/gpu-check", "out/gpu-modules", "out/gpu-count"], timeout_s ~500
# Writes everything to $R (/tmp/polaris-gpu) and packs it into $OUT/results.tgz, after every run
# (the device tool returns at most 8 files; a cut-off session keeps what finished): check.log
# (host facts first), stress/stress.{md,json} (bench/gpu_stream_stress.py: how often each stream
# order fails: the ring (the CUDA default since the nineteenth pass) and the one-semaphore order
# that failed, beside bounded fences),
# check/gpu-check.{md,json} (correctness on local-task, cuda, vulkan),
# bench.log, bench/<date>-<gpu>-gpu.{md,json} (timings vs torch, jax: every element-wise
# optimizer's any-length, --size and --size --async modules, the stream-ordered async peers with
# their check against fences); bench/gpu_verify.py's catalog table goes to check.log. Answered
# and left out (docs/gpu-session.md): bench/gpu_async.py (the async-external A/B) and
# bench/gpu_tile_probe.py (wider workgroups, a split count) since the fifteenth pass;
# bench/gpu_profile.py (LAMB's tree levels at once) since the seventeenth; bench/gpu_count_probe.py
# (Adam's count in two buffers: 0.88x torch fused at 1e7 through the runtime on an H100) since the
# nineteenth. 480 s in all: a session has 900 s of device time, the machine's start included.
# Unpack here: tar xzf results.tgz -C DIR.
# Flat LAMB is left out of the timings: its scatter takes ~1 s a step at 1e7 (docs/performance.md).
set -uo pipefail
OUT=${OUT:-out/gpu-results}
R=${R:-/tmp/polaris-gpu}
mkdir -p "$OUT" "$R"
pack() { tar czf "$OUT/results.tgz" -C "$R" . 2>/dev/null; }
{ nvidia-smi; python3 -c "import iree.runtime, numpy; print('iree', iree.runtime.__file__)"; } > "$R/check.log" 2>&1
# the stream order under stress (the one-semaphore order failed once on an H200, seventeenth pass;
# the ring, the CUDA default since the nineteenth, never failed on an H100): 4 trials of each of stream, fences, stream-1sem, 1e5 steps at 1000064, a process each: ~70 s
timeout 120 python3 bench/gpu_stream_stress.py run out/gpu-count/adam-1000064-spare-counts.vmfb --out "$R/stress" --steps 100000 --trials 4 --timeout 25 > "$R/stress.log" 2>&1
echo "stress exit $?" | tee -a "$R/stress.log"; pack
timeout 150 python3 bench/gpu_check.py run out/gpu-check --out "$R/check" --timeout 45 >> "$R/check.log" 2>&1
echo "gpu_check exit $?" | tee -a "$R/check.log"; pack
# (Adam and SGD with momentum, --repeats 11: the sixteenth pass's 90 s for the count probe came
# from here and from gpu_check; AdamW and Lion were measured on the H200 and behave like these;
# the report is rewritten after every group, so a cut keeps what was measured)
timeout 170 python3 bench/gpu.py --modules out/gpu-modules --out "$R/bench" --optimizers adam,sgd_momentum --repeats 11 > "$R/bench.log" 2>&1
echo "gpu bench exit $?" | tee -a "$R/bench.log"; pack
# the shipped catalog's CUDA modules against its x86_64 ones (bench/gpu_verify.py), into check.log
timeout 40 python3 bench/gpu_verify.py --out /tmp/polaris-verify --device cuda >> "$R/check.log" 2>&1
echo "catalog check exit $?" | tee -a "$R/check.log"; pack
tail -n 40 "$R/stress/stress.md" "$R/check/gpu-check.md" "$R"/bench/*.md 2>/dev/null
