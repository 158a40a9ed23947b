"""The HTTP/JSON API (daemon.gateway) against a real 3-node cluster, with httpx."""

from __future__ import annotations

import base64
import json
import re
import socket
import uuid
from types import SimpleNamespace

import pytest

from daemon.client.client import SyncClient
from daemon.gateway.app import build_app
from tests.http_cluster import http_cluster  # noqa: F401 - the fixture


def test_every_node_says_its_status_and_names_the_same_leader(http_cluster):
    leader = http_cluster.leader()
    for i in http_cluster.ids:
        with http_cluster.http(i) as web:
            reply = web.get("/v1/status")
            assert reply.status_code == 200
            status = reply.json()
            assert status["id"] == i and status["leader"] == leader
            assert status["leader_url"] == http_cluster.url(leader)


def test_the_openapi_document_describes_every_route_and_nothing_else(http_cluster):
    app = build_app(SimpleNamespace(client=None, metrics_sockets=set()))
    routes = {(re.sub(r"\{(\w+):\w+\}", r"{\1}", r.path), method.lower())
              for r in app.routes for method in r.methods if method != "HEAD"}
    with http_cluster.http(1) as web:
        doc = web.get("/v1/openapi.json").json()
    assert doc["openapi"].startswith("3.1")
    described = {(path, method) for path, ops in doc["paths"].items() for method in ops}
    assert routes - described == set(), "routes the document does not describe"
    assert described - routes == set(), "paths the document describes that the app lacks"


def test_liveness_readiness_and_metrics_answer_on_every_node(http_cluster):
    for i in http_cluster.ids:
        with http_cluster.http(i) as web:
            assert web.get("/livez").text == "ok\n"
            ready = web.get("/readyz")
            assert ready.status_code == 200 and ready.json()["ready"] is True
            metrics = web.get("/metrics")
            assert metrics.status_code == 200
            assert "paxosd_server_has_leader 1" in metrics.text


def test_members_name_every_nodes_api_url(http_cluster):
    with http_cluster.http(2) as web:
        reply = web.get("/v1/members")
    assert reply.status_code == 200
    members = {m["id"]: m for m in reply.json()["members"]}
    assert {i: m["url"] for i, m in members.items()} == http_cluster.urls
    assert all(m["voter"] for m in members.values())


def test_an_unknown_route_and_a_wrong_method_are_problems_with_stable_codes(http_cluster):
    with http_cluster.http(1) as web:
        missing = web.get("/v1/nothing")
        wrong = web.post("/v1/status")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
    assert missing.json()["code"] == "not-found" and "/v1/nothing" in missing.json()["detail"]
    assert wrong.status_code == 405 and wrong.json()["code"] == "method-not-allowed"
    assert "GET" in wrong.headers["allow"] and "POST" in wrong.json()["detail"]


# ---------------------------------------------------------------------------------------------
# Keys and values.


