#!/usr/bin/env bash
# One device run for the tasks and generation issues: training throughput (bench_train.py), a real
# Lightning fit of the DNA demo config on the GPU (bf16-mixed, then FSDP on one device), the
# decoding-step kernel profile and the audio generation benchmark, and the CUDA generation tests.
#   run(command="bash benchmarks/device_tasks.sh", carry=[".whl"])
# Knobs: PARTS="train fit gen" (default all), *_TIMEOUT.
set -uo pipefail
OUT=${OUT:-$PWD/device_out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  > "$OUT/pip.log" 2>&1 || { tail "$OUT/pip.log"; exit 1; }
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
PARTS=${PARTS:-train fit gen}
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/device.txt"
has() { [[ " $PARTS " == *" $1 "* ]]; }
if has gen; then
  timeout 60 python3 benchmarks/profile_decode.py 2>&1 | tee "$OUT/profile_decode.txt" | tail -40
  timeout 150 python3 benchmarks/bench_generate.py --device cuda --models audio --batches 1 --skip-naive \
     --audio-samples 16000 --repeats 3 --out "$OUT/generate_audio_b1.json" 2>&1 | grep -v '^{' | tail -8
  timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_generation.py -k cuda 2>&1 | tail -4
fi
if has train; then
  timeout "${TRAIN_TIMEOUT:-200}" python3 benchmarks/bench_train.py --lengths 16,20 --out "$OUT/train_demo.json" 2>&1 | grep -v '^{' | tail -12
  timeout "${TRAIN_TIMEOUT:-200}" python3 benchmarks/bench_train.py --lengths 16,20 --d-model 256 --n-layer 8 \
     --out "$OUT/train_hg38.json" 2>&1 | grep -v '^{' | tail -12
fi
if has fit; then
  for strategy in auto fsdp; do
    root=/tmp/fit_$strategy
    timeout "${FIT_TIMEOUT:-150}" python3 -m longseq.cli fit --config configs/dna_nextbase_demo.yaml \
      --trainer.accelerator gpu --trainer.devices 1 --trainer.strategy $strategy \
      --trainer.default_root_dir $root --trainer.enable_progress_bar false > "$OUT/fit_$strategy.log" 2>&1
    echo "fit strategy=$strategy rc=$?"; grep -iE "precision|error|Trace" "$OUT/fit_$strategy.log" | head -5
    find $root -name metrics.csv -exec cp {} "$OUT/fit_${strategy}_metrics.csv" \;
    python3 - "$OUT/fit_${strategy}_metrics.csv" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
val = [(r["step"], r[k]) for r in rows for k in r if k.startswith("val/bits") and r[k]]
print("val bits/base by step:", val)
PY
  done
fi
