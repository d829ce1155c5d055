#!/usr/bin/env bash
# Single-node SLURM dev cluster for pisweep's CI and tests (Debian 12, root, no systemd).
#
#   slurm_templates/dev-cluster.sh up       install if needed, start everything, wait until usable
#   slurm_templates/dev-cluster.sh down     stop the daemons (by pid file); packages stay installed
#   slurm_templates/dev-cluster.sh status   print sinfo and sacct health; exit 0 only if fully up
#
# State (configs, logs, pid files, spool, MariaDB data) lives under $PISWEEP_SLURM_DIR
# (default /var/tmp/pisweep-slurm). Outside it: /etc/slurm/slurm.conf (a symlink, so that
# sbatch/sacct find it), /etc/munge/munge.key, /run/munge and /run/mysqld.
# Details, timings and pitfalls: docs/dev-cluster.md.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TEMPLATES=$HERE/dev-cluster
DIR=${PISWEEP_SLURM_DIR:-/var/tmp/pisweep-slurm}
ETC=$DIR/etc
RUN=$DIR/run
LOG=$DIR/log
STATE=$DIR/state
MYSQL_DATA=$DIR/mysql
TIMEOUT=${PISWEEP_SLURM_TIMEOUT:-90}    # seconds, for every wait
GRACE=${PISWEEP_SLURM_GRACE:-30}        # preemption grace time (s) of partition debug

PACKAGES=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server)
CLUSTER=local
ACCOUNT=default
NODE=localhost
DBNAME=slurm_acct_db
DBUSER=slurm
MYSQL_RUN=/run/mysqld
MYSQL_SOCK=$MYSQL_RUN/mysqld.sock
MYSQL_PID=$MYSQL_RUN/mysqld.pid
MUNGE_RUN=/run/munge
MUNGE_PID=$MUNGE_RUN/munged.pid
MUNGE_KEY=/etc/munge/munge.key
SLURM_CONF_LINK=/etc/slurm/slurm.conf

say() { echo "dev-cluster: $*" >&2; }

# Print the end of each named log file that exists.
tail_logs() {
  local f
  for f in "$@"; do
    if [[ -s $f ]]; then
      echo "----- last 30 lines of $f -----" >&2
      tail -n 30 "$f" >&2
    fi
  done
}

die() {
  local msg=$1
  shift
  echo "dev-cluster: ERROR: $msg" >&2
  tail_logs "$@"
  exit 1
}

# wait_until SECONDS DESCRIPTION CHECK_FUNCTION [LOG...]: poll the check, die with logs on timeout.
wait_until() {
  local secs=$1 desc=$2 check=$3
  shift 3
  local deadline=$((SECONDS + secs))
  until "$check"; do
    if ((SECONDS >= deadline)); then
      die "timed out after ${secs}s waiting for $desc" "$@"
    fi
    sleep 0.2
  done
}

# pid_alive PIDFILE NAME: the pid file names a live process whose command is NAME
# (a stale pid file after a reboot may point at an unrelated process).
pid_alive() {
  local pidfile=$1 name=$2 pid
  [[ -r $pidfile ]] || return 1
  pid=$(tr -dc '0-9' 2>/dev/null <"$pidfile" || true)
  [[ -n $pid && -r /proc/$pid/comm ]] || return 1
  [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$name" ]] || return 1
  # A zombie (exited, not yet reaped by init) still has a comm; it is not running.
  [[ $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) != Z ]]
}

# stop_pid PIDFILE NAME: SIGTERM, wait up to 30 s, then SIGKILL.
stop_pid() {
  local pidfile=$1 name=$2 pid i
  if ! pid_alive "$pidfile" "$name"; then
    say "$name not running"
    return 0
  fi
  pid=$(tr -dc '0-9' 2>/dev/null <"$pidfile" || true)
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 150; i++)); do
    pid_alive "$pidfile" "$name" || { say "stopped $name (pid $pid)"; return 0; }
    sleep 0.2
  done
  kill -KILL "$pid" 2>/dev/null || true
  say "killed $name (pid $pid) after 30 s"
}

