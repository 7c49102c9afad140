#!/usr/bin/env bash
# A throwaway single-node SLURM cluster on this machine, for the tests of the SLURM profile.
#
#   bash tests/slurm/cluster.sh up      install slurm-wlm + munge if missing, write the config,
#                                       start munged, slurmctld and slurmd, wait for the node
#   bash tests/slurm/cluster.sh status  show what runs and what SLURM reports
#   bash tests/slurm/cluster.sh down    cancel the jobs, stop what `up` started, remove its files
#
# Needs root (Debian or Ubuntu, apt). `up` and `down` are idempotent: running either twice in a
# row is fine. The cluster: one node (this machine: CPUs and memory from `slurmd -C`) with two
# fake GPUs (character devices that behave like /dev/null, so that SLURM sets
# CUDA_VISIBLE_DEVICES), partitions `gpu` (default) and `cpu`, select/cons_tres so that several
# 1-GPU jobs run at once, no accounting database: job states come from `squeue`, which keeps
# finished jobs for MinJobAge seconds.
#
# Everything it writes lives in $NORMDROP_SLURM_STATE (default /tmp/normdrop-slurm), except
# /etc/slurm/{slurm,gres,cgroup}.conf (the clients read the config from there) which carry a
# marker line; a slurm.conf without that marker (a real cluster's) is never touched.
set -euo pipefail

export PATH=$PATH:/usr/sbin:/sbin
STATE=${NORMDROP_SLURM_STATE:-/tmp/normdrop-slurm}
CONF_DIR=/etc/slurm
MARKER="# written by normdrop tests/slurm/cluster.sh"
MIN_JOB_AGE=600 # s; far above the executor plugin's status polling interval (40 s to 180 s)
N_GPUS=2
MIN_MEM_MB=32768
WAIT_S=${NORMDROP_SLURM_WAIT_S:-90}

say() { printf 'cluster.sh: %s\n' "$*"; }
die() {
    printf 'cluster.sh: ERROR: %s\n' "$*" >&2
    exit 1
}

show_logs() {
    local f
    for f in "$STATE"/slurmctld.log "$STATE"/slurmd.log /var/log/munge/munged.log; do
        if [[ -s $f ]]; then
            printf '\n----- last lines of %s -----\n' "$f" >&2
            tail -n 25 "$f" >&2
        fi
    done
}

fail() {
    printf 'cluster.sh: ERROR: %s\n' "$*" >&2
    show_logs
    exit 1
}

need_root() {
    [[ $(id -u) -eq 0 ]] || die "must run as root (it installs packages and starts daemons)"
}

