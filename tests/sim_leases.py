"""The simulator's leases: the clients' lease operations and the check of the leader's expiry.

With leases in the workload (the default; ``--no-leases`` draws as before they existed), one
or two "keepers" hold a lease as a service does (renewed every third of its TTL, given up now
and then), and every other client now and then grants a lease (the shortest TTL the daemon allows for the simulator's
election timeout), keeps one of its leases alive, revokes one, or puts a key of LEASE_KEYS
attached to one (a one-op transaction). Those keys belong to no other operation: a lease's
end deletes them without a client operation, which the single-key linearizability checker
cannot model; tests.sim_reads replays them with the rest of the chosen log (the replay applies
the same expiry commands), and checks every acknowledged grant, revoke and put result.

The check of the leader's clock (``LeaseWatch``): a keepalive acknowledged to a client that
first sent it at time c, with TTL t, promises the lease lives until c + t. So the expiry command
that ends a lease (found by replaying the chosen log: a stale expiry ends nothing) must have
been proposed no earlier than c + t, for every keepalive of it acknowledged (before or after:
one acknowledged after the lease ended breaks the promise too). Proposals are seen as they are
made (in ``node.lease_clock``). Grants count as keepalives from the moment they were first
sent. The check runs at the end of a run.
"""

from __future__ import annotations

from daemon.core.expiry import LeaseQuery
from daemon.core.kv import KVStore
from daemon.core.leases import LEASE_CLIENTS, decode_lease_op, grant_op, min_ttl, revoke_op
from daemon.core.messages import OP_LEASE
from daemon.core.txn import OP_TXN, encode_txn
from tests.sim_invariants import Violation

LEASE_KEYS = [b"L0", b"L1", b"L2"]
LEASE_ACTIONS = (["grant", "keepalive", "revoke", "put"], [2, 4, 1, 3])


class LeaseWatch:
    """Acknowledged keepalives and the expiries proposed, for the check above."""

    def __init__(self) -> None:
        self.promised: dict[int, float] = {}  # lease id -> latest c + ttl acknowledged
        self.proposals: dict[int, tuple[float, int]] = {}  # command client id -> (time, node)

    def acknowledged(self, lease_id: int, call: float, ttl: int) -> None:
        self.promised[lease_id] = max(self.promised.get(lease_id, 0.0), call + ttl)

    def observe(self, node_id: int, node) -> None:
        """Note an expiry ``node`` proposed since it was last observed."""
        clock = node.lease_clock
        if clock.expiring:
            self.proposals.setdefault(clock.proposed_client, (clock.proposed_at, node_id))

    def check(self, chosen: dict, max_sessions: int) -> None:
        """``chosen``: slot -> batch, the chosen log as the checker learned it, replayed (with
        the nodes' ``max_sessions``) to see which leases each expiry command ended."""
        kv = KVStore(max_sessions)
        slot = 0
        while slot + 1 in chosen:
            slot += 1
            for cmd in chosen[slot]:
                expiry = (cmd[0] >= LEASE_CLIENTS and cmd[2] == OP_LEASE
                          and decode_lease_op(cmd[4])[0] == "expire")
                before = set(kv.leases) if expiry else set()
                kv.apply(cmd)
                for lease_id in sorted(before - set(kv.leases)):
                    when, node_id = self.proposals[cmd[0]]
                    until = self.promised.get(lease_id)
                    if until is not None and when < until - 1e-9:
                        raise Violation(
                            f"node {node_id} proposed the expiry of lease {lease_id} (chosen in "
                            f"slot {slot}) at {when:.3f}, before {until:.3f}, until when a "
                            "keepalive acknowledged it")


class LeaseLoad:
    """The lease operations of the simulated clients (mixed into ClientLoad)."""

    def add_keepers(self, count: int) -> None:
        """``count`` clients that hold a lease each as a service would: grant, keep it alive
        every third of its TTL, put a key on it now and then, and now and then give it up
        (stop renewing: it expires) and grant another."""
        for _ in range(count):
            cid = self.rng.getrandbits(40) + 1
            self.clients[cid] = {"seq": 0, "op": None, "target": self.rng.choice(self.ids),
                                 "n": 0, "keeper": True, "leases": []}
            self._wake(cid, self.rng.uniform(0, 0.05))

    def _lease_ttl(self) -> int:
        """The TTL the simulated clients ask for: the shortest the daemon grants."""
        return min_ttl(self.configs[self.ids[0]].election_timeout)

    def _keeper_op(self, client: dict, cid: int):
        """A keeper's next ``(action, argument)``."""
        rng = self.rng
        held = client["leases"]
        if held and rng.random() < 0.05:
            held.clear()  # given up: left to expire
        if not held:
            return "grant", self._lease_ttl()
        if rng.random() < 0.2:
            return "put", (rng.choice(LEASE_KEYS), b"%d-%d" % (cid % 1000, client["n"]), held[0])
        return "keepalive", held[0]

    def _pause_after(self, client: dict) -> float:
        """How long a client waits before its next operation: a keeper a third of a TTL."""
        if client.get("keeper"):
            return self._lease_ttl() / 3
        return self.rng.uniform(0, 0.01)

    def _draw_lease(self, client: dict, cid: int, value: bytes):
        """``(action, argument)`` of a lease operation of client ``cid``."""
        if client.get("keeper"):
            return self._keeper_op(client, cid)
        rng = self.rng
        held = client.setdefault("leases", [])
        action = rng.choices(*LEASE_ACTIONS)[0] if held else "grant"
        if action == "grant":
            return "grant", self._lease_ttl()
        lease_id = rng.choice(held[-3:])
        if action == "put":
            return "put", (rng.choice(LEASE_KEYS), value, lease_id)
        return action, lease_id

    def _lease_request(self, node, req, op) -> None:
        action, arg = op.query
        if action == "keepalive":
            node.read(req, LeaseQuery("keepalive", arg), self.now)
            return
        self.read_check.write_sent(req[0], op.seq, op.call)
        if action == "grant":
            blob, code = grant_op(arg), OP_LEASE
        elif action == "revoke":
            blob, code = revoke_op(arg), OP_LEASE
        else:
            blob, code = encode_txn([], [["put", *arg]], []), OP_TXN
        node.submit(req, (req[0], op.seq, code, b"", blob, None), self.now)

    def _lease_answered(self, cid: int, op, result) -> None:
        """An OK reply to a lease operation: note what it promises."""
        action, arg = op.query
        client = self.clients[cid]
        if action == "grant":
            lease_id, ttl = result
            client["leases"].append(lease_id)
            self.lease_watch.acknowledged(lease_id, op.call, ttl)
        elif action == "keepalive" and result is not None:
            self.lease_watch.acknowledged(arg, op.call, result)
        elif action == "revoke" or (action == "keepalive" and result is None):
            if arg in client["leases"]:
                client["leases"].remove(arg)
