#!/usr/bin/env bash
# The backward's summary-pass tiles at batch 1 (kernel_notes v22): benchmarks/kernel_times.py's
# backward phase once per $LONGSEQ_SCAN_BWD_SUMMARY setting ("BD:BL") and dtype, with the tuner's
# backward configuration of each dtype; the summary kernel has its own row. (The v22 sweep also had
# two chunks loaded ahead and a register cap: docs/benchmarks/scan-v22-summary-ahead.patch.)
#   run(command="bash benchmarks/sweep_bwd_summary.sh")
# Knobs: SUMMARIES, DTYPES, SEQLENS. Writes $OUT/kernel_times.jsonl and $OUT/sweep_bwd_summary.log.
set -uo pipefail
OUT=${OUT:-$PWD/device_out}; mkdir -p "$OUT"; export OUT
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
python3 -c 'import torch, triton; print(torch.cuda.get_device_name(), "torch", torch.__version__, "triton", triton.__version__)'
for dt in ${DTYPES:-float32 bfloat16}; do
  if [ "$dt" = float32 ]; then bwd=t4:8:8:1:32; else bwd=t4:16:4:1:32; fi   # the tuner's picks (v18)
  for s in ${SUMMARIES:-8:16:1 8:8:1 4:16:1 16:8:1 8:32:1}; do
    echo "== $dt backward $bwd, summary $s"
    LONGSEQ_SCAN_BWD_CFGS=$bwd LONGSEQ_SCAN_BWD_SUMMARY=$s python3 benchmarks/kernel_times.py --dtype "$dt" \
      --seqlen ${SEQLENS:-262144 1048576} --phases bwd --reps 5 2>&1 | grep -v '^ *$'
  done
done 2>&1 | tee "$OUT/sweep_bwd_summary.log"
