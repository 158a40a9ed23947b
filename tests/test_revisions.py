"""Revisions in the key-value store: one per applied write, per-key create/mod revisions,
versions and leases, carried through snapshots, and read from images of the first format."""

import pytest

from fastpath import KeyRecord, dumps

from daemon.core.kv import KVStore, decode_image, encode_image
from daemon.core.messages import OK, OP_CAS, OP_DELETE, OP_PUT, STALE


def put(cid, seq, key, value):
    return (cid, seq, OP_PUT, key, value, None)


def delete(cid, seq, key):
    return (cid, seq, OP_DELETE, key, None, None)


def cas(cid, seq, key, expected, new):
    return (cid, seq, OP_CAS, key, expected, new)


def test_each_applied_write_takes_the_next_revision():
    kv = KVStore()
    assert kv.revision == 0
    assert kv.apply(put(1, 1, b"a", b"1")) == (OK, None, 1)
    assert kv.apply(put(1, 2, b"b", b"2")) == (OK, None, 2)
    assert kv.apply(put(1, 3, b"a", b"3")) == (OK, None, 3)
    assert kv.revision == 3
    assert kv.record(b"a") == KeyRecord(b"3", 1, 3, 2, 0)
    assert kv.record(b"b") == KeyRecord(b"2", 2, 2, 1, 0)


def test_a_write_that_changes_nothing_still_takes_a_revision_and_changes_no_record():
    kv = KVStore()
    kv.apply(put(1, 1, b"a", b"1"))
    assert kv.apply(cas(1, 2, b"a", b"wrong", b"x")) == (OK, False, 2)
    assert kv.apply(delete(1, 3, b"missing")) == (OK, False, 3)
    assert kv.record(b"a") == KeyRecord(b"1", 1, 1, 1, 0)
    assert kv.revision == 3


def test_a_command_not_applied_takes_no_revision():
    kv = KVStore()
    kv.apply(put(1, 1, b"a", b"1"))
    kv.apply(put(1, 2, b"a", b"2"))
    assert kv.apply(put(1, 2, b"a", b"2")) == (OK, None, 2)  # a retry: its own revision
    assert kv.apply(put(1, 1, b"a", b"1")) == (STALE, None, 2)
    assert kv.revision == 2 and kv.record(b"a").version == 2


def test_delete_ends_a_key_and_a_re_create_starts_it_again():
    kv = KVStore()
    kv.apply(put(1, 1, b"k", b"1"))
    kv.apply(put(1, 2, b"k", b"2"))
    assert kv.apply(delete(1, 3, b"k")) == (OK, True, 3)
    assert kv.record(b"k") is None and kv.get(b"k") is None
    kv.apply(put(1, 4, b"k", b"3"))
    assert kv.record(b"k") == KeyRecord(b"3", 4, 4, 1, 0)


def test_a_cas_that_creates_or_swaps_writes_a_record():
    kv = KVStore()
    assert kv.apply(cas(1, 1, b"k", None, b"1")) == (OK, True, 1)
    assert kv.apply(cas(1, 2, b"k", b"1", b"2")) == (OK, True, 2)
    assert kv.record(b"k") == KeyRecord(b"2", 1, 2, 2, 0)


def test_revisions_and_records_survive_a_snapshot_round_trip():
    kv = KVStore()
    for seq, key in enumerate([b"a", b"b", b"a", b"c"], 1):
        kv.apply(put(1, seq, key, b"v%d" % seq))
    kv.apply(delete(1, 5, b"c"))
    again = KVStore.from_image(decode_image(encode_image(kv.image())))
    assert again.state() == kv.state() and again.revision == 5
    assert again.apply(put(1, 5, b"x", b"y")) == (OK, True, 5)  # the session's remembered reply
    assert again.apply(put(1, 6, b"a", b"w")) == (OK, None, 6)
    assert again.record(b"a") == KeyRecord(b"w", 1, 6, 3, 0)


def test_an_image_of_the_first_format_implies_its_revision_exactly():
    """Values only, sessions without revisions: the revision is the applied count (the rule
    is one revision per applied command), key metadata is "before revisions" (0), version 1."""
    legacy = [{b"k": b"v"}, {7: [3, OK, None]}, 9, 4]
    kv = KVStore.from_image(decode_image(dumps(legacy)))
    assert kv.revision == 9
    assert kv.record(b"k") == KeyRecord(b"v", 0, 0, 1, 0)
    assert kv.apply((7, 3, OP_PUT, b"k", b"v", None)) == (OK, None, 9)  # remembered, at 9
    assert kv.apply(put(7, 4, b"k", b"w")) == (OK, None, 10)
    assert kv.record(b"k") == KeyRecord(b"w", 0, 10, 2, 0)


def test_a_replica_from_an_old_image_agrees_with_one_that_applied_everything():
    full = KVStore()
    cmds = [put(1, 1, b"a", b"1"), cas(1, 2, b"a", b"x", b"y"), put(1, 3, b"b", b"2"),
            delete(1, 4, b"zz"), put(1, 5, b"c", b"3")]
    for cmd in cmds[:3]:
        full.apply(cmd)
    legacy = [{k: r.value for k, r in full.data.items()}, {}, full.applied_commands, 0]
    restored = KVStore.from_image(decode_image(dumps(legacy)))
    for cmd in cmds[3:]:
        assert full.apply(cmd)[2] == restored.apply(cmd)[2]
    assert restored.revision == full.revision == 5
    assert restored.record(b"c") == full.record(b"c")


def test_an_image_of_an_unknown_format_is_refused_by_name():
    with pytest.raises(ValueError, match="format 9"):
        decode_image(dumps([{}, {}, 0, 0, 9]))
    with pytest.raises(ValueError, match="create_revision"):
        decode_image(dumps([{b"k": [b"v", 1]}, {}, 1, 0, 2]))
    with pytest.raises(ValueError, match="value must be bytes"):
        decode_image(dumps([{b"k": 5}, {}, 1]))
    # A record or a session of the wrong type is a ValueError too (a peer's snapshot is
    # dropped, a file's is reported), never a TypeError escaping the node.
    with pytest.raises(ValueError, match="value must be bytes"):
        decode_image(dumps([{b"k": [5, 1, 1, 1, 0]}, {}, 1, 0, 2]))
    with pytest.raises(ValueError, match="key-value image"):
        decode_image(dumps([{}, {1: 7}, 1, 0, 2]))


def test_a_decoded_image_encodes_to_the_same_bytes():
    """A node hands on the image it installed (catch-up): decoding must give what ``image``
    gives, in either format."""
    kv = KVStore()
    kv.apply(put(1, 1, b"a", b"1"))
    kv.apply(delete(1, 2, b"a"))
    kv.apply(put(1, 3, b"b", b"2"))
    blob = encode_image(kv.image())
    assert encode_image(decode_image(blob)) == blob
    legacy = decode_image(dumps([{b"k": b"v"}, {1: [1, OK, None]}, 1]))
    assert decode_image(encode_image(legacy)) == legacy


def test_a_key_record_checks_its_fields():
    with pytest.raises(TypeError, match="value must be bytes"):
        KeyRecord("v", 1, 1, 1)
    with pytest.raises(ValueError, match="mod_revision"):
        KeyRecord(b"v", 1, -1, 1)
    record = KeyRecord(b"v", 1, 2, 3, 4)
    assert record.astuple() == (b"v", 1, 2, 3, 4) and record.lease == 4
    assert "mod_revision=2" in repr(record)
    with pytest.raises(AttributeError):
        record.version = 9
