"""paxosd: a Multi-Paxos replicated key-value service.

The packages are layers; each imports only from the layers listed before it (and fastpath):

- ``daemon.core``: the protocol and the state machine. No I/O and no clock: time comes in as an
  argument, messages and records go out as values.
- ``daemon.codec``: bytes to values and back for the peer and client protocols.
- ``daemon.runtime``: the running daemon: trio server, transport, storage, security, metrics,
  configuration and the durability gate.
- ``daemon.tools``: what people run or import: the command line, the client library, the
  benchmark.
"""
