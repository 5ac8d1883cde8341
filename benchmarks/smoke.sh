#!/usr/bin/env bash
# Every kept benchmark in its smoke mode: tiny sizes, a generated image, no download, no
# GPU; seconds each, each under its own time limit. One line per script (name, seconds,
# ok / FAILED); on a failure its log's last lines follow, and the exit status is 1.
# A check that the scripts still run, not a measurement: .ci/run calls it after the tests.
#
#   bash benchmarks/smoke.sh              # all of them (about 2 min on 2 quiet cores, 4 on a busy pair)
#   bash benchmarks/smoke.sh quality.py   # only those named
#
# Covered through others: floor.py and seed_reference.py (run.py's contestants, and
# micro_jobs.py's variants of floor.py), seed_model.py (micro_step.py), common.py (all).
# Not here: gpu.sh (GPU_SH_SMOKE=1 runs its plumbing on a CPU in a few minutes, too long
# for CI; it calls gpu_speed.py and run.py, which are here).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
logs=$(mktemp -d "${TMPDIR:-/tmp}/imgfit-smoke-XXXXXX")

# script, seconds allowed (a few times what it takes: for a hung script, not a speed check),
# its smoke command line (after `python benchmarks/SCRIPT`)
SMOKES=(
    "run.py               120 --smoke"
    "quality.py            60 --smoke"
    "hashgrid_speed.py     60 --smoke"
    "micro_step.py         90 --smoke"
    "micro_jobs.py         90 --smoke"
    "skipconn_variants.py  30 --smoke"
    "gpu_speed.py          90 --device cpu --quick"
    "photos.py            120 --smoke --seconds 3"
    "rate_distortion.py   120 --smoke"
)

for name in "$@"; do
    [[ " ${SMOKES[*]} " == *" $name "* ]] || { echo "benchmarks/smoke.sh: no smoke mode for $name" >&2; exit 2; }
done

failed=0
started=$SECONDS
for entry in "${SMOKES[@]}"; do
    read -r script limit args <<<"$entry"
    if (($# > 0)) && [[ " $* " != *" $script "* ]]; then continue; fi
    log="$logs/${script%.py}.log"
    t0=$EPOCHREALTIME
    # shellcheck disable=SC2086  # $args is a list of switches
    timeout "$limit" python benchmarks/$script $args >"$log" 2>&1
    rc=$?
    took=$(awk "BEGIN { print $EPOCHREALTIME - $t0 }")
    if ((rc == 0)); then
        printf '%-22s %6.1f s  ok\n' "$script" "$took"
    else
        why="exit $rc"; ((rc == 124)) && why="over its ${limit} s"
        printf '%-22s %6.1f s  FAILED (%s; log %s)\n' "$script" "$took" "$why" "$log"
        tail -n 15 "$log" | sed 's/^/    /'
        failed=1
    fi
done
printf 'benchmarks smoke: %d s in all%s\n' $((SECONDS - started)) "$( ((failed)) && echo ', FAILED' )"
((failed)) || rm -rf "$logs"
exit $failed
