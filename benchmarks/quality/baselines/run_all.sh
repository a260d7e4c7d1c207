#!/usr/bin/env bash
# Every baseline row, one at a time, most important first, with benchmarks/quality/baselines/quantize_baselines.py.
# Resumable: rows already in the output are skipped.
#
# Usage (repository root, the venv of benchmarks/quality/baselines/README.md):
#   bash benchmarks/quality/baselines/run_all.sh
# Environment: PY (python of the venv), OUT (output prefix: OUT.jsonl, OUT.csv), LOGS (log folder),
# EVAL (evaluation flags; default: all 148 WikiText-2 windows and every zero-shot example;
# EVAL="--max-windows 4 --zs-limit 100" is the short protocol), AWQ_NSAMPLES (AWQ calibration samples).
set -u
case "${1:-}" in -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;; esac
PY=${PY:-/work/venv-baselines/bin/python}
OUT=${OUT:-runs/quality/baselines}
LOGS=${LOGS:-/tmp/baselines-logs}
EVAL=${EVAL:---zs-limit 0}
AWQ_NSAMPLES=${AWQ_NSAMPLES:-128}
mkdir -p "$LOGS"
run() {
  local name="$1"; shift
  echo "$(date +%T) start $name" >> "$LOGS/queue.log"
  # shellcheck disable=SC2086
  "$PY" -m benchmarks.quality.baselines.quantize_baselines --out "$OUT" "$@" $EVAL > "$LOGS/$name.log" 2>&1
  echo "$(date +%T) end $name rc=$?" >> "$LOGS/queue.log"
}
run float --method float
for b in 4 3; do
  run rtn-w$b-g64  --method rtn  --bits $b --group 64
  run hqq-w$b-g64  --method hqq  --bits $b --group 64
done
for b in 4 3; do
  run gptq-w$b-g64 --method gptq --bits $b --group 64
  run awq-w$b-g64  --method awq  --bits $b --group 64 --nsamples "$AWQ_NSAMPLES"
done
run rtn-w2-g64  --method rtn  --bits 2 --group 64
run hqq-w2-g64  --method hqq  --bits 2 --group 64
run gptq-w2-g64 --method gptq --bits 2 --group 64
run awq-w2-g64  --method awq  --bits 2 --group 64 --nsamples "$AWQ_NSAMPLES"
run rtn-w4-g32  --method rtn  --bits 4 --group 32
run hqq-w4-g32  --method hqq  --bits 4 --group 32
run gptq-w4-g32 --method gptq --bits 4 --group 32
run awq-w4-g32  --method awq  --bits 4 --group 32 --nsamples "$AWQ_NSAMPLES"
