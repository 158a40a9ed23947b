"""The protocol and the replicated state machine: no I/O, no clock, no threads.

A ``Node`` takes messages, client requests and the time as arguments and hands back what to
persist, what to send and what to answer; everything else in the daemon only carries that out.
"""
