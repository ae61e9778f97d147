#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for the test suite (tests/slurm/) and CI.
# Needs root and Debian/Ubuntu packages (slurm-wlm, munge); does not need systemd. Idempotent: when
# a Slurm controller already answers with a usable node, it changes nothing.
#   sudo launch/ci/slurm-setup.sh        # ~15 s once the packages are installed
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

# getconf, not nproc: nproc obeys OMP_NUM_THREADS, and a test run with OMP_NUM_THREADS=1 once
# declared a 1-CPU node, on which every 2-task job pends forever (Reason=PartitionConfig).
cpus=$(getconf _NPROCESSORS_ONLN)
node_state() { sinfo -h -o %T 2>/dev/null | grep -Eqx 'idle|mixed|allocated'; }
node_ready() { node_state && [ "$(sinfo -h -o %c 2>/dev/null | head -1)" = "$cpus" ]; }

if command -v sinfo >/dev/null && node_ready; then
  echo "slurm: already running"; sinfo; exit 0
fi
[ "$(id -u)" -eq 0 ] || { echo "slurm-setup: must run as root" >&2; exit 1; }
if ! command -v slurmctld >/dev/null; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
fi

# munge authenticates every Slurm message; the package's postinst usually creates the key.
[ -s /etc/munge/munge.key ] || mungekey --create --keyfile=/etc/munge/munge.key
chown munge:munge /etc/munge/munge.key
chmod 400 /etc/munge/munge.key
install -d -o munge -g munge -m 755 /run/munge
pgrep -u munge -x munged >/dev/null || runuser -u munge -- /usr/sbin/munged
munge -n | unmunge >/dev/null

host=$(hostname -s)
mem_mb=$(( $(awk '/^MemTotal:/{print $2}' /proc/meminfo) / 1024 * 9 / 10 ))
install -d -o slurm -g slurm /var/spool/slurmctld /var/log/slurm
install -d /var/spool/slurmd /run/slurm /etc/slurm
# Accounting is off (there is no slurmdbd), so `sacct` does not work: query `scontrol show job`.
# MinJobAge keeps finished jobs visible to scontrol for 10 minutes, long enough for the tests.
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=litegen-ci
SlurmctldHost=$host
SlurmUser=slurm
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
KillWait=30
MinJobAge=600
NodeName=$host CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF

# Daemons running with another node description (a CPU count that changed): restart them.
if pgrep -x slurmctld >/dev/null && ! node_ready; then
  pkill -x slurmd || true; pkill -x slurmctld || true
  for _ in $(seq 30); do pgrep -x slurmctld >/dev/null || pgrep -x slurmd >/dev/null || break; sleep 1; done
fi
pgrep -x slurmctld >/dev/null || /usr/sbin/slurmctld
pgrep -x slurmd >/dev/null || /usr/sbin/slurmd
for _ in $(seq 60); do node_ready && break; sleep 1; done
node_ready || { echo "slurm-setup: node did not become ready" >&2; sinfo >&2 || true; exit 1; }
sinfo
