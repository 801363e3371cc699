#!/bin/bash
# A/B of --compile's extras (mini.train.EXTRA_COMPILED: the text encoder, and the VAE encoder of the fresh clips) in
# real `python -m xattn_video.mini.train` runs on one GPU: the same 100-step phase (the `segments` recipe's d: mini
# clips, every 4th step mini-large, --latent-reuse 4 --encode-every 8) from the shipped VAE, first with the
# transformer alone compiled ("off"), then with the extras ("on"). Each run's log has the step-time summary of steps
# 10-40 by part (render, encode, train, ema) and the run's seconds (compilation included: "on" finds the
# transformer's graphs in the caches "off" left). Usage (repo root, on the device machine):
#   bash benchmarks/mini_train_extras_gpu.sh        (writes $OUT/train-extras-{off,on}.log)
set -u
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
source benchmarks/gpu_env.sh
nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null
cat > /tmp/extras-recipe.json <<'JSON'
{"phases": [{"name": "d", "steps": 100, "flow_shift": 20.0, "large_flow_shift": 55.0, "large_every": 4, "warmup": 50}]}
JSON
for extras in off on; do
  echo "=== extras $extras ($(date +%T))"
  python3 - "$extras" "$OUT" <<'PY' 2>&1 | grep -v "Warn\|should be kept\|Writing model" | tee "$OUT/train-extras-$extras.log"
import sys
import time

from xattn_video.mini import train

extras, out = sys.argv[1], sys.argv[2]
if extras == "off":
    train.EXTRA_COMPILED = {**train.EXTRA_COMPILED, "cuda": ()}
started = time.time()
code = train.main(["--out", f"/tmp/extras-{extras}", "--recipe", "/tmp/extras-recipe.json", "--init-vae",
                   "xattn_video/mini/weights", "--compile", "--latent-reuse", "4", "--encode-every", "8",
                   "--log-every", "50"])
print(f"extras {extras}: exit {code}, {time.time() - started:.1f} s in all")
PY
done
