"""The nemesis's watchdog: started by the harness in a session of its own
(setsid), it ignores SIGINT, SIGTERM and SIGHUP and blocks reading a pipe
whose only write end the harness holds. However the harness ends (normal
exit, exception, Ctrl-C, SIGKILL), that end closes and the read returns
EOF; the watchdog then SIGKILLs every process in the harness's namespaces
(`ip netns pids`), deletes the namespaces and removes the work directory.
After a clean run there is nothing left and it just exits.

    watchdog.py FD PREFIX WORKDIR"""

from __future__ import annotations

import os
import shutil
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hosts  # noqa: E402


def main() -> None:
    fd, prefix, workdir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    while True:
        try:
            if not os.read(fd, 4096):
                break
        except InterruptedError:
            continue
    try:
        mine = [ns for ns in hosts.namespaces() if ns.startswith(prefix)]
        if mine:
            hosts.remove_namespaces(mine)
            print(f"nemesis watchdog: removed {' '.join(mine)}", file=sys.stderr)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
