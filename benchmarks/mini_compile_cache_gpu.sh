#!/bin/bash
# What `mini.train --compile-cache` saves on a cold resume (device machine, repo root): one short `--compile` run
# from the shipped weights (both shapes: every 2nd step at mini-large) stops at its time limit and writes its
# checkpoint and compile cache; then two resumes of that checkpoint, each with empty Inductor and Triton caches as on
# a fresh machine, one without the file and one loading it. Each log line is prefixed with the seconds since its
# process started, so the first logged step of each resume shows the compile time it paid.
# Usage: bash benchmarks/mini_compile_cache_gpu.sh   (writes $OUT/cc-{first,cold,cached}.log and cc-summary.txt)
set -u
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
source benchmarks/gpu_env.sh
W=/tmp/cc
rm -rf $W && mkdir -p $W
ARGS=(--init xattn_video/mini/weights --steps 3000 --compile --latent-reuse 2 --large-every 2 --log-every 10
      --out $W/mini)

run() {  # name, train args...: a process with its own empty Inductor and Triton caches, its log timestamped
  local name=$1; shift
  local t0; t0=$(date +%s.%N)
  PYTHONUNBUFFERED=1 TORCHINDUCTOR_CACHE_DIR=$W/inductor-$name TRITON_CACHE_DIR=$W/triton-$name \
    python3 -m xattn_video.mini.train "${ARGS[@]}" "$@" 2>&1 | grep --line-buffered -v "Warn\|should be kept" \
    | python3 -u -c 'import sys, time
for line in sys.stdin: print(f"{time.time() - float(sys.argv[1]):7.1f} {line}", end="")' "$t0" \
    | tee "$OUT/cc-$name.log"
}

run first --time-limit 90 --checkpoint $W/first.ckpt --compile-cache $W/first.cache
cp $W/first.cache $W/resume.cache
run cold --resume $W/first.ckpt --time-limit 45 --checkpoint $W/cold.ckpt
run cached --resume $W/first.ckpt --time-limit 45 --checkpoint $W/cached.ckpt --compile-cache $W/resume.cache
{
  nvidia-smi --query-gpu=name --format=csv,noheader
  echo "cache file: $(stat -c %s $W/first.cache) bytes"
  for name in first cold cached; do
    echo "$name: first logged step: $(grep -m1 ' step ' "$OUT/cc-$name.log")"
  done
} | tee "$OUT/cc-summary.txt"
