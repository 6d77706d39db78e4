#!/usr/bin/env bash
# The one device run for the kernels (issue 4): GPU tests, the benchmark (with its autotuning trials
# and the register report), all written to $OUT.
#   run(command="bash benchmarks/device_kernels.sh", carry=[".mamba_src"])
# .mamba_src/ holds mamba_ssm 2.3.2.post1's csrc/selective_scan (from the pip sdist), built in the
# background while the tests run, for the benchmark's comparison. Without $OUT, writes to ./device_out.
# TRITON_PACK=.triton_pack/triton-X.tar.xz (carry that file; made by benchmarks/pack_triton.sh) runs everything on
# that Triton instead of the device's own.
# Knobs: SKIP_TESTS=1, TESTS_K="pytest -k expression", TEST_WORKERS, SKIP_MAMBA=1, SKIP_BENCH=1, SWEEPCFG=1 (SWEEPCFG_ARGS), BENCH_ARGS,
# BENCH_ENVS (below), *_TIMEOUT.
set -uo pipefail
OUT=${OUT:-$PWD/device_out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
if [ -n "${TRITON_PACK:-}" ]; then
  own_ptxas=$(python3 -c 'import os, triton; print(os.path.dirname(triton.__file__))')/backends/nvidia/bin/ptxas-blackwell
  mkdir -p /tmp/triton_pack && tar xJf "$TRITON_PACK" -C /tmp/triton_pack || exit 1
  # a pack made with NO_PTXAS=1 (benchmarks/pack_triton.sh) compiles with the device Triton's ptxas
  [ -e /tmp/triton_pack/triton/backends/nvidia/bin/ptxas-blackwell ] || export TRITON_PTXAS_BLACKWELL_PATH=$own_ptxas
  export PYTHONPATH=$PWD:/tmp/triton_pack TRITON_CACHE_DIR=/tmp/triton_pack_cache   # ahead of site-packages' Triton
fi
export MAMBA_BUILD_DIR=/tmp/mamba_build MAMBA_BUILD_LOG=$OUT/mamba_build.log
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.mem --format=csv | tee "$OUT/device.txt"
python3 -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)' | tee -a "$OUT/device.txt"
if [ -d .mamba_src/selective_scan ] && [ "${SKIP_MAMBA:-0}" != 1 ]; then
  ( timeout "${MAMBA_BUILD_TIMEOUT:-420}" nice python3 benchmarks/build_mamba_ssm.py > "$MAMBA_BUILD_LOG" 2>&1; echo "rc=$?" >> "$MAMBA_BUILD_LOG" ) &
fi
if [ "${SKIP_TESTS:-0}" != 1 ]; then
  # TEST_WORKERS=N: pytest-xdist workers (the device image has it); the tests' time is mostly compiling
  LONGSEQ_AUTOTUNE=0 timeout "${TEST_TIMEOUT:-240}" python3 -m pytest -q -m gpu tests/test_gpu_kernels.py -x -p no:cacheprovider \
     --durations=5 ${TESTS_K:+-k "$TESTS_K"} ${TEST_WORKERS:+-n "$TEST_WORKERS"} 2>&1 | tee "$OUT/gpu_tests.log" | tail -15
fi
# optional: the forward/backward configuration sweep (benchmarks/sweep_scan_cfgs.py), SWEEPCFG=1
if [ "${SWEEPCFG:-0}" = 1 ]; then
  OUT=$OUT timeout "${SWEEPCFG_TIMEOUT:-150}" python3 benchmarks/sweep_scan_cfgs.py ${SWEEPCFG_ARGS:-} 2>&1 | tee "$OUT/sweep_cfgs.log" | grep -v '^{' | tail -40
fi
# BENCH_ENVS="VAR=a VAR=b" runs the benchmark once per setting, in this call (an A/B on one device), to
# scan_VAR_a.json / bench_VAR_a.log; BENCH_TIMEOUT is per run
[ "${SKIP_BENCH:-0}" = 1 ] && BENCH_ENVS=none
for setting in ${BENCH_ENVS:--}; do
  [ "$setting" = none ] && break
  tag="" envs=()
  if [ "$setting" != - ]; then tag="_${setting//[^A-Za-z0-9]/_}"; envs=("$setting"); fi
  echo "== benchmark ${envs[*]:-}"
  env "${envs[@]}" timeout "${BENCH_TIMEOUT:-420}" python3 benchmarks/bench_scan.py --out "$OUT/scan$tag.json" ${BENCH_ARGS:-} 2>&1 \
    | tee "$OUT/bench$tag.log" | grep -v '^{' | tail -30
done
grep -E "Used [0-9]+ registers" "$MAMBA_BUILD_LOG" 2>/dev/null | sort | uniq -c | sort -rn | head -8 > "$OUT/mamba_ptxas.txt" || true
tail -2 "$MAMBA_BUILD_LOG" 2>/dev/null
if [ -n "${LATE_TESTS_K:-}" ]; then   # tests deferred until after the benchmark (e.g. the slow 2^20 one)
  LONGSEQ_AUTOTUNE=0 timeout "${LATE_TEST_TIMEOUT:-120}" python3 -m pytest -q -m gpu tests/test_gpu_kernels.py -x \
     -p no:cacheprovider -k "$LATE_TESTS_K" 2>&1 | tee "$OUT/gpu_tests_late.log" | tail -3
fi
wait
