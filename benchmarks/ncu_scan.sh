#!/usr/bin/env bash
# Nsight Compute report of the scan kernels (benchmarks/profile_scan.py) at batch 8 (bf16, fp32) and batch 1 (bf16), to $OUT/ncu_*.txt
OUT=${OUT:-$PWD/device_out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu | head -1); echo "ncu=$NCU"
S="--section SpeedOfLight --section ComputeWorkloadAnalysis --section SchedulerStats --section WarpStateStats --section Occupancy --section LaunchStats --section InstructionStats --section MemoryWorkloadAnalysis"
timeout 250 $NCU --clock-control none -k regex:scan_ $S python3 benchmarks/profile_scan.py --batch 8 --seqlen 2048 > $OUT/ncu_b8_bf16.txt 2>&1; echo rc=$?
timeout 120 $NCU --clock-control none -k regex:scan_ $S python3 benchmarks/profile_scan.py --batch 8 --seqlen 2048 --dtype float32 > $OUT/ncu_b8_fp32.txt 2>&1; echo rc=$?
timeout 200 $NCU --clock-control none -k regex:scan_ $S python3 benchmarks/profile_scan.py --batch 1 --seqlen 262144 > $OUT/ncu_b1_bf16.txt 2>&1; echo rc=$?
for f in $OUT/ncu_*.txt; do echo "== $f"; grep -E "scan_.*kernel|Duration|Compute \(SM\) Throughput|Memory Throughput|Issue Slots Busy|No Eligible|Achieved Occupancy|Registers Per|Theoretical Occupancy|Warp Cycles Per Issued" $f | head -80; done
