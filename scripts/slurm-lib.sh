# shellcheck shell=bash disable=SC2034  # variables are used by the sourcing scripts
# Shared helpers for scripts/slurm-up, scripts/slurm-down and scripts/slurm-acct-{up,down}.
# Sourced, not executed. See docs/slurm-dev.md.

SLURM_DEV_ETC=${SLURM_DEV_ETC:-/etc/slurm}
SLURM_DEV_CONF="$SLURM_DEV_ETC/slurm.conf"
SLURM_DEV_SPOOL=${SLURM_DEV_SPOOL:-/var/spool/slurmctl-dev}
SLURM_DEV_LOG=${SLURM_DEV_LOG:-/var/log/slurmctl-dev}
SLURM_DEV_RUN=${SLURM_DEV_RUN:-/run/slurmctl-dev}
# The config the caller's Slurm commands read (a cluster that may already answer), then ours
# for every command these scripts run, so `scontrol shutdown` only ever reaches our controller.
SLURM_CLIENT_CONF=${SLURM_CONF:-/etc/slurm/slurm.conf}
export SLURM_CONF="$SLURM_DEV_CONF"
# The ports slurm-up prefers; when taken, the next free ones from these up.
SLURM_DEV_CTLD_PORT=${SLURM_DEV_CTLD_PORT:-6817}
SLURM_DEV_SLURMD_PORT=${SLURM_DEV_SLURMD_PORT:-6818}
SLURM_DEV_CTLD_PID="$SLURM_DEV_RUN/slurmctld.pid"
SLURM_DEV_SLURMD_PID="$SLURM_DEV_RUN/slurmd.pid"
SLURM_DEV_MUNGED_MARK="$SLURM_DEV_RUN/munged.started-by-slurm-up"
SLURM_DEV_MARKER="# Managed by slurmctl scripts/slurm-up"
# The cluster with accounting of scripts/slurm-acct-up keeps everything under one folder; its
# munged marker, for scripts/slurm-down, which stops that cluster too.
SLURM_ACCT_BASE=${SLURM_ACCT_BASE:-/var/lib/slurmctl-acct}
SLURM_ACCT_MUNGED_MARK="$SLURM_ACCT_BASE/run/munged.started-by-slurm-up"
MUNGE_SOCKET=/run/munge/munge.socket.2
MUNGE_PIDFILE=/run/munge/munged.pid

log() { printf 'slurm-dev: %s\n' "$*" >&2; }
die() { printf 'slurm-dev: error: %s\n' "$*" >&2; exit 1; }

require_root() {
    if [ "$(id -u)" -ne 0 ]; then
        printf '%s: must run as root (manages the slurmctld, slurmd and munged daemons); skipping\n' \
            "$(basename "$0")" >&2
        exit 3
    fi
}

# pid_of_file PIDFILE NAME -> prints the pid if PIDFILE names a live process
# whose command name is NAME; returns 1 otherwise.
pid_of_file() {
    local file=$1 name=$2 pid comm
    [ -r "$file" ] || return 1
    pid=$(tr -dc '0-9' <"$file" 2>/dev/null || true)
    [ -n "$pid" ] || return 1
    comm=$(cat "/proc/$pid/comm" 2>/dev/null || true)
    [ "$comm" = "$name" ] || return 1
    proc_alive "$pid" || return 1
    printf '%s\n' "$pid"
}

# proc_alive PID: true if PID exists and is not a zombie (PID 1 here may be
# slow to reap orphans, so /proc/PID can outlive the process).
proc_alive() {
    local state
    state=$(awk '{sub(/.*\) /, ""); print $1}' "/proc/$1/stat" 2>/dev/null || true)
    [ -n "$state" ] && [ "$state" != Z ] && [ "$state" != X ]
}

# stop_pidfile PIDFILE NAME [TIMEOUT]: SIGTERM the process named in PIDFILE
# (only if it really is NAME), wait, then SIGKILL. Never fails.
stop_pidfile() {
    local file=$1 name=$2 timeout=${3:-20} pid i
    pid=$(pid_of_file "$file" "$name") || { rm -f "$file"; return 0; }
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < timeout * 5; i++)); do
        proc_alive "$pid" || break
        sleep 0.2
    done
    if proc_alive "$pid"; then
        log "$name (pid $pid) ignored SIGTERM for ${timeout}s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        sleep 0.5
    fi
    rm -f "$file"
}

munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

ctld_ping_ok() { scontrol ping 2>/dev/null | grep -q 'is UP'; }

