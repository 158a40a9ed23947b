"""Client sessions in the state machine: at most once, eviction included."""

import random

from fastpath import dumps

from daemon.core.kv import KVStore, decode_image, encode_image
from daemon.core.messages import OK, OP_PUT, SESSION_EXPIRED, STALE


def put(cid, seq, value):
    return (cid, seq, OP_PUT, b"k", value, None)


def test_a_retry_of_an_evicted_session_is_refused_not_applied_again():
    kv = KVStore(max_sessions=2)
    assert kv.apply(put(1, 1, b"first")) == (OK, None, 1)
    kv.apply(put(2, 1, b"second"))
    kv.apply(put(3, 1, b"third"))  # client 1's session goes
    assert 1 not in kv.sessions and kv.evicted_at == 3
    # Client 1's first write comes again (a retry that was slow on the way): not applied.
    assert kv.apply(put(1, 1, b"first")) == (SESSION_EXPIRED, 3, 3)
    assert kv.get(b"k") == b"third" and kv.applied_commands == 3


def test_a_session_starts_again_above_the_horizon():
    kv = KVStore(max_sessions=1)
    kv.apply(put(1, 1, b"a"))
    kv.apply(put(2, 1, b"b"))
    status, horizon, _ = kv.apply(put(1, 2, b"c"))  # client 1 was idle and evicted
    assert status == SESSION_EXPIRED and kv.get(b"k") == b"b"
    assert kv.apply(put(1, horizon + 1, b"c")) == (OK, None, 3)
    assert kv.get(b"k") == b"c"
    assert kv.apply(put(1, horizon + 1, b"c")) == (OK, None, 3)  # a retry: remembered
    assert kv.apply(put(1, horizon, b"x")) == (STALE, None, 3)


def test_a_new_client_before_any_eviction_starts_at_seq_1():
    kv = KVStore(max_sessions=10)
    for cid in range(1, 6):
        assert kv.apply(put(cid, 1, b"v")) == (OK, None, cid)
    assert kv.evicted_at == 0


def test_no_command_is_applied_twice_under_eviction_whatever_the_retries():
    """Clients that follow the rule (one command in flight per session, restart above the
    horizon after SESSION_EXPIRED) and a network that re-delivers any old command at any time:
    every (client, seq) is applied at most once."""
    rng = random.Random(7)
    for trial in range(200):
        kv = KVStore(max_sessions=rng.randint(1, 3))
        seqs = {cid: 0 for cid in range(1, 6)}
        sent = []
        applied = []
        for _ in range(300):
            if sent and rng.random() < 0.4:
                cmd = rng.choice(sent)  # an old copy arrives again
            else:
                cid = rng.randint(1, 5)
                seqs[cid] += 1
                cmd = put(cid, seqs[cid], b"%d" % seqs[cid])
                sent.append(cmd)
            before = kv.applied_commands
            status, result, _ = kv.apply(cmd)
            if kv.applied_commands > before:
                applied.append(cmd[:2])
            if status == SESSION_EXPIRED and cmd[1] == seqs[cmd[0]]:
                seqs[cmd[0]] = result  # the next command starts above the horizon
        assert len(applied) == len(set(applied)), trial


def test_the_horizon_survives_a_snapshot():
    kv = KVStore(max_sessions=1)
    kv.apply(put(1, 1, b"a"))
    kv.apply(put(2, 1, b"b"))
    again = KVStore.from_image(decode_image(encode_image(kv.image())), 1)
    assert again.evicted_at == kv.evicted_at == 2
    assert again.apply(put(1, 1, b"a")) == (SESSION_EXPIRED, 2, 2)


def test_an_image_without_a_horizon_takes_everything_applied_as_expired():
    legacy = [{b"k": b"v"}, {}, 9]
    kv = KVStore.from_image(decode_image(dumps(legacy)), 10)  # the first image format
    assert kv.evicted_at == 9
    assert kv.apply(put(4, 9, b"x"))[0] == SESSION_EXPIRED
    assert kv.apply(put(4, 10, b"x")) == (OK, None, 10)
