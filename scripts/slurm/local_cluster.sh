#!/usr/bin/env bash
# A one-node Slurm on localhost from Debian's packages (slurmctld, slurmd, slurm-client, munge), for the
# tests and for trying the array examples without a cluster. Everything (munge key and socket, config,
# state, logs, pid files) lives in DIR; nothing under /etc is used or changed, and the daemons listen on
# ports of their own, so a system Slurm or munge on the same machine is left alone. Needs root.
#
#   scripts/slurm/local_cluster.sh start DIR [CPUS]   # start munged, slurmctld, slurmd; wait until the node is idle
#   export SLURM_CONF=DIR/slurm.conf                    # then sbatch, squeue, scancel, scontrol talk to it
#   scripts/slurm/local_cluster.sh stop DIR            # stop the daemons (by their pid files)
#
# CPUS (default 4) is what the node claims to have (SlurmdParameters=config_overrides): array tasks of one
# CPU each run CPUS at a time even on a smaller machine.
set -euo pipefail
cmd="${1:?usage: local_cluster.sh start|stop DIR [CPUS]}"
DIR="$(mkdir -p "${2:?directory}" && cd "$2" && pwd)"
CPUS="${3:-4}"
say() { echo "[slurm] $*" >&2; }

stop() {
  local f
  for f in "$DIR/slurmd.pid" "$DIR/slurmctld.pid" "$DIR/munge/munged.pid"; do
    [ -f "$f" ] || continue
    local pid
    pid="$(cat "$f")"
    if kill -0 "$pid" 2>/dev/null; then
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$f"
  done
}

free_port() {  # a TCP port nothing listens on, from a range of our own
  local port
  for port in $(seq "$1" "$(( $1 + 200 ))"); do
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then echo "$port"; return; fi
  done
  echo "$1"
}

start() {
  [ "$(id -u)" = 0 ] || { say "needs root (the daemons run as root)"; exit 1; }
  for b in munged slurmctld slurmd sbatch scontrol sinfo; do
    command -v "$b" >/dev/null || { say "$b not found: install slurmctld slurmd slurm-client munge (scripts/setup.sh does)"; exit 1; }
  done
  stop
  mkdir -p "$DIR/munge" "$DIR/state" "$DIR/spool" "$DIR/log"
  chmod 700 "$DIR/munge"
  [ -f "$DIR/munge/munge.key" ] || { dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none; chmod 400 "$DIR/munge/munge.key"; }
  # -f: the directory is not under /etc and need not pass munged's ownership checks of system paths.
  munged -f --key-file="$DIR/munge/munge.key" --socket="$DIR/munge/munge.socket" \
    --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/seed"
  local ctld_port slurmd_port
  ctld_port="$(free_port $(( 20000 + RANDOM % 20000 )))"
  slurmd_port="$(free_port $(( ctld_port + 1 )))"
  cat > "$DIR/slurm.conf" <<CONF
ClusterName=fluxbatch-test
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
AuthType=auth/munge
AuthInfo=socket=$DIR/munge/munge.socket
CredType=cred/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
PlugStackConfig=$DIR/plugstack.conf
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
MpiDefault=none
SwitchType=switch/none
KillWait=30
NodeName=localhost CPUs=$CPUS RealMemory=8000 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF
  : > "$DIR/plugstack.conf"
  export SLURM_CONF="$DIR/slurm.conf"
  slurmctld -f "$DIR/slurm.conf"
  slurmd -f "$DIR/slurm.conf"
  for _ in $(seq 100); do
    if sinfo -h -o %t 2>/dev/null | grep -q idle; then say "up: SLURM_CONF=$DIR/slurm.conf"; return; fi
    sleep 0.2
  done
  say "the node did not come up; logs:"
  tail -n 20 "$DIR/log/slurmctld.log" "$DIR/log/slurmd.log" >&2 || true
  stop
  exit 1
}

case "$cmd" in
  start) start ;;
  stop) stop ;;
  *) say "usage: local_cluster.sh start|stop DIR [CPUS]"; exit 2 ;;
esac
