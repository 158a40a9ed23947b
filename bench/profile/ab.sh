#!/bin/bash
# usage: bench/profile/ab.sh BASE_WORKTREE BRANCH_WORKTREE ROUNDS OUT [bench options...]
# Alternates `paxosd bench` (default: the peak, 4 clients x 1000 in flight, 8 s after 2 s) between
# two worktrees, base first in odd rounds and branch first in even ones, and appends one line per
# run to OUT: commits/s, CPU us per commit, each node's CPU seconds, p50/p99, load1 before it.
BASE=$1; BRANCH=$2; N=$3; OUT=$4; shift 4
ARGS=("$@"); [ ${#ARGS[@]} -eq 0 ] && ARGS=(--clients 4 --in-flight 1000 --duration 8 --warmup 2)
for r in $(seq 1 $N); do
  order="$BASE $BRANCH"; [ $((r % 2)) -eq 0 ] && order="$BRANCH $BASE"
  for WT in $order; do
    side=branch; [ "$WT" = "$BASE" ] && side=base
    load=$(cut -d' ' -f1 /proc/loadavg)
    res=$(cd "$WT" && .venv/bin/paxosd bench "${ARGS[@]}" --quiet 2>&1)
    cps=$(echo "$res" | awk '/commits\/s/{print $2}'); cpu=$(echo "$res" | awk '/cpu per command/{print $4}')
    nodes=$(echo "$res" | awk '/cpu seconds/{print $5,$8,$11}' | tr -d ,)
    lat=$(echo "$res" | awk '/latency ms/{print $4 "/" $8}')
    echo "round $r $side $(git -C "$WT" rev-parse --short HEAD)$(git -C "$WT" diff --quiet || echo +dirty):" \
         "commits/s $cps, cpu us/commit $cpu, node cpu s $nodes, p50/p99 ms $lat, load1 before $load" | tee -a "$OUT"
  done
done
