#!/bin/bash
# The mini weights' training run, `python -m xattn_video.mini.train --recipe grow` (xattn_video/mini/recipe.py), on
# one GPU in device calls of at most 10 minutes: a call trains until LIMIT seconds (default 540), then leaves its
# checkpoint in $OUT as ckpt.part-* (15 MB each) and torch.compile's caches as compile-cache.part-*
# (--compile-cache); the next call is given the folder holding those parts (carried, e.g. .mini-init/ckpt) and
# resumes, from the checkpoint still in /tmp if the machine stayed warm (its compile cache is there too), else from
# the parts, loading the compile caches first so that a fresh machine of the same GPU kind skips most compiling.
# The call that finishes packs the pipeline folder to $OUT/mini.tar.part-*, copies training.json and scores dense
# prompt_match at both presets (32 held-out pairs each, the presets' defaults), all logs in one $OUT/checks.tar (the
# device returns at most 8 files).
# Usage (repo root): LIMIT=540 bash benchmarks/train_mini_recipe_gpu.sh [FOLDER_WITH_CKPT_PARTS]
# (RECIPE=FILE|NAME, default grow; TRAIN_ARGS="..." replaces the default "--compile --latent-reuse 4 --encode-every 8";
#  PM=0 skips the checks, PM=mini or PM=large runs only that preset's: `mini` can be scored on a CPU instead, ~55 min)
set -u
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT" /tmp/recipe-run
source benchmarks/gpu_env.sh
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null
RESUME=()
if [ -n "${1:-}" ] && [ -f /tmp/recipe-run/next.ckpt ]; then
  # the machine stayed warm since the last call: its own checkpoint (and compile cache) are still in /tmp
  mv /tmp/recipe-run/next.ckpt /tmp/recipe-run/resume.ckpt && echo "resuming from this machine's checkpoint"
  RESUME=(--resume /tmp/recipe-run/resume.ckpt)
elif [ -n "${1:-}" ]; then
  cat "$1"/ckpt.part-* > /tmp/recipe-run/resume.ckpt || exit 2
  RESUME=(--resume /tmp/recipe-run/resume.ckpt)
  # a fresh machine: torch.compile's caches from the last call, if it left them (same GPU kind: hits; else misses)
  if ls "$1"/compile-cache.part-* >/dev/null 2>&1; then cat "$1"/compile-cache.part-* > /tmp/recipe-run/compile.cache; fi
fi
rm -rf /tmp/recipe-run/mini /tmp/recipe-run/next.ckpt
echo "=== training ($(date +%T))"
python3 -m xattn_video.mini.train --out /tmp/recipe-run/mini --recipe "${RECIPE:-grow}" ${TRAIN_ARGS:---compile --latent-reuse 4 --encode-every 8} \
  --log-every 100 --time-limit "${LIMIT:-540}" --checkpoint /tmp/recipe-run/next.ckpt \
  --compile-cache /tmp/recipe-run/compile.cache "${RESUME[@]}" 2>&1 \
  | grep -v "should be kept\|Writing model\|Warn" | tee "$OUT/train-$(date +%H%M%S).log"
rc=${PIPESTATUS[0]}
if [ "$rc" = 3 ]; then  # stopped at the time limit: the checkpoint goes back for the next call
  split -b 15M /tmp/recipe-run/next.ckpt "$OUT/ckpt.part-"
  [ -f /tmp/recipe-run/compile.cache ] && split -b 15M /tmp/recipe-run/compile.cache "$OUT/compile-cache.part-"
  ls -la "$OUT"; echo "=== stopped at the time limit $(date +%T)"; exit 0
fi
[ "$rc" = 0 ] || { echo "training failed (exit $rc)"; exit "$rc"; }
cp /tmp/recipe-run/mini/training.json "$OUT/training.json"
tar -C /tmp/recipe-run -cf - mini | split -b 15M - "$OUT/mini.tar.part-"
mkdir -p /tmp/recipe-run/checks
PM=${PM:-1}
if [ "$PM" = 1 ] || [ "$PM" = mini ]; then
  echo "=== prompt_match mini ($(date +%T))"
  XVID_MINI_WEIGHTS=/tmp/recipe-run/mini timeout 150 python3 benchmarks/mini_prompt_match.py --model mini --pairs 32 \
    --guidance 1 --why --out-dir /tmp/recipe-run/checks --name pm-mini 2>&1 | grep -v Warn | tail -9
fi
if [ "$PM" = 1 ] || [ "$PM" = large ]; then
  echo "=== prompt_match mini-large ($(date +%T))"
  XVID_MINI_WEIGHTS=/tmp/recipe-run/mini timeout 200 python3 benchmarks/mini_prompt_match.py --model mini-large \
    --pairs 32 --guidance 1 --why --out-dir /tmp/recipe-run/checks --name pm-large 2>&1 | grep -v Warn | tail -8
fi
tar -C /tmp/recipe-run -cf "$OUT/checks.tar" checks
ls -la "$OUT"
echo "=== done $(date +%T)"
