#!/usr/bin/env bash
# The GPU check: the pipeline's CUDA paths in under 8 minutes on one H100, one JSON.
#
#   bench/gpu_check.sh [OUT_DIR]        # default bench/results; writes OUT_DIR/gpu_check.json
#
# 1. bf16-autocast training steps (bench/throughput.py --device cuda, the paper profile's models):
#    the CRNN (baseline) and DANN-CRNN, and a base-size random encoder (wav2vec_dann:
#    random:wav2vec2-base, 95M, full fine-tune + DANN): seconds per step, clips/s, CUDA peak memory.
# 2. QLoRA vs full fine-tune at XLSR-53 size (bench/qlora_memory.py --device cuda,
#    random:wav2vec2-large-xlsr, 315M): peak torch.cuda.max_memory_allocated of a training step,
#    the 4-bit path included (bitsandbytes NF4, bf16 compute).
# 3. Embedding precompute throughput (bench/probe_cache.py --precompute-only, random:wavlm-base on
#    CUDA with bf16 autocast, as the precompute-embeddings stage): seconds per hour of audio.
# Then bench/gpu_summary.py merges the three into gpu_check.json and prints the README's GPU rows.
#
# Without CUDA it exits at once (status 2) and says why. Each step has its own time limit
# (GPU_CHECK_LIMITS="150 210 90" seconds); a step that fails or runs out of time is recorded as
# such and the others still run. GPU_CHECK_SMOKE=1 runs the same steps on the CPU with tiny
# backbones (tests/test_bench.py does, so the script is known to work before GPU time is spent).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-bench/results}"
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
read -r LIMIT_TRAIN LIMIT_QLORA LIMIT_EMBED <<< "${GPU_CHECK_LIMITS:-150 210 90}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

if [ "${GPU_CHECK_SMOKE:-0}" = 1 ]; then
  DEVICE=cpu
  TRAIN_ARGS=(--tiny --models baseline,dann,wav2vec_dann --steps 2 --crnn-steps 2 --n 32)
  QLORA_ARGS=(--preset wav2vec2-tiny --steps 1)
  EMBED_ARGS=(--backbone random:wav2vec2-tiny --precompute-minutes 0.5)
else
  DEVICE=cuda
  if ! "$PY" - <<'EOF'
import shutil, subprocess, sys
import torch
if torch.cuda.is_available():
    sys.exit(0)
gpu = shutil.which("nvidia-smi") and subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode == 0
why = (f"this torch ({torch.__version__}) is a CPU build, but nvidia-smi sees a GPU: install a CUDA build "
       "(e.g. pip install torch==2.14.1)") if gpu else "no CUDA device (torch.cuda.is_available() is False)"
print(f"gpu_check: {why}; nothing run", file=sys.stderr)
sys.exit(2)
EOF
  then
    exit 2
  fi
  TRAIN_ARGS=(--models baseline,dann,wav2vec_dann --steps 5 --crnn-steps 20)
  QLORA_ARGS=(--steps 2)
  EMBED_ARGS=(--backbone random:wavlm-base --precompute-minutes 30)
fi

step() {  # name limit command...: run one step under its time limit, keep its log and exit status
  local name="$1" limit="$2"; shift 2
  local start=$SECONDS
  echo "== $name (limit ${limit} s)"
  timeout --signal=TERM --kill-after=10 "$limit" "$@" > "$WORK/$name.log" 2>&1
  local rc=$?
  tail -n 15 "$WORK/$name.log"
  echo "{\"rc\": $rc, \"seconds\": $((SECONDS - start)), \"limit\": $limit}" > "$WORK/$name.status.json"
}

step train "$LIMIT_TRAIN" "$PY" bench/throughput.py --device "$DEVICE" "${TRAIN_ARGS[@]}" \
  --out "$WORK/train.json"
step qlora "$LIMIT_QLORA" "$PY" bench/qlora_memory.py --device "$DEVICE" --configs full,qlora \
  --checkpointing off "${QLORA_ARGS[@]}" --out "$WORK/qlora.json"
step embed "$LIMIT_EMBED" "$PY" bench/probe_cache.py --precompute-only --precompute-device "$DEVICE" \
  "${EMBED_ARGS[@]}" --out "$WORK/embed.json"
"$PY" bench/gpu_summary.py "$WORK" "$OUT_DIR/gpu_check.json"