have_cmd() { command -v "$1" >/dev/null 2>&1; }

# ---------------------------------------------------------------- checks (used by up and status)

munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }
mysql_ok() { mariadb-admin --no-defaults --socket="$MYSQL_SOCK" -u root ping >/dev/null 2>&1; }
dbd_ok() { sacctmgr -n -P show cluster format=cluster >/dev/null 2>&1; }
# Capture, then match: `cmd | grep -q` can fail under pipefail when grep exits first (SIGPIPE).
ctld_ok() { [[ $(scontrol ping 2>/dev/null) == *"is UP"* ]]; }
node_state() { sinfo -h -N -n "$NODE" -o %t 2>/dev/null | head -n 1; }
# idle/mix/alloc/completing mean the node takes jobs; '*' (not responding), drain, down do not.
node_ok() { [[ $(node_state) =~ ^(idle|mix|alloc|comp)$ ]]; }
# sacct talks to slurmdbd; when accounting is off or dbd is down it errors (exit 1 or a message).
sacct_ok() {
  local err
  err=$(sacct -n -X -S now-1minutes -o JobID 2>&1 >/dev/null) || return 1
  [[ -z $err ]]
}

# ---------------------------------------------------------------- up: steps

install_packages() {
  local missing=() p
  for p in "${PACKAGES[@]}"; do
    [[ $(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true) == "install ok installed" ]] || missing+=("$p")
  done
  ((${#missing[@]})) || return 0
  say "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Package scripts would start the daemons themselves (init scripts, default paths);
  # policy-rc.d exit 101 forbids that for the duration of the install.
  local policy=/usr/sbin/policy-rc.d made_policy=0
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    made_policy=1
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  local apt_log=$LOG/apt.log
  local ok=0
  if compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null &&
    apt-get install -y -q --no-install-recommends "${missing[@]}" >"$apt_log" 2>&1; then
    ok=1
  elif apt-get update -q >>"$apt_log" 2>&1 &&
    apt-get install -y -q --no-install-recommends "${missing[@]}" >>"$apt_log" 2>&1; then
    ok=1
  fi
  if ((made_policy)); then
    rm -f "$policy"
    trap - EXIT
  fi
  ((ok)) || die "apt-get install ${missing[*]} failed" "$apt_log"
}

start_munge() {
  if [[ ! -s $MUNGE_KEY ]]; then
    say "creating $MUNGE_KEY"
    install -d -o munge -g munge -m 700 "$(dirname "$MUNGE_KEY")"
    dd if=/dev/urandom of="$MUNGE_KEY" bs=1024 count=1 status=none
    chown munge:munge "$MUNGE_KEY"
    chmod 400 "$MUNGE_KEY"
  fi
  munge_ok && return 0
  install -d -o munge -g munge -m 755 "$MUNGE_RUN"
  install -d -o munge -g munge -m 700 /var/lib/munge /var/log/munge
  # A socket left by a killed munged makes the new one refuse to start.
  pid_alive "$MUNGE_PID" munged || rm -f "$MUNGE_RUN/munge.socket.2" "$MUNGE_RUN/munge.socket.2.lock"
  say "starting munged"
  (cd / && exec 9>&- && runuser -u munge -- /usr/sbin/munged </dev/null >>"$LOG/munged.out" 2>&1) ||
    die "munged failed to start" "$LOG/munged.out" /var/log/munge/munged.log
  wait_until "$TIMEOUT" "munge -n | unmunge" munge_ok /var/log/munge/munged.log
}

start_mariadb() {
  # The mysql user must be able to reach the data folder.
  runuser -u mysql -- test -x "$DIR" ||
    die "user mysql cannot enter $DIR; choose PISWEEP_SLURM_DIR under a world-readable folder"
  if [[ ! -d $MYSQL_DATA/mysql ]]; then
    say "initialising MariaDB data in $MYSQL_DATA"
    install -d -o mysql -g mysql -m 750 "$MYSQL_DATA"
    mariadb-install-db --no-defaults --user=mysql --datadir="$MYSQL_DATA" \
      --auth-root-authentication-method=socket --skip-test-db >"$LOG/mariadb-install.log" 2>&1 ||
      die "mariadb-install-db failed" "$LOG/mariadb-install.log"
  fi
  mysql_ok && return 0
  # The pid file must be in a folder mysql owns: in a root-owned one mariadbd crashes.
  install -d -o mysql -g mysql -m 755 "$MYSQL_RUN"
  say "starting mariadbd"
  # mariadbd does not daemonize: detach it (own session, fd 9 = our lock closed).
  (cd / && exec 9>&- && { setsid /usr/sbin/mariadbd --no-defaults --user=mysql --datadir="$MYSQL_DATA" \
    --socket="$MYSQL_SOCK" --pid-file="$MYSQL_PID" --skip-networking \
    --innodb-lock-wait-timeout=900 </dev/null >>"$LOG/mariadb.log" 2>&1 & })
  wait_until "$TIMEOUT" "mariadbd to answer ping" mysql_ok "$LOG/mariadb.log"
}

setup_database() {
  local passfile=$ETC/dbpass
  if [[ ! -s $passfile ]]; then
    (umask 077 && od -An -tx1 -N16 /dev/urandom | tr -d ' \n' >"$passfile")
  fi
  DBPASS=$(cat "$passfile")
  mariadb --no-defaults --socket="$MYSQL_SOCK" -u root >"$LOG/mariadb-setup.log" 2>&1 <<SQL ||
CREATE DATABASE IF NOT EXISTS $DBNAME;
CREATE USER IF NOT EXISTS '$DBUSER'@'localhost' IDENTIFIED BY '$DBPASS';
ALTER USER '$DBUSER'@'localhost' IDENTIFIED BY '$DBPASS';
GRANT ALL PRIVILEGES ON $DBNAME.* TO '$DBUSER'@'localhost';
FLUSH PRIVILEGES;
SQL
    die "creating database $DBNAME failed" "$LOG/mariadb-setup.log" "$LOG/mariadb.log"
}

# render TEMPLATE DEST MODE: substitute @VARS@, replace DEST only if the text changed.
# Returns 0 when DEST changed.
render() {
  local template=$1 dest=$2 mode=$3 tmp
  tmp=$(mktemp "$dest.XXXXXX")
  sed -e "s|@STATE@|$STATE|g" -e "s|@RUN@|$RUN|g" -e "s|@LOG@|$LOG|g" \
    -e "s|@CPUS@|$CPUS|g" -e "s|@REALMEM@|$REALMEM|g" -e "s|@GRACE@|$GRACE|g" \
    -e "s|@DBUSER@|$DBUSER|g" -e "s|@DBPASS@|$DBPASS|g" -e "s|@DBNAME@|$DBNAME|g" \
    "$template" >"$tmp"
  chmod "$mode" "$tmp"
  if [[ -f $dest ]] && cmp -s "$tmp" "$dest"; then
    rm -f "$tmp"
    return 1
  fi
  mv -f "$tmp" "$dest"
  return 0
}

write_configs() {
  CPUS=$(nproc)
  local hw_mem
  hw_mem=$(slurmd -C 2>/dev/null | grep -o 'RealMemory=[0-9]*' | cut -d= -f2 || true)
  [[ -n $hw_mem ]] || die "could not read RealMemory from 'slurmd -C'"
  # Declaring more memory than slurmd measures drains the node; 90 % leaves headroom.
  REALMEM=$((hw_mem * 9 / 10))
  CONF_CHANGED=0     # slurm.conf: restart slurmctld and slurmd
  DBD_CONF_CHANGED=0 # slurmdbd.conf: restart slurmdbd
  if render "$TEMPLATES/slurm.conf.in" "$ETC/slurm.conf" 644; then CONF_CHANGED=1; fi
  if render "$TEMPLATES/slurmdbd.conf.in" "$ETC/slurmdbd.conf" 600; then DBD_CONF_CHANGED=1; fi
  install -d -m 755 "$(dirname "$SLURM_CONF_LINK")"
  if [[ -e $SLURM_CONF_LINK && ! -L $SLURM_CONF_LINK ]]; then
    say "moving existing $SLURM_CONF_LINK to $SLURM_CONF_LINK.pisweep-bak"
    mv -f "$SLURM_CONF_LINK" "$SLURM_CONF_LINK.pisweep-bak"
  fi
  if [[ $(readlink "$SLURM_CONF_LINK" 2>/dev/null || true) != "$ETC/slurm.conf" ]]; then
    ln -sfn "$ETC/slurm.conf" "$SLURM_CONF_LINK"
    CONF_CHANGED=1
  fi
}

start_slurmdbd() {
  if ((DBD_CONF_CHANGED)) && pid_alive "$RUN/slurmdbd.pid" slurmdbd; then
    say "config changed: restarting slurmdbd"
    stop_pid "$RUN/slurmdbd.pid" slurmdbd
  fi
  if ! pid_alive "$RUN/slurmdbd.pid" slurmdbd; then
    say "starting slurmdbd"
    # slurmdbd has no -f: it reads slurmdbd.conf next to $SLURM_CONF.
    (cd / && exec 9>&- && SLURM_CONF=$ETC/slurm.conf slurmdbd </dev/null >>"$LOG/slurmdbd.out" 2>&1) ||
      die "slurmdbd failed to start" "$LOG/slurmdbd.out" "$LOG/slurmdbd.log"
  fi
  wait_until "$TIMEOUT" "slurmdbd to answer sacctmgr" dbd_ok "$LOG/slurmdbd.log" "$LOG/slurmdbd.out"
}

register_accounts() {
  local out=$LOG/sacctmgr.log
  if ! grep -qx "$CLUSTER" <<<"$(sacctmgr -n -P show cluster format=cluster 2>>"$out")"; then
    sacctmgr -i add cluster "$CLUSTER" >>"$out" 2>&1 || die "sacctmgr add cluster failed" "$out"
  fi
  if ! grep -qx "$ACCOUNT" <<<"$(sacctmgr -n -P show account format=account 2>>"$out")"; then
    sacctmgr -i add account "$ACCOUNT" Cluster="$CLUSTER" Description=pisweep Organization=pisweep \
      >>"$out" 2>&1 || die "sacctmgr add account failed" "$out"
  fi
  if ! grep -qx root <<<"$(sacctmgr -n -P show assoc where user=root account="$ACCOUNT" format=user 2>>"$out")"; then
    sacctmgr -i add user root Account="$ACCOUNT" Cluster="$CLUSTER" >>"$out" 2>&1 ||
      die "sacctmgr add user root failed" "$out"
  fi
}

start_slurmctld() {
  if ((CONF_CHANGED)) && pid_alive "$RUN/slurmctld.pid" slurmctld; then
    say "config changed: restarting slurmctld"
    stop_pid "$RUN/slurmctld.pid" slurmctld
  fi
  if ! pid_alive "$RUN/slurmctld.pid" slurmctld; then
    say "starting slurmctld"
    (cd / && exec 9>&- && slurmctld -f "$ETC/slurm.conf" </dev/null >>"$LOG/slurmctld.out" 2>&1) ||
      die "slurmctld failed to start" "$LOG/slurmctld.out" "$LOG/slurmctld.log"
  fi
  wait_until "$TIMEOUT" "scontrol ping to report slurmctld UP" ctld_ok "$LOG/slurmctld.log" "$LOG/slurmctld.out"
}

start_slurmd() {
  if ((CONF_CHANGED)) && pid_alive "$RUN/slurmd.pid" slurmd; then
    say "config changed: restarting slurmd"
    stop_pid "$RUN/slurmd.pid" slurmd
  fi
  if ! pid_alive "$RUN/slurmd.pid" slurmd; then
    say "starting slurmd"
    # -N: the node is called localhost whatever this machine's hostname is.
    (cd / && exec 9>&- && slurmd -N "$NODE" -f "$ETC/slurm.conf" </dev/null >>"$LOG/slurmd.out" 2>&1) ||
      die "slurmd failed to start" "$LOG/slurmd.out" "$LOG/slurmd.log"
  fi
  # A node drained or marked down by an earlier run (e.g. memory mismatch) stays so: resume once.
  local deadline=$((SECONDS + 10)) state
  until node_ok || ((SECONDS >= deadline)); do sleep 0.2; done
  state=$(node_state)
  if [[ $state =~ drain|down|drng|fail ]]; then
    say "node state '$state': resuming it"
    scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true
  fi
  if ! node_ok; then
    local end=$((SECONDS + TIMEOUT))
    until node_ok; do
      if ((SECONDS >= end)); then
        sinfo -R >&2 || true
        die "timed out after ${TIMEOUT}s waiting for node $NODE to be idle (state '$(node_state)')" \
          "$LOG/slurmd.log" "$LOG/slurmd.out" "$LOG/slurmctld.log"
      fi
      sleep 0.2
    done
  fi
}

cmd_up() {
  local start_ns
  start_ns=$(date +%s%N)
  [[ $(id -u) == 0 ]] || die "must run as root (daemons run as root/munge/mysql)"
  mkdir -p "$DIR"
  chmod 755 "$DIR"
  mkdir -p "$ETC" "$RUN" "$LOG" "$STATE/slurmctld" "$STATE/slurmd"
  exec 9>"$DIR/.lock"
  flock -w 600 9 || die "another dev-cluster.sh holds $DIR/.lock"
  install_packages
  start_munge
  start_mariadb
  setup_database
  write_configs
  start_slurmdbd
  register_accounts
  start_slurmctld
  start_slurmd
  wait_until "$TIMEOUT" "sacct to work" sacct_ok "$LOG/slurmdbd.log" "$LOG/slurmctld.log"
  local elapsed
  elapsed=$(awk -v a="$start_ns" -v b="$(date +%s%N)" 'BEGIN { printf "%.1f", (b - a) / 1e9 }')
  echo "slurm dev cluster up: 1 node ($NODE), $CPUS cpus, $REALMEM MB, partitions debug*/urgent, sacct ok (${elapsed}s, state in $DIR)"
}

cmd_down() {
  [[ $(id -u) == 0 ]] || die "must run as root"
  # Reverse start order; slurmctld saves its state on SIGTERM.
  stop_pid "$RUN/slurmd.pid" slurmd
  stop_pid "$RUN/slurmctld.pid" slurmctld
  stop_pid "$RUN/slurmdbd.pid" slurmdbd
  stop_pid "$MYSQL_PID" mariadbd
  stop_pid "$MUNGE_PID" munged
  echo "slurm dev cluster down (packages and $DIR kept)"
}

cmd_status() {
  if ! have_cmd sinfo || ! have_cmd sacct; then
    echo "slurm client not installed: run $0 up"
    return 1
  fi
  local ok=0
  local d
  for d in "munged:$MUNGE_PID" "mariadbd:$MYSQL_PID" "slurmdbd:$RUN/slurmdbd.pid" \
    "slurmctld:$RUN/slurmctld.pid" "slurmd:$RUN/slurmd.pid"; do
    if pid_alive "${d#*:}" "${d%%:*}"; then
      echo "${d%%:*}: running (pid $(tr -dc '0-9' <"${d#*:}"))"
    else
      echo "${d%%:*}: NOT running"
      ok=1
    fi
  done
  if ctld_ok; then echo "slurmctld: UP (scontrol ping)"; else
    echo "slurmctld: DOWN (scontrol ping)"
    ok=1
  fi
  sinfo 2>&1 || ok=1
  local state
  state=$(node_state || true)
  if node_ok; then echo "node $NODE: $state"; else
    echo "node $NODE: ${state:-unknown} (not usable)"
    ok=1
  fi
  if sacct_ok; then echo "sacct: ok"; else
    echo "sacct: NOT working"
    ok=1
  fi
  if ((ok == 0)); then echo "slurm dev cluster: fully up"; else echo "slurm dev cluster: NOT fully up"; fi
  return "$ok"
}

case ${1:-} in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  *)
    echo "usage: $0 up|down|status   (state in \$PISWEEP_SLURM_DIR, default /var/tmp/pisweep-slurm)" >&2
    exit 2
    ;;
esac
