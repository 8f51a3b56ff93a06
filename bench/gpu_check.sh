#!/usr/bin/env bash
# Everything that needs a GPU, in one run on one GPU that keeps to --budget (9 minutes by default), so that
# one sitting measures every part and a run cut short still leaves the parts it finished.
#
# Parts, in order, each under its own time limit; a part that fails or runs out of time is reported
# as such and the next one runs:
#   env         the device, driver, versions, packages; a bf16 matmul and a copy as measured ceilings
#   cuda_tests  tests/test_cuda.py (pytest if importable, else bench/run_cuda_tests.py)
#   speed       bench/speed.py: our training step against the reference structure, same batch and run
#   inference   bench/speed.py: MPix/s at 1024x1024 and 2048x2048 (bf16 + channels_last, no grad)
#   profile     bench/profile_step.py: one step under torch.profiler, top operators by CUDA time
#   quality     experiments/compare_costs.py: OT, SOT-l1 and SOT-l0.5 at the real network sizes, equal
#               steps (as many as fit the time left, from the speed part's step time)
# After each part, OUT_DIR/summary.md and summary.json (status, time and key figures of every part)
# and OUT_DIR/gpu_check.tar.gz (everything measured) are rewritten, so a run cut short keeps what it had.
#
# --dry-run runs the same parts on the CPU at tiny sizes (the CUDA tests rehearsed on the CPU with
# SOT_CUDA_TEST_DEVICE=cpu) in about a minute and a half on 2 cores; tests/test_gpu_check.py runs it.
set -u -o pipefail

