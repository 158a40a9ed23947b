"""The configurations a node knows, and the membership changes its leader proposes.

A configuration command chosen in slot s takes effect at its ``effective`` slot (see
daemon.core.membership for the rule and the encoding). ``Membership`` keeps, per node:

- the configuration list, ordered by effective slot: every configuration some slot from
  ``commit_index + 1`` on may still be proposed in, and nothing older (``config_at`` answers
  for every slot up to commit_index + W; beyond, only as far as chosen commands go);
- as leader, the change asked for and not yet proposed (``pending_change``), the requests
  waiting for their configuration command to be chosen (``change_waiting``), and the *fence*:
  no slot from ``fence`` on is proposed until the configuration command in ``fence_slot`` is
  chosen, so one configuration command is in flight at a time and effective slots only go up.

It never proposes by itself: the leader's Accept pipeline reads the pending change and the
fence (daemon.core.node), and applying a chosen slot calls ``apply``.
"""

from __future__ import annotations

from daemon.core.membership import (
    MEMBERS_KEY,
    Configuration,
    Member,
    config_of_batch,
    decode_configuration,
)
from daemon.core.messages import ERROR, NOT_LEADER, OK, Reply
from daemon.core.roles import LEADER, ProtocolError

__all__ = ["NO_FENCE", "Membership"]

NO_FENCE = 1 << 62  # the fence when no configuration command is in flight


