"""What people run and import: the ``paxosd`` command line, the client library, the benchmark,
and what these share with the tests and the scripts in bench/ (free loopback ports, percentiles).
"""