usage() {
    cat <<'EOF'
usage: bench/gpu_check.sh [--dry-run] [--bundle] [--parts LIST] [--budget SECONDS] [--quality-tasks LIST]
                          [--quality-steps N] [--quality-sigma S] [--tests-filter A,B] OUT_DIR

  --dry-run          the CPU at tiny sizes (a few minutes at most); without it, CUDA is required
  --bundle           keep only summary.md, summary.json, gpu_check.log and gpu_check.tar.gz in OUT_DIR
                     (for a remote runner that returns few files); the parts' folders go in the tarball
  --parts LIST       comma-separated subset of env,cuda_tests,speed,compile,inference,profile,quality
  --budget SECONDS   the whole run's time (default 540 on a GPU, 280 for --dry-run)
  --quality-tasks L  comma-separated tasks of the quality part, at the paper's network sizes: SOT (the
                     task's default cost) against OT and the degraded input, SR also with --null-space
                     (default sr,deraining; a dry run takes the first only)
  --quality-steps N  at most N steps per run (default 1000; fewer if the time left is short)
  --quality-sigma S  one sigma for every cost, or 'ot=S1 sot-l1=S2 sot-l0.5=S3' (default: compare_costs.py's
                     per-task sigmas, which charge the true degradation alike under every cost)
  --tests-filter A,B only the CUDA tests whose names contain A or B

environment: PYTHON (default python3), GPU_CHECK_PYTEST=0 (run the CUDA tests without pytest, as
where it is not installed), GPU_CHECK_KEEP=1 (keep the scratch folder: runs, checkpoints, data),
GPU_CHECK_LIMIT_<part>=SECONDS (that part's own time limit).

On a GPU machine without the opencv-doc package, copy the study's photographs first
(python experiments/compare_costs.py --copy-photos data/opencv-doc, then take data/opencv-doc
along):  bash bench/gpu_check.sh --bundle OUT_DIR
EOF
}

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SELF="$ROOT/bench/gpu_check.sh"
cd "$ROOT" || exit 2
PY="${PYTHON:-$(command -v python3 || command -v python)}"

# ----------------------------------------------------------------------------- the parts
# Each runs in its own process (this script with --run-part NAME) under `timeout`, which signals its
# whole process group, so that pytest's subprocesses, torchrun and loader workers go with it.
part_env() {
    "$PY" bench/gpu_check_tools.py env --out "$W/env" $([ "$DRY" = 1 ] && echo --dry-run)
}

part_cuda_tests() {
    local dir="$W/cuda_tests" require="" rc
    export SOT_CUDA_TEST_REPORT="$dir/measurements.jsonl"
    rm -f "$SOT_CUDA_TEST_REPORT" "$dir/junit.xml" "$dir/cuda_tests.json"
    if [ "$DRY" = 1 ]; then
        export SOT_CUDA_TEST_DEVICE=cpu   # rehearse the tests themselves on the CPU
    else
        require="--require-run"           # on a GPU, all of them skipped is a failure
    fi
    if [ "${GPU_CHECK_PYTEST:-1}" != 0 ] && "$PY" -c "import pytest" 2>/dev/null; then
        local k=()
        [ -n "$TFILTER" ] && k=(-k "$(echo "$TFILTER" | sed 's/,/ or /g')")
        "$PY" -m pytest -v -rs -p no:cacheprovider -m cuda tests/test_cuda.py --junitxml="$dir/junit.xml" ${k[@]+"${k[@]}"}
        rc=$?
        "$PY" bench/run_cuda_tests.py --from-junit "$dir/junit.xml" --log "$dir/cuda_tests.log" \
            --json "$dir/cuda_tests.json" $require || rc=1
        return $rc
    fi
    echo "pytest is not importable here (or GPU_CHECK_PYTEST=0): bench/run_cuda_tests.py runs the tests"
    "$PY" bench/run_cuda_tests.py --no-pytest --filter "$TFILTER" --json "$dir/cuda_tests.json" $require
}

part_speed() {
    local dir="$W/speed"
    if [ "$DRY" = 1 ]; then
        "$PY" bench/speed.py --device cpu --quick --batch 2 --steps 1 --warmup 0 --skip inference \
            --json "$dir/speed.json" > "$dir/speed.md" || return 1
    else
        "$PY" bench/speed.py --device cuda --batch 32 --steps 20 --warmup 5 --skip inference \
            --json "$dir/speed.json" > "$dir/speed.md" || return 1
    fi
    cat "$dir/speed.md"
}

part_compile() {  # the generator's attention blocks compiled (regional torch.compile), beside the plain step
    local dir="$W/compile"
    if [ "$DRY" = 1 ]; then
        # the plumbing only: compiling on two CPU cores takes minutes, so dynamo passes the code through
        TORCHDYNAMO_DISABLE=1 "$PY" bench/speed.py --device cpu --quick --batch 2 --steps 1 --warmup 0 \
            --compile-blocks --only compile-blocks --sizes 64 --skip loader \
            --json "$dir/compile.json" > "$dir/compile.md" || return 1
    else
        "$PY" bench/speed.py --device cuda --batch 32 --steps 10 --warmup 3 --compile-blocks --only compile-blocks \
            --sizes 2048 --skip loader --json "$dir/compile.json" > "$dir/compile.md" || return 1
    fi
    cat "$dir/compile.md"
}

part_inference() {
    local dir="$W/inference"
    if [ "$DRY" = 1 ]; then
        "$PY" bench/speed.py --device cpu --quick --steps 4 --sizes 64 128 --skip training loader \
            --json "$dir/inference.json" > "$dir/inference.md" || return 1
    else
        "$PY" bench/speed.py --device cuda --steps 20 --sizes 1024 2048 --skip training loader \
            --json "$dir/inference.json" > "$dir/inference.md" || return 1
    fi
    cat "$dir/inference.md"
}

part_profile() {  # one bf16 step, and inference at 2048x2048 (the reference's profile is in docs/results)
    if [ "$DRY" = 1 ]; then
        "$PY" bench/profile_step.py --device cpu --quick --variants fast-bf16 inference --out "$W/profile"
    else
        "$PY" bench/profile_step.py --device cuda --batch 32 --variants fast-bf16 inference --size 2048 --out "$W/profile"
    fi
}

# the quality part's runs per task: SOT (the default cost) against OT, SR with and without --null-space
quality_methods() {
    case "$1" in
        sr) echo "ot sot-l0.5" ;;
        deraining|dehazing) echo "ot sot-l1" ;;
    esac
}
quality_runs() {  # how many training runs a task takes
    case "$1" in sr) echo 3 ;; *) echo 2 ;; esac
}

