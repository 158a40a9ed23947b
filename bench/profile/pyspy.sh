#!/bin/bash
# usage: bench/profile/pyspy.sh [--native] WORKTREE OUTPREFIX
# Runs the peak bench (4 clients x 1000 in flight, 8 s after 2 s warm-up) in WORKTREE and records
# every node with py-spy after the warm-up: Python frames at 200 Hz for 6 s, or with --native C
# frames too at 100 Hz for 5 s. Writes OUTPREFIX-node{1,2,3}.txt (py-spy --format raw: collapsed
# stacks) and OUTPREFIX-bench.txt; summarise a profile with bench/profile/top.py.
# py-spy: WORKTREE/.venv/bin/py-spy, else $PYSPY.
set -e
native=""; rate=200; secs=6
if [ "$1" = --native ]; then native="--native"; rate=100; secs=5; shift; fi
WT=$(cd "$1" && pwd); OUT=$(realpath -m "$2")
PYSPY=${PYSPY:-$WT/.venv/bin/py-spy}
cd "$WT"
.venv/bin/paxosd bench --clients 4 --in-flight 1000 --duration 8 --warmup 2 --quiet \
    --json "$OUT-bench.json" > "$OUT-bench.txt" 2>&1 &
BPID=$!
sleep 4.5
for pid in $(pgrep -P $BPID -f "cli serve"); do
  id=$(tr '\0' ' ' < /proc/$pid/cmdline | sed 's/.*--node-id \([0-9]*\).*/\1/')
  "$PYSPY" record $native --pid $pid --rate $rate --duration $secs --format raw \
      -o "$OUT-node$id.txt" >/dev/null 2>&1 &
done
wait $BPID
wait
cat "$OUT-bench.txt"
