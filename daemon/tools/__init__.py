"""What people run and import: the ``paxosd`` command line, the client library, the benchmark."""