part_quality() {
    local dir="$W/quality" steps batch sigma photos described left args task tasks runs=0 extra
    IFS=, read -r -a tasks <<< "$QTASKS"
    [ "$DRY" = 1 ] && tasks=("${tasks[0]}")
    for task in "${tasks[@]}"; do runs=$((runs + $(quality_runs "$task"))); done
    if [ -z "$QSIGMA" ]; then
        sigma=()  # compare_costs.py's per-task sigmas, set so that each cost charges the true degradation alike
    elif [[ "$QSIGMA" == *=* ]]; then
        read -r -a sigma <<< "$QSIGMA"
    else
        sigma=("ot=$QSIGMA" "sot-l1=$QSIGMA" "sot-l0.5=$QSIGMA")
    fi
    # the photos: a carried copy of opencv-doc's if there is one, else scikit-image's alone (never a
    # system folder that one machine has and another lacks)
    if [ -d data/opencv-doc ]; then
        photos=(--opencv-doc data/opencv-doc) described="opencv-doc (data/opencv-doc) and scikit-image"
    else
        photos=(--opencv-doc "$SCRATCH/none") described="scikit-image only"
    fi
    if [ "$DRY" = 1 ]; then
        steps=4 batch=2 described="scikit-image, 8 photos (--quick)"
        args=(--quick --device cpu)
    else
        left=$((DEADLINE - $(date +%s) - 10))
        steps=$("$PY" bench/gpu_check_tools.py quality-steps --requested "$QSTEPS" --seconds "$left" \
                --speed "$W/speed/speed.json" --methods "$runs" --tasks "${#tasks[@]}") || return 1
        [ "$steps" -gt 0 ] || { echo "no time left for a quality run ($left s)"; return 1; }
        batch=32
        args=(--steps "$steps" --batch 32 --val-steps $((steps / 8)) --device cuda "${photos[@]}")
    fi
    for task in "${tasks[@]}"; do
        mkdir -p "$dir/$task"
        extra=()
        [ "$task" = sr ] && extra=(--null-space)
        printf '{"task": "%s", "steps": %s, "batch": %s, "sigma": "%s", "methods": "%s", "null_space": %s, "photos": "%s", "seeds": [0], "networks": "the paper'"'"'s (generator 80/48, critic 64)"}\n' \
            "$task" "$steps" "$batch" "${sigma[*]:-the study defaults}" "$(quality_methods "$task")" \
            "$([ "$task" = sr ] && echo true || echo false)" "$described" > "$dir/$task/quality_meta.json"
        # shellcheck disable=SC2046
        "$PY" experiments/compare_costs.py --task "$task" --methods $(quality_methods "$task") ${extra[@]+"${extra[@]}"} \
            ${sigma[@]+--sigma "${sigma[@]}"} --seeds 0 --out "$SCRATCH/quality/$task" "${args[@]}" || return 1
        collect_quality "$task"
    done
}

