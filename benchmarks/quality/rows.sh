#!/usr/bin/env bash
# Every row of the SmolLM2 quality table on one machine, all 148 WikiText-2 windows and the full
# zero-shot tasks: the baselines (benchmarks/quality/baselines/quantize_baselines.py) and BitStack
# artifacts evaluated at the baselines' memories (benchmarks/quality/evaluate.py). Rows already
# present are skipped, so an interrupted run resumes.
#
# Usage (repository root; the baselines' packages installed, see benchmarks/quality/baselines/README.md):
#   DEVICE=cuda DATA=../shared/data RESULTS=runs/quality bash benchmarks/quality/rows.sh [PART ...]
# then the result file:
#   python -m benchmarks.quality.table --baselines runs/quality/baselines_*.jsonl --evals runs/quality/evals \
#       --result benchmarks/results/quality/NAME.json
# PART: baselines (three workers in parallel: RTN+HQQ, GPTQ, AWQ), joint (codec planes with joint
# signs), nearest (planes with round-to-nearest signs: the ablation), paper (codec avd, 16 blocks
# of rank 16, scale power 1, fisher order), joint-lw=WEIGHTS (joint signs with --level-weights
# WEIGHTS); default: baselines, joint, nearest and paper, in parallel. Every BitStack part
# names its options, so the rows do not depend on the defaults of the day.
# Environment: PY, DEVICE, DATA (the data folder of ../shared/data's layout), RESULTS (output
# folder), ZS (examples per zero-shot task, 0 = all, none = no zero-shot: BitStack rows only), NSAMPLES (calibration sequences of 2048
# tokens for GPTQ, AWQ and BitStack: the same tokens for all), ARTIFACTS (where artifacts go).
case "${1:-}" in -h|--help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;; esac
set -u
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
DATA=${DATA:-../shared/data}
RESULTS=${RESULTS:-runs/quality}
ARTIFACTS=${ARTIFACTS:-/tmp/quality-artifacts}
ZS=${ZS:-0}
NSAMPLES=${NSAMPLES:-128}
# llmcompressor's memories of w2/w3/w4 g64 and w4 g32 (the baselines' rows)
MEMORY=${MEMORY:-w2g64=86968064,w3g64=100446464,w4g64=113924864,w4g32=118071424}
export BITSTACK_SHARED_DATA=$DATA OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
mkdir -p "$RESULTS/logs" "$ARTIFACTS"

baseline() {  # OUTPUT-PREFIX ARGS...: one row of quantize_baselines.py
  local prefix=$1; shift
  "$PY" -m benchmarks.quality.baselines.quantize_baselines --device "$DEVICE" --zs-limit "$ZS" --batch-size 32 \
    --nsamples "$NSAMPLES" --out "$RESULTS/$prefix" "$@"
}
worker_rtn_hqq() {
  baseline baselines_rtn_hqq --method float
  for m in rtn hqq; do
    for b in 4 3 2; do baseline baselines_rtn_hqq --method $m --bits $b --group 64; done
    baseline baselines_rtn_hqq --method $m --bits 4 --group 32
  done
}
worker_calibrated() {  # METHOD
  for b in 4 3 2; do baseline "baselines_$1" --method "$1" --bits $b --group 64; done
  baseline "baselines_$1" --method "$1" --bits 4 --group 32
}
bitstack_row() {  # LABEL COMPRESS-ARGS...: compress once, evaluate at every memory
  local label=$1; shift
  local art="$ARTIFACTS/$label.bstk"
  if [ ! -d "$art" ]; then
    "$PY" -m bitstack.cli compress smollm2-135m -o "$art" --calib "$DATA/calibration_wikipedia.txt" \
      --nsamples "$NSAMPLES" --seqlen 2048 --device "$DEVICE" "$@" || return 1
  fi
  "$PY" -m bitstack.cli info "$art" > "$RESULTS/$label.info.txt"
  local zeroshot=(--zeroshot "$DATA/zeroshot"); [ "$ZS" != 0 ] && zeroshot+=(--limit "$ZS")
  [ "$ZS" = none ] && zeroshot=()
  "$PY" -m benchmarks.quality.evaluate --artifact "$art" --label "$label" --memory "$MEMORY" \
    --ppl "$DATA/wikitext2_test.txt" "${zeroshot[@]}" --batch-size 32 \
    --device "$DEVICE" --out "$RESULTS/evals"
}

run_part() {
  case $1 in
    baselines)
      worker_rtn_hqq > "$RESULTS/logs/rtn_hqq.log" 2>&1 &
      worker_calibrated gptq > "$RESULTS/logs/gptq.log" 2>&1 &
      worker_calibrated awq > "$RESULTS/logs/awq.log" 2>&1 &
      wait ;;
    joint) bitstack_row bitstack-joint --codec planes --signs joint --sort leveled > "$RESULTS/logs/joint.log" 2>&1 ;;
    nearest) bitstack_row bitstack-nearest --codec planes --signs nearest --sort leveled > "$RESULTS/logs/nearest.log" 2>&1 ;;
    joint-lw=*)  # joint signs with other level weights, e.g. joint-lw=0.05,3,1,1,0.3,0.1
      local weights=${1#joint-lw=}
      bitstack_row "bitstack-joint-lw-${weights//,/_}" --codec planes --signs joint --level-weights "$weights" \
        --sort leveled > "$RESULTS/logs/joint-lw-${weights//,/_}.log" 2>&1 ;;
    paper) bitstack_row bitstack-paper --codec avd --niter 16 --rank 16 --scale-power 1 --sort fisher \
             > "$RESULTS/logs/paper.log" 2>&1 ;;
    *) echo "unknown part $1 (baselines, joint, joint-lw=WEIGHTS, nearest, paper)" >&2; return 2 ;;
  esac
}

parts=("$@")
[ ${#parts[@]} -eq 0 ] && parts=(baselines joint nearest paper)
for part in "${parts[@]}"; do
  run_part "$part" &
done
wait
echo "done: $(date +%T)"
