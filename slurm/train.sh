#!/bin/bash
#SBATCH --job-name=imgfit
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=4
#SBATCH --requeue
#SBATCH --signal=B:USR1@120
#SBATCH --open-mode=append
#
# Train one image on one GPU; requeue after a preemption or time-limit warning.
# Four cores, as the Kubernetes manifests request: the training loop, the frame
# writer and the x264 encoder each want one, or the GPU waits on them.
#
#   sbatch slurm/train.sh SPEC [imgfit-batch run options...]
#   sbatch --array=0-N slurm/train.sh SPEC     # a spec of N+1 tasks (images x sweep:
#                                              # `imgfit-batch plan SPEC` prints N)
#   bash slurm/study.sh SPEC                   # the array and its report in one go
#
# 120 s before the time limit (or when an admin sends `scancel --batch --signal=USR1`)
# Slurm sends USR1 to this script. The script passes it on to the job, which writes a
# checkpoint and exits 75; the script then puts itself back in the queue and the next
# run resumes from that checkpoint. Array task i trains task i of the spec (the CLI
# reads SLURM_ARRAY_TASK_ID): image i of a list, writing to OUTPUT/<stem of image i>/,
# or with a `sweep:` image i // C with combination i % C of the C combinations,
# writing to OUTPUT/<stem>/<label of its values>/.
#
# Environment (all optional):
#   IMGFIT_CLI        command to run outside a container (default: imgfit-batch on PATH)
#   IMGFIT_CONTAINER  run inside this image instead: a .sif file or docker:// URI for
#                     Apptainer/Singularity, or an enroot image (name or .sqsh)
#   IMGFIT_RUNTIME    apptainer | singularity | enroot (default: the first one installed)
#   IMGFIT_MAX_RETRIES  how often a transient fault (exit 69) requeues the job (default 3)
set -uo pipefail

if [[ $# -lt 1 ]]; then
    echo "usage: sbatch slurm/train.sh SPEC [imgfit-batch run options...]" >&2
    exit 2
fi

cli=${IMGFIT_CLI:-imgfit-batch}
run=("$cli" run "$@")
if [[ -n ${IMGFIT_CONTAINER:-} ]]; then
    runtime=${IMGFIT_RUNTIME:-}
    if [[ -z $runtime ]]; then
        for candidate in apptainer singularity enroot; do
            if command -v "$candidate" >/dev/null; then runtime=$candidate; break; fi
        done
    fi
    case $runtime in
        apptainer | singularity)
            # --nv brings the host's NVIDIA driver in; the host environment
            # (SLURM_ARRAY_TASK_ID, AWS_*, GOOGLE_*, AZURE_*) passes through by default.
            run=("$runtime" exec --nv --bind "$PWD" --pwd "$PWD" "$IMGFIT_CONTAINER"
                 imgfit-batch run "$@") ;;
        enroot)
            # enroot has no working-directory option: cd inside, then exec the CLI.
            # shellcheck disable=SC2016
            # enroot starts from a clean environment: name every variable the job
            # reads (the GPU Slurm gave us, the array index, the stores' credentials
            # and endpoints, the retry settings); only those that are set are passed.
            env_args=()
            for name in CUDA_VISIBLE_DEVICES NVIDIA_VISIBLE_DEVICES SLURM_ARRAY_TASK_ID SLURM_JOB_ID \
                        AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_SESSION_TOKEN AWS_DEFAULT_REGION \
                        AWS_REGION AWS_ENDPOINT_URL AWS_PROFILE AWS_ROLE_ARN AWS_WEB_IDENTITY_TOKEN_FILE \
                        IMGFIT_S3_RETRY_SECONDS IMGFIT_STOP_GRACE_SECONDS OMP_NUM_THREADS \
                        GOOGLE_APPLICATION_CREDENTIALS GOOGLE_CLOUD_PROJECT STORAGE_EMULATOR_HOST \
                        AZURE_STORAGE_CONNECTION_STRING AZURE_STORAGE_ACCOUNT_NAME AZURE_STORAGE_ACCOUNT_KEY \
                        AZURE_STORAGE_SAS_TOKEN AZURE_CLIENT_ID AZURE_TENANT_ID AZURE_FEDERATED_TOKEN_FILE; do
                [[ -n ${!name:-} ]] && env_args+=(--env "$name")
            done
            run=(enroot start --mount "$PWD:$PWD" "${env_args[@]}"
                 "$IMGFIT_CONTAINER" sh -c 'cd "$1" && shift && exec "$@"'
                 sh "$PWD" imgfit-batch run "$@") ;;
        *)
            echo "IMGFIT_CONTAINER is set but no container runtime was found" \
                 "(set IMGFIT_RUNTIME to apptainer, singularity or enroot)" >&2
            exit 3 ;;
    esac
fi

if [[ -n ${SLURM_ARRAY_JOB_ID:-} ]]; then
    job_id=${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}
else
    job_id=${SLURM_JOB_ID:-}
fi

warned=0
child=""
# shellcheck disable=SC2317  # called by the trap
forward_warning() {
    warned=1
    trapped=1
    echo "imgfit: $(date -Is) USR1 (time limit or preemption ahead): asking job $job_id to checkpoint" >&2
    [[ -n $child ]] && kill -USR1 "$child" 2>/dev/null
}
trap forward_warning USR1

# The job runs in the background so that bash can run the trap while it waits.
"${run[@]}" &
child=$!
# `wait` returns early whenever a trapped signal arrives (the trap sets `trapped`); wait
# again until it returns with nothing trapped meanwhile: that is the job's exit status.
# Not `kill -0 PID`: on a busy node (pid_max is often 32768) the pid can be reused at once
# by another process, and a liveness loop would spin for as long as that process lives.
while :; do
    trapped=0
    wait "$child"
    status=$?
    ((trapped)) || break
done

if [[ $status -eq 75 && $warned -eq 1 && -n $job_id ]]; then
    echo "imgfit: $(date -Is) checkpoint saved; requeueing $job_id to resume" >&2
    # Requeue ends this run; the job goes back to the queue under the same id.
    scontrol requeue "$job_id"
    exit 0
fi

# 69: a transient or node-local fault (S3 throttling or outage past the job's own
# retries, local disk full, a GPU that is absent or broken). Requeue, at most
# IMGFIT_MAX_RETRIES times (default 3) over the job's life, counted in its Comment
# because SLURM_RESTART_COUNT also counts the preemptions above. Slurm holds a
# requeued job for a while before it starts again, which is the backoff.
if [[ $status -eq 69 && -n $job_id ]]; then
    max_retries=${IMGFIT_MAX_RETRIES:-3}
    used=$(scontrol -o show job "$job_id" 2>/dev/null | grep -o 'Comment=imgfit-retries:[0-9]*' | head -n1 | cut -d: -f2)
    used=${used:-0}
    if (( used < max_retries )); then
        echo "imgfit: $(date -Is) transient fault (exit 69); requeueing $job_id, retry $((used + 1)) of $max_retries" >&2
        scontrol update JobId="$job_id" Comment="imgfit-retries:$((used + 1))"
        scontrol requeue "$job_id"
        exit 0
    fi
    echo "imgfit: $(date -Is) transient fault (exit 69) after $max_retries retries; giving up" >&2
fi
# 2 (invalid spec) and 3 (input missing, denied or corrupt) fail at once: a retry cannot help.
exit "$status"
