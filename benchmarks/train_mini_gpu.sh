#!/bin/bash
# The mini model's training run on one GPU (the device machine), as the README records it:
#   1. the seeded training run, its two stages given VAE_SECONDS and SECONDS (each times its first steps and
#      prints the step count that fills its budget: that count reproduces the run with --vae-steps/--steps);
#   2. the folder packed to $OUT in parts of at most 15 MB, a strip of frames of a few held-out prompts,
#   3. with a VAE stage, its latent geometry (mini_vae_latents.py); a dense prompt_match check at both presets.
# Usage (repo root, on the GPU machine): VAE_SECONDS=100 SECONDS_T=360 bash benchmarks/train_mini_gpu.sh [train args]
# (VAE_SECONDS=0 with --init FOLDER: no VAE stage, the transformer and text encoder continue from FOLDER;
#  PM_SET="--set generation.frames=9 --set generation.height=32 --set generation.width=32" scores the mini check at
#  the shape a segment trained at, for a segment at a small --mini-shape; MINI_DIR=/tmp/mini-a writes the folder
#  there, so a second call of this script in the same command can --init from it; PM_TIMEOUT (s, default 120)
#  bounds the mini check; LOOK=0, PM=0 and PM_LARGE=0 skip
#  the strip, the mini check and the mini-large check (PM_LARGE_PAIRS pairs, default 16, within PM_LARGE_TIMEOUT s),
#  for a segment at a small shape; WORD_GAP=1 adds the word-swap loss table of mini_word_gap.py, on the CPU)
set -u
OUT=${OUT:-/tmp/out}
MINI_DIR=${MINI_DIR:-/tmp/mini}
mkdir -p "$OUT"
source benchmarks/gpu_env.sh
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
echo "=== training ($(date +%T))"
VAE_ARGS=(--vae-seconds "${VAE_SECONDS:-100}")
[ "${VAE_SECONDS:-100}" = 0 ] && VAE_ARGS=()
python3 -m xattn_video.mini.train --out $MINI_DIR "${VAE_ARGS[@]}" --seconds "${SECONDS_T:-360}" \
  --log-every 100 "$@" 2>&1 | grep -v "should be kept\|Writing model" | tee "$OUT/train.log"
cp $MINI_DIR/training.json "$OUT/training.json"
tar -C "$(dirname "$MINI_DIR")" -cf - "$(basename "$MINI_DIR")" | split -b 15M - "$OUT/mini.tar.part-"
if [ "${VAE_SECONDS:-100}" != 0 ]; then  # a new VAE: is its latent colour geometry sound? (mini_vae_latents.py)
  echo "=== VAE latents ($(date +%T))"
  timeout 120 python3 benchmarks/mini_vae_latents.py $MINI_DIR --pairs 8 --out-dir "$OUT" --name vae 2>&1 | grep -v Warn | tail -3
fi
echo "=== look + prompt_match ($(date +%T))"
[ "${LOOK:-1}" = 0 ] || XVID_MINI_WEIGHTS=$MINI_DIR timeout 35 python3 benchmarks/mini_look.py --out "$OUT/look.png" 2>&1 | grep -v Warn | tail -3
[ "${PM:-1}" = 0 ] || XVID_MINI_WEIGHTS=$MINI_DIR timeout ${PM_TIMEOUT:-120} python3 benchmarks/mini_prompt_match.py --model mini --pairs 32 --guidance ${PM_GUIDANCE:-1 4} ${PM_SET:-} \
  --why --out-dir "$OUT" --name pm-mini 2>&1 | grep -v Warn | tail -9
[ "${PM_LARGE:-1}" = 0 ] || XVID_MINI_WEIGHTS=$MINI_DIR timeout ${PM_LARGE_TIMEOUT:-90} python3 benchmarks/mini_prompt_match.py --model mini-large --pairs ${PM_LARGE_PAIRS:-16} --guidance 1 \
  --why --out-dir "$OUT" --name pm-large 2>&1 | grep -v Warn | tail -8
[ "${WORD_GAP:-0}" = 0 ] || timeout 200 python3 benchmarks/mini_word_gap.py --weights $MINI_DIR --clips 24 --out-dir "$OUT" \
  --name "$(basename "$MINI_DIR")" 2>&1 | grep "^| 0"
ls -la "$OUT"
echo "=== done $(date +%T)"
