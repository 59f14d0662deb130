#!/bin/sh
# A stand-in for an AI agent's tool loop: it plans, runs a few tools, writes a
# report, leaves a daemonized helper behind (as agents do), and twice strays out
# of its scope: an unlisted tool, and a connection to an address the scope does
# not grant (on loopback, so nothing could leave the machine either way).
# Warden records every process, refuses the strays in the kernel, and kills the
# leftover helper when the task ends.
set -u
work=$(mktemp -d)
echo "agent: planning in $work"
uname -r > "$work/kernel"
ls /usr/bin | head -n 5 > "$work/tools"
sh -c 'wc -l < "$1"' sh "$work/tools" > "$work/count"
(sleep 30 &)                      # a helper that outlives its parent
echo "agent: report: $(cat "$work/count") tools seen on kernel $(cat "$work/kernel")"
id >/dev/null 2>&1 || echo "agent: tool 'id' is not in the scope (exit $?)"
/usr/bin/python3 -c '
import socket
try:
    socket.create_connection(("127.0.0.2", 443), timeout=2)
    print("agent: connected?!")
except OSError as e:
    print("agent: egress to 127.0.0.2:443 refused:", e.strerror)
'
rm -rf "$work"
