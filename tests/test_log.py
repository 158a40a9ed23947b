"""daemon.runtime.log: one event a line naming the node, and the throttle for events that repeat."""

from __future__ import annotations

import io
import logging

from daemon.runtime.log import FORMAT, Throttle, _NodeDefault, node_logger


def test_a_line_names_the_level_and_the_node():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(_NodeDefault())
    handler.setFormatter(logging.Formatter(FORMAT))
    logger = logging.getLogger("paxosd.test-log")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    try:
        node_logger(2, "paxosd.test-log").info("leader is node %d (ballot %s)", 1, "3.1")
        logger.warning("a line from code that knows no node")
    finally:
        logger.removeHandler(handler)
    first, second = stream.getvalue().splitlines()
    assert " INFO node=2 paxosd.test-log: leader is node 1 (ballot 3.1)" in first
    assert " WARNING node=- paxosd.test-log: a line from code" in second


def test_the_throttle_says_the_first_then_one_per_interval_with_the_count_unsaid():
    throttle = Throttle(60.0)
    assert throttle.check(("10.0.0.9", "bad proof"), 0.0) == 0
    assert throttle.check(("10.0.0.9", "bad proof"), 1.0) is None
    assert throttle.check(("10.0.0.9", "bad proof"), 59.0) is None
    assert throttle.check(("10.0.0.9", "other reason"), 59.0) == 0  # another key: said at once
    assert throttle.check(("10.0.0.9", "bad proof"), 60.0) == 2  # said again, with 2 unsaid
    assert throttle.check(("10.0.0.9", "bad proof"), 61.0) is None


def test_the_throttle_forgets_when_it_holds_too_many_keys():
    throttle = Throttle(60.0, max_keys=2)
    assert throttle.check("a", 0.0) == 0
    assert throttle.check("b", 0.0) == 0
    assert throttle.check("c", 0.0) == 0  # full: starts afresh
    assert throttle.check("a", 1.0) == 0
