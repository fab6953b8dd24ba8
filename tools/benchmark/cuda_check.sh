#!/usr/bin/env bash
# CUDA check of g2sd (G2SD, Huang et al., CVPR 2023, arXiv 2302.14771) on one GPU, <= 8 minutes:
# the CUDA-marked tests, one GD step in fp32 / fp16 / bf16 (SDPA on the flash path), one cls,
# one det and one seg SD step, and the throughput benchmark, all with --device cuda.
# Every command has its own timeout; a total budget stops the script before 8 minutes.
# Prints a summary table; per-command logs and JSON rows go to $OUT_DIR.
#
#   bash tools/benchmark/cuda_check.sh                      # from anywhere in the repo
#   G2SD_OFFICIAL=/path/to/G2SD bash tools/benchmark/cuda_check.sh   # + official GD step
#
# Environment: PYTHON (default: .venv/bin/python if present, else python), OUT_DIR (default
# work_dirs/cuda_check), BUDGET_S (default 470), G2SD_OFFICIAL (optional export of
# github.com/pengzhiliang/G2SD for gd_step.py --compare-official).
set -u
cd "$(dirname "$0")/../.." || exit 1
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python; fi
fi
PY=$PYTHON
OUT_DIR=${OUT_DIR:-work_dirs/cuda_check}
BUDGET_S=${BUDGET_S:-470}
mkdir -p "$OUT_DIR"
START=$(date +%s)
SUMMARY=()
FAILED=0

# check NAME TIMEOUT_S COMMAND...: run COMMAND with a timeout, log it, record the outcome.
check() {
    local name=$1 limit=$2
    shift 2
    local now left t0 rc status last
    now=$(date +%s)
    left=$((BUDGET_S - (now - START)))
    if [ "$left" -le 5 ]; then
        SUMMARY+=("$(printf '%-14s %-8s %5s  %s' "$name" SKIPPED - 'total budget spent')")
        FAILED=1
        return
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "=== $name (timeout ${limit}s): $*"
    t0=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" >"$OUT_DIR/$name.log" 2>&1
    rc=$?
    tail -n 25 "$OUT_DIR/$name.log"
    case $rc in
        0) status=ok ;;
        124 | 137) status=TIMEOUT; FAILED=1 ;;
        *) status="FAIL($rc)"; FAILED=1 ;;
    esac
    last=$(grep -v '^\s*$' "$OUT_DIR/$name.log" | tail -n 1 | cut -c1-90)
    SUMMARY+=("$(printf '%-14s %-8s %5ss  %s' "$name" "$status" $(($(date +%s) - t0)) "$last")")
}

"$PY" - <<'EOF' || { echo 'no CUDA device: nothing to check'; exit 2; }
import sys, torch
ok = torch.cuda.is_available()
if ok:
    print('torch', torch.__version__, 'CUDA', torch.version.cuda, torch.cuda.get_device_name(0),
          'bf16:', torch.cuda.is_bf16_supported())
sys.exit(0 if ok else 1)
EOF

GD="tools/benchmark/gd_step.py --device cuda --batch-size 64 --iters 5 --warmup 2"
# shellcheck disable=SC2086  # $GD is a word list on purpose
{
check pytest-cuda 100 "$PY" -m pytest -m cuda -q -p no:cacheprovider tests
check gd-fp32 45 "$PY" $GD --modes fp32 --json "$OUT_DIR/gd_fp32.json"
check gd-fp16 45 "$PY" $GD --modes amp --amp-dtype fp16 --json "$OUT_DIR/gd_fp16.json"
check gd-bf16 45 "$PY" $GD --modes amp --amp-dtype bf16 --json "$OUT_DIR/gd_bf16.json"
check sd-cls 45 "$PY" tools/benchmark/sd_step.py --device cuda --amp --batch-size 64 --iters 3 --warmup 1 --json "$OUT_DIR/sd_cls.json"
check sd-det 60 "$PY" tools/benchmark/det_step.py --device cuda --amp fp16 --model s --iters 2 --warmup 1 --json "$OUT_DIR/sd_det.json"
check sd-seg 60 "$PY" tools/benchmark/seg_step.py --device cuda --amp fp16 --model s --iters 2 --warmup 1 --slide-iters 1 --json "$OUT_DIR/sd_seg.json"
check throughput 40 "$PY" tools/benchmark/throughput.py --device cuda --amp --iters 5 --warmup 2 --json "$OUT_DIR/throughput.json"
}
if [ -n "${G2SD_OFFICIAL:-}" ]; then
    # shellcheck disable=SC2086
    check gd-official 60 "$PY" $GD --rounds 1 --compare-official "$G2SD_OFFICIAL" --json "$OUT_DIR/gd_official.json"
fi

echo
echo "=== summary ($(($(date +%s) - START))s of ${BUDGET_S}s; logs in $OUT_DIR)"
printf '%-14s %-8s %6s  %s\n' check status time 'last line'
printf '%s\n' "${SUMMARY[@]}"
exit $FAILED
