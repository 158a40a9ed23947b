"""The wire formats: peer and client messages to bytes and back, checked on the way in."""