class Membership:
    """The configurations ``node`` knows (from ``initial``, the YAML's) and its leader's
    membership changes in progress. ``version`` goes up whenever the list changes."""

    def __init__(self, node, initial: Configuration) -> None:
        self.node = node
        self.initial = initial
        self.configs: list[Configuration] = [initial]  # by effective slot; see config_at
        self.version = 0
        self.fence = NO_FENCE  # no slot from here on until the configuration command is chosen
        self.fence_slot = 0
        self.pending_change: tuple | None = None  # (req or None, members) to propose
        self.change_waiting: dict[int, object] = {}  # slot -> req of a configuration command

    # -------------------------------------------------------------------------- the list

    @property
    def latest(self) -> Configuration:
        """The latest configuration this node knows (it may not be in effect yet)."""
        return self.configs[-1]

    def config_at(self, slot: int) -> Configuration:
        """The configuration slot ``slot`` is proposed in (known for every slot up to
        commit_index + W; beyond, only as far as chosen configuration commands go)."""
        configs = self.configs
        cfg = configs[0]
        for c in configs:
            if c.effective > slot:
                break
            cfg = c
        return cfg

    def apply(self, slot: int, batch: tuple) -> None:
        """Slot ``slot``, chosen and being applied in order, holds ``batch``: if that is a
        configuration command, add its configuration, lift the fence it set and answer the
        request that asked for it.

        Promises: the list stays ordered by strictly increasing effective slot, and holds
        nothing no slot from ``slot + 1`` on can be proposed in. A broken command raises
        ProtocolError (validated input never carries one)."""
        value = config_of_batch(batch)
        if value is None:
            return
        try:
            new, old = decode_configuration(value)
        except ValueError as exc:
            raise ProtocolError(f"slot {slot} holds a broken configuration command: {exc}") from None
        if new.slot != slot:
            raise ProtocolError(f"slot {slot} holds the configuration command of slot {new.slot}")
        configs = self.configs
        if not any(c.slot == slot and c.effective == new.effective for c in configs):
            configs.append(new)
            configs.sort(key=lambda c: c.effective)
            # Forget configurations no slot from here on can be proposed in.
            keep = self.config_at(slot + 1)
            del configs[:configs.index(keep)]
            self.version += 1
            for a, b in zip(configs, configs[1:]):
                if not a.effective < b.effective:
                    raise ProtocolError(f"configurations chosen in slots {a.slot} and {b.slot} "
                                        f"both take effect at slot {b.effective}")
        if slot == self.fence_slot:
            self.lift_fence()
        req = self.change_waiting.pop(slot, None)
        if req is not None:
            self.node._out.replies.append(Reply(req, OK, (
                f"members from slot {new.effective}: {new.describe()}")))

    def from_store(self, kv) -> None:
        """After a snapshot: the configurations its state machine ``kv`` knows (the latest and
        the one before)."""
        value = kv.get(MEMBERS_KEY)
        if value is None:
            self.configs = [self.initial]
        else:
            new, old = decode_configuration(value)
            self.configs = [old, new] if old.effective < new.effective else [new]
        self.version += 1

    def addresses(self, active: Configuration) -> dict:
        """id -> (peer, client) of every member of every configuration this node knows
        (``active``, the one it proposes in, included)."""
        out = {}
        for cfg in [self.initial] + self.configs + [active]:
            for m in cfg.members:
                if m.peer is not None or m.id not in out:
                    out[m.id] = (m.peer, m.client)
        return out

    # -------------------------------------------------------------------------- changes

    def change(self, req, change: tuple, now: float) -> None:
        """A membership change asked of this node: ``("add", id, peer, client)`` adds a
        learner (the leader makes it a voter once it has caught up); ``("remove", id)``
        removes a member. Answered OK once the configuration command is chosen; a leader
        asked to remove itself hands leadership over first and answers NOT_LEADER naming the
        node to ask again. Anything refused is answered at once, naming why.

        Promises: at most one change is pending, and none while another is in progress."""
        node = self.node
        out = node._out.replies
        if node.role != LEADER:
            out.append(Reply(req, NOT_LEADER, leader=node.leader_id))
            return
        busy = self.in_progress()
        if busy:
            out.append(Reply(req, ERROR, busy))
            return
        latest = self.configs[-1]
        kind, member_id = change[0], change[1]
        if type(member_id) is not int or not 1 <= member_id <= 0xFFFF:
            out.append(Reply(req, ERROR, f"member id {member_id!r} is not in 1..65535"))
        elif kind == "add":
            if latest.get(member_id) is not None:
                out.append(Reply(req, ERROR, f"node {member_id} is already a member"))
            elif len(latest.members) >= 64:
                out.append(Reply(req, ERROR, "a cluster has at most 64 members"))
            else:
                member = Member(member_id, change[2], change[3], False, 0)
                self.pending_change = (req, latest.with_member(member))
        elif kind == "remove":
            self._remove(req, latest, member_id, now)
        else:
            out.append(Reply(req, ERROR, f"unknown membership change {kind!r}"))

    def _remove(self, req, latest: Configuration, member_id: int, now: float) -> None:
        """Refuse a removal that would leave no voter or no quorum in contact; a leader
        removing itself hands over first; otherwise the change waits for the window."""
        node = self.node
        out = node._out.replies
        member = latest.get(member_id)
        if member is None:
            out.append(Reply(req, ERROR, f"node {member_id} is not a member"))
        elif member.voter and latest.voters == (member_id,):
            out.append(Reply(req, ERROR, f"node {member_id} is the last voting member"))
        elif member.voter and not self.quorum_left_without(member_id):
            out.append(Reply(req, ERROR, (
                f"removing node {member_id} would leave fewer voters in contact than a "
                "quorum of the rest; bring the others back first")))
        elif member_id == node.id:
            node.handoff.leave(req)
        else:
            self.pending_change = (req, latest.without(member_id))

    def quorum_left_without(self, member_id: int) -> bool:
        """Whether the voters other than ``member_id`` that this leader hears from lately, under
        the incarnation the configuration names, make a quorum of those voters."""
        node = self.node
        rest = [m for m in self.configs[-1].voters if m != member_id]
        since = node.now - 2 * node.config.election_timeout[1]
        alive = sum(1 for m in rest if m == node.id or node.heard.get(m, -1e9) >= since)
        return alive >= len(rest) // 2 + 1

    def in_progress(self) -> str:
        """Why no membership change can be taken now ("" when one can)."""
        if self.pending_change is not None or self.fence_slot or self.change_waiting:
            return "a membership change is in progress; try again once it is chosen"
        if (self.configs[-1].effective > self.node.commit_index + 1
                or self.node.election.boundary is not None):
            return "the last membership change has not taken effect yet; try again shortly"
        return ""

    def lift_fence(self) -> None:
        """No configuration command is in flight any more: slots may be proposed again."""
        self.fence, self.fence_slot = NO_FENCE, 0

    def abandon(self, replies: list, leader: int | None) -> None:
        """This node stops leading: every change asked of it is answered NOT_LEADER (naming
        ``leader`` if known) and forgotten, and the fence is lifted."""
        if self.pending_change is not None and self.pending_change[0] is not None:
            replies.append(Reply(self.pending_change[0], NOT_LEADER, leader=leader))
        for req in self.change_waiting.values():
            replies.append(Reply(req, NOT_LEADER, leader=leader))
        self.pending_change = None
        self.change_waiting.clear()
        self.lift_fence()
