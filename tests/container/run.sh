#!/usr/bin/env bash
# Build the image from the Dockerfile with podman and run the example job inside it,
# the way a cluster would: as the image's non-root user, read-only root filesystem,
# a tmpfs at /tmp, no network, output on a mounted volume. Then stop a second run with
# the runtime's stop signal and expect the job's "checkpointed, resume me" exit (75).
#
#   bash tests/container/run.sh
#
# Exit 0: all of that worked. Exit 77: this machine cannot run it (the reason is
# printed: no podman and no way to install it). Anything else: a failure.
#
# Environment (all optional):
#   IMGFIT_BASE_IMAGE     build FROM this image instead of the local Debian + CPU torch
#                         base (e.g. the Dockerfile's default, where a registry is reachable)
#   IMGFIT_SPEC           the job to run, relative to the repository (examples/quickstart.yaml)
#   IMGFIT_SET            extra space-separated FIELD=VALUE overrides for that run, e.g.
#                         "train.epochs=2" to keep a CI run short
#   IMGFIT_TORCH          pip requirement for torch in the local base (default: the version
#                         this machine's python3 has, so pip takes the same CPU wheel)
#   IMGFIT_DEBIAN_MIRROR  Debian mirror for debootstrap (http://deb.debian.org/debian)
#   IMGFIT_DEBIAN_SUITE   Debian suite for the local base (bookworm: Python 3.11)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
spec=${IMGFIT_SPEC:-examples/quickstart.yaml}
image=localhost/imgfit-batch:test
uid=1000   # the Dockerfile's USER

skip() { echo "SKIP: $*" >&2; exit 77; }
say() { echo "[container $(date +%T)] $*"; }
phase_start=$SECONDS
timed() { say "$1 took $((SECONDS - phase_start)) s"; phase_start=$SECONDS; }

# --- tools -------------------------------------------------------------------------
need=()
command -v podman >/dev/null || need+=(podman)
command -v runc >/dev/null || need+=(runc)
if [[ -z ${IMGFIT_BASE_IMAGE:-} ]] && ! command -v debootstrap >/dev/null; then
    need+=(debootstrap)
