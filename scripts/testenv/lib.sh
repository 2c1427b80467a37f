# shellcheck shell=bash disable=SC2034 # variables for the scripts that source this
# Shared by scripts/testenv/up and scripts/testenv/down; sourced, not run.
#
# Layout (all under the git-ignored .testenv/ of the checkout):
#   lock                 flock(1) lock: one up/down at a time per checkout
#   env                  HUSH_TEST_* for `make test` (written by up)
#   bin/                 testenv-probe, versitygw
#   redis/ cassandra/ s3/
#        pid             the service's pid; it is also its process group id
#                        (started with setsid), so down kills the group
#        port, ...       the ports it was started on (reused when free)
#        *.log           its log, tailed by up when it fails to start
#
# Every service runs with its working directory inside its own folder here;
# down uses that (together with the program name) to find strays whose pid
# file was lost, so it never touches a process of another checkout.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
TE=$ROOT/.testenv
HERE=$ROOT/scripts/testenv
BIN=$TE/bin

log() { printf 'testenv: %s\n' "$*" >&2; }
fail() { printf 'testenv: ERROR: %s\n' "$*" >&2; }

# take_lock waits for any other up/down of this checkout to finish: two
# parallel `make test` runs must not start two of each service.
take_lock() {
	mkdir -p "$TE"
	exec 9>"$TE/lock"
	if ! flock -n 9; then
		log "another scripts/testenv up/down is running in this checkout; waiting for it (up to 15 min)"
		flock -w 900 9 || { fail "timed out waiting for $TE/lock"; exit 1; }
	fi
}

# pid_of SVC prints the pid recorded for SVC if that process is alive and is
# still ours (right program, working directory in our folder).
pid_of() {
	local svc=$1 pid
	[[ -s $TE/$svc/pid ]] || return 1
	pid=$(<"$TE/$svc/pid")
	[[ $pid =~ ^[0-9]+$ ]] || return 1
	is_ours "$pid" "$svc" || return 1
	echo "$pid"
}

# is_ours PID SVC: PID is alive, runs SVC's program and works in $TE/SVC.
# Builtins only up to the program check: strays calls this for every pid.
is_ours() {
	local pid=$1 svc=$2 comm want cwd
	case $svc in
	redis) want=redis-server ;;
	cassandra) want=java ;;
	s3) want=versitygw ;;
	*) return 1 ;;
	esac
	read -r comm 2>/dev/null <"/proc/$pid/comm" || return 1
	[[ $comm == "$want" ]] || return 1
	alive "$pid" || return 1
	cwd=$(readlink "/proc/$pid/cwd" 2>/dev/null) || return 1
	# "(deleted)": .testenv was removed under a running service (rm -rf
	# .testenv without down); it is still ours to stop.
	[[ $cwd == "$TE/$svc" || $cwd == "$TE/$svc/"* || $cwd == "$TE/$svc (deleted)" ]]
}

# strays SVC prints pids of SVC processes working in $TE/SVC that no pid
# file points to any more (an interrupted up, a deleted pid file).
strays() {
	local svc=$1 d pid
	for d in /proc/[0-9]*; do
		pid=${d#/proc/}
		is_ours "$pid" "$svc" && echo "$pid"
	done
	return 0
}

# alive PID: the process exists and is not a zombie waiting to be reaped
# (after SIGKILL an orphan can linger as one if nothing reaps it yet).
alive() {
	local stat state
	read -r stat 2>/dev/null <"/proc/$1/stat" || return 1
	# Field 3, after the parenthesized program name (which may hold spaces).
	state=${stat##*) }
	state=${state%% *}
	[[ -n $state && $state != Z && $state != X ]]
}

# stop_pid SVC PID GRACE: SIGTERM the process group, wait up to GRACE
# seconds, then SIGKILL it; returns when the process is gone.
stop_pid() {
	local svc=$1 pid=$2 grace=$3 i
	kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
	for ((i = 0; i < grace * 10; i++)); do
		alive "$pid" || return 0
		sleep 0.1
	done
	log "$svc (pid $pid) ignored SIGTERM for ${grace}s; killing it"
	kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
	for ((i = 0; i < 100; i++)); do
		alive "$pid" || return 0
		sleep 0.1
	done
	fail "$svc (pid $pid) survived SIGKILL"
	return 1
}
