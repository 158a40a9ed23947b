"""The simulator's check of revisions, gets and range reads against the chosen log.

The linearizability checker (tests/linearizability.py) checks each key's history on its own,
so a read of several keys (a range) is outside it. This check covers ranges (and gets, and
the revisions of writes) by what the revision promises:

- every read answered OK names a revision R (a keepalive too: it renews the lease only if the
  store holds it at R, with the TTL the reply says); its result must be exactly what the store holds
  after the first R applied commands of the chosen log (replayed here, slot by slot, in a
  reference ``KVStore`` with the answering node's ``max_sessions``, the range cut to the
  answering node's message budget): the same count, the same keys and records in order, the
  same cut and ``more``. So a range is one state, not keys from different moments;
- R is no lower than the revision of any write acknowledged before the read was first sent,
  and lower than the revision of any applied write first sent after the read's answer
  arrived: the state read lies between the read's call and its return;
- every acknowledged write's reply names the revision at which the replay applies it, and
  carries the result the replay's store gives that command: for a transaction, which branch
  ran and every op's result (its ranges' entries, counts and cuts, its deletes' counts) as of
  the state the transaction saw.

What it does not cover: a read whose answer was lost (it constrains nothing); and it relies
on the chosen log as the checker learned it (tests/sim_invariants.py), not on a model of its
own, so it checks that reads agree with the log and with real time, and leaves it to the
linearizability checker that single-key writes and gets agree with each other.
"""

from __future__ import annotations

from dataclasses import dataclass

from daemon.core.expiry import LeaseQuery
from daemon.core.kv import KVStore
from daemon.core.messages import CMD_CLIENT, CMD_SEQ
from tests.sim_invariants import Violation


@dataclass
class ReadSeen:
    query: object  # a key (a get) or a RangeQuery
    result: object
    revision: int
    call: float
    ret: float
    max_sessions: int
    budget: int  # the answering node's byte budget for a range reply
    node: int


