#!/usr/bin/env bash
# A throw-away one-node Slurm cluster on this machine, for the Slurm tests (tests/test_slurm.py).
#
#   bash tests/slurm/cluster.sh start    # install (apt-get), configure, start munged/slurmctld/slurmd
#   bash tests/slurm/cluster.sh stop     # stop the daemons this script started (by pid file)
#   bash tests/slurm/cluster.sh stop --force   # stop them even if another caller still uses them
#   bash tests/slurm/cluster.sh status   # sinfo, or why not
#
# Several CI runs may share this machine: `start` registers its caller (the parent process, or
# PCPP_CLUSTER_OWNER) and reuses a cluster that is already up; `stop` stops the daemons only
# when no registered caller is still alive. Both hold a lock while they work.
#
# Needs root and Debian/Ubuntu (slurm-wlm, munge, libpmix-dev for `srun --mpi=pmix`). It writes
# /etc/slurm/slurm.conf with a marker line and refuses to replace a slurm.conf without it, so it
# never clobbers a real cluster's configuration. The node is this host (`hostname`) with the CPUs
# and memory `slurmd -C` reports; one partition "ci", the default. Daemons are stopped only
# through the pid files they wrote; nothing is killed by name.
set -euo pipefail

MARKER="# written by pcpp-mpi tests/slurm/cluster.sh; safe to delete"
CONF=/etc/slurm/slurm.conf
LOG_DIR=/var/log/slurm
MUNGE_PID=/run/munge/munged.pid
CTLD_PID=/run/slurmctld.pid
SLURMD_PID=/run/slurmd.pid
START_TIMEOUT_S=${PCPP_SLURM_START_TIMEOUT_S:-60}
LOCK_FILE=/run/pcpp-slurm-cluster.lock
USERS_DIR=/run/pcpp-slurm-cluster.users
OWNER=${PCPP_CLUSTER_OWNER:-$PPID}

say() { printf 'cluster.sh: %s\n' "$*" >&2; }
die() {
	say "error: $*"
	exit 1
}

need_root() {
	[[ $(id -u) -eq 0 ]] || die "must run as root (it installs packages and starts daemons)"
}

