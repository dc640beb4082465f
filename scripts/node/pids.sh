# Sourced by scripts/node/up and down. $STATE/pids holds "NAME PID" per process up started.
# A pid is ours only while that process still runs NAME: after a restart of the machine the
# file can outlive its processes (a /run that is not a tmpfs, a copied disk) and the pid can
# belong to anything by then.
recorded_alive() {  # recorded_alive NAME PID
    local argv0
    argv0="$(tr '\0' '\n' 2>/dev/null < "/proc/$2/cmdline" | head -n 1)" || return 1
    [ "$(basename -- "${argv0:-/}")" = "$1" ]
}
any_recorded_alive() {  # any_recorded_alive PIDS-FILE
    local name pid
    while read -r name pid; do recorded_alive "$name" "$pid" && return 0; done < "$1"
    return 1
}