def raw_request(url: str, head: bytes, body_chunks=(), timeout: float = 10.0) -> tuple[int, bytes]:
    """Send ``head`` (the request line and headers, without the blank line) and then each of
    ``body_chunks`` on a fresh socket, stopping as soon as a response arrives; (status, the
    response's body). For what httpx will not send: bad percent-encoding, a body cut short."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(head + b"\r\n\r\n")
        sock.setblocking(False)
        data = b""
        for chunk in body_chunks:
            try:
                data += sock.recv(65536)
                break  # answered before the body was all sent
            except BlockingIOError:
                pass
            try:
                sock.sendall(chunk)
            except OSError:
                break
        sock.settimeout(timeout)
        while b"\r\n\r\n" not in data or len(data) < _length(data):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head_part, _, body = data.partition(b"\r\n\r\n")
    return int(head_part.split()[1]), body


def _length(data: bytes) -> int:
    head, _, _ = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(head) + 4 + int(value)
    return len(data) + 1


def test_a_value_written_through_any_node_reads_back_from_every_node(http_cluster):
    leader = http_cluster.leader()
    follower = next(i for i in http_cluster.ids if i != leader)
    with http_cluster.http(follower) as web:  # a follower forwards the write
        put = web.put("/v1/kv/greeting", content=b"hello")
    assert put.status_code == 200
    revision = put.json()["revision"]
    assert put.headers["x-paxosd-revision"] == str(revision)
    for i in http_cluster.ids:
        with http_cluster.http(i) as web:
            got = web.get("/v1/kv/greeting")
            assert got.status_code == 200 and got.content == b"hello"
            assert got.headers["content-type"] == "application/octet-stream"
            assert got.headers["x-paxosd-mod-revision"] == str(revision)
            assert got.headers["etag"] == f'"{revision}"'
            assert int(got.headers["x-paxosd-revision"]) >= revision
            assert got.headers["x-paxosd-version"] == "1"
            head = web.head("/v1/kv/greeting")  # the headers alone
            assert head.status_code == 200 and head.content == b""
            assert head.headers["etag"] == f'"{revision}"'


def test_json_gives_utf8_values_as_text_and_other_bytes_as_base64(http_cluster):
    with http_cluster.http(1) as web:
        web.put("/v1/kv/json/text", content="grüße".encode())
        web.put("/v1/kv/json/binary", content=b"\xff\x00\xfe")
        text = web.get("/v1/kv/json/text", params={"format": "json"}).json()
        binary = web.get("/v1/kv/json/binary", params={"format": "json"}).json()
        bad = web.get("/v1/kv/json/text", params={"format": "xml"})
    assert (text["value"], text["value_encoding"]) == ("grüße", "utf-8")
    assert (text["key"], text["version"]) == ("json/text", 1)
    assert binary["value_encoding"] == "base64"
    assert base64.b64decode(binary["value"]) == b"\xff\x00\xfe"
    assert bad.status_code == 400 and bad.json()["code"] == "bad-parameter"


@pytest.mark.parametrize("encoded, key", [
    ("dir/sub/leaf", b"dir/sub/leaf"),
    ("dir%2Fsub", b"dir/sub"),
    ("with%20space", b"with space"),
    ("100%25", b"100%"),
    ("bin%FF%00", b"bin\xff\x00"),
])
def test_keys_in_the_path_are_percent_encoded_bytes(http_cluster, encoded, key):
    with http_cluster.http(2) as web:
        assert web.put(f"/v1/kv/pct/{encoded}", content=b"v:" + key).status_code == 200
        assert web.get(f"/v1/kv/pct/{encoded}").content == b"v:" + key
        listed = web.get("/v1/kv", params={"prefix": "pct/"}).json()["kvs"]
    found = [base64.b64decode(kv["key"]) if kv["key_encoding"] == "base64" else
             kv["key"].encode() for kv in listed]
    assert b"pct/" + key in found


def test_a_bad_percent_encoding_or_an_empty_key_is_refused_naming_it(http_cluster):
    status, body = raw_request(http_cluster.url(1), b"GET /v1/kv/a%zz HTTP/1.1\r\nHost: x\r\n"
                               b"Connection: close")
    assert status == 400
    assert json.loads(body)["code"] == "bad-percent-encoding" and "%zz" in json.loads(body)["detail"]
    with http_cluster.http(1) as web:
        empty = web.get("/v1/kv/")
    assert empty.status_code == 400 and empty.json()["code"] == "key-required"


def test_a_missing_key_is_404_and_delete_says_what_it_removed(http_cluster):
    with http_cluster.http(3) as web:
        assert web.get("/v1/kv/never").json()["code"] == "key-not-found"
        web.put("/v1/kv/doomed", content=b"x")
        first = web.delete("/v1/kv/doomed").json()
        second = web.delete("/v1/kv/doomed").json()
        assert web.get("/v1/kv/doomed").status_code == 404
    assert first["deleted"] == 1 and second["deleted"] == 0
    assert second["revision"] > first["revision"]


def test_if_match_is_compare_and_set_on_the_mod_revision(http_cluster):
    with http_cluster.http(1) as web:
        r1 = web.put("/v1/kv/cas", content=b"one").json()["revision"]
        r2 = web.put("/v1/kv/cas", content=b"two", headers={"If-Match": f'"{r1}"'})
        assert r2.status_code == 200
        stale = web.put("/v1/kv/cas", content=b"three", headers={"If-Match": str(r1)})
        assert stale.status_code == 412 and stale.json()["code"] == "precondition-failed"
        assert stale.json()["mod_revision"] == r2.json()["revision"]
        assert web.get("/v1/kv/cas").content == b"two"
        created = web.put("/v1/kv/cas", content=b"x", headers={"If-None-Match": "*"})
        assert created.status_code == 412
        fresh = web.put("/v1/kv/cas-new", content=b"x", headers={"If-None-Match": "*"})
        assert fresh.status_code == 200
        bad = web.put("/v1/kv/cas", content=b"x", headers={"If-Match": "soon"})
        assert bad.status_code == 400 and "If-Match" in bad.json()["detail"]
        gone = web.delete("/v1/kv/cas", headers={"If-Match": str(r1)})
        assert gone.status_code == 412


def test_a_leased_put_is_attached_and_a_bad_or_missing_lease_is_named(http_cluster):
    endpoints = [f"127.0.0.1:{http_cluster.nodes.client_port[i]}" for i in http_cluster.ids]
    with SyncClient(endpoints) as client:
        lease = client.lease_grant(60)
    with http_cluster.http(1) as web:
        put = web.put("/v1/kv/leased", params={"lease": lease.id}, content=b"v")
        assert put.status_code == 200
        assert web.get("/v1/kv/leased").headers["x-paxosd-lease"] == str(lease.id)
        bad = web.put("/v1/kv/leased", params={"lease": "soon"}, content=b"v")
        assert bad.status_code == 400 and "'lease'" in bad.json()["detail"]
        missing = web.put("/v1/kv/leased", params={"lease": 987654321}, content=b"v")
        assert missing.status_code == 404 and missing.json()["code"] == "lease-not-found"


def test_a_listing_pages_with_limit_and_after_and_says_more(http_cluster):
    with http_cluster.http(2) as web:
        for i in range(5):
            web.put(f"/v1/kv/list/{i}", content=b"%d" % i)
        web.put("/v1/kv/listz", content=b"outside the prefix")
        page = web.get("/v1/kv", params={"prefix": "list/", "limit": 2}).json()
        assert [kv["key"] for kv in page["kvs"]] == ["list/0", "list/1"]
        assert page["more"] is True and page["count"] == 5
        rest = web.get("/v1/kv", params={"prefix": "list/", "after": "list/1"}).json()
        assert [kv["key"] for kv in rest["kvs"]] == ["list/2", "list/3", "list/4"]
        assert rest["more"] is False
        span = web.get("/v1/kv", params={"from": "list/1", "to": "list/3",
                                         "keys_only": "true"}).json()
        assert [kv["key"] for kv in span["kvs"]] == ["list/1", "list/2"]
        assert "value" not in span["kvs"][0]
        bad = web.get("/v1/kv", params={"limit": "many"})
        assert bad.status_code == 400 and "'limit'" in bad.json()["detail"]


# ---------------------------------------------------------------------------------------------
# Transactions.


def test_a_transaction_runs_its_success_or_failure_branch(http_cluster):
    body = {"compare": [{"key": "txn/flag", "target": "version", "op": "=", "operand": 0}],
            "success": [{"put": {"key": "txn/flag", "value": "set"}},
                        {"put": {"key": {"base64": "dHhuL7+/"}, "value": "binary key"}},
                        {"range": {"key": "txn/", "prefix": True}}],
            "failure": [{"range": {"key": "txn/flag"}}, {"delete": {"key": "txn/flag"}}]}
    with http_cluster.http(3) as web:
        first = web.post("/v1/txn", json=body).json()
        second = web.post("/v1/txn", json=body).json()
    assert first["succeeded"] is True and len(first["responses"]) == 3
    listed = first["responses"][2]["range"]
    assert listed["count"] == 2 and listed["kvs"][0]["value"] == "set"
    assert second["succeeded"] is False
    assert second["responses"][0]["range"]["kvs"][0]["mod_revision"] == first["revision"]
    assert second["responses"][1] == {"delete": {"deleted": 1}}


@pytest.mark.parametrize("body, named", [
    ({"compare": [{"key": "k", "target": "colour", "op": "=", "operand": 1}]},
     "compare[0].target"),
    ({"success": [{"put": {"key": "k"}}]}, "success[0].put.value"),
    ({"success": [{"put": {"key": 7, "value": "v"}}]}, "success[0].put.key"),
    ({"failure": [{"frobnicate": {}}]}, "failure[0]"),
    ({"compare": [{"key": "k", "target": "mod", "op": "=", "operand": "x"}]},
     "compare[0].operand"),
    ({"success": "put"}, "success"),
])
def test_a_malformed_transaction_is_refused_naming_the_field(http_cluster, body, named):
    with http_cluster.http(1) as web:
        reply = web.post("/v1/txn", json=body)
    assert reply.status_code == 400 and reply.json()["code"] == "bad-json"
    assert reply.json()["detail"].startswith(named + ":")


def test_a_body_that_is_not_json_is_refused(http_cluster):
    with http_cluster.http(1) as web:
        reply = web.post("/v1/txn", content=b"{not json")
    assert reply.status_code == 400 and "not JSON" in reply.json()["detail"]


# ---------------------------------------------------------------------------------------------
# Idempotency and limits.


def test_the_same_idempotent_put_sent_to_two_nodes_applies_once(http_cluster):
    headers = {"Idempotency-Key": f"test-{uuid.uuid4()}"}
    with http_cluster.http(1) as web:
        first = web.put("/v1/kv/idem", content=b"once", headers=headers)
    with http_cluster.http(3) as web:
        again = web.put("/v1/kv/idem", content=b"once", headers=headers)
        got = web.get("/v1/kv/idem")
        other = web.put("/v1/kv/idem", content=b"twice",
                        headers={"Idempotency-Key": f"test-{uuid.uuid4()}"})
    assert first.status_code == again.status_code == 200
    assert again.json()["revision"] == first.json()["revision"]  # answered from the session
    assert got.headers["x-paxosd-version"] == "1"  # the key's version rose once
    assert other.json()["revision"] > first.json()["revision"]


def test_a_body_over_the_limit_is_refused_with_413_before_it_is_read(http_cluster):
    limit = 1024 * 1024 - 16384  # http.max_body_bytes' default for max_batch_bytes 1 MiB
    status, body = raw_request(http_cluster.url(2), b"PUT /v1/kv/big HTTP/1.1\r\nHost: x\r\n"
                               b"Content-Length: %d" % (limit + 1))  # the body is never sent
    assert status == 413 and json.loads(body)["code"] == "body-too-large"
    status, body = raw_request(
        http_cluster.url(2), b"PUT /v1/kv/big HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked",
        (b"%x\r\n%s\r\n" % (65536, b"x" * 65536) for _ in range(10 * limit // 65536)))
    assert status == 413 and json.loads(body)["limit"] == limit
    with http_cluster.http(2) as web:
        assert web.get("/v1/kv/big").status_code == 404
        assert web.put("/v1/kv/big", content=b"x" * limit).status_code == 200
