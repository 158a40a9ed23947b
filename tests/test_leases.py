"""Leases: the state machine's side (daemon.core.leases: grant, revoke, expire, attached keys, in
the C loop and the Python path alike, in images) and the leader's clock (daemon.core.expiry:
keepalives, expiry only by a leader in contact with a quorum, a full TTL after a failover)."""

import random

import pytest

from daemon.core.expiry import LeaseQuery
from daemon.core.kv import KVStore, decode_image, encode_image
from daemon.core.leases import (
    EXPIRY_SEQ,
    LEASE_CLIENTS,
    LeaseError,
    decode_lease_op,
    epoch_op,
    expire_op,
    grant_op,
    min_ttl,
    revoke_op,
)
from daemon.core.messages import ERROR, OK, OP_CAS, OP_DELETE, OP_LEASE, OP_PUT
from daemon.core.node import CoreConfig
from daemon.core.txn import LEASE_NOT_FOUND, OP_TXN, check_txn, encode_txn
from tests.scripted import led_by_1

CFG = CoreConfig(heartbeat_interval=0.05, election_timeout=(0.15, 0.30), window=8)


def lease(client, seq, blob):
    return (client, seq, OP_LEASE, b"", blob, None)


def leased_put(client, seq, key, value, lease_id):
    return (client, seq, OP_TXN, b"", encode_txn(*check_txn([], [["put", key, value, lease_id]],
                                                            [])), None)


# ------------------------------------------------------------------------ the state machine


def test_grant_puts_revoke_and_expire():
    kv = KVStore()
    kv.events = []
    assert kv.apply(lease(1, 1, grant_op(10))) == (OK, [1, 10], 1)  # the id is the revision
    assert kv.apply(leased_put(1, 2, b"a", b"1", 1))[1] == [True, [None]]
    assert kv.apply(leased_put(1, 3, b"b", b"2", 1))[1] == [True, [None]]
    assert kv.record(b"a").lease == 1 and kv.leases[1] == (10, {b"a": None, b"b": None})
    assert kv.apply(leased_put(1, 4, b"c", b"3", 99))[1] == [LEASE_NOT_FOUND, 99]
    assert kv.get(b"c") is None and kv.revision == 4  # not carried out, but ordered
    # A plain put detaches the key from its lease, as etcd's does.
    kv.apply((1, 5, OP_PUT, b"b", b"free", None))
    assert kv.record(b"b").lease == 0 and list(kv.leases[1][1]) == [b"a"]
    kv.events.clear()
    assert kv.apply(lease(1, 6, revoke_op(1))) == (OK, True, 6)
    assert kv.get(b"a") is None and kv.get(b"b") == b"free" and 1 not in kv.leases
    assert [(rev, key, rec) for rev, key, rec, _prev in kv.events] == [(6, b"a", None)]
    assert kv.apply(lease(1, 7, revoke_op(1)))[1] is False
    kv.apply(lease(1, 8, grant_op(5)))
    kv.apply(leased_put(1, 9, b"x", b"", 8))
    kv.apply(leased_put(1, 10, b"w", b"", 8))
    kv.events.clear()
    # Expiry: idempotent (an id that is gone is skipped), keys deleted in key order at once.
    assert kv.apply(lease(LEASE_CLIENTS, EXPIRY_SEQ, expire_op(1, [8, 1])))[1] == 1
    assert [(rev, key) for rev, key, _r, _p in kv.events] == [(11, b"w"), (11, b"x")]
    assert kv.leases == {}


