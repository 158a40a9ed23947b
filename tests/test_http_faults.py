"""The HTTP API when the cluster is not whole: /readyz turns 503 on a node cut off from its
peers (and 200 again when they come back), and with no quorum a write is 503 with
Retry-After, not an indefinite wait. Real processes, stopped by pid."""

from __future__ import annotations

import time

import httpx

from tests.http_cluster import running

BOUND = 20.0  # seconds any wait here may take


def wait_for(check, what: str) -> None:
    deadline = time.monotonic() + BOUND
    while not check():
        assert time.monotonic() < deadline, f"not within {BOUND:g} s: {what}"
        time.sleep(0.05)


def ready(url: str) -> int:
    return httpx.get(url + "/readyz", timeout=5).status_code


def knows_no_leader(url: str) -> bool:
    return httpx.get(url + "/v1/status", timeout=5).json()["leader"] is None


def test_a_cut_off_node_is_not_ready_and_refuses_writes_with_503(tmp_path):
    with running(tmp_path) as cluster:
        leader = cluster.leader()
        alone = next(i for i in cluster.ids if i != leader)
        others = [i for i in cluster.ids if i != alone]
        url = cluster.url(alone)

        for i in others:  # cut off: its peers stop answering (SIGSTOP)
            cluster.pause(i)
        wait_for(lambda: ready(url) == 503, "readyz 503 on the node cut off")
        reply = httpx.get(url + "/readyz", timeout=5)
        assert reply.json()["code"] in ("no-leader", "read-failed")
        assert reply.headers["retry-after"]
        assert httpx.get(url + "/livez", timeout=5).status_code == 200  # alive all the same

        for i in others:  # back: ready again
            cluster.resume(i)
        wait_for(lambda: ready(url) == 200, "readyz 200 once the peers are back")

        for i in others:  # no quorum, for good
            cluster.kill(i)
        wait_for(lambda: knows_no_leader(url), "the survivor knows no leader")
        put = httpx.put(url + "/v1/kv/lost", content=b"x", timeout=10)
        assert put.status_code == 503 and put.json()["code"] == "no-leader"
        assert put.headers["retry-after"] == "1"
        assert "nothing was applied" in put.json()["detail"]
        read = httpx.get(url + "/v1/kv/lost", timeout=10)  # bounded by http.timeout_ms
        assert read.status_code == 503 and read.json()["code"] in ("no-leader", "unavailable")
        assert ready(url) == 503

        # SIGTERM: the API drains, then the node stops cleanly.
        assert cluster.nodes.terminate(alone) == 0
        assert "Traceback" not in cluster.nodes.log_text(alone)
