"""The checks of the coordination load's records (tests.faults.coord, whose docstring says what
each covers and what it does not), and its summary lines. Each check returns violations as
lines of text, at most MAX_REPORTED of a kind in full, then a count of the rest."""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter, defaultdict

from tests.linearizability import Operation

__all__ = ["check_counter", "check_leases", "check_ranges", "check_revision_order",
           "check_watch", "compare_watchers", "summarize"]

MAX_REPORTED = 10


class _Found:
    """Violations, at most MAX_REPORTED per kind in full."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.kinds: Counter = Counter()

    def add(self, kind: str, text: str) -> None:
        self.kinds[kind] += 1
        if self.kinds[kind] <= MAX_REPORTED:
            self.lines.append(f"{kind}: {text}")

    def result(self) -> list[str]:
        return self.lines + [f"{kind}: {n - MAX_REPORTED} more" for kind, n in
                             self.kinds.items() if n > MAX_REPORTED]


def _in_gap(gaps: list, revision: int) -> bool:
    return any(after < revision <= upto for after, upto in gaps)


# ---------------------------------------------------------------------------------- watches


def check_watch(log, history: list[Operation], final) -> list[str]:
    """One watcher's stream against the workload's history and the final listing ``final``
    (a RangeResponse of the watched prefix, or None if it could not be read)."""
    found = _Found()
    name = log.name
    writes = {op.value: op for op in history if op.op in ("put", "cas") and op.client >= 0}
    seen_values: Counter = Counter()
    pairs: set = set()
    last = log.start
    for revision, key, value, kind in log.events:  # Changes
        if revision < last:
            found.add("revision went down",
                      f"{name}: {revision} after {last} ({key!r})")
        last = max(last, revision)
        if revision <= log.start:
            found.add("an event from before the watch",
                      f"{name}: {revision} {key!r}")
        if (revision, key) in pairs:
            found.add("an event came twice",
                      f"{name}: revision {revision}, key {key!r}")
        pairs.add((revision, key))
        op = writes.get(value)
        if kind != "put" or op is None or op.key != key:
            found.add("an event no workload write explains",
                      f"{name}: {kind} {key!r}={value!r} at revision {revision}")
            continue
        seen_values[value] += 1
        if seen_values[value] == 2:
            found.add("a write applied twice",
                      f"{name}: {op} (again at revision {revision})")
        if op.ret is not None and op.op == "put" and type(op.result) is int \
                and op.result != revision:
            found.add("a put seen at another revision than it was acknowledged at",
                      f"{name}: {op} seen at {revision}")
        if op.ret is not None and op.op == "cas" and op.result is not True:
            found.add("a cas acknowledged as not swapped was applied",
                      f"{name}: {op} at revision {revision}")
    target = None if final is None else last_change(final)
    _check_acknowledged(log, writes.values(), seen_values,
                        target is not None and log.seen >= target, found)
    if final is not None:
        _check_final(log, final, found)
    _check_relists(log, found)
    return found.result()


def _check_acknowledged(log, ops, seen_values: Counter, caught_up: bool,
                        found: _Found) -> None:
    """Every acknowledged put (at its revision) and swapping cas came once, within what the
    watcher covered (``caught_up``: up to the final listing's last change)."""
    for op in ops:
        if op.ret is None or seen_values[op.value]:
            continue
        if op.op == "put" and type(op.result) is int:
            if op.result <= log.start or op.result > log.seen or _in_gap(log.gaps, op.result):
                continue
            found.add("an acknowledged put never came",
                      f"{log.name}: {op} (revision {op.result}; watched "
                      f"({log.start}, {log.seen}])")
        elif op.op == "cas" and op.result is True and not log.gaps and caught_up:
            # Its revision is at most its key's final mod_revision, which the watcher reached.
            found.add("an acknowledged cas never came", f"{log.name}: {op}")


def last_change(listing) -> int:
    """The revision a listing's keys last changed at (0: none listed)."""
    return max((kv.mod_revision for kv in listing.kvs), default=0)


def _latest(events, upto: int) -> dict:
    """key -> (revision, value) of its last event at or below ``upto`` (events in order)."""
    return {key: (rev, value) for rev, key, value, _ in events if rev <= upto}


def _check_final(log, final, found: _Found) -> None:
    """Each listed key's last event at or below the listing's revision is its listed value."""
    target = last_change(final)
    if log.seen < target:
        found.add("did not catch up after healing",
                  f"{log.name}: it reached revision {log.seen}; the prefix last changed at "
                  f"{target}")
        return
    latest = _latest(log.events, final.revision)
    for kv in final.kvs:
        if kv.mod_revision <= log.start or _in_gap(log.gaps, kv.mod_revision):
            continue  # written before the watch began, or in a gap: not seen by design
        if latest.get(kv.key) != (kv.mod_revision, kv.value):
            found.add("the final listing disagrees with the stream",
                      f"{log.name}: {kv.key!r} listed {kv.value!r}@{kv.mod_revision} at revision "
                      f"{final.revision}, last seen {latest.get(kv.key)}")


def _check_relists(log, found: _Found) -> None:
    for revision, kvs, before in log.relists:
        latest = _latest(log.events, before)
        for kv in kvs:
            if log.start < kv.mod_revision <= before and not _in_gap(log.gaps, kv.mod_revision) \
                    and latest.get(kv.key) != (kv.mod_revision, kv.value):
                found.add("a re-listing disagrees with the stream",
                          f"{log.name}: {kv.key!r} listed {kv.value!r}@{kv.mod_revision} at "
                          f"revision {revision}, last seen {latest.get(kv.key)} before the "
                          f"gap")


def compare_watchers(logs: list) -> list[str]:
    """Watchers saw the same events at every revision all of them covered."""
    if len(logs) < 2:
        return []
    found = _Found()
    upto = min(log.seen for log in logs)

    def covered(revision: int) -> bool:
        return all(log.start < revision <= upto and not _in_gap(log.gaps, revision)
                   for log in logs)

    streams = [sorted(set(e for e in log.events if covered(e.revision))) for log in logs]
    for log, stream in zip(logs[1:], streams[1:]):
        if stream != streams[0]:
            extra = sorted(set(stream) ^ set(streams[0]))[:5]
            found.add("watchers disagree", f"{logs[0].name} and {log.name} differ below "
                      f"revision {upto}: first differences {extra}")
    return found.result()


# ---------------------------------------------------------------------------------- leases


def check_leases(epochs: list) -> list[str]:
    """No leased key read absent, and no keepalive answered "not found", while a promise (a
    grant or an acknowledged keepalive sent at c) still held at the answer (c + TTL > t)."""
    found = _Found()
    for epoch in epochs:
        if epoch.put_ret is None:
            continue

        def promised(t: float):
            """The latest Promise still holding at ``t``, if any."""
            held = [p for p in epoch.promises if p.sent + p.ttl > t]
            return max(held) if held else None

        for call, ret, value in epoch.reads:
            if value is not None and value != epoch.value:
                found.add("a leased key read another value",
                          f"lease {epoch.id}: {epoch.key!r} read {value!r}")
            if value is None and call > epoch.put_ret and (p := promised(ret)):
                found.add("a leased key vanished while its lease was kept alive",
                          f"lease {epoch.id} (TTL {epoch.ttl} s): {epoch.key!r} read absent "
                          f"by a get at [{call:.3f}, {ret:.3f}], but a keepalive sent at "
                          f"{p.sent:.3f} was acknowledged (holds until {p.sent + p.ttl:.3f})")
        for call, ret in epoch.not_found:
            if p := promised(ret):
                found.add("a kept-alive lease was reported gone",
                          f"lease {epoch.id} (TTL {epoch.ttl} s): a keepalive at "
                          f"[{call:.3f}, {ret:.3f}] found it gone, but one sent at {p.sent:.3f} "
                          f"was acknowledged (holds until {p.sent + p.ttl:.3f})")
    return found.result()


# ---------------------------------------------------------------------------------- the counter


def check_counter(increments: list, unknown: list, final: int | None) -> list[str]:
    """Acknowledged increments wrote distinct values, in revision order, at most the final
    value, which lies between their count and their count plus the unknown ones."""
    found = _Found()
    values = Counter(value for value, _ in increments)
    for value, n in values.items():
        if n > 1:
            found.add("counter: an increment lost", f"{n} acknowledged increments wrote {value}")
    ordered = sorted(increments, key=lambda vr: vr[1])
    for (v1, r1), (v2, r2) in zip(ordered, ordered[1:]):
        if v2 <= v1:
            found.add("counter: increments out of order",
                      f"{v1} at revision {r1}, then {v2} at revision {r2}")
    if final is not None:
        if increments and max(values) > final:
            found.add("counter: an acknowledged increment is lost",
                      f"{max(values)} was written, the final value is {final}")
        if not len(increments) <= final <= len(increments) + len(unknown):
            found.add("counter: the final value is not the count of increments applied",
                      f"final {final}; {len(increments)} acknowledged, {len(unknown)} unknown")
    return found.result()


# ---------------------------------------------------------------------------------- ranges


def check_ranges(writes: list, reads: list) -> list[str]:
    """Each listing of ``r/`` against the creates and deletes around it (see
    tests.faults.coord)."""
    found = _Found()
    creates = {w.key: w for w in writes if w.op == "create"}
    deletes = defaultdict(list)
    for w in writes:
        if w.op == "delete":
            deletes[w.key].append(w)
    for read in reads:
        _check_read(read, creates, deletes, found)
    return found.result()


def _check_read(read, creates: dict, deletes, found: _Found) -> None:
    r = read.response
    where = (f"range [{read.start!r}, {read.end!r}) limit {read.limit} at revision "
             f"{r.revision}")
    keys = [kv.key for kv in r.kvs]
    if keys != sorted(set(keys)) or any(not read.start <= k < read.end for k in keys):
        found.add("range: keys out of order, repeated or outside the range", f"{where}: {keys}")
    if read.count_only and keys or read.limit and len(keys) > read.limit or r.count < len(keys):
        found.add("range: more keys than asked for", f"{where}: {len(keys)} keys, count "
                  f"{r.count}")
    if not read.count_only and r.more != (r.count > len(keys)):
        found.add("range: more is wrong", f"{where}: {len(keys)} of {r.count}, more {r.more}")
    inside = [w for k, w in creates.items() if read.start <= k < read.end]
    may = [w for w in inside if w.call < read.ret and not _deleted_before(deletes[w.key],
                                                                          read.call)]
    must = [w for w in may if w.ret is not None and w.ret < read.call
            and not any(d.call < read.ret for d in deletes[w.key])]
    if not len(must) <= r.count <= len(may):
        found.add("range: a count no history explains", f"{where}: count {r.count}, "
                  f"between {len(must)} and {len(may)} keys possible")
    allowed = {w.key for w in may}
    for kv in r.kvs:
        w = creates.get(kv.key)
        if kv.key not in allowed or w is None:
            found.add("range: a key that cannot be there", f"{where}: {kv.key!r}")
            continue
        if (kv.value != (None if read.keys_only else w.value) or kv.version != 1
                or kv.create_revision != kv.mod_revision or kv.mod_revision > r.revision
                or (w.revision is not None and kv.mod_revision != w.revision)):
            found.add("range: a key with the wrong record",
                      f"{where}: {kv} for the put of {w.value!r} at revision {w.revision}")
    if read.count_only:
        return
    given = set(keys)
    for w in must:
        fits = not r.more or (keys and w.key < keys[-1])
        if fits and w.key not in given:
            found.add("range: a key that must be there is missing",
                      f"{where}: {w.key!r} (created at revision {w.revision} by "
                      f"{w.ret:.3f}, the range began at {read.call:.3f})")


def _deleted_before(deletes: list, t: float) -> bool:
    return any(d.ret is not None and d.ret < t for d in deletes)


# ---------------------------------------------------------------------------------- revisions


def check_revision_order(ops: list) -> list[str]:
    """``ops`` (RevOps, acknowledged): if A returned before B was called, B's revision is at
    least A's, and above it if B is a write."""
    found = _Found()
    ops = [op for op in ops if op.revision is not None and op.ret is not None]
    by_ret = sorted(ops, key=lambda op: op.ret)
    rets = [op.ret for op in by_ret]
    best = []  # best[i]: the op of highest revision among by_ret[:i + 1]
    for op in by_ret:
        best.append(op if not best or op.revision > best[-1].revision else best[-1])
    for op in ops:
        i = bisect_left(rets, op.call)  # by_ret[:i] returned strictly before op was called
        if i == 0:
            continue
        before = best[i - 1]
        if op.revision < before.revision or (op.write and op.revision == before.revision):
            found.add("revisions against real time",
                      f"{op.what} at [{op.call:.3f}, {op.ret:.3f}] has revision "
                      f"{op.revision}, but {before.what} returned at {before.ret:.3f} with "
                      f"revision {before.revision}")
    return found.result()


# ---------------------------------------------------------------------------------- summary


def summarize(coord) -> list[str]:
    """The coordination lines of the campaign's summary."""
    c = coord.counts
    lines = []
    for log in coord.logs:
        extra = ", ".join(f"{k} {v}" for k, v in sorted(log.counts.items())) or "no resumes"
        skipped = sum(upto - after for after, upto in log.gaps)
        lines.append(f"coordination: {log.name}: {len(log.events)} events, revisions "
                     f"({log.start}, {log.seen}], {len(log.gaps)} gaps of {skipped} revisions "
                     f"in all ({extra})")
    revoked = sum(1 for e in coord.epochs if e.ended == "revoked")
    late = [e.reads[-1].ret - max(p.sent + p.ttl for p in e.promises)
            for e in coord.epochs if e.reads and e.reads[-1].value is None]
    # Liveness, not checked: a lease let lapse that was still there when revoked (each new
    # leader gives every lease a full TTL again, so faults can put an expiry off).
    overdue = [e.revoked_at - max(p.sent + p.ttl for p in e.promises) for e in coord.epochs
               if e.lapse_after is not None and e.ended.startswith("revoked")
               and e.revoked_at is not None]
    lines.append(f"coordination: leases: {len(coord.epochs)} granted, "
                 f"{c['keepalives acknowledged']} keepalives acknowledged, "
                 f"{sum(len(e.reads) for e in coord.epochs)} reads of leased keys, "
                 f"{revoked} revoked, {c['leases let lapse']} let lapse, expiries seen "
                 f"{c['lease expiries seen']}"
                 + (f" (the key read gone at most {max(late):.1f} s after the last promise "
                    f"ended)" if late else "")
                 + (f"; let lapse but revoked before they expired: {len(overdue)} (up to "
                    f"{max(overdue):.1f} s after the last promise ended)" if overdue else ""))
    lines.append(f"coordination: counter: {len(coord.increments)} increments acknowledged, "
                 f"{len(coord.increments_unknown)} unknown, "
                 f"{c['increments that lost the race']} lost the race, final "
                 f"{coord.final_counter}; transfers: {c['transfer acknowledged']} acknowledged, "
                 f"{c['transfers that lost the race']} lost the race, "
                 f"{c['account listings']} account sums checked")
    creates = sum(1 for w in coord.range_writes if w.op == "create")
    lines.append(f"coordination: ranges: {len(coord.range_reads)} listings of r/ checked, "
                 f"{creates} keys created, "
                 f"{sum(1 for w in coord.range_writes if w.op == 'delete')} deleted; "
                 f"{c['operations with revisions ordered']} operations' revisions checked "
                 f"against real time")
    failures = {k: v for k, v in c.items() if "failed" in k or "unknown" in k}
    if failures:
        lines.append("coordination: failed or unknown: "
                     + ", ".join(f"{k} {v}" for k, v in sorted(failures.items())))
    lines.append(f"coordination violations: {len(coord.violations)}")
    lines += [f"COORD: {v}" for v in coord.violations]
    return lines
