#!/bin/bash
# usage: bench/profile/sched.sh WORKTREE OUT -- bench at the peak; for 6 s after warmup: per process, CPU run time vs time waiting for a CPU (schedstat)
WT=$1; OUT=$2
cd $WT
.venv/bin/paxosd bench --clients 4 --in-flight 1000 --duration 8 --warmup 2 --quiet > $OUT-bench.txt 2>&1 &
BPID=$!
sleep 4.5
snap() { for pid in $(pgrep -P $BPID); do for t in /proc/$pid/task/*; do echo "$pid $(basename $t) $(cat $t/comm) $(cat $t/schedstat)"; done; done; }
snap > $OUT-s0.txt; cat /proc/loadavg >> $OUT-load.txt
sleep 6
snap > $OUT-s1.txt; cat /proc/loadavg >> $OUT-load.txt
wait $BPID
cat $OUT-bench.txt
python3 - $OUT-s0.txt $OUT-s1.txt <<'PY'
import sys
def rd(f):
    d={}
    for l in open(f):
        p=l.split(); d[(p[0],p[1])]=(p[2],int(p[-3]),int(p[-2]),int(p[-1]))
    return d
a,b=rd(sys.argv[1]),rd(sys.argv[2])
agg={}
for k,(comm,run,wait,n) in b.items():
    r0,w0,n0=(a[k][1:] if k in a else (0,0,0))
    x=agg.setdefault(k[0],[0,0,0,0]); x[0]+=run-r0; x[1]+=wait-w0; x[2]+=n-n0; x[3]+=1
for pid,(run,wait,n,th) in agg.items():
    cmd=""
    print(f"pid {pid} ({cmd}): ran {run/1e9:.2f} s, waited for a CPU {wait/1e9:.2f} s, {n} timeslices, {th} threads, over 6 s")
PY
