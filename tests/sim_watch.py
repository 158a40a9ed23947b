"""The simulator's check of the nodes' watch histories against the chosen log.

Every simulated node (each boot of it) has a ``WatchHistory`` (daemon.core.watch) attached to
its store, drained after each of its steps as the daemon drains it once per loop iteration.
Each drain covers the revisions ``(before, after]`` (``after`` the drained store's revision,
the old one's when the node replaced its store by a snapshot). Checked:

- after every drain, the history's bounds: at most ``MAX_REVISIONS`` revisions held
  (``revision - compacted``), at most ``MAX_BYTES`` bytes, nothing held at or below
  ``compacted``;
- at the end, for every drain of every node: its changes, revision by revision, are exactly
  the changes the chosen log makes at those revisions (replayed in a reference store with the
  node's ``max_sessions``), none missing, none extra. The changes of a revision are compared
  whole (key, record, previous record, in apply order), so one revision's changes are one group.

The bounds are small on purpose, so that the history compacts in most runs.
"""

from __future__ import annotations

from daemon.core.kv import KVStore
from daemon.core.watch import WatchHistory, select
from tests.sim_invariants import Violation

MAX_REVISIONS = 40
MAX_BYTES = 2048


def _plain(events) -> tuple:
    """Events as comparable tuples (KeyRecords as their fields)."""
    return tuple((rev, key, None if rec is None else rec.astuple(),
                  None if prev is None else prev.astuple()) for rev, key, rec, prev in events)


class WatchCheck:
    """The histories of the simulated nodes, and every drain they made."""

    def __init__(self) -> None:
        self.histories: dict[int, WatchHistory] = {}  # node id -> its current boot's history
        self.sessions: dict[int, int] = {}  # node id -> its store's max_sessions
        # (node id, max_sessions, before, after, {revision: events}) per drain with changes
        self.drains: list[tuple] = []

    def booted(self, sim, max_sessions: int) -> None:
        """A new boot of ``sim``: a history attached to its store (from its revision on)."""
        self.histories[sim.id] = WatchHistory(sim.node.kv, MAX_REVISIONS, MAX_BYTES)
        self.sessions[sim.id] = max_sessions

    def drain(self, sim) -> None:
        """Drain ``sim``'s node's changes; check the history's bounds."""
        history = self.histories.get(sim.id)
        if history is None or sim.node is None:
            return
        before, drained = history.revision, history.kv
        chunks, replaced = history.take(sim.node.kv)
        groups = select([e for chunk in chunks for e in chunk.events], b"", b"")[0]
        after = drained.revision if replaced else history.revision
        if after < before:
            raise Violation(f"node {sim.id}: its store went back from revision {before} to "
                            f"{after}")
        if after > before or groups:
            self.drains.append((sim.id, self.sessions[sim.id], before, after,
                                {g.revision: _plain(g.events) for g in groups}))
        self._bounds(sim.id, history)

    def _bounds(self, node_id: int, history: WatchHistory) -> None:
        held = history.held()
        if history.revision - history.compacted > MAX_REVISIONS:
            raise Violation(f"node {node_id}: the watch history holds revisions "
                            f"({history.compacted}, {history.revision}], more than "
                            f"{MAX_REVISIONS}")
        if history.bytes > MAX_BYTES or history.bytes != history.held_bytes():
            raise Violation(f"node {node_id}: the watch history counts {history.bytes} bytes "
                            f"(bound {MAX_BYTES}), its chunks {history.held_bytes()}")
        if held and (held[0].revision <= history.compacted or held[-1].revision > history.revision):
            raise Violation(f"node {node_id}: the watch history holds revisions "
                            f"{held[0].revision}..{held[-1].revision} outside "
                            f"({history.compacted}, {history.revision}]")

    def check(self, chosen: dict) -> int:
        """Raise Violation unless every drain's changes are the chosen log's at those
        revisions; returns how many drains were checked."""
        for max_sessions in sorted({d[1] for d in self.drains}):
            drains = [d for d in self.drains if d[1] == max_sessions]
            reference = _replay(chosen, max_sessions, max(d[3] for d in drains))
            for node_id, _sessions, before, after, groups in drains:
                expected = {rev: ev for rev, ev in reference.items() if before < rev <= after}
                if groups != expected:
                    wrong = sorted(set(groups) ^ set(expected)) or sorted(
                        rev for rev in groups if groups[rev] != expected[rev])
                    raise Violation(f"node {node_id}: the watch history's changes of revisions "
                                    f"({before}, {after}] differ from the chosen log's at "
                                    f"revision {wrong[0]}: {groups.get(wrong[0])!r} where the "
                                    f"log gives {expected.get(wrong[0])!r}")
        return len(self.drains)


def _replay(chosen: dict, max_sessions: int, upto: int) -> dict:
    """The chosen log's changes by revision, up to revision ``upto``."""
    kv = KVStore(max_sessions)
    kv.events = []
    slot = 0
    while kv.revision < upto:
        slot += 1
        batch = chosen.get(slot)
        if batch is None:
            raise Violation(f"a watch history reached revision {upto}, past the chosen log "
                            f"(slot {slot} is not chosen; the log reaches revision "
                            f"{kv.revision})")
        for cmd in batch:
            kv.apply(cmd)
    return {g.revision: _plain(g.events) for g in select(kv.events, b"", b"")[0]}