# What the quality part made for a task, into OUT (also after a timeout): tables, figures, each run's log.
collect_quality() {
    local task work dir m name tasks=("$@")
    # shellcheck disable=SC2207
    [ ${#tasks[@]} -gt 0 ] || tasks=($(ls "$SCRATCH/quality" 2>/dev/null))
    for task in ${tasks[@]+"${tasks[@]}"}; do
        work="$SCRATCH/quality/$task" dir="$W/quality/$task"
        [ -d "$work" ] || continue
        mkdir -p "$dir"
        for f in results.md results.csv results.json crops.png curves.png; do
            [ -f "$work/$f" ] && cp "$work/$f" "$dir/"
        done
        [ -f "$work/data/split.json" ] && cp "$work/data/split.json" "$dir/"
        for m in "$work"/runs/*/*/sigma-*/metrics.jsonl; do
            [ -f "$m" ] || continue
            name=$(basename "$(dirname "$(dirname "$m")")")
            cp "$m" "$dir/metrics-$name.jsonl"
        done
    done
}

# ----------------------------------------------------------------------------- arguments
if [ "${1:-}" = "--run-part" ]; then   # internal: one part, in the environment the driver exported
    "part_$2"
    exit $?
fi

DRY=0 BUNDLE=0 PARTS="env,cuda_tests,speed,compile,inference,profile,quality" BUDGET="" QTASKS=sr,deraining QSTEPS=1000
QSIGMA="" TFILTER="" OUT=""
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY=1 ;;
        --bundle) BUNDLE=1 ;;
        --parts) PARTS="$2"; shift ;;
        --budget) BUDGET="$2"; shift ;;
        --quality-tasks) QTASKS="$2"; shift ;;
        --quality-steps) QSTEPS="$2"; shift ;;
        --quality-sigma) QSIGMA="$2"; shift ;;
        --tests-filter) TFILTER="$2"; shift ;;
        -h|--help) usage; exit 0 ;;
        -*) echo "unknown option $1" >&2; usage >&2; exit 2 ;;
        *) [ -z "$OUT" ] || { echo "one OUT_DIR only" >&2; exit 2; }; OUT="$1" ;;
    esac
    shift
done
[ -n "$OUT" ] || { usage >&2; exit 2; }
for p in ${PARTS//,/ }; do
    case "$p" in env|cuda_tests|speed|compile|inference|profile|quality) ;; *) echo "unknown part $p" >&2; exit 2 ;; esac
done
if [ "$DRY" = 1 ]; then MODE=dry; BUDGET=${BUDGET:-280}; else MODE=gpu; BUDGET=${BUDGET:-540}; fi

mkdir -p "$OUT" && OUT="$(cd "$OUT" && pwd)" || exit 2
SCRATCH="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")"
if [ "$BUNDLE" = 1 ]; then W="$SCRATCH/out"; else W="$OUT"; fi
mkdir -p "$W"
LOG="$W/gpu_check.log"
: > "$LOG"
: > "$W/status.jsonl"
START=$(date +%s)
DEADLINE=$((START + BUDGET))
export PY DRY W SCRATCH DEADLINE QTASKS QSTEPS QSIGMA TFILTER PYTHONUNBUFFERED=1

say() { echo "[gpu_check $(date +%H:%M:%S) +$(( $(date +%s) - START ))s] $*" | tee -a "$LOG"; }
selected() { [[ ",$PARTS," == *",$1,"* ]]; }

# summary.md/json and the tarball, rewritten after every part
publish() {
    "$PY" bench/gpu_check_tools.py summary --work "$W" --mode "$MODE" --parts "$PARTS" --started "$START" \
        --budget "$BUDGET" --current "${1:-}" >> "$LOG" 2>&1 || say "the summary failed (see the log)"
    (cd "$W" && find . -type f ! -name gpu_check.tar.gz ! -name '*.pt' ! -name '*.h5' -size -16M -print0 \
        | tar --null -czf "$SCRATCH/bundle.tar.gz" -T -) 2>>"$LOG" && mv "$SCRATCH/bundle.tar.gz" "$OUT/gpu_check.tar.gz"
    if [ "$BUNDLE" = 1 ]; then
        cp "$W/summary.md" "$W/summary.json" "$LOG" "$OUT/" 2>/dev/null
    fi
}

