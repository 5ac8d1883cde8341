#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for tests: munged, slurmctld and slurmd on
# loopback, the node advertising one `gpu` GRES (backed by /dev/null) so that a script
# asking for --gres=gpu:1 schedules on a CPU-only machine.
#
#   tests/cluster/slurm_localhost.sh start DIR   # prints SLURM_CONF=DIR/slurm.conf
#   tests/cluster/slurm_localhost.sh stop DIR    # stops only what `start` started
#
# Clients find the cluster through SLURM_CONF. Installs slurm-wlm and munge from
# Debian's packages when missing (needs root). Exit 77 when it cannot run here.
# Ports: SLURMCTLD_PORT / SLURMD_PORT (default 16817 / 16818, away from a system Slurm);
# tests/test_slurm.py gives each cluster free ports of its own, so two can run on one machine.
set -euo pipefail

cmd=${1:?usage: slurm_localhost.sh start|stop DIR}
dir=${2:?usage: slurm_localhost.sh start|stop DIR}
skip() { echo "SKIP: $*" >&2; exit 77; }

stop() {
    local pidfile pid
    for pidfile in "$dir/slurmd.pid" "$dir/slurmctld.pid" "$dir/munged.pid"; do
        [[ -f $pidfile ]] || continue
        pid=$(cat "$pidfile")
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        rm -f "$pidfile"
    done
    [[ -f $dir/munge.dir ]] && rm -rf "$(cat "$dir/munge.dir")" "$dir/munge.dir"
    return 0
}

if [[ $cmd == stop ]]; then stop; exit 0; fi
[[ $cmd == start ]] || { echo "unknown command: $cmd" >&2; exit 2; }

[[ $(uname -s) == Linux ]] || skip "Slurm daemons need Linux"
[[ $(id -u) -eq 0 ]] || skip "starting slurmd and munged needs root"
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
        || ! command -v sbatch >/dev/null || ! command -v munged >/dev/null; then
    command -v apt-get >/dev/null || skip "slurm-wlm and munge are missing and there is no apt-get"
    apt_install() { DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends slurm-wlm munge >/dev/null; }
    apt_install || { apt-get update >/dev/null && apt_install; } || skip "apt-get could not install slurm-wlm and munge"
fi

mkdir -p "$dir/state" "$dir/spool"
host=$(hostname -s)

# munge: a munged of this cluster's own, on its own socket (slurm.conf's AuthInfo), so two
# clusters on one machine (two test runs) never share one, and stopping one cluster never
# pulls the daemon from under another. The socket's folder is outside $dir, which may lie
# under a folder the munge user cannot enter (pytest's are 0700).
[[ -f /etc/munge/munge.key ]] || { mungekey --create 2>/dev/null || create-munge-key; }
sock_dir=$(mktemp -d /run/imgfit-munge-XXXXXX)
echo "$sock_dir" >"$dir/munge.dir"
chown munge:munge "$sock_dir"
chmod 0755 "$sock_dir"  # munged wants every user able to reach its socket
socket=$sock_dir/munge.socket
runuser -u munge -- munged --socket="$socket" --pid-file="$sock_dir/munged.pid" \
    --log-file="$sock_dir/munged.log" --seed-file="$sock_dir/munged.seed" || { stop; exit 1; }
for _ in $(seq 100); do munge -S "$socket" -n 2>/dev/null | unmunge -S "$socket" >/dev/null 2>&1 && break; sleep 0.1; done
cp "$sock_dir/munged.pid" "$dir/munged.pid" 2>/dev/null || true
munge -S "$socket" -n | unmunge -S "$socket" >/dev/null || { echo "munged did not start" >&2; stop; exit 1; }

# The node line as slurmd itself sees this machine, so it is never marked invalid.
node=$(slurmd -C | head -1)
cat >"$dir/slurm.conf" <<EOF
ClusterName=imgfit-test
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=${SLURMCTLD_PORT:-16817}
SlurmdPort=${SLURMD_PORT:-16818}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$socket
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/builtin
# test every pending job each second: a requeued job whose begin time has passed starts at once
SchedulerParameters=sched_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
KillWait=30
GresTypes=gpu
$node NodeAddr=127.0.0.1 Gres=gpu:1 State=UNKNOWN
PartitionName=test Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
echo "NodeName=$host Name=gpu File=/dev/null" >"$dir/gres.conf"

export SLURM_CONF=$dir/slurm.conf
slurmctld -c -f "$SLURM_CONF"        # -c: fresh state, job ids from 1
slurmd -f "$SLURM_CONF"
for _ in $(seq 300); do
    state=$(sinfo -h -n "$host" -o %t 2>/dev/null || true)
    [[ $state == idle ]] && break
    sleep 0.1
done
if [[ $state != idle ]]; then
    echo "the node did not become idle (state: '${state:-none}')" >&2
    tail -20 "$dir/slurmctld.log" "$dir/slurmd.log" >&2 || true
    stop
    exit 1
fi
echo "SLURM_CONF=$SLURM_CONF"
