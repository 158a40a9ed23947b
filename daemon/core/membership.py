"""Cluster membership as it lives in the log.

The YAML file names the initial members. Every later membership is a *configuration command*
chosen in some slot s: one batch holding one command

    (0, s, OP_PUT, MEMBERS_KEY, <CBOR of the configuration>, None)

Client id 0 is reserved for these (clients may not use it, nor write ``MEMBERS_KEY``), so the
key-value store keeps the latest configuration like any other key and snapshots carry it.
A configuration chosen in slot s takes effect at slot ``effective`` = s + W (W the proposing
leader's slot window, written into the command so every node agrees on it): the leader never
has more than W slots in flight, so slots below s + W were proposed under the old configuration
and each slot's configuration is fixed by slots at least W below it.

A member is a voter or a learner. A learner receives everything but its votes do not count;
a new member starts as one and the leader promotes it once it has caught up. Each member also
has an *incarnation*: 0 for the YAML's initial members, a random non-zero number for a node
started to join an existing cluster (``paxosd serve --join``, including a member whose data
directory was wiped). Votes count only from the incarnation the configuration names, so a node
that lost its disk can never vote with promises it has forgotten: it rejoins as a learner and is
promoted under its new incarnation.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastpath import dumps, loads

from daemon.core.messages import OP_PUT

__all__ = ["MEMBERS_KEY", "Configuration", "Member", "config_batch", "config_of_batch",
           "decode_configuration"]

MEMBERS_KEY = b"\x00paxosd/members"
CONFIG_CLIENT = 0


@dataclass(frozen=True, slots=True)
class Member:
    id: int
    peer: str | None = None  # host:port for peers (None: not known to this node)
    client: str | None = None  # host:port for clients
    voter: bool = True
    incarnation: int = 0

    def as_list(self) -> list:
        return [self.id, self.peer, self.client, self.voter, self.incarnation]


@dataclass(frozen=True, slots=True)
class Configuration:
    """The members from slot ``effective`` on; ``slot`` is where it was chosen (0: the YAML)."""

    effective: int
    members: tuple  # of Member, by id
    slot: int = 0

    @property
    def voters(self) -> tuple:
        return tuple(m.id for m in self.members if m.voter)

    @property
    def ids(self) -> tuple:
        return tuple(m.id for m in self.members)

    def get(self, member_id: int) -> Member | None:
        for m in self.members:
            if m.id == member_id:
                return m
        return None

    def votes(self, member_id: int, incarnation: int) -> bool:
        """Whether a vote from ``member_id`` with ``incarnation`` counts in this configuration."""
        m = self.get(member_id)
        return m is not None and m.voter and m.incarnation == incarnation

    def with_member(self, member: Member) -> tuple:
        rest = [m for m in self.members if m.id != member.id]
        return tuple(sorted(rest + [member], key=lambda m: m.id))

    def without(self, member_id: int) -> tuple:
        return tuple(m for m in self.members if m.id != member_id)

    def describe(self) -> str:
        return ", ".join(f"{m.id}{'' if m.voter else ' (learner)'}" for m in self.members)


def initial_configuration(members) -> Configuration:
    """From the YAML: ``members`` is an iterable of ids or a mapping id -> (peer, client)."""
    if hasattr(members, "items"):
        ms = [Member(i, *(tuple(a)[:2] if a is not None else (None, None)))
              for i, a in sorted(members.items())]
    else:
        ms = [Member(i) for i in sorted(members)]
    return Configuration(0, tuple(ms), 0)


def encode_configuration(slot: int, effective: int, members, previous: Configuration) -> bytes:
    return dumps({"slot": slot, "effective": effective,
                  "members": [m.as_list() for m in members],
                  "previous": [m.as_list() for m in previous.members],
                  "previous_effective": previous.effective,
                  "previous_slot": previous.slot})


def _members(raw, where: str) -> tuple:
    if type(raw) is not list or not 1 <= len(raw) <= 64:
        raise ValueError(f"{where}: expected a list of 1 to 64 members")
    out = []
    for item in raw:
        if (type(item) is not list or len(item) != 5 or type(item[0]) is not int
                or not 1 <= item[0] <= 0xFFFF or type(item[3]) is not bool
                or type(item[4]) is not int or item[4] < 0
                or not all(a is None or type(a) is str for a in item[1:3])):
            raise ValueError(f"{where}: not a member [id, peer, client, voter, incarnation]: {item!r}")
        out.append(Member(item[0], item[1], item[2], item[3], item[4]))
    ids = [m.id for m in out]
    if ids != sorted(set(ids)):
        raise ValueError(f"{where}: member ids not unique and sorted: {ids}")
    return tuple(out)


def decode_configuration(value: bytes) -> tuple[Configuration, Configuration]:
    """(the configuration a command carries, the one before it). Raises ValueError."""
    obj = loads(value)
    if type(obj) is not dict or set(obj) != {"slot", "effective", "members", "previous",
                                             "previous_effective", "previous_slot"}:
        raise ValueError("not a configuration command")
    new = Configuration(obj["effective"], _members(obj["members"], "members"), obj["slot"])
    old = Configuration(obj["previous_effective"], _members(obj["previous"], "previous"),
                        obj["previous_slot"])
    if not (type(new.effective) is int and type(old.effective) is int
            and type(old.slot) is int and type(new.slot) is int
            and old.effective <= new.effective and new.slot < new.effective):
        raise ValueError("configuration command with bad slots")
    if not new.voters:
        raise ValueError("configuration without voters")
    return new, old


def config_batch(slot: int, effective: int, members, previous: Configuration) -> tuple:
    """The batch that proposes ``members`` in ``slot``, effective at ``effective``."""
    return ((CONFIG_CLIENT, slot, OP_PUT, MEMBERS_KEY,
             encode_configuration(slot, effective, members, previous), None),)


def config_of_batch(batch) -> bytes | None:
    """The configuration value if ``batch`` is a configuration command, else None."""
    if len(batch) == 1:
        cmd = batch[0]
        if cmd[0] == CONFIG_CLIENT and cmd[3] == MEMBERS_KEY:
            return cmd[4]
    return None
