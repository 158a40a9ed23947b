#!/bin/bash
# usage: ab.sh ROUNDS OUT -- alternate the peak bench between /work/wt-cpu-base (base) and /work/wt-cpu (branch)
N=$1; OUT=$2
for r in $(seq 1 $N); do
  for side in base cpu; do
    WT=/work/wt-cpu; [ $side = base ] && WT=/work/wt-cpu-base
    cd $WT
    load=$(cut -d' ' -f1 /proc/loadavg)
    res=$(.venv/bin/paxosd bench --clients 4 --in-flight 1000 --duration 8 --warmup 2 --quiet 2>&1)
    cps=$(echo "$res" | awk '/commits\/s/{print $2}'); cpu=$(echo "$res" | awk '/cpu per command/{print $4}')
    nodes=$(echo "$res" | awk '/cpu seconds/{print $5,$8,$11}')
    echo "round $r $side $(git -C $WT rev-parse --short HEAD)$(git -C $WT diff --quiet || echo +dirty): commits/s $cps, cpu us/commit $cpu, node cpu s $nodes, load1 before $load" | tee -a $OUT
  done
done