CURRENT_PID="" CURRENT_PART=""
record() {  # part status rc seconds timeout
    printf '{"part": "%s", "status": "%s", "rc": %s, "seconds": %s, "timeout_s": %s}\n' "$@" >> "$W/status.jsonl"
}
on_signal() {
    say "interrupted"
    if [ -n "$CURRENT_PID" ]; then
        kill -TERM "$CURRENT_PID" 2>/dev/null
        wait "$CURRENT_PID" 2>/dev/null
        record "$CURRENT_PART" interrupted 130 $(( $(date +%s) - PART_START )) 0
        [ "$CURRENT_PART" = quality ] && collect_quality
    fi
    publish
    exit 130
}
trap on_signal TERM INT

run_part() {  # name budget_seconds
    local name=$1 budget=$2 t rc status
    selected "$name" || return 0
    local override="GPU_CHECK_LIMIT_$name"  # e.g. GPU_CHECK_LIMIT_speed=1: a part's own limit (tests)
    [ -n "${!override:-}" ] && budget=${!override}
    mkdir -p "$W/$name"
    local left=$((DEADLINE - $(date +%s) - 10))
    t=$left
    [ "$budget" -lt "$t" ] && t=$budget
    if [ "$left" -lt 10 ]; then
        say "$name: skipped, no time left"
        record "$name" skipped 0 0 0
        publish
        return 0
    fi
    say "$name: started (limit ${t} s)"
    PART_START=$(date +%s)
    CURRENT_PART=$name
    publish "$name"
    timeout -k 10 "$t" bash "$SELF" --run-part "$name" > "$W/$name/$name.log" 2>&1 &
    CURRENT_PID=$!
    wait "$CURRENT_PID"
    rc=$?
    CURRENT_PID=""
    case $rc in
        0) status=pass ;;
        124|137) status=timeout ;;
        *) status=fail ;;
    esac
    local seconds=$(( $(date +%s) - PART_START ))
    { echo "----- $name ($status, rc $rc, ${seconds} s) -----"; cat "$W/$name/$name.log"; } >> "$LOG"
    [ "$name" = quality ] && collect_quality
    record "$name" "$status" "$rc" "$seconds" "$t"
    say "$name: $status in ${seconds} s"
    if [ "$status" != pass ]; then
        echo "----- last lines of $name's log -----"
        tail -n 25 "$W/$name/$name.log"
        echo "-----"
    fi
    publish
}

say "mode $MODE, budget ${BUDGET} s, parts $PARTS, out $OUT$([ "$BUNDLE" = 1 ] && echo " (bundle; work in $W)"), python $PY"
if [ "$DRY" = 1 ]; then
    run_part env 30; run_part cuda_tests 120; run_part speed 60; run_part compile 40; run_part inference 30
    run_part profile 30; run_part quality 90
else  # about 5 minutes for the measurements, the rest (about 4) for the quality runs
    run_part env 20; run_part cuda_tests 115; run_part speed 60; run_part compile 60; run_part inference 30
    run_part profile 30
    run_part quality $((DEADLINE - $(date +%s) - 15))  # the rest; a SIGTERMed run saves before it stops
fi
publish
"$PY" bench/gpu_check_tools.py summary --work "$W" --mode "$MODE" --parts "$PARTS" --started "$START" \
    --budget "$BUDGET" --print 2>>"$LOG" || cat "$W/summary.md" 2>/dev/null
[ "$BUNDLE" = 1 ] && cp "$W/summary.md" "$W/summary.json" "$OUT/" 2>/dev/null
failed=$(grep -c -v '"status": "pass"' "$W/status.jsonl")
say "done: $failed part(s) not passed; summary in $OUT/summary.md"
[ "$BUNDLE" = 1 ] && cp "$LOG" "$OUT/" 2>/dev/null
# last: the log lives in the scratch folder when bundling
[ "${GPU_CHECK_KEEP:-0}" = 1 ] && echo "scratch kept: $SCRATCH" || rm -rf "$SCRATCH"
[ "$failed" = 0 ]
