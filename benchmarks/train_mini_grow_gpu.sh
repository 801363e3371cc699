#!/bin/bash
# (Its successor, the same schedule as phases of one process that fits 25 minutes: `--recipe grow`,
#  xattn_video/mini/recipe.py, run on the device machine by benchmarks/train_mini_recipe_gpu.sh.)
# The shipped mini weights' training recipe: ten `python -m xattn_video.mini.train` segments (train_mini_gpu.sh
# each), grown from 48 to 2,304 tokens per attention call, each at the σ shift that matches its token count
# (≈ 3·sqrt(tokens / 48), as resolution-dependent shifts do: at 2,304 tokens the motion is decided near σ 1),
# then two segments at a lower shift for the detail (low σ) and four more with the shape-weighted loss:
#   a. 9x32x32     48 tokens,  shift 3,  batch 256   from the committed thumbnail-tied VAE: conditioning learned here
#   b. 33x64x64    576 tokens, shift 10              from a
#   c. 33x128x128  2,304,      shift 20              from b (the `mini` preset's shape)
#   d. both presets, shift 20 / 55 (mini-large: 17,424 tokens)                      from c
#   e. both presets, shift 6 / 12, lr 4e-4                                           from d
#   f. both presets, shift 6 / 12, lr 3e-4                                           from e
#   g. as e with --shape-weight 10 (the loss weighted where a ball and a square differ)  from f
#   h. as f with --shape-weight 10                                                   from g (shipped until 2026-12-06)
#   k. as h with every 2nd step at mini-large (--large-every 2), 360 s                from h
#   l. as k                                                                           from k: the shipped folder
#      (run 2026-12-06 with INIT=the shipped h: prompt_match with clause weight 0.5 at mini / mini-large, 32 pairs:
#      h 0.69 / 0.63, k 0.83 / 0.72, l 0.80 / 0.81; a third 290 s segment 0.84 / 0.73: level, not shipped)
#   i. (not shipped, to try) both presets at shift 20 / 55 (the motion is set near σ 1), --shape-weight 10
#      --direction-weight 2 --binding-weight 8 --two-prob 0.7, lr 3e-4: the shipped folder moves 15 of 16 lone
#      objects the prompt's way but 13 of 32 in two-object prompts (direction words bound to the wrong object)   from h
#      (run 2026-12-06: two-object 16/32, shape down to 0.70 at mini; not shipped)
#   j. (to try) as i with the cross-attention grounding loss instead of the binding weight (--grounding-weight
#      $GROUNDING, default 0.05, on clips at σ ≥ $GROUNDING_SIGMA, default 0.9: object i's tokens read the prompt's
#      i-th clause, mini.grounding; trains eager)                                                               from h
#      (run 2026-12-06 at weight 1 on every σ: routing learned, prompt use at low σ lost, mini 0.39, not shipped;
#      routing by hand on the shipped weights lifts two-object directions 5 → 13 of 24: benchmarks/NOTES.md)
# One device call (≤ 10 min) runs a b c, the next d, the next e f, then g, then h (g h in one call pass the 10 minutes
# once both prompt_match checks run), then k, then l: give the stages as arguments; a stage starts from
# /tmp/mini-<previous stage>, or from INIT=FOLDER (e.g. the previous call's folder, unpacked from $OUT). The last
# stage's folder comes back as $OUT/mini.tar.part-*, every stage's log, training.json and prompt_match table as
# $OUT/logs.tar. Seconds per stage: SECONDS_<STAGE> (defaults: the shipped run's budgets). E.g. more shape-weighted
# training from the shipped folder: INIT=xattn_video/mini/weights bash benchmarks/train_mini_grow_gpu.sh h
# Usage (repo root, on the GPU machine): bash benchmarks/train_mini_grow_gpu.sh a b c
set -u
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
SMALL="--set generation.frames=9 --set generation.height=32 --set generation.width=32"
COMMON=(--compile --latent-reuse 2 ${EXTRA_ARGS:-})  # EXTRA_ARGS: more train options for every stage
LOW_SHIFT=(--flow-shift 6 --large-flow-shift 12 --warmup 50)  # e-h: the detail (low σ) at the presets' sampler shifts
declare -A SECONDS_OF=([a]=120 [b]=90 [c]=160 [d]=340 [e]=190 [f]=150 [g]=230 [h]=190 [i]=220 [j]=220 [k]=360 [l]=360)
declare -A PREVIOUS=([b]=a [c]=b [d]=c [e]=d [f]=e [g]=f [h]=g [i]=h [j]=h [k]=h [l]=k)
last=""
for stage in "$@"; do
  [ -n "${SECONDS_OF[$stage]:-}" ] || { echo "unknown stage '$stage' (a-l)"; exit 2; }
  init=${INIT:-/tmp/mini-${PREVIOUS[$stage]:-none}}
  [ -n "$last" ] && init=/tmp/mini-$last
  budget_var=SECONDS_${stage^^}
  env_common=(OUT=/tmp/grow-$stage MINI_DIR=/tmp/mini-$stage VAE_SECONDS=0 SECONDS_T=${!budget_var:-${SECONDS_OF[$stage]}} LOOK=0)
  case $stage in
    a) env "${env_common[@]}" PM_GUIDANCE=4 PM_SET="$SMALL" PM_LARGE=0 bash benchmarks/train_mini_gpu.sh \
         --init-vae benchmarks/results/mini-vae-thumb-cpu --mini-shape 9 32 32 --batch 256 --large-every 0 "${COMMON[@]}" ;;
    b) env "${env_common[@]}" PM=0 PM_LARGE=0 bash benchmarks/train_mini_gpu.sh --init "$init" \
         --mini-shape 33 64 64 --flow-shift 10 --warmup 100 --large-every 0 "${COMMON[@]}" ;;
    c) env "${env_common[@]}" PM_LARGE=0 bash benchmarks/train_mini_gpu.sh --init "$init" \
         --flow-shift 20 --warmup 100 --large-every 0 "${COMMON[@]}" ;;
    d) env "${env_common[@]}" bash benchmarks/train_mini_gpu.sh --init "$init" \
         --flow-shift 20 --large-flow-shift 55 --warmup 100 "${COMMON[@]}" ;;
    e) env "${env_common[@]}" PM=0 PM_LARGE=0 bash benchmarks/train_mini_gpu.sh --init "$init" \
         "${LOW_SHIFT[@]}" --lr 4e-4 "${COMMON[@]}" ;;
    f) env "${env_common[@]}" bash benchmarks/train_mini_gpu.sh --init "$init" \
         "${LOW_SHIFT[@]}" --lr 3e-4 "${COMMON[@]}" ;;
    g) env "${env_common[@]}" PM=0 PM_LARGE=0 WORD_GAP=${WORD_GAP:-1} bash benchmarks/train_mini_gpu.sh --init "$init" \
         "${LOW_SHIFT[@]}" --lr 4e-4 --shape-weight 10 "${COMMON[@]}" ;;
    h) env "${env_common[@]}" WORD_GAP=${WORD_GAP:-1} bash benchmarks/train_mini_gpu.sh --init "$init" \
         "${LOW_SHIFT[@]}" --lr 3e-4 --shape-weight 10 "${COMMON[@]}" ;;
    k|l) env "${env_common[@]}" WORD_GAP=${WORD_GAP:-0} PM_GUIDANCE=1 PM_LARGE_PAIRS=32 PM_LARGE_TIMEOUT=150 \
         bash benchmarks/train_mini_gpu.sh --init "$init" "${LOW_SHIFT[@]}" --lr 3e-4 --shape-weight 10 --large-every 2 \
         "${COMMON[@]}" ;;
    i) env "${env_common[@]}" WORD_GAP=${WORD_GAP:-1} PM_GUIDANCE=1 bash benchmarks/train_mini_gpu.sh --init "$init" \
         --flow-shift 20 --large-flow-shift 55 --warmup 50 --lr 3e-4 --shape-weight 10 --direction-weight 2 --binding-weight 8 --two-prob 0.7 "${COMMON[@]}" ;;
    j) env "${env_common[@]}" WORD_GAP=${WORD_GAP:-1} PM_GUIDANCE=1 bash benchmarks/train_mini_gpu.sh --init "$init" \
         --flow-shift 20 --large-flow-shift 55 --warmup 50 --lr 3e-4 --shape-weight 10 --direction-weight 2 --grounding-weight ${GROUNDING:-0.05} --grounding-sigma-min ${GROUNDING_SIGMA:-0.9} --two-prob 0.7 "${COMMON[@]}" ;;
  esac
  rm -f /tmp/grow-$stage/mini.tar.part-*
  last=$stage
done
[ -n "$last" ] || { echo "usage: bash benchmarks/train_mini_grow_gpu.sh STAGE..."; exit 2; }
tar -C /tmp -cf - mini-$last | split -b 15M - "$OUT/mini.tar.part-"
tar -C /tmp -cf "$OUT/logs.tar" $(for s in "$@"; do echo grow-$s; done)
ls -la "$OUT"
echo "=== grow done $(date +%T)"