def test_writes_to_leased_keys_match_between_the_c_loop_and_the_python_path():
    rng = random.Random(5)
    fast, slow = KVStore(8), KVStore(8)
    fast.events, slow.events = [], []
    seq = 0
    attached = 0
    for _ in range(300):
        batch = []
        for _ in range(rng.randrange(1, 12)):
            seq += 1
            key = b"k%d" % rng.randrange(6)
            ids = list(fast.leases) or [1]
            choice = rng.randrange(7)
            if choice == 0:
                cmd = lease(rng.randrange(1, 5), seq, grant_op(rng.randrange(1, 9)))
            elif choice == 1:
                cmd = lease(rng.randrange(1, 5), seq, revoke_op(rng.choice(ids)))
            elif choice == 2:
                cmd = leased_put(rng.randrange(1, 5), seq, key, b"L", rng.choice(ids))
            elif choice == 3:
                cmd = (rng.randrange(1, 5), seq, OP_PUT, key, b"p", None)
            elif choice == 4:
                cmd = (rng.randrange(1, 5), seq, OP_DELETE, key, None, None)
            elif choice == 5:
                cmd = (rng.randrange(1, 5), seq, OP_CAS, key, rng.choice([None, b"L", b"p"]), b"c")
            else:
                cmd = lease(LEASE_CLIENTS | seq, EXPIRY_SEQ, expire_op(1, [rng.choice(ids)]))
            batch.append(cmd)
        a, b = [], []
        fast.apply_batch(tuple(batch), a)
        for cmd in batch:
            b.append(slow.apply(cmd))
        assert a == b
        assert fast.state() == slow.state()
        assert fast.events == slow.events
        assert fast.event_bytes == slow.event_bytes
        attached += sum(1 for r in fast.data.values() if r.lease)
    assert attached > 100  # the run did write to leased keys


def test_an_expiry_decided_before_the_latest_epoch_ends_nothing():
    kv = KVStore()
    kv.apply(lease(1, 1, grant_op(7)))
    kv.apply(leased_put(1, 2, b"a", b"1", 1))
    assert kv.apply(lease(LEASE_CLIENTS | 1, EXPIRY_SEQ, epoch_op(5)))[1] == 5
    assert kv.apply(lease(LEASE_CLIENTS | 2, EXPIRY_SEQ, epoch_op(3)))[1] == 5  # never down
    stale = kv.apply(lease(LEASE_CLIENTS | 3, EXPIRY_SEQ, expire_op(4, [1])))
    assert stale[1] == 0 and kv.get(b"a") == b"1" and 1 in kv.leases
    assert kv.apply(lease(LEASE_CLIENTS | 4, EXPIRY_SEQ, expire_op(5, [1])))[1] == 1
    assert kv.get(b"a") is None and kv.leases == {}


def test_images_carry_the_leases_and_their_keys():
    kv = KVStore()
    kv.apply(lease(1, 1, grant_op(7)))
    kv.apply(leased_put(1, 2, b"a", b"1", 1))
    again = KVStore.from_image(decode_image(encode_image(kv.image())))
    assert again.state() == kv.state() and again.leases == {1: (7, {b"a": None})}
    old = encode_image(kv.image()[:5])  # format 3 cut short
    with pytest.raises(ValueError, match="format 3 with 5 items"):
        decode_image(old)
    broken = kv.image()
    broken[5] = {}
    with pytest.raises(ValueError, match="attached to lease 1"):
        decode_image(encode_image(broken))


@pytest.mark.parametrize("blob,words", [
    (b"\x01", "expected [grant|revoke|epoch"),
    (grant_op(1)[:-1] + b"\x00", "ttl"),
    (b"\x82\x66revoke\x00", "lease revoke.id"),
    (b"\x83\x66expire\x01\x80", "1 to 1024 ids"),
    (b"\x83\x66expire\x00\x81\x01", "lease expire.ballot"),
    (b"\x82\x66expire\x80", "or [expire, ballot, ids]"),
])
def test_malformed_lease_ops_are_named(blob, words):
    with pytest.raises(LeaseError, match=words.replace("[", r"\[").replace("|", r"\|")):
        decode_lease_op(blob)


def test_the_minimum_ttl_outlives_a_failover():
    assert min_ttl((0.15, 0.30)) == 1
    assert min_ttl((1.0, 2.0)) == 4


# ------------------------------------------------------------------------ the leader's clock


