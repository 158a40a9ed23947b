"""The lease routes (daemon.gateway.leases) against a real 3-node cluster, with httpx; keys
are attached through the client library's CBOR port (the same store)."""

from __future__ import annotations

from daemon.client.client import SyncClient
from daemon.core.leases import MAX_TTL
from tests.http_cluster import http_cluster, running  # noqa: F401 - the fixture


def cbor(cluster) -> SyncClient:
    return SyncClient(cluster.nodes.endpoints, timeout=10)


def test_grant_keepalive_and_ttl_with_keys_on_a_follower_and_the_leader(http_cluster):
    leader = http_cluster.leader()
    follower = next(i for i in http_cluster.ids if i != leader)
    for node in (follower, leader):
        with http_cluster.http(node) as web:
            granted = web.post("/v1/lease", json={"ttl": 30})
            assert granted.status_code == 201, granted.text
            body = granted.json()
            assert body["ttl"] == 30 and body["granted_ttl"] == 30 and body["raised"] is False
            lease = body["id"]
            assert granted.headers["location"] == f"/v1/lease/{lease}"
            with cbor(http_cluster) as client:
                client.put(f"svc/{node}/b", "2", lease=lease)
                client.put(f"svc/{node}/a", "1", lease=lease)
            kept = web.post(f"/v1/lease/{lease}/keepalive")
            assert kept.status_code == 200 and kept.json() == {"id": lease, "ttl": 30}
            plain = web.get(f"/v1/lease/{lease}").json()
            assert plain["id"] == lease and plain["ttl"] == 30 and 0 < plain["left"] <= 30
            assert "keys" not in plain
            listed = web.get(f"/v1/lease/{lease}", params={"keys": "true"}).json()
            assert listed["keys"] == [{"key": f"svc/{node}/a", "key_encoding": "utf-8"},
                                      {"key": f"svc/{node}/b", "key_encoding": "utf-8"}]


def test_the_grant_says_whether_the_ttl_was_raised(http_cluster):
    """The server's minimum is ceil(2 x the longest election timeout): 1 s for the test
    cluster's 400 ms, so a TTL of 1 stands and the answer says it was not raised."""
    with http_cluster.http(1) as web:
        body = web.post("/v1/lease", json={"ttl": 1}).json()
    assert body["ttl"] == 1 and body["granted_ttl"] == 1 and body["raised"] is False


def test_a_ttl_below_the_servers_minimum_is_raised_and_the_answer_says_so(tmp_path):
    """Election timeouts up to 1 s: the minimum TTL is 2 s."""
    with running(tmp_path, election_timeout_ms=(500, 1000)) as cluster:
        with cluster.http(1) as web:
            body = web.post("/v1/lease", json={"ttl": 1}).json()
            assert body["ttl"] == 1 and body["granted_ttl"] == 2 and body["raised"] is True
            assert web.get(f"/v1/lease/{body['id']}").json()["ttl"] == 2


def test_revoking_a_lease_deletes_its_keys_and_then_it_is_not_found(http_cluster):
    with http_cluster.http(2) as web:
        lease = web.post("/v1/lease", json={"ttl": 60}).json()["id"]
        with cbor(http_cluster) as client:
            client.put("gone/x", "1", lease=lease)
            client.put("stays/y", "2")
            revoked = web.delete(f"/v1/lease/{lease}")
            assert revoked.status_code == 200, revoked.text
            assert revoked.json()["revoked"] is True and revoked.json()["revision"] > 0
            assert client.get("gone/x") is None and client.get("stays/y") == b"2"
        for reply in (web.delete(f"/v1/lease/{lease}"), web.get(f"/v1/lease/{lease}"),
                      web.post(f"/v1/lease/{lease}/keepalive")):
            assert reply.status_code == 404
            assert reply.headers["content-type"] == "application/problem+json"
            assert reply.json()["code"] == "lease-not-found"
            assert str(lease) in reply.json()["detail"]


def test_an_unknown_lease_is_404_on_every_route(http_cluster):
    with http_cluster.http(3) as web:
        for reply in (web.get("/v1/lease/999999"), web.post("/v1/lease/999999/keepalive"),
                      web.delete("/v1/lease/999999")):
            assert reply.status_code == 404, reply.text
            assert reply.json()["code"] == "lease-not-found"


def test_a_bad_ttl_or_body_is_400_naming_it(http_cluster):
    cases = [({"ttl": 0}, "bad-ttl"), ({"ttl": -5}, "bad-ttl"), ({"ttl": 2.5}, "bad-ttl"),
             ({"ttl": "10"}, "bad-ttl"), ({"ttl": True}, "bad-ttl"),
             ({"ttl": MAX_TTL + 1}, "bad-ttl"), ({}, "bad-json"), ([10], "bad-json"),
             ({"ttl": 10, "id": 3}, "bad-json")]
    with http_cluster.http(1) as web:
        for body, code in cases:
            reply = web.post("/v1/lease", json=body)
            assert reply.status_code == 400, (body, reply.text)
            problem = reply.json()
            assert problem["code"] == code, (body, problem)
            assert ("ttl" in problem["detail"] or "id" in problem["detail"]), problem
        garbled = web.post("/v1/lease", content=b"ttl=10")
        assert garbled.status_code == 400 and garbled.json()["code"] == "bad-json"
        assert "not JSON" in garbled.json()["detail"]


def test_a_bad_lease_id_in_the_path_is_400_naming_it(http_cluster):
    with http_cluster.http(1) as web:
        for path in ("/v1/lease/abc", "/v1/lease/0", "/v1/lease/-3/keepalive"):
            reply = web.get(path) if "keepalive" not in path else web.post(path)
            assert reply.status_code == 400, (path, reply.text)
            assert reply.json()["code"] == "bad-lease-id"
            assert "lease id" in reply.json()["detail"]


def test_a_retried_grant_with_the_same_idempotency_key_is_granted_once(http_cluster):
    headers = {"Idempotency-Key": "grant-once-7b1f"}
    with http_cluster.http(1) as web, http_cluster.http(2) as other:
        first = web.post("/v1/lease", json={"ttl": 40}, headers=headers).json()
        again = other.post("/v1/lease", json={"ttl": 40}, headers=headers).json()
    assert again["id"] == first["id"]
