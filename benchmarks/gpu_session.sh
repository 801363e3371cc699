#!/bin/bash
# One device-machine session: install carried wheels, run the GPU tests, then the given python steps.
# Usage (from the repo root on the GPU machine): bash benchmarks/gpu_session.sh [tests] [gluon-tests] [hopper] [hopper-gluon] [hopper-tests] [bench] [bench-quick] [e2e] [e2e-544] [e2e-c720] [e2e-c720-quick] [e2e-c720-8bit] [e2e-c544] [e2e-cwan] [e2e-c15] [pm-clauses] [pm-variants] [wan-forward] [reuse] [multigpu] [cache-hv:NAME] [cache-wan:NAME]
# cache-*: NAME a --cache of xvid bench --e2e (NAME:key=value,... for its parameters); CACHE_ARGS adds e.g.
# "--computed-fraction 0.6" (firstblock/magcache); CAP the XAttention setting (default cap0.35; e.g. cap0.49);
# PRECISION the 8-bit precision of e2e-c720-8bit (default int8; its run has CAP in bf16 and in PRECISION)
# CLAUSE_WEIGHTS the generation.clause_weight values of pm-clauses (default "0 0.35 0.5 0.75"; prompt_match of both mini presets, 32 pairs each)
# pm-variants: prompt_match rows per config variant, one file per preset (prompt-match-<preset>-<TAG>-<gpu>.md|json):
#   VARIANTS "LABEL:KEY=VALUE[,KEY=VALUE] ..." (required; mini_prompt_match.py --variant), MODELS (default "mini
#   mini-large"), PAIRS (48, counted before the OBJECTS filter: 48 gives the 24 two-object tuning pairs), PAIR_SEED (unset: the held-out pairs; 77: the tuning set), OBJECTS (2 or empty), TAG,
#   PM_ARGS more mini_prompt_match.py arguments (e.g. "--attention dense xattn"). The composition schedule's runs:
#   PAIR_SEED=77 OBJECTS=2 TAG=clause-schedule-tuning VARIANTS="w0.5:generation.clause_weight=0.5
#   w1s4:generation.clause_weight=1.0,generation.clause_steps=4" bash benchmarks/gpu_session.sh pm-variants
set -u
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/site:$PWD:${PYTHONPATH:-}
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm --format=csv,noheader
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
gpu() { python3 -c "from xattn_video.bench.e2e import gpu_slug; print(gpu_slug())"; }
for step in "$@"; do
  echo "=== $step $(date +%T)"
  case $step in
    tests) timeout 420 python3 -m pytest -q -x -p no:cacheprovider tests/test_kernels_*.py tests/test_pipeline_hunyuan.py tests/test_pipeline_gpu.py 2>&1 | tail -25 ;;
    hopper) timeout 420 python3 benchmarks/bench_kernels_hopper.py --time-limit ${HOPPER_LIMIT:-330} --out-dir "$OUT" 2>&1 | tee "$OUT/hopper.txt" | grep -v "^|" | tail -150 ;;
    gluon-tests) timeout 420 python3 -m pytest -q -p no:cacheprovider tests/test_kernels_gluon.py tests/test_kernels_gpu.py tests/test_kernels_compile.py 2>&1 | tee "$OUT/gluon-tests.log" | tail -25 ;;
    hopper-gluon) timeout 420 python3 benchmarks/bench_kernels_hopper.py --variants v1-sparse-bf16 gluon-sparse-bf16 gluon-dense-bf16 gluon-int8-sparse gluon-int8-dense gluon-fp8-sparse gluon-fp8-dense gluon-fp8-sparse-pvfp8 gluon-nopp-sparse-bf16 gluon-s3-nopp-sparse-bf16 int8-sparse fp8-sparse --no-extra --time-limit ${HOPPER_LIMIT:-330} --out-dir "$OUT" 2>&1 | tee "$OUT/hopper.txt" | grep -v "^|" | tail -60 ;;
    hopper-tests) timeout 200 python3 -m pytest -q -x -p no:cacheprovider tests/test_kernels_gpu.py -k "fp8 or 8bit or v2_variants" 2>&1 | tail -25 ;;
    bench) timeout 450 python3 benchmarks/bench_xattention.py --out-dir "$OUT" 2>&1 | tee "$OUT/bench.txt" | grep -v "^|" | tail -80 ;;
    bench-quick) timeout 400 python3 benchmarks/bench_xattention.py --tokens 119056 --check-tokens 18616 --out-dir "$OUT" 2>&1 | tee "$OUT/bench.txt" | grep -v "^|" | tail -60 ;;
    e2e) timeout 560 python3 benchmarks/bench_e2e.py --out-dir "$OUT" 2>&1 | tee "$OUT/e2e.txt" | tail -40 ;;
    e2e-544) timeout 300 python3 benchmarks/bench_e2e.py --models hunyuan-video --shapes 544p --out-dir "$OUT" 2>&1 | tee "$OUT/e2e-544.txt" | tail -30 ;;
    e2e-c720) timeout 590 python3 benchmarks/bench_e2e.py --models hunyuan-video --shapes 720p --compile --settings stock dense cap0.35 cap0.35-reuse2 --name e2e-compile-hunyuan-720p-$(gpu) --out-dir "$OUT" 2>&1 | tee "$OUT/e2e-c720.txt" | tail -30 ;;
    e2e-c720-quick) PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True timeout 590 python3 benchmarks/bench_e2e.py --models hunyuan-video --shapes 720p --compile --settings stock ${CAP:-cap0.35} --name e2e-compile-hunyuan-720p-quick-$(gpu) --out-dir "$OUT" 2>&1 | tee "$OUT/e2e-c720-quick.txt" | tail -20 ;;
    e2e-c720-8bit) PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True timeout 590 python3 benchmarks/bench_e2e.py --models hunyuan-video --shapes 720p --compile --settings stock ${CAP:-cap0.35} ${CAP:-cap0.35}-${PRECISION:-int8} --name e2e-compile-hunyuan-720p-${PRECISION:-int8}-$(gpu) --out-dir "$OUT" 2>&1 | tee "$OUT/e2e-c720-8bit.txt" | tail -20 ;;
    e2e-c544) timeout 300 python3 benchmarks/bench_e2e.py --models hunyuan-video --shapes 544p --compile --name e2e-compile-hunyuan-544p-$(gpu) --out-dir "$OUT" 2>&1 | tee "$OUT/e2e-c544.txt" | tail -30 ;;
    e2e-cwan) timeout 400 python3 benchmarks/bench_e2e.py --models wan2.1-14b --compile --settings stock dense cap0.2 cap0.35 cap0.35-reuse2 --name e2e-compile-wan-720p-$(gpu) --out-dir "$OUT" 2>&1 | tee "$OUT/e2e-cwan.txt" | tail -30 ;;
    e2e-c15) timeout 560 python3 benchmarks/bench_e2e.py --models hunyuan-video-1.5 --compile --settings stock dense cap0.35 cap0.35-reuse2 --name e2e-compile-hunyuan15-720p-$(gpu) --out-dir "$OUT" 2>&1 | tee "$OUT/e2e-c15.txt" | tail -30 ;;
    pm-clauses) for w in ${CLAUSE_WEIGHTS:-0 0.35 0.5 0.75}; do timeout 300 python3 benchmarks/mini_prompt_match.py --model mini-large mini --pairs 32 --why --set generation.clause_weight=$w --name prompt-match-mini-clauses-$w-$(gpu) --out-dir "$OUT" 2>&1 | tee "$OUT/pm-clauses-$w.txt" | grep "prompt_match 0" ; done; (cd "$OUT" && tar cf pm-clauses.tar prompt-match-mini-clauses-* pm-clauses-*.txt && rm prompt-match-mini-clauses-* pm-clauses-*.txt) ;;  # one file: the device returns at most 8
    pm-variants) V=(); for v in ${VARIANTS:?VARIANTS: LABEL:KEY=VALUE[,KEY=VALUE] ...}; do V+=(--variant "$v"); done
      for model in ${MODELS:-mini mini-large}; do python3 benchmarks/mini_prompt_match.py --model $model --pairs ${PAIRS:-48} \
        ${PAIR_SEED:+--pair-seed $PAIR_SEED} ${OBJECTS:+--objects $OBJECTS} --device cuda "${V[@]}" --why ${PM_ARGS:-} \
        --name prompt-match-$model-${TAG:-variants}-$(gpu) --out-dir "$OUT" 2> >(grep -v "^  " >&2); done ;;  # per-pair progress dropped
    wan-forward) timeout 300 python3 benchmarks/bench_wan_forward.py --out-dir "$OUT" 2>&1 | tee "$OUT/wan-forward.txt" | tail -20 ;;
    reuse) timeout 300 python3 benchmarks/bench_reuse.py --full --out-dir "$OUT" 2>&1 | tee "$OUT/reuse.txt" | tail -20 ;;
    multigpu) timeout 590 python3 benchmarks/bench_multigpu.py --gpus 1 2 --out-dir "$OUT" 2>&1 | tee "$OUT/multigpu.txt" | tail -30 ;;
    cache-hv:*) PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True timeout 590 python3 benchmarks/bench_e2e.py --models hunyuan-video --shapes 720p --settings stock ${CAP:-cap0.35} --steps 50 --warmup-steps 5 --compile --cache "${step#cache-hv:}" ${CACHE_ARGS:-} --out-dir "$OUT" 2>&1 | tee "$OUT/${step%%:*}.txt" | tail -30 ;;
    cache-wan:*) PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True timeout 590 python3 benchmarks/bench_e2e.py --models wan2.1-14b --shapes 720p --settings stock ${CAP:-cap0.35} --steps 50 --warmup-steps 5 --compile --cache "${step#cache-wan:}" ${CACHE_ARGS:-} --out-dir "$OUT" 2>&1 | tee "$OUT/${step%%:*}.txt" | tail -30 ;;
    *) echo "unknown step $step" ;;
  esac
done
echo "=== done $(date +%T)"
