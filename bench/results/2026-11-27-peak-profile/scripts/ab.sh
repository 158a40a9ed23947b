#!/bin/bash
# usage: ab.sh ROUNDS OUT -- alternate the peak bench between /work/wt-peak-base (A) and /work/wt-peak (B)
N=$1; OUT=$2; : > $OUT
for r in $(seq 1 $N); do
  for side in base peak; do
    WT=/work/wt-peak; [ $side = base ] && WT=/work/wt-peak-base
    cd $WT
    load=$(cut -d' ' -f1 /proc/loadavg)
    res=$(.venv/bin/paxosd bench --clients 4 --in-flight 1000 --duration 8 --warmup 2 --quiet 2>&1)
    cps=$(echo "$res" | awk '/commits\/s/{print $2}'); cpu=$(echo "$res" | awk '/cpu per command/{print $4}')
    win=$(echo "$res" | awk '/leader window/{print $4}'); p99=$(echo "$res" | awk '/latency ms/{print $8}')
    echo "round $r $side $(git -C $WT rev-parse --short HEAD): commits/s $cps, cpu us/commit $cpu, p99 ms $p99, window mean $win, load1 before $load" | tee -a $OUT
  done
done
