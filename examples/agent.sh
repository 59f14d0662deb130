#!/bin/sh
# A stand-in for an AI agent's tool loop: it plans, runs a few tools, writes a
# report, and leaves a daemonized helper behind, as agents do. Warden records
# every process it starts and kills the leftover helper when the task ends.
set -eu
work=$(mktemp -d)
echo "agent: planning in $work"
uname -r > "$work/kernel"
ls /usr/bin | head -n 5 > "$work/tools"
sh -c 'wc -l < "$1"' sh "$work/tools" > "$work/count"
(sleep 30 &)                      # a helper that outlives its parent
echo "agent: report: $(cat "$work/count") tools seen on kernel $(cat "$work/kernel")"
rm -rf "$work"