class ReadCheck:
    """What the simulated clients saw of revisions: fed as replies arrive, checked at the end."""

    def __init__(self) -> None:
        self.reads: list[ReadSeen] = []
        self.first_sent: dict[tuple[int, int], float] = {}  # (client, seq) -> first sent
        # (ret, revision, (client, seq), the acknowledging node's max_sessions)
        self.acked: list[tuple[float, int, tuple[int, int], int]] = []
        self.results: dict[tuple[int, int, int], object] = {}  # (client, seq, group) -> result

    def write_sent(self, cid: int, seq: int, now: float) -> None:
        self.first_sent.setdefault((cid, seq), now)

    def write_acked(self, cid: int, seq: int, revision: int, now: float,
                    max_sessions: int, result: object = None) -> None:
        self.acked.append((now, revision, (cid, seq), max_sessions))
        self.results[(cid, seq, max_sessions)] = result

    def read_answered(self, seen: ReadSeen) -> None:
        self.reads.append(seen)

    def check(self, chosen: dict) -> int:
        """Raise Violation if a read or an acknowledged write breaks the rules above; returns
        how many reads were checked."""
        # Replicas with another max_sessions apply another subset (a deliberate divergence,
        # --mixed-sessions): each is replayed with its own.
        groups = sorted({r.max_sessions for r in self.reads} | {a[3] for a in self.acked})
        for max_sessions in groups:
            applied_at: dict[tuple[int, int], int] = {}
            outcomes: dict[tuple[int, int], object] = {}  # the replay's result of each write
            reads = sorted((r for r in self.reads if r.max_sessions == max_sessions),
                           key=lambda r: r.revision)
            self._replay(chosen, max_sessions, reads, applied_at, outcomes)
            for ret, revision, key, group in self.acked:
                if group != max_sessions:
                    continue
                if applied_at.get(key) != revision:
                    raise Violation(f"write (client {key[0]}, seq {key[1]}) was acknowledged "
                                    f"at revision {revision}, but the chosen log applies it at "
                                    f"{applied_at.get(key)}")
                seen = self.results[(*key, group)]
                if seen != outcomes[key]:
                    raise Violation(f"write (client {key[0]}, seq {key[1]}) was acknowledged "
                                    f"with {seen!r}, but the chosen log gives "
                                    f"{outcomes[key]!r}")
            self._real_time(applied_at, reads)
        return len(self.reads)

    def _replay(self, chosen: dict, max_sessions: int, reads: list, applied_at: dict,
                outcomes: dict) -> None:
        kv = KVStore(max_sessions)
        i = 0
        slot = 0
        while i < len(reads):
            while i < len(reads) and reads[i].revision == kv.revision:
                _compare(kv, reads[i])
                i += 1
            if i == len(reads):
                break
            slot += 1
            batch = chosen.get(slot)
            if batch is None:
                raise Violation(f"node {reads[i].node} answered a read at revision "
                                f"{reads[i].revision}, past the chosen log (slot {slot} is not "
                                f"chosen; the log reaches revision {kv.revision})")
            for cmd in batch:
                before = kv.revision
                result = kv.apply(cmd)[1]
                if kv.revision != before:
                    applied_at[(cmd[CMD_CLIENT], cmd[CMD_SEQ])] = kv.revision
                    outcomes[(cmd[CMD_CLIENT], cmd[CMD_SEQ])] = result
                while i < len(reads) and reads[i].revision == kv.revision:
                    _compare(kv, reads[i])
                    i += 1
        # The writes past the last read: their revisions, for the acknowledgements.
        while (slot + 1) in chosen:
            slot += 1
            for cmd in chosen[slot]:
                before = kv.revision
                result = kv.apply(cmd)[1]
                if kv.revision != before:
                    applied_at[(cmd[CMD_CLIENT], cmd[CMD_SEQ])] = kv.revision
                    outcomes[(cmd[CMD_CLIENT], cmd[CMD_SEQ])] = result

    def _real_time(self, applied_at: dict, reads: list) -> None:
        acked = sorted(self.acked)
        sent = sorted((t, applied_at[key]) for key, t in self.first_sent.items()
                      if key in applied_at)
        for r in reads:
            floor = max((rev for ret, rev, _, _ in acked if ret < r.call), default=0)
            if r.revision < floor:
                raise Violation(f"node {r.node} answered a read sent at {r.call:.6f} at "
                                f"revision {r.revision}, below revision {floor} of a write "
                                f"acknowledged before it")
            later = [rev for t, rev in sent if t > r.ret]
            if later and min(later) <= r.revision:
                raise Violation(f"node {r.node} answered a read at revision {r.revision}, which "
                                f"holds revision {min(later)} of a write first sent after the "
                                f"read's answer ({r.ret:.6f})")


def _compare(kv: KVStore, seen: ReadSeen) -> None:
    """``seen`` against the reference store at its revision."""
    query = seen.query
    if type(query) is LeaseQuery:  # a keepalive renews only a lease that is there
        lease = kv.leases.get(query.lease_id)
        if seen.result is not None and (lease is None or lease[0] != seen.result):
            raise Violation(f"node {seen.node} renewed lease {query.lease_id} (TTL "
                            f"{seen.result}) at revision {seen.revision}, where the chosen log "
                            f"holds {'no such lease' if lease is None else lease}")
        return
    if type(query) is bytes:
        if kv.get(query) != seen.result:
            raise Violation(f"node {seen.node} answered get {query!r} with {seen.result!r} at "
                            f"revision {seen.revision}, where the chosen log holds "
                            f"{kv.get(query)!r}")
        return
    ref = kv.range(query, seen.budget)
    if seen.result != ref:
        raise Violation(f"node {seen.node} answered range {query!r} at revision "
                        f"{seen.revision} with {seen.result!r}, where the chosen log gives "
                        f"{ref!r}")