install_packages() {
	local missing=() pkg
	for pkg in slurm-wlm munge libpmix-dev; do
		dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' ||
			missing+=("$pkg")
	done
	if ((${#missing[@]} == 0)); then
		return
	fi
	say "installing ${missing[*]} with apt-get"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
	# Some package scripts start daemons where an init system runs; stop any that wrote pid files.
	stop_daemons quiet
}

write_config() {
	if [[ -e $CONF ]] && ! grep -qxF "$MARKER" "$CONF"; then
		die "$CONF exists and was not written by this script; not replacing it"
	fi
	local host node_line mem
	host=$(hostname -s)
	# `slurmd -C` prints this host's real layout (CPUs, sockets, cores, threads, memory).
	node_line=$(slurmd -C | head -n 1)
	mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$node_line")
	[[ -n $mem ]] || die "cannot read RealMemory from 'slurmd -C': $node_line"
	# A little under the total, or slurmd's check drains the node.
	node_line=${node_line/RealMemory=$mem/RealMemory=$((mem * 9 / 10))}
	node_line=${node_line/NodeName=* CPUs/NodeName=$host CPUs}
	mkdir -p /etc/slurm "$LOG_DIR" /var/spool/slurmctld /var/spool/slurmd
	cat >"$CONF" <<EOF
$MARKER
ClusterName=pcpp-ci
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
# Finished jobs stay visible to scontrol (state, exit code) for 10 minutes.
MinJobAge=600
KillWait=30
InactiveLimit=0
$node_line State=UNKNOWN
PartitionName=ci Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
EOF
	say "wrote $CONF for node $host: ${node_line#NodeName=* }"
}

start_munge() {
	local key=/etc/munge/munge.key
	if [[ ! -s $key ]]; then
		say "creating $key"
		dd if=/dev/urandom of="$key" bs=1 count=1024 status=none
	fi
	chown munge:munge /etc/munge "$key"
	chmod 700 /etc/munge
	chmod 400 "$key"
	mkdir -p /run/munge /var/lib/munge /var/log/munge
	chown munge:munge /run/munge /var/lib/munge /var/log/munge
	chmod 755 /run/munge
	# 9>&-: the daemons must not inherit (and so keep holding) the lock.
	runuser -u munge -- /usr/sbin/munged --pid-file="$MUNGE_PID" 9>&-
	munge -n | unmunge >/dev/null || die "munge does not work: 'munge -n | unmunge' failed"
}

# alive PIDFILE: true when PIDFILE names a running process.
alive() {
	local pid
	[[ -s $1 ]] || return 1
	pid=$(<"$1")
	[[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null
}

# stop_one PIDFILE NAME: SIGTERM the process in PIDFILE, wait up to 20 s, then SIGKILL.
stop_one() {
	local file=$1 name=$2 pid i
	if ! alive "$file"; then
		rm -f "$file"
		return 0
	fi
	pid=$(<"$file")
	kill -TERM "$pid" 2>/dev/null || true
	for ((i = 0; i < 40; i++)); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.5
	done
	if kill -0 "$pid" 2>/dev/null; then
		say "$name (pid $pid) did not stop after SIGTERM; sending SIGKILL"
		kill -KILL "$pid" 2>/dev/null || true
	fi
	rm -f "$file"
	[[ ${3:-} == quiet ]] || say "stopped $name (pid $pid)"
}

stop_daemons() {
	local quiet=${1:-}
	stop_one "$SLURMD_PID" slurmd "$quiet"
	stop_one "$CTLD_PID" slurmctld "$quiet"
	stop_one "$MUNGE_PID" munged "$quiet"
}

wait_idle() {
	local i state=""
	for ((i = 0; i < START_TIMEOUT_S * 2; i++)); do
		state=$(sinfo -h -N -o '%T' 2>/dev/null | head -n 1 || true)
		if [[ $state == idle* || $state == mixed* || $state == allocated* ]]; then
			say "node is $state after $((i / 2)) s"
			return 0
		fi
		sleep 0.5
	done
	say "the node did not become idle within $START_TIMEOUT_S s (state: '${state:-none}')"
	sinfo -N -l >&2 || true
	tail -n 20 "$LOG_DIR/slurmctld.log" "$LOG_DIR/slurmd.log" >&2 || true
	return 1
}

lock() {
	exec 9>"$LOCK_FILE"
	flock -w 600 9 || die "could not take $LOCK_FILE within 600 s"
}

# Callers still alive (files in USERS_DIR named by pid); dead ones are removed.
live_users() {
	local file pid
	mkdir -p "$USERS_DIR"
	for file in "$USERS_DIR"/*; do
		[[ -e $file ]] || continue
		pid=${file##*/}
		if [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null; then
			printf '%s\n' "$pid"
		else
			rm -f "$file"
		fi
	done
}

cluster_up() {
	alive "$MUNGE_PID" && alive "$CTLD_PID" && alive "$SLURMD_PID" &&
		grep -qxF "$MARKER" "$CONF" 2>/dev/null &&
		sinfo -h -N -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)'
}

start() {
	need_root
	lock
	local users
	users=$(live_users | tr '\n' ' ')
	if [[ -n $users ]] && cluster_up; then
		touch "$USERS_DIR/$OWNER"
		say "already up (also used by pid(s) $users); registered pid $OWNER"
		return 0
	fi
	install_packages
	stop_daemons quiet
	write_config
	start_munge
	# -c: start from an empty job state (job ids and queue left by an earlier run are dropped).
	slurmctld -c 9>&-
	slurmd 9>&-
	if ! wait_idle; then
		stop_daemons
		die "the cluster did not come up"
	fi
	# `srun -n 2` checks that steps can be launched at all.
	srun -n 2 -t 1 hostname >/dev/null || {
		stop_daemons
		die "'srun -n 2 hostname' failed"
	}
	local mpis
	mpis=$(srun --mpi=list 2>&1 | tr '\n' ' ')
	touch "$USERS_DIR/$OWNER"
	say "up: slurm $(sinfo -V | awk '{print $2}'), srun --mpi=list: $mpis; registered pid $OWNER"
}

stop() {
	need_root
	lock
	local users
	rm -f "$USERS_DIR/$OWNER"
	users=$(live_users | tr '\n' ' ')
	if [[ -n $users && ${1:-} != --force ]]; then
		say "left running: still used by pid(s) $users (stop --force stops it anyway)"
		return 0
	fi
	stop_daemons
	rm -rf "$USERS_DIR"
}

case "${1:-}" in
start) start ;;
stop) stop "${2:-}" ;;
status) sinfo -N -l ;;
*)
	echo "usage: $0 start|stop|status" >&2
	exit 2
	;;
esac