fi
if [[ ${#need[@]} -gt 0 ]]; then
    [[ $(id -u) -eq 0 ]] || skip "needs ${need[*]} and is not root to install them"
    command -v apt-get >/dev/null || skip "needs ${need[*]} and has no apt-get"
    say "installing ${need[*]}"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
            "${need[@]}" uidmap >/dev/null; then
        { apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y \
            --no-install-recommends "${need[@]}" uidmap >/dev/null; } \
            || skip "apt-get could not install ${need[*]}"
    fi
    timed "installing tools"
fi
[[ -f $repo/$spec ]] || { echo "FAIL: $spec not found in $repo" >&2; exit 1; }

work=$(mktemp -d "${TMPDIR:-/tmp}/imgfit-container.XXXXXX")
cleanup() {
    podman rm -f "imgfit-stop-$$" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

# Seen needed with Debian's podman on this kind of machine: runc, and no default
# ulimits (the sandbox refuses to raise them). Our own file; the system's stays as is.
cat >"$work/containers.conf" <<'EOF'
[containers]
default_ulimits = []
[engine]
runtime = "runc"
EOF
export CONTAINERS_CONF=$work/containers.conf

# --- pip inside the build ------------------------------------------------------------
# Builds reach the package index only the way this machine's pip does: hand its
# configuration (files and PIP_* variables) to the build as /etc/pip.conf, and mount
# every local path it names (CA bundle, find-links, file:// indexes) at the same place.
pip_volumes=()
if command -v pip >/dev/null || command -v pip3 >/dev/null; then
    pip_cmd=$(command -v pip || command -v pip3)
    "$pip_cmd" config list 2>/dev/null | python3 -c '
import sys
settings = {}
for line in sys.stdin:  # e.g.  global.find-links='\''/opt/wheels'\''
    key, _, value = line.strip().partition("=")
    # first one wins: environment variables come first and take precedence
    settings.setdefault(key.split(".", 1)[1], value.strip("'\''\""))
print("[global]")
for key, value in settings.items():
    print(f"{key} = {value}")
' >"$work/pip.conf"
    pip_volumes+=(-v "$work/pip.conf:/etc/pip.conf:ro")
    # a file:// index (".../simple") links to its files beside it: mount its parent
    while read -r path; do
        [[ -e $path ]] && pip_volumes+=(-v "$path:$path:ro")
    done < <({ grep -oE '[= ]/[^ ]*' "$work/pip.conf" | cut -c2-
               grep -oE 'file:///[^ ]*' "$work/pip.conf" | sed 's#^file://##' | xargs -r -n1 dirname
             } | sort -u)
fi

# --- base image ----------------------------------------------------------------------
base=${IMGFIT_BASE_IMAGE:-}
if [[ -z $base ]]; then
    torch_req=${IMGFIT_TORCH:-$(python3 -c 'import torch; print("torch==" + torch.__version__.split("+")[0])' 2>/dev/null || echo torch)}
    suite=${IMGFIT_DEBIAN_SUITE:-bookworm}
    debian=localhost/imgfit-debootstrap:$suite
    base=localhost/imgfit-base:$suite-${torch_req//[^A-Za-z0-9_.-]/_}
    if ! podman image exists "$debian"; then
        say "debootstrap $suite (public container registries are not reachable)"
        debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
            "$suite" "$work/rootfs" "${IMGFIT_DEBIAN_MIRROR:-http://deb.debian.org/debian}" \
            >"$work/debootstrap.log" 2>&1 || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
        tar -C "$work/rootfs" -c . | podman import - "$debian" >/dev/null
        rm -rf "$work/rootfs"
        timed "debootstrap + import"
    fi
    if ! podman image exists "$base"; then
        say "building $base ($torch_req)"
        podman build --network host "${pip_volumes[@]}" \
            --build-arg DEBIAN_IMAGE="$debian" --build-arg TORCH="$torch_req" \
            -f "$repo/tests/container/base.Containerfile" -t "$base" "$repo/tests/container"
        timed "base image"
    fi
fi

# --- the image under test --------------------------------------------------------------
version=$(python3 -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' "$repo/pyproject.toml")
say "building $image from the Dockerfile on $base"
podman build --network host "${pip_volumes[@]}" \
    --build-arg BASE_IMAGE="$base" --build-arg VERSION="$version" \
    -f "$repo/Dockerfile" -t "$image" "$repo"
timed "image build"

label=$(podman image inspect "$image" --format '{{index .Config.Labels "org.opencontainers.image.version"}}')
[[ $label == "$version" ]] || { echo "FAIL: version label '$label', pyproject says $version" >&2; exit 1; }

# --- run the example job -----------------------------------------------------------------
out=$work/out
mkdir -p "$out"
chown "$uid:$uid" "$out" 2>/dev/null || chmod 0777 "$out"
run_flags=(--network none --read-only --tmpfs /tmp
           -v "$repo/examples:/work/examples:ro" -v "$out:/work/out")

say "running $spec in the container"
echo "uid in the container: $(podman run --rm "${run_flags[@]}" --entrypoint id "$image" -u)"
overrides=(--set output=out/quickstart)
for override in ${IMGFIT_SET:-}; do overrides+=(--set "$override"); done
podman run --rm "${run_flags[@]}" "$image" run "$spec" "${overrides[@]}"
timed "quickstart run"

python3 - "$out/quickstart" <<'EOF'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
summary = json.loads((out / "summary.json").read_text())
assert summary["status"] == "completed", summary
for name in ("video.mp4", "loss.csv", "final.png", "model.pt"):
    assert (out / name).stat().st_size > 0, f"{name} is empty"
print(f"summary: {summary}")
EOF
owner=$(stat -c %u "$out/quickstart/summary.json")
say "outputs written by uid $owner"
[[ $owner -eq $uid ]] || { echo "FAIL: outputs owned by uid $owner, expected $uid" >&2; exit 1; }

# --- the runtime's stop signal reaches the job -------------------------------------------
# A long run, stopped the way Kubernetes and `docker stop` do it (STOPSIGNAL, then a
# grace period): the CLI must see SIGTERM directly, checkpoint and exit 75.
say "stopping a long run with podman stop"
podman run -d --name "imgfit-stop-$$" "${run_flags[@]}" "$image" run "$spec" \
    --set output=out/stopped --set train.epochs=1000 --set checkpoint.every_n_steps=5 >/dev/null
deadline=$((SECONDS + 300))
until compgen -G "$out/stopped/checkpoints/*" >/dev/null; do
    if [[ $(podman inspect "imgfit-stop-$$" --format '{{.State.Running}}') != true ]]; then
        podman logs "imgfit-stop-$$" >&2
        echo "FAIL: the long run ended before writing a checkpoint" >&2; exit 1
    fi
    (( SECONDS < deadline )) || { echo "FAIL: no checkpoint within 300 s" >&2; exit 1; }
    sleep 0.5
done
podman stop --time 60 "imgfit-stop-$$" >/dev/null
code=$(podman inspect "imgfit-stop-$$" --format '{{.State.ExitCode}}')
podman logs "imgfit-stop-$$" 2>&1 | tail -3
say "stopped run exited $code"
[[ $code -eq 75 ]] || { echo "FAIL: expected exit 75 after SIGTERM, got $code" >&2; exit 1; }
timed "stop-signal run"

say "OK: image built, quickstart completed as uid $owner, SIGTERM gave exit 75"
