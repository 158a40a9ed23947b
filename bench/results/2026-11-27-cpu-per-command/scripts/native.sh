#!/bin/bash
# usage: native.sh WORKTREE OUT -- bench at the peak; py-spy --native of every node for 5 s after warmup
WT=$1; OUT=$2
cd $WT
.venv/bin/paxosd bench --clients 4 --in-flight 1000 --duration 8 --warmup 2 --quiet > $OUT-bench.txt 2>&1 &
BPID=$!
sleep 4.5
for pid in $(pgrep -P $BPID -f "cli serve"); do
  id=$(tr '\0' ' ' < /proc/$pid/cmdline | sed 's/.*--node-id \([0-9]*\).*/\1/')
  /work/main/.venv/bin/py-spy record --native --pid $pid --rate 100 --duration 5 --format raw -o $OUT-node$id.txt >/dev/null 2>&1 &
done
wait $BPID; wait
cat $OUT-bench.txt