# stop_slurm_daemons: graceful `scontrol shutdown`, then pidfiles.
stop_slurm_daemons() {
    local i
    if command -v scontrol >/dev/null 2>&1 && [ -r "$SLURM_DEV_CONF" ] &&
        pid_of_file "$SLURM_DEV_CTLD_PID" slurmctld >/dev/null; then
        timeout 10 scontrol shutdown >/dev/null 2>&1 || true
        for ((i = 0; i < 50; i++)); do
            pid_of_file "$SLURM_DEV_CTLD_PID" slurmctld >/dev/null ||
                { pid_of_file "$SLURM_DEV_SLURMD_PID" slurmd >/dev/null || break; }
            sleep 0.2
        done
    fi
    stop_pidfile "$SLURM_DEV_SLURMD_PID" slurmd 20
    stop_pidfile "$SLURM_DEV_CTLD_PID" slurmctld 20
}

# port_in_use PORT: true if a TCP socket listens on PORT, on any address (IPv4 or IPv6).
port_in_use() {
    local hex f files=()
    hex=$(printf '%04X' "$1")
    for f in /proc/net/tcp /proc/net/tcp6; do [ -r "$f" ] && files+=("$f"); done
    [ ${#files[@]} -gt 0 ] || return 1
    awk -v h="$hex" 'FNR > 1 && $4 == "0A" { n = split($2, a, ":"); if (a[n] == h) found = 1 }
        END { exit !found }' "${files[@]}"
}

# free_port FIRST [EXCEPT...]: prints the first port from FIRST up that nothing listens on
# and that is none of EXCEPT.
free_port() {
    local p=$1 t
    shift
    for ((; p < 65536; p++)); do
        for t in "$@"; do [ "$p" = "$t" ] && continue 2; done
        port_in_use "$p" || { printf '%s\n' "$p"; return 0; }
    done
    return 1
}

# conf_port FILE KEY DEFAULT: the port KEY (SlurmctldPort, SlurmdPort) in FILE, else DEFAULT.
conf_port() {
    local got
    got=$(awk -F= -v k="$2" '$1 == k {print $2}' "$1" 2>/dev/null | tr -dc '0-9')
    printf '%s\n' "${got:-$3}"
}

# ---------------------------------------------------------------- packages
pkg_installed() {
    [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" = "install ok installed" ]
}

# install_packages PKG...: apt-get installs those of PKG not installed yet.
install_packages() {
    local missing=() p
    for p in "$@"; do pkg_installed "$p" || missing+=("$p"); done
    [ ${#missing[@]} -eq 0 ] && return 0
    log "installing ${missing[*]} with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    # Refresh the package lists only when apt does not know the packages yet.
    if ! apt-cache show "${missing[@]}" >/dev/null 2>&1 ||
        apt-cache policy "${missing[@]}" | grep -q 'Candidate: (none)'; then
        apt-get update -q >/dev/null
    fi
    # No init system here: keep maintainer scripts from starting services.
    local added_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        added_policy=1
    fi
    local rc=0 err
    err=$(mktemp)
    # DPkg::Lock::Timeout: another install at the same time (slurm-up and slurm-acct-up) waits
    apt-get install -y -q --no-install-recommends -o DPkg::Lock::Timeout=120 \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        "${missing[@]}" >/dev/null 2>"$err" || rc=$?
    [ "$added_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
    if [ "$rc" -ne 0 ]; then
        # apt's own last words (E: Unable to locate package ...) are the reason
        local why
        why=$(grep -v '^W:' "$err" | tail -n 1)
        rm -f "$err"
        die "apt-get install ${missing[*]} failed (exit $rc)${why:+: $why}"
    fi
    rm -f "$err"
}

# ------------------------------------------------------------------- munge
start_munge() {
    if munge_ok; then return 0; fi
    id munge >/dev/null 2>&1 || die "user 'munge' missing (munge package broken?)"
    install -d -o munge -g munge -m 0700 /etc/munge /var/log/munge
    install -d -o munge -g munge -m 0711 /var/lib/munge
    install -d -o munge -g munge -m 0755 /run/munge
    if [ ! -s /etc/munge/munge.key ]; then
        log "creating /etc/munge/munge.key"
        if command -v mungekey >/dev/null 2>&1; then
            mungekey --create --keyfile=/etc/munge/munge.key --force
        else
            dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
        fi
    fi
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
    # A stale pid file or socket from a killed munged blocks a new one.
    if ! pid_of_file "$MUNGE_PIDFILE" munged >/dev/null; then
        rm -f "$MUNGE_PIDFILE" "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock"
    fi
    runuser -u munge -- /usr/sbin/munged --force </dev/null >>"$SLURM_DEV_LOG/munged.stderr" 2>&1 ||
        die "munged failed to start; see $SLURM_DEV_LOG/munged.stderr and /var/log/munge/munged.log"
    touch "$SLURM_DEV_MUNGED_MARK"
    local i
    for ((i = 0; i < 50; i++)); do munge_ok && return 0; sleep 0.2; done
    die "munged started but 'munge -n | unmunge' still fails"
}