def grant(c, ttl, seq=1):
    c.nodes[1].submit(("grant", seq), lease(11, seq, grant_op(ttl)), c.now)
    c.settle()
    reply = [r for _i, r in c.replies if r.req == ("grant", seq)][-1]
    assert reply.status == OK
    return reply.result[0]


def attach(c, lease_id, key, seq):
    c.nodes[1].submit(("put", seq), leased_put(11, seq, key, b"v", lease_id), c.now)
    c.settle()


def ask(c, node_id, op, lease_id):
    tag = (op, c.now)
    c.nodes[node_id].read(tag, LeaseQuery(op, lease_id), c.now)
    c.settle()
    return [r for _i, r in c.replies if r.req == tag][-1]


def test_a_lease_without_keepalives_expires_after_its_ttl_on_every_replica():
    c = led_by_1(CFG)
    lease_id = grant(c, 1)
    attach(c, lease_id, b"held", 2)
    c.advance(0.9)
    assert all(n.kv.get(b"held") == b"v" for n in c.nodes.values())
    c.advance(0.3)
    assert all(n.kv.get(b"held") is None and not n.kv.leases for n in c.nodes.values())
    assert ask(c, 1, "keepalive", lease_id).result is None  # gone: "not found"


def test_keepalives_keep_a_lease_and_ttl_says_what_is_left():
    c = led_by_1(CFG)
    lease_id = grant(c, 1)
    attach(c, lease_id, b"held", 2)
    for _ in range(5):
        c.advance(0.6)
        assert ask(c, 1, "keepalive", lease_id).result == 1
    assert c.nodes[2].kv.get(b"held") == b"v"
    ttl, left, keys = ask(c, 1, "ttl", lease_id).result
    assert (ttl, left, keys) == (1, 1, [b"held"])
    assert ask(c, 2, "keepalive", lease_id).status != OK  # only the leader's clock answers


def expiries(node):
    """The expiry commands ``node`` holds in its log or its queue."""
    cmds = [cmd for _b, batch in node.log.values() for cmd in batch] + list(node.pending)
    return [cmd for cmd in cmds
            if cmd[0] >= LEASE_CLIENTS and decode_lease_op(cmd[4])[0] == "expire"]


def test_a_leader_cut_off_from_the_quorum_expires_nothing():
    c = led_by_1(CFG)
    start = c.now
    lease_id = grant(c, 1)
    c.advance(0.55)
    c.cut |= {(1, 2), (1, 3), (2, 1), (3, 1)}
    leader = c.nodes[1]
    # The deadline (start + 1) passes after the leader last heard from a quorum (over an
    # election timeout ago) and before it steps down: it proposes no expiry.
    proposed = []
    while leader.role == "leader":
        c.now += 0.01
        leader.tick(c.now)
        proposed += expiries(leader)
        c.collect()
    assert c.now > start + 1.0
    assert proposed == [] and lease_id in leader.kv.leases


def test_a_new_leader_gives_every_lease_a_full_ttl_before_expiring_any():
    c = led_by_1(CFG)
    lease_id = grant(c, 2)
    c.advance(1.5)  # three quarters of the TTL gone at the old leader
    c.cut |= {(1, 2), (1, 3), (2, 1), (3, 1)}  # the leader is cut off; 2 takes over
    c.fire(2)
    c.settle()
    assert c.nodes[2].role == "leader"
    start = c.now
    c.advance(1.9, only=(2, 3))
    assert lease_id in c.nodes[2].kv.leases  # the TTL counts again from the takeover
    c.advance(start + 2.3 - c.now, only=(2, 3))
    assert lease_id not in c.nodes[2].kv.leases and lease_id not in c.nodes[3].kv.leases


def test_clients_may_not_use_the_expiry_client_id():
    c = led_by_1(CFG)
    c.nodes[1].submit("forged", lease(LEASE_CLIENTS + 5, EXPIRY_SEQ, expire_op(1, [1])), c.now)
    c.collect()
    assert [r.status for _i, r in c.replies if r.req == "forged"] == [ERROR]
