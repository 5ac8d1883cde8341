#!/bin/bash
# Submit a whole study: one array task per task of the spec (images x sweep), then the
# report, which starts when every task has ended (afterany: failed tasks too, so the
# page shows them).
#
#   bash slurm/study.sh SPEC [sbatch options for the array...]
#   bash slurm/study.sh study.yaml --partition=gpu --time=04:00:00 --array-limit=8
#
# --array-limit=K runs at most K tasks at once (sbatch's --array=0-N%K); the other
# options (--partition, --account, --time...) go to both jobs. It prints the two job ids. Needs the CLI where it runs (IMGFIT_CLI, default imgfit-batch) to read
# the task count and the output location from the spec (`imgfit-batch plan SPEC --json`).
# Later: `imgfit-batch report OUTPUT` refreshes the page at any time, `squeue -j ID`
# shows the tasks, and re-submitting the same study resumes it (finished tasks exit 0 at
# once).
set -euo pipefail

if [[ $# -lt 1 ]]; then
    echo "usage: bash slurm/study.sh SPEC [sbatch options for the array...]" >&2
    exit 2
fi
here=$(cd "$(dirname "$0")" && pwd)
spec=$1
shift
limit=""
sbatch_args=()
for arg in "$@"; do
    case $arg in
        --array-limit=*) limit="%${arg#--array-limit=}" ;;
        *) sbatch_args+=("$arg") ;;
    esac
done

plan=$("${IMGFIT_CLI:-imgfit-batch}" plan "$spec" --json) || exit $?
read -r count output < <(python3 -c 'import json, sys; p = json.load(sys.stdin); print(p["count"], p["output"])' <<<"$plan")

array=$(sbatch --parsable --array="0-$((count - 1))$limit" "${sbatch_args[@]}" "$here/train.sh" "$spec")
array=${array%%;*}
report=$(sbatch --parsable --dependency="afterany:$array" "${sbatch_args[@]}" "$here/report.sh" "$output")
report=${report%%;*}
echo "study: $count tasks in array job $array; report job $report writes $output/index.html when they end"
