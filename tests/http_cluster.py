"""A 3-node cluster of real processes serving the HTTP API, and httpx pointed at it.

Each node is ``paxosd serve`` (``python -m daemon.tools.cli serve``: the node and its HTTP
gateway in one process) with its own ``http`` address, started by tests.faults.ProcessCluster
(no proxy) and ended by its pid. Use the module-scoped fixture, one cluster per test module::

    from tests.http_cluster import http_cluster  # noqa: F401 - the fixture

    def test_something(http_cluster):
        with http_cluster.http(1) as web:          # an httpx.Client on node 1's API
            assert web.get("/v1/status").status_code == 200
        leader = http_cluster.leader()             # the id every live node names
        http_cluster.url(2)                        # "http://127.0.0.1:PORT"

or ``with running(directory) as cluster`` for a cluster of your own (a test that kills
nodes). Every wait is bounded.
"""

from __future__ import annotations

import time
from contextlib import contextmanager

import httpx
import pytest

from tests.faults.cluster import ProcessCluster

__all__ = ["HTTPCluster", "http_cluster", "running"]

START_TIMEOUT = 30.0
REQUEST_TIMEOUT = 15.0


class HTTPCluster:
    """``ProcessCluster`` with an HTTP API per node: ``url(i)``, ``http(i)``, ``wait_ready``,
    ``leader``; ``kill``, ``pause``, ``resume``, ``close`` by pid as ProcessCluster does."""

    def __init__(self, directory, **kwargs) -> None:
        self.nodes = ProcessCluster(directory, proxy=False, http=True, **kwargs)
        self.ids = self.nodes.ids

    def url(self, i: int) -> str:
        return f"http://127.0.0.1:{self.nodes.http_port[i]}"

    @property
    def urls(self) -> dict[int, str]:
        return {i: self.url(i) for i in self.ids}

    def http(self, i: int, **kwargs) -> httpx.Client:
        """An httpx client of node ``i``'s API (close it: use ``with``)."""
        return httpx.Client(base_url=self.url(i), timeout=REQUEST_TIMEOUT, **kwargs)

    def start(self) -> None:
        self.nodes.start_all()
        self.wait_ready()

    def wait_ready(self, among=None, timeout: float = START_TIMEOUT) -> None:
        """Until GET /readyz is 200 on every node of ``among`` (default all)."""
        deadline = time.monotonic() + timeout
        for i in among or self.ids:
            while True:
                try:
                    if httpx.get(self.url(i) + "/readyz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError(f"node {i} not ready within {timeout:g} s:\n"
                                         + self.nodes.log_text(i)[-3000:])
                time.sleep(0.05)

    def leader(self, among=None) -> int:
        """The leader every node of ``among`` (default all) names in its /v1/status."""
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            leaders = set()
            for i in among or self.ids:
                try:
                    leaders.add(httpx.get(self.url(i) + "/v1/status", timeout=2).json()["leader"])
                except httpx.HTTPError:
                    leaders.add(None)
            if len(leaders) == 1 and None not in leaders:
                return leaders.pop()
            time.sleep(0.05)
        raise AssertionError("no leader that every node names")

    def kill(self, i: int) -> None:
        self.nodes.kill(i)

    def pause(self, i: int) -> None:
        self.nodes.pause(i)

    def resume(self, i: int) -> None:
        self.nodes.resume(i)

    def close(self) -> None:
        self.nodes.close()


@contextmanager
def running(directory, **kwargs):
    """A started HTTPCluster in ``directory``, closed (every process killed) at the end."""
    cluster = HTTPCluster(directory, **kwargs)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()


@pytest.fixture(scope="module")
def http_cluster(tmp_path_factory):
    """One running HTTPCluster shared by the tests of a module."""
    with running(tmp_path_factory.mktemp("http")) as cluster:
        yield cluster
