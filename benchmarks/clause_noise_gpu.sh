#!/bin/bash
# Device-machine run of the clause-noise choice (generation.clause_candidates, pipelines/clause_noise.py) against
# plain composition: prompt_match of the two-object pairs, one file per preset in $OUT.
#   PAIRS=48 PAIR_SEED=77 OBJECTS=2 VARIANTS="base:... ov4:..." bash benchmarks/clause_noise_gpu.sh [extra mini_prompt_match args]
set -e
source benchmarks/gpu_env.sh
GPU=$(python3 -c "import torch; print(torch.cuda.get_device_name().lower().replace(' ', '-'))")
PAIRS=${PAIRS:-48}
SET=${PAIR_SEED:+--pair-seed $PAIR_SEED}
OBJ=${OBJECTS:+--objects $OBJECTS}
TAG=${TAG:-tuning}
VARIANTS=${VARIANTS:-"base:generation.clause_candidates=1 ov4:generation.clause_candidates=4"}
V=""; for v in $VARIANTS; do V="$V --variant $v"; done
for model in ${MODELS:-mini mini-large}; do
  python3 benchmarks/mini_prompt_match.py --model $model --pairs $PAIRS $SET $OBJ --device cuda $V --why "$@" \
    --out-dir $OUT --name prompt-match-$model-clause-noise-$TAG-$GPU 2>&1 | grep -v "^  " || true
done
