#!/bin/bash
# Device-machine run of mini_prompt_match.py over config variants, one file per preset in $OUT
# (prompt-match-<preset>-<TAG>-<gpu>.md|json). Carry [".whl"]. The composition schedule of the mini presets:
#   MODELS="mini mini-large" PAIRS=48 PAIR_SEED=77 OBJECTS=2 TAG=clause-schedule-tuning \
#     VARIANTS="w0.5:generation.clause_weight=0.5 w1s4:generation.clause_weight=1.0,generation.clause_steps=4" \
#     bash benchmarks/mini_prompt_match_gpu.sh [more mini_prompt_match.py arguments, e.g. --attention dense xattn]
set -e
source benchmarks/gpu_env.sh
GPU=$(python3 -c "import torch; print(torch.cuda.get_device_name().lower().replace(' ', '-'))")
PAIRS=${PAIRS:-48}
SET=${PAIR_SEED:+--pair-seed $PAIR_SEED}
OBJ=${OBJECTS:+--objects $OBJECTS}
TAG=${TAG:-variants}
VARIANTS=${VARIANTS:?"VARIANTS: LABEL:KEY=VALUE[,KEY=VALUE] ... (mini_prompt_match.py --variant)"}
V=""; for v in $VARIANTS; do V="$V --variant $v"; done
for model in ${MODELS:-mini mini-large}; do
  python3 benchmarks/mini_prompt_match.py --model $model --pairs $PAIRS $SET $OBJ --device cuda $V --why "$@" \
    --out-dir $OUT --name prompt-match-$model-$TAG-$GPU 2> >(grep -v "^  " >&2)  # per-pair progress lines dropped
done
