"""Top functions of a py-spy ``--format raw`` profile (collapsed stacks, wall-clock samples of
every thread): shares of the busy samples, self and inclusive. Idle samples (epoll_wait, the
WAL thread waiting for work or in fdatasync) are counted and left out of the shares.
usage: python bench/profile/top.py PROFILE.txt [N]"""
import collections
import re
import sys

IDLE_LEAF = ("EpollIOManager.get_events", "epoll_wait", "fdatasync", "_fsync", "sem_wait")


def short(frame):
    m = re.match(r"(.*) \((.*?)(?::(\d+))?\)$", frame)
    if not m:
        return frame
    path = m.group(2)
    path = path.split("/site-packages/")[-1]
    path = re.sub(r"^.*?/(daemon|fastpath|tests|bench)/", r"\1/", path)
    return f"{m.group(1)} ({path})"


def main(fn, n=30):
    selfc, incl = collections.Counter(), collections.Counter()
    total = idle = 0
    for line in open(fn):
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack:
            continue
        count = int(count)
        total += count
        frames = stack.split(";")
        leaf = frames[-1]
        if any(k in leaf for k in IDLE_LEAF) or ("WorkerThread._work" in stack
                                                 and "_handle_job" not in stack):
            idle += count
            continue
        frames = [short(f) for f in frames]
        selfc[frames[-1]] += count
        for f in set(frames):
            incl[f] += count
    busy = total - idle
    print(f"== {fn}: {total} samples, {idle} idle, {busy} busy (shares below: of busy)")
    print("-- self")
    for f, c in selfc.most_common(n):
        print(f"{100 * c / busy:5.1f}%  {f}")
    print("-- inclusive")
    skip = ("runpy", "cli.py", "threading.py", "_thread_cache.py", "run (trio", "run (daemon")
    shown = 0
    for f, c in incl.most_common():
        if any(s in f for s in skip):
            continue
        print(f"{100 * c / busy:5.1f}%  {f}")
        shown += 1
        if shown == n:
            break


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 30)