# pid from a pid file, if that process is alive
alive_pid() {
    local pidfile=$1 pid
    [[ -s $pidfile ]] || return 1
    pid=$(<"$pidfile")
    [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

stop_pidfile() { # stop_pidfile NAME PIDFILE
    local name=$1 pidfile=$2 pid i
    if pid=$(alive_pid "$pidfile"); then
        say "stopping $name (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 100; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.2
        done
        if kill -0 "$pid" 2>/dev/null; then
            say "$name did not stop in 20 s, killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    rm -f "$pidfile"
}

# ---------------------------------------------------------------------------------------------
install_packages() {
    local missing=()
    command -v slurmctld >/dev/null || missing+=(slurmctld)
    command -v slurmd >/dev/null || missing+=(slurmd)
    command -v sbatch >/dev/null || missing+=(slurm-client)
    command -v munged >/dev/null || missing+=(munge)
    ((${#missing[@]})) || return 0
    command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get to install them"
    # slurm-wlm pulls slurmctld, slurmd and slurm-client
    local pkgs=(slurm-wlm munge)
    say "installing ${pkgs[*]} (missing: ${missing[*]})"
    # keep the packages' init scripts from starting services: this script starts the daemons
    local policy=/usr/sbin/policy-rc.d made_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        made_policy=1
    fi
    local rc=0 log="/tmp/normdrop-slurm-apt.log"
    export DEBIAN_FRONTEND=noninteractive
    local opts=(-y -q -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold
        --no-install-recommends)
    if ! apt-get install "${opts[@]}" "${pkgs[@]}" >"$log" 2>&1; then
        say "apt-get install failed; running apt-get update and trying again"
        if ! apt-get update -q >>"$log" 2>&1 ||
            ! apt-get install "${opts[@]}" "${pkgs[@]}" >>"$log" 2>&1; then
            rc=1
        fi
    fi
    ((made_policy)) && rm -f "$policy"
    if ((rc)); then
        tail -n 30 "$log" >&2
        die "could not install ${pkgs[*]} (full log: $log)"
    fi
    local cmd
    for cmd in slurmctld slurmd sbatch munged; do
        command -v "$cmd" >/dev/null || die "packages installed but '$cmd' not found"
    done
}

# ---------------------------------------------------------------------------------------------
munge_works() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {
    if munge_works; then
        say "munged already running"
        return 0
    fi
    local key=/etc/munge/munge.key
    id munge >/dev/null 2>&1 || die "no user 'munge' (the munge package should have made it)"
    if [[ ! -s $key ]]; then
        say "creating munge key $key"
        install -d -o munge -g munge -m 700 /etc/munge
        if command -v mungekey >/dev/null; then
            mungekey --create --keyfile="$key" --force
        else
            dd if=/dev/urandom of="$key" bs=1 count=1024 status=none
        fi
    fi
    chown munge:munge "$key"
    chmod 600 "$key"
    install -d -o munge -g munge -m 755 /run/munge
    install -d -o munge -g munge -m 700 /var/log/munge /var/lib/munge
    say "starting munged"
    runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid ||
        fail "munged did not start"
    local i
    for ((i = 0; i < 50; i++)); do
        munge_works && break
        sleep 0.2
    done
    munge_works || fail "munged started but 'munge -n | unmunge' fails"
    echo /run/munge/munged.pid >"$STATE/munged.started-by-us"
}

stop_munge() {
    [[ -s $STATE/munged.started-by-us ]] || return 0
    stop_pidfile munged "$(<"$STATE/munged.started-by-us")"
    rm -f "$STATE/munged.started-by-us"
}

# ---------------------------------------------------------------------------------------------
# Writes the config files into $STATE/conf.new; prints nothing.
render_config() {
    local node cpus mem line out=$STATE/conf.new
    line=$(slurmd -C 2>/dev/null | head -n 1) || true
    [[ $line == NodeName=* ]] || die "'slurmd -C' gave no node line: '$line'"
    node=$(sed -n 's/.*NodeName=\([^ ]*\).*/\1/p' <<<"$line")
    cpus=$(sed -n 's/.* CPUs=\([0-9]*\).*/\1/p' <<<"$line")
    mem=$(sed -n 's/.* RealMemory=\([0-9]*\).*/\1/p' <<<"$line")
    [[ -n $node && -n $cpus && -n $mem ]] || die "could not parse 'slurmd -C': $line"
    # Memory is not enforced here (not a consumable resource, no cgroups); SLURM only rejects a
    # job asking for more than RealMemory. Declare at least MIN_MEM_MB so that the profile's
    # real-size requests pass on a small CI machine (config_overrides: the node does not drain).
    mem=$((mem * 95 / 100))
    ((mem >= MIN_MEM_MB)) || mem=$MIN_MEM_MB
    rm -rf "$out"
    mkdir -p "$out"
    # Only CPUs= (no Sockets/Cores/Threads): with CR_CPU every hardware thread is a schedulable
    # CPU, so a 2-CPU machine runs two 1-CPU jobs at once even with hyper-threading.
    cat >"$out/slurm.conf" <<EOF
$MARKER -- a throwaway single-node test cluster; 'cluster.sh down' removes it.
ClusterName=normdrop
SlurmctldHost=$node(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
MpiDefault=none
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
GresTypes=gpu
SlurmdParameters=config_overrides
ReturnToService=2
MinJobAge=$MIN_JOB_AGE
KillWait=5
InactiveLimit=0
Waittime=0
SlurmctldDebug=info
SlurmdDebug=info
StateSaveLocation=$STATE/slurmctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem Gres=gpu:$N_GPUS State=UNKNOWN
PartitionName=gpu Nodes=$node Default=YES MaxTime=INFINITE State=UP
PartitionName=cpu Nodes=$node Default=NO MaxTime=INFINITE State=UP
EOF
    {
        echo "$MARKER"
        echo "AutoDetect=off"
        local i
        for ((i = 0; i < N_GPUS; i++)); do
            echo "NodeName=$node Name=gpu File=$STATE/dev/nvidia$i"
        done
    } >"$out/gres.conf"
    # not used by the plugins above (no cgroups), but some slurmd builds read it anyway
    printf '%s\nCgroupPlugin=autodetect\nIgnoreSystemd=yes\n' "$MARKER" >"$out/cgroup.conf"
    echo "$node" >"$out/node"
}

config_is_current() {
    local f
    for f in slurm.conf gres.conf cgroup.conf; do
        cmp -s "$STATE/conf.new/$f" "$CONF_DIR/$f" || return 1
    done
}

install_config() {
    local f
    mkdir -p "$CONF_DIR"
    for f in slurm.conf gres.conf cgroup.conf; do
        if [[ -e $CONF_DIR/$f ]] && ! grep -qF "$MARKER" "$CONF_DIR/$f"; then
            die "$CONF_DIR/$f exists and was not written by this script (a real cluster?); \
refusing to overwrite it"
        fi
    done
    for f in slurm.conf gres.conf cgroup.conf; do
        cp "$STATE/conf.new/$f" "$CONF_DIR/$f"
        chmod 644 "$CONF_DIR/$f"
    done
}

make_gpu_devices() {
    local i dev
    mkdir -p "$STATE/dev"
    for ((i = 0; i < N_GPUS; i++)); do
        dev=$STATE/dev/nvidia$i
        [[ -c $dev ]] && continue
        rm -f "$dev"
        # a copy of /dev/null: a character device is what SLURM's gres/gpu plugin expects
        mknod -m 666 "$dev" c 1 3 || die "mknod $dev failed"
    done
}

foreign_daemon() { # a slurmctld/slurmd running that we did not start?
    local name=$1 ours pid
    command -v pgrep >/dev/null || return 1
    ours=$(alive_pid "$STATE/$name.pid" || true)
    for pid in $(pgrep -x "$name" || true); do
        [[ $pid == "$ours" ]] || return 0
    done
    return 1
}

node_state() { sinfo -h -N -n "$1" -o '%T' 2>/dev/null | head -n 1; }

wait_for_node() {
    local node=$1 st="" i resumed=0
    for ((i = 0; i < WAIT_S * 2; i++)); do
        st=$(node_state "$node" || true)
        case $st in
        idle | mixed | allocated | completing) break ;;
        *drain* | down* | fail*)
            if ((resumed < 3)); then
                say "node $node is '$st', resuming it"
                scontrol update NodeName="$node" State=RESUME >/dev/null 2>&1 || true
                resumed=$((resumed + 1))
            fi
            ;;
        esac
        sleep 0.5
    done
    case $st in
    idle | mixed | allocated | completing) ;;
    *)
        scontrol show node "$node" >&2 2>&1 || true
        fail "node $node did not become idle within ${WAIT_S}s (state: '${st:-none}')"
        ;;
    esac
    say "node $node is $st"
}

# ---------------------------------------------------------------------------------------------
cmd_up() {
    need_root
    install_packages
    mkdir -p "$STATE"
    chmod 755 "$STATE"
    start_munge
    render_config
    local node
    node=$(<"$STATE/conf.new/node")

    local ctld_pid d_pid
    ctld_pid=$(alive_pid "$STATE/slurmctld.pid" || true)
    d_pid=$(alive_pid "$STATE/slurmd.pid" || true)
    if [[ -n $ctld_pid && -n $d_pid ]] && config_is_current; then
        say "slurmctld (pid $ctld_pid) and slurmd (pid $d_pid) already running"
        wait_for_node "$node"
        say "cluster is up"
        return 0
    fi
    # something is missing or the config changed: (re)start both
    stop_pidfile slurmd "$STATE/slurmd.pid"
    stop_pidfile slurmctld "$STATE/slurmctld.pid"
    if foreign_daemon slurmctld || foreign_daemon slurmd; then
        local pids
        pids="$(pgrep -d ' ' -x slurmctld || true) $(pgrep -d ' ' -x slurmd || true)"
        die "a slurmctld or slurmd not started by this script is running (pids: $pids); stop it"
    fi
    install_config
    make_gpu_devices
    mkdir -p "$STATE/slurmctld" "$STATE/slurmd"
    : >"$STATE/slurmctld.log"
    : >"$STATE/slurmd.log"

    say "starting slurmctld"
    # -i: start even if the state saved by an earlier run is unreadable (`down` deletes it)
    slurmctld -i || fail "slurmctld did not start"
    local i
    for ((i = 0; i < WAIT_S * 2; i++)); do
        scontrol ping 2>/dev/null | grep -q 'is UP' && break
        if ((i > 6)) && ! alive_pid "$STATE/slurmctld.pid" >/dev/null; then
            fail "slurmctld exited right after starting"
        fi
        sleep 0.5
    done
    scontrol ping 2>/dev/null | grep -q 'is UP' || fail "slurmctld does not answer 'scontrol ping'"

    say "starting slurmd"
    slurmd || fail "slurmd did not start"
    for ((i = 0; i < 20; i++)); do
        alive_pid "$STATE/slurmd.pid" >/dev/null && break
        sleep 0.5
    done
    alive_pid "$STATE/slurmd.pid" >/dev/null || fail "slurmd exited right after starting"
    wait_for_node "$node"

    # smoke test: a 1-GPU job sees exactly one GPU
    local out
    # shellcheck disable=SC2016 # expanded by the job's shell
    out=$(timeout 60 srun -p gpu --gpus=1 -n1 -t 1 bash -c 'echo "gpus=$CUDA_VISIBLE_DEVICES"' \
        2>&1) || fail "srun smoke test failed: $out"
    [[ $out == "gpus=0" || $out == "gpus=1" ]] ||
        fail "srun smoke test: expected one GPU in CUDA_VISIBLE_DEVICES, got '$out'"
    say "srun smoke test ok ($out)"
    say "cluster is up: partitions $(sinfo -h -o '%P' | tr '\n' ' ')"
}

cmd_down() {
    need_root
    local jobs
    if command -v scontrol >/dev/null && alive_pid "$STATE/slurmctld.pid" >/dev/null; then
        jobs=$(squeue -h -o '%i' -t PENDING,RUNNING,SUSPENDED,COMPLETING 2>/dev/null | wc -l)
        if ((jobs > 0)); then
            say "cancelling $jobs job(s)"
            squeue -h -o '%i' 2>/dev/null | xargs -r scancel >/dev/null 2>&1 || true
            local i
            for ((i = 0; i < 30; i++)); do
                [[ -z $(squeue -h -o '%i' -t RUNNING,COMPLETING 2>/dev/null) ]] && break
                sleep 0.5
            done
        fi
    fi
    stop_pidfile slurmd "$STATE/slurmd.pid"
    stop_pidfile slurmctld "$STATE/slurmctld.pid"
    stop_munge
    local f
    for f in slurm.conf gres.conf cgroup.conf; do
        if [[ -e $CONF_DIR/$f ]] && grep -qF "$MARKER" "$CONF_DIR/$f"; then
            rm -f "$CONF_DIR/$f"
        fi
    done
    rm -rf "$STATE"
    say "cluster is down"
}

cmd_status() {
    local name pid rc=0
    for name in slurmctld slurmd; do
        if pid=$(alive_pid "$STATE/$name.pid"); then
            say "$name running (pid $pid)"
        else
            say "$name not running"
            rc=1
        fi
    done
    if munge_works; then say "munged running"; else
        say "munged not running"
        rc=1
    fi
    if ((rc == 0)); then
        sinfo -N -o '%N %P %T %c %m %G' || rc=1
        squeue || rc=1
    fi
    return $rc
}

case ${1:-} in
up) cmd_up ;;
down) cmd_down ;;
status) cmd_status ;;
*)
    echo "usage: $0 up|down|status" >&2
    exit 2
    ;;
esac
