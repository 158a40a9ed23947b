"""The client library: what an application imports to use a paxosd cluster.

``daemon.client.client`` (connections, leader discovery, sessions, reads and writes),
``txn`` (transactions), ``watch``, ``leases`` and ``lock`` (the coordination recipes built on
them). It speaks only the CBOR wire protocol (daemon.codec.wire); nothing here runs a node.
"""
