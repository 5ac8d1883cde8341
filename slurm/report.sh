#!/bin/bash
#SBATCH --job-name=imgfit-report
#SBATCH --cpus-per-task=1
#SBATCH --open-mode=append
#
# The fan-in after a study: one page (OUTPUT/index.html) and one table
# (OUTPUT/results.csv) comparing every task under OUTPUT. No GPU. Submit it to start
# when the array has ended, however its tasks ended:
#
#   sbatch --dependency=afterany:<array job id> slurm/report.sh OUTPUT
#
# (slurm/study.sh submits the array and this step together.) Running it again at any
# time, also while tasks still run, is safe: it only reads the tasks' folders.
#
# Environment (all optional), as for slurm/train.sh:
#   IMGFIT_CLI        command to run outside a container (default: imgfit-batch on PATH)
#   IMGFIT_CONTAINER  run inside this image instead (.sif / docker:// for Apptainer or
#                     Singularity, an enroot image name or .sqsh)
#   IMGFIT_RUNTIME    apptainer | singularity | enroot (default: the first one installed)
set -uo pipefail

if [[ $# -ne 1 ]]; then
    echo "usage: sbatch [--dependency=afterany:JOBID] slurm/report.sh OUTPUT" >&2
    exit 2
fi

run=("${IMGFIT_CLI:-imgfit-batch}" report "$1")
# The container choice mirrors slurm/train.sh's (keep them alike): Slurm runs a copy of
# each batch script from its spool folder, so one cannot source a file beside the other.
if [[ -n ${IMGFIT_CONTAINER:-} ]]; then
    runtime=${IMGFIT_RUNTIME:-}
    if [[ -z $runtime ]]; then
        for candidate in apptainer singularity enroot; do
            if command -v "$candidate" >/dev/null; then runtime=$candidate; break; fi
        done
    fi
    case $runtime in
        apptainer | singularity)
            run=("$runtime" exec --bind "$PWD" --pwd "$PWD" "$IMGFIT_CONTAINER" imgfit-batch report "$1") ;;
        enroot)
            # enroot starts from a clean environment: pass the stores' settings by name
            env_args=()
            for name in AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_SESSION_TOKEN AWS_DEFAULT_REGION AWS_REGION \
                        AWS_ENDPOINT_URL AWS_PROFILE AWS_ROLE_ARN AWS_WEB_IDENTITY_TOKEN_FILE IMGFIT_S3_RETRY_SECONDS \
                        GOOGLE_APPLICATION_CREDENTIALS GOOGLE_CLOUD_PROJECT STORAGE_EMULATOR_HOST \
                        AZURE_STORAGE_CONNECTION_STRING AZURE_STORAGE_ACCOUNT_NAME AZURE_STORAGE_ACCOUNT_KEY \
                        AZURE_STORAGE_SAS_TOKEN AZURE_CLIENT_ID AZURE_TENANT_ID AZURE_FEDERATED_TOKEN_FILE; do
                [[ -n ${!name:-} ]] && env_args+=(--env "$name")
            done
            # shellcheck disable=SC2016
            run=(enroot start --mount "$PWD:$PWD" "${env_args[@]}" "$IMGFIT_CONTAINER"
                 sh -c 'cd "$1" && shift && exec "$@"' sh "$PWD" imgfit-batch report "$1") ;;
        *)
            echo "IMGFIT_CONTAINER is set but no container runtime was found" \
                 "(set IMGFIT_RUNTIME to apptainer, singularity or enroot)" >&2
            exit 3 ;;
    esac
fi
exec "${run[@]}"
