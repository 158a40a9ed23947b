"""Fault tests on real processes: paxosd nodes as separate processes on 127.0.0.1, a
fault-injecting TCP proxy on every peer link, a nemesis that kills (with or without losing
unsynced writes), pauses and partitions them on a seeded schedule, a concurrent client workload
whose history is checked for linearizability (and a coordination load with checks of its
own), and hostile input against the decoders and a running node.

    cluster.py     start, kill -9, pause, restart and power-cut real node processes
    proxy.py       the per-link TCP proxy: cut, blackhole, delay and reset each direction
    workload.py    concurrent clients recording a history; the final read-back of every key
    coord.py       the coordination load beside it: watchers, a lease, transactions, ranges
    coord_checks.py  its checks (what each covers is in coord.py's docstring)
    nemesis.py     fault kinds and the seeded schedule that combines them
    campaign.py    ``python -m tests.faults.campaign --nodes 3 --minutes 10 --seed 1``
    fuzz_long.py   the long fuzz run of the frame decoder and message validation (atheris)
"""
