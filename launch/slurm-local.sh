#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for the tests and for trying `--launcher slurm`.
#
#   sudo launch/slurm-local.sh          # install if missing, configure, start, wait until idle
#   sudo launch/slurm-local.sh status   # sinfo, and whether each daemon runs
#   sudo launch/slurm-local.sh stop     # stop slurmd, slurmctld and munged
#
# Debian/Ubuntu only, as root. The node is this host on loopback, with the CPU count and memory
# that `slurmd -C` detects; no accounting database (submitit warns that `sacct` fails: harmless,
# tome_lab reads job states with squeue). Running it again while the cluster is up changes
# nothing. Daemons are started directly (no systemd), so it also works in containers.
set -euo pipefail

ACTION="${1:-start}"
CONF=/etc/slurm/slurm.conf
SPOOL=/var/spool/tome_lab_slurm
RUN=/run/tome_lab_slurm
PARTITION=debug
CLUSTER=tomelab

die() { echo "slurm-local: $*" >&2; exit 1; }
say() { echo "slurm-local: $*" >&2; }

alive() {  # alive PIDFILE: the process recorded in PIDFILE runs
    [[ -s "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

stop_daemon() {  # stop_daemon NAME PIDFILE
    if alive "$2"; then
        local pid
        pid="$(cat "$2")"
        kill "$pid"
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        say "stopped $1 (pid $pid)"
    fi
    rm -f "$2"
}

install_packages() {
    local missing=()
    command -v slurmctld >/dev/null || missing+=(slurmctld)
    command -v slurmd >/dev/null || missing+=(slurmd)
    command -v sbatch >/dev/null || missing+=(slurm-client)
    command -v munged >/dev/null || missing+=(munge)
    if ((${#missing[@]})); then
        command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get to install them"
        say "installing ${missing[*]}"
        apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
    fi
}

start_munge() {
    local key=/etc/munge/munge.key pidfile=/run/munge/munged.pid
    if [[ ! -s "$key" ]]; then
        mkdir -p /etc/munge
        dd if=/dev/urandom of="$key" bs=1 count=1024 status=none
    fi
    chown munge:munge "$key" && chmod 400 "$key"
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    if alive "$pidfile" || munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        return
    fi
    runuser -u munge -- /usr/sbin/munged
    for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return; sleep 0.1; done
    die "munged did not start (see /var/log/munge/munged.log)"
}

write_conf() {
    # slurmd -C prints this host's node line: name, CPUs, sockets, cores, threads, RealMemory.
    local node name host tmp
    node="$(slurmd -C | head -n 1)"
    name="$(sed -E 's/^NodeName=([^ ]+).*/\1/' <<<"$node")"
    host="$(hostname -s)"
    tmp="$(mktemp)"
    cat >"$tmp" <<EOF
# Written by tome_lab's launch/slurm-local.sh: a one-node cluster on loopback.
ClusterName=$CLUSTER
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# A requeued job waits cred_expire seconds before it may start again (default 120).
AuthInfo=cred_expire=30
StateSaveLocation=$SPOOL/ctld
SlurmdSpoolDir=$SPOOL/d
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$SPOOL/slurmctld.log
SlurmdLogFile=$SPOOL/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
ReturnToService=2
# Seconds between SIGTERM and SIGKILL at a time limit or scancel (default 30).
KillWait=5
# Finished jobs stay visible to squeue for 10 minutes (status reads them).
MinJobAge=600
MaxArraySize=10001
$node NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=$PARTITION Nodes=$name Default=YES MaxTime=INFINITE State=UP
EOF
    mkdir -p /etc/slurm
    if ! cmp -s "$tmp" "$CONF"; then
        install -m 644 "$tmp" "$CONF"
        say "wrote $CONF ($node)"
        # daemons running with an older configuration: restart them with this one
        stop_daemon slurmd "$RUN/slurmd.pid"
        stop_daemon slurmctld "$RUN/slurmctld.pid"
    fi
    rm -f "$tmp"
}

wait_idle() {
    local state=""
    for _ in $(seq 120); do
        state="$(sinfo -h -p "$PARTITION" -o %T 2>/dev/null | head -n 1 || true)"
        case "$state" in
            idle|mixed|allocated|completing) say "node $state, partition $PARTITION up"; return ;;
            down*|drain*|fail*) scontrol update nodename="$(hostname -s)" state=resume \
                                    >/dev/null 2>&1 || true ;;
        esac
        sleep 0.5
    done
    die "the node did not become idle (state '$state'); see $SPOOL/slurmctld.log, slurmd.log"
}

[[ $EUID -eq 0 ]] || die "run as root (it installs packages and starts daemons)"
case "$ACTION" in
    start)
        install_packages
        start_munge
        write_conf
        mkdir -p "$SPOOL/ctld" "$SPOOL/d" "$RUN"
        if ! alive "$RUN/slurmctld.pid"; then
            slurmctld
            say "started slurmctld"
        fi
        if ! alive "$RUN/slurmd.pid"; then
            slurmd
            say "started slurmd"
        fi
        wait_idle
        ;;
    stop)
        stop_daemon slurmd "$RUN/slurmd.pid"
        stop_daemon slurmctld "$RUN/slurmctld.pid"
        stop_daemon munged /run/munge/munged.pid
        ;;
    status)
        for d in slurmctld slurmd; do
            if alive "$RUN/$d.pid"; then echo "$d: running"; else echo "$d: stopped"; fi
        done
        sinfo 2>/dev/null || true
        ;;
    *) die "usage: $0 [start|stop|status]" ;;
esac
