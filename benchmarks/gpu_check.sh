#!/usr/bin/env bash
# GPU check: the speed figures of docs/performance.md on one CUDA GPU, in about 5 minutes (H100/H200).
#
#   bash benchmarks/gpu_check.sh                      # one GPU: cuda, the celebahq-f4 sizes
#   bash benchmarks/gpu_check.sh --device cpu --tiny  # smoke run of every part on a CPU (demo sizes)
#
# Parts (each prints the device line of benchmarks/common.describe_device beside its table):
#   1. celebahq-f4 UNet train step, batch 32: bf16 eager, bf16 channels-last, bf16 compiled, fp32 -> s/step,
#      images/s, MFU against the measured bf16 matmul peak (goal: >= 45% bf16 MFU)
#   2. latent cache: the same step with on-the-fly first-stage encoding vs cached latents
#   3. sampler overhead: every sampler's time per step against the bare UNet forward
#   4. a 2-step main.py run of a tiny latent diffusion model under DDP and under FSDP on this one GPU
# Tables go to $OUT/tables.md (default logs/gpu_check), the full log to $OUT/gpu_check.log.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

DEVICE=cuda
TINY=0
OUT=${OUT:-logs/gpu_check}
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE=$2; shift 2 ;;
    --tiny) TINY=1; shift ;;
    --out) OUT=$2; shift 2 ;;
    *) echo "gpu_check.sh: error: unknown argument $1 (use --device cuda|cpu, --tiny, --out DIR)" >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-python}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 WANDB_MODE=offline
mkdir -p "$OUT"
TABLES="$OUT/tables.md"
LOG="$OUT/gpu_check.log"
: > "$TABLES"
: > "$LOG"

if [ "$TINY" = 1 ]; then
  MODEL=demo; BATCH=2; STEPS=1; UNET_MODES=fp32,bf16; CACHE_STEPS=2; SAMPLER_STEPS=2; ACCEL=cpu; DTYPE=fp32
  SLOW=0  # no time caps (timeout 0): a tiny CPU smoke run on a shared machine is slower than the GPU check
else
  MODEL=celebahq-f4; BATCH=32; STEPS=5; UNET_MODES=bf16,bf16-channels-last,bf16-compiled,fp32; CACHE_STEPS=5
  SAMPLER_STEPS=20; ACCEL=gpu; SLOW=1; DTYPE=bf16
fi
[ "$DEVICE" = cpu ] && ACCEL=cpu

failed=0
part() {  # part "title" timeout_seconds command...
  local title=$1 limit=$2; shift 2
  echo "## $title" | tee -a "$TABLES"
  echo "\$ $*" >> "$TABLES"
  local start=$SECONDS
  timeout $((limit * SLOW)) "$@" > "$OUT/part.out" 2>&1
  local rc=$?
  cat "$OUT/part.out" >> "$LOG"
  grep -E '^(#|\||[a-z_+-]+ +[0-9]|UNet forward|forward at|`Trainer.fit|note:)' "$OUT/part.out" | tee -a "$TABLES"
  if [ $rc -ne 0 ]; then
    failed=1
    echo "FAILED (exit $rc after $((SECONDS - start)) s); last lines:" | tee -a "$TABLES"
    tail -5 "$OUT/part.out" | tee -a "$TABLES"
  else
    echo "($((SECONDS - start)) s)" | tee -a "$TABLES"
  fi
  echo | tee -a "$TABLES"
}

part "UNet train step ($MODEL, batch $BATCH; goal >= 45% bf16 MFU)" 150 \
  "$PY" -m benchmarks.bench_unet --model "$MODEL" --batch "$BATCH" --steps "$STEPS" --device "$DEVICE" \
  --modes "$UNET_MODES"
part "Latent cache vs on-the-fly encoding ($MODEL, bf16-mixed)" 60 \
  "$PY" -m benchmarks.bench_latent_cache --model "$MODEL" --batch "$BATCH" --steps "$CACHE_STEPS" \
  --device "$DEVICE" --precision bf16-mixed
part "Sampler overhead ($MODEL, $DTYPE)" 60 \
  "$PY" -m benchmarks.bench_samplers --model "$MODEL" --batch "$BATCH" --steps "$SAMPLER_STEPS" --device "$DEVICE" \
  --dtype "$DTYPE" --repeats 2
if [ "$ACCEL" = gpu ]; then
  for strategy in ddp fsdp; do
    part "main.py, 2 steps, --strategy $strategy on one GPU" 60 \
      "$PY" main.py -b tests/fixtures/e2e_tiny_ldm.yaml -t -l "$OUT/runs" -n "$strategy" --accelerator gpu \
      --devices 1 --strategy "$strategy" --precision auto --max_steps 2 model.params.use_ema=false
  done
fi

echo "tables written to $TABLES (full log: $LOG)"
exit $failed
