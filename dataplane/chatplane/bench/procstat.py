"""The server process's CPU time and memory, read from /proc.

The steady figure of a W1 run is the server's CPU time per message (user +
system, `/proc/PID/stat` fields 14 and 15), read right before the bench starts
offering load and right after the last message was delivered: on a shared
machine latency depends on what else runs, CPU per message much less. The
server's PID is given (`--server-pid`) or found from the port it listens on
(`/proc/net/tcp*` gives the socket's inode, `/proc/*/fd` the process holding
it), which works for a server on this machine run by the same user (or root).
"""

from __future__ import annotations

import os
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")
_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp's `st` column


def loadavg() -> str:
    """The machine's load average over 1, 5 and 15 minutes ("2.01 3.40 5.12"), which
    the benches print beside their figures: the machine is shared."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return ""


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of `pid` (all its threads), in seconds; None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces; the fields after it are plain
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def rss_bytes(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _listen_inodes(port: int) -> set[str]:
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if len(cols) > 9 and cols[3] == _LISTEN and int(cols[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(cols[9])
    return inodes


def listener_pid(port: int) -> int | None:
    """The process listening on TCP `port` on this machine, if it can be seen."""
    targets = {f"socket:[{inode}]" for inode in _listen_inodes(port)}
    if not targets:
        return None
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fds = os.scandir(f"/proc/{entry.name}/fd")
            for fd in fds:
                try:
                    if os.readlink(fd.path) in targets:
                        return int(entry.name)
                except OSError:
                    continue
        except OSError:
            continue
    return None
