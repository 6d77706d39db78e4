#!/usr/bin/env bash
# One device run for the tasks and generation issues: the decoding-step kernel profile and the audio
# generation benchmark; the GPU tests of training (bf16-mixed Lightning fits, default strategy and
# FSDP), generation and the conv step; training throughput (bench_train.py); optionally (PARTS=fit)
# the full DNA demo config fitted on the GPU. At most 8 files come back from $OUT: keep it that way.
#   run(command="bash benchmarks/device_tasks.sh", carry=[".whl"])
# Knobs: PARTS="gen tests train" (the default), *_TIMEOUT.
set -uo pipefail
OUT=${OUT:-$PWD/device_out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  > /tmp/pip.log 2>&1 || { tail /tmp/pip.log; exit 1; }
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
PARTS=${PARTS:-gen tests train}
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/device.txt"
has() { [[ " $PARTS " == *" $1 "* ]]; }
if has gen; then
  timeout 120 python3 benchmarks/profile_decode.py 2>&1 | tee "$OUT/profile_decode.txt" | tail -40
  timeout 150 python3 benchmarks/bench_generate.py --device cuda --models audio --batches 1 --skip-naive \
     --audio-samples 16000 --repeats 3 --out "$OUT/generate_audio_b1.json" 2>&1 | grep -v '^{' | tail -8
fi
if has tests; then
  timeout "${TEST_TIMEOUT:-240}" python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_generation.py tests/test_gpu_training.py 2>&1 | tail -6
  timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_conv_update.py tests/test_generation.py -k "fused or update" 2>&1 | tail -3
fi
if has train; then
  timeout "${TRAIN_TIMEOUT:-200}" python3 benchmarks/bench_train.py --lengths 16,20 --out "$OUT/train_demo.json" 2>&1 | grep -v '^{' | tail -12
  timeout "${TRAIN_TIMEOUT:-200}" python3 benchmarks/bench_train.py --lengths 16,20 --d-model 256 --n-layer 8 \
     --out "$OUT/train_hg38.json" 2>&1 | grep -v '^{' | tail -12
fi
if has fit; then   # the full DNA demo config on the GPU (bf16-mixed by the CLI's default); logs to stdout
  timeout "${FIT_TIMEOUT:-200}" python3 -m longseq.cli fit --config configs/dna_nextbase_demo.yaml \
    --trainer.accelerator gpu --trainer.devices 1 --trainer.default_root_dir /tmp/fit_gpu \
    --trainer.enable_progress_bar false > /tmp/fit_gpu.log 2>&1
  echo "fit rc=$?"; grep -iE "precision|error" /tmp/fit_gpu.log | head -5
  python3 - /tmp/fit_gpu <<'PY'
import csv, glob, sys
rows = list(csv.DictReader(open(sorted(glob.glob(sys.argv[1] + "/csv/version_*/metrics.csv"))[-1])))
print("val bits/base by step:", [(r["step"], r["val/bits_per_base"]) for r in rows if r.get("val/bits_per_base")])
PY
fi
