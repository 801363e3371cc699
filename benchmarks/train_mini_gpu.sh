#!/bin/bash
# The mini model's training run on one GPU (the device machine), as the README records it:
#   1. a short probe of both stages' step times (a throwaway run);
#   2. the step counts that fill BUDGET seconds (a fifth for the VAE), printed, then the seeded training run
#      (python -m xattn_video.mini.train with those counts: the command that made the shipped weights);
#   3. a dense prompt_match check at both presets, and the folder packed to $OUT in parts of at most 15 MB.
# Usage (repo root, on the GPU machine): BUDGET=380 bash benchmarks/train_mini_gpu.sh [extra train args]
set -u
OUT=${OUT:-/tmp/out}
BUDGET=${BUDGET:-380}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/site:$PWD:${PYTHONPATH:-}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -m xattn_video.mini.train --out /tmp/probe --vae-steps 60 --steps 80 --log-every 20 "$@" 2>&1 \
  | grep -v "should be kept\|Writing model" | tee "$OUT/probe.log"
read VAE_STEPS STEPS < <(python3 - "$BUDGET" "$OUT/probe.log" <<'PY'
import re, sys
budget, log = float(sys.argv[1]), open(sys.argv[2]).read()
vae = {int(a): float(b) for a, b in re.findall(r"vae step (\d+)/\d+ .*\((\d+) s\)", log)}
tr = {int(a): float(b) for a, b in re.findall(r"^step (\d+)/\d+ .*\((\d+) s\)", log, re.M)}
vae_dt = (vae[60] - vae[20]) / 40
tr_dt = (tr[80] - tr[40]) / 40
print(int(0.2 * budget / vae_dt) // 50 * 50, int(0.8 * budget / tr_dt) // 100 * 100)
print(f"probe: {vae_dt * 1000:.0f} ms per VAE step, {tr_dt * 1000:.0f} ms per transformer step", file=sys.stderr)
PY
)
echo "=== training: --vae-steps $VAE_STEPS --steps $STEPS $* ($(date +%T))"
python3 -m xattn_video.mini.train --out /tmp/mini --vae-steps "$VAE_STEPS" --steps "$STEPS" "$@" 2>&1 \
  | grep -v "should be kept\|Writing model" | tee "$OUT/train.log"
cp /tmp/mini/training.json "$OUT/training.json"
tar -C /tmp -cf - mini | split -b 15M - "$OUT/mini.tar.part-"
echo "=== prompt_match ($(date +%T))"
XVID_MINI_WEIGHTS=/tmp/mini timeout 100 python3 benchmarks/mini_prompt_match.py --model mini --pairs 16 --guidance 1 4 \
  --out-dir "$OUT" --name pm-mini 2>&1 | grep -v Warn | tail -8
XVID_MINI_WEIGHTS=/tmp/mini timeout 80 python3 benchmarks/mini_prompt_match.py --model mini-large --pairs 8 --guidance 1 5 \
  --out-dir "$OUT" --name pm-large 2>&1 | grep -v Warn | tail -6
ls -la "$OUT"
echo "=== done $(date +%T)"
