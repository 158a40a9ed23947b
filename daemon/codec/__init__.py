"""The formats: peer and client messages to bytes and back, checked on the way in (wire); the
write-ahead log's records, groups and headers (records); the snapshot file (snapshot)."""
